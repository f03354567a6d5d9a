"""`synood prompt` (docs/method.md sections 1-2): answer cleaning, prompt fitting, the tiny and openai
backends end to end, every error path, and resumption after a kill.

Expected values come from the test's own construction (hand-written strings, file sizes and image
dimensions measured here, a local HTTP server that knows what it answered), never from the code
under test.
"""

from __future__ import annotations

import base64
import functools
import glob
import io
import json
import os
import random
import re
import socket
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import JsonHandler, serve_json, assert_clean_error, kill_when_paused, make_image, seed_home, start_paused, write_tree
from synood_cli.prompting import clean_answer, clip_token_counter, fit_prompt, subject_names

PREFIX = "A photo only remain "
ROW_KEYS = {"image_path", "class_index", "class_name", "context", "prompt", "backend", "model"}
QUESTION = "List the objects and scenery in this image other than the {}, as a short comma-separated list."


@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _sd_tokens(text: str) -> int:
    """Token count of the Stable Diffusion text tokenizer (OpenAI CLIP BPE) incl. start and end."""
    return len(_bpe().encode(text)) + 2


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected_selection(folder: Path, n: int, size_of) -> list[Path]:
    """Top-n files of one class folder by bytes per pixel, measured here (no ties in these trees)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.name != "broken.jpg"]
    ratio = {p: os.path.getsize(p) / (size_of(p)[0] * size_of(p)[1]) for p in files}
    assert len(set(ratio.values())) == len(ratio)
    return sorted(files, key=lambda p: -ratio[p])[:n]


# -- answer cleaning ---------------------------------------------------------------------------


def test_subject_names_plurals_and_synonyms():
    names = subject_names("dog", {"domestic dog"})
    assert set(names) == {"dog", "dogs", "domestic dog", "domestic dogs"}
    assert [len(n) for n in names] == sorted((len(n) for n in names), reverse=True)  # longest first
    assert set(subject_names("puppy")) == {"puppy", "puppies"}
    assert set(subject_names("box")) == {"box", "boxes"}
    assert set(subject_names("bus")) == {"bus", "buses"}
    assert set(subject_names("church")) == {"church", "churches"}
    assert set(subject_names("day")) == {"day", "days"}
    assert set(subject_names("Golden Retriever")) == {"golden retriever", "golden retrievers"}


DOG = subject_names("dog", {"domestic dog"})


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The image shows a dog, grass and a red ball.", "grass, a red ball"),
        ("- grass\n- dogs\n- fence", "grass, fence"),
        ("dog", ""),
        ("", ""),
        ("   \n  ", ""),
        ("Dogs, DOG; the dog.", ""),
        ("In this image, there are trees, a bench and a domestic dog.", "trees, a bench"),
        ("Grass, grass, GRASS; trees", "Grass, trees"),
        ("1. grass\n2. a dog\n3. trees", "grass, trees"),
        ("Objects: grass, leash.", "grass, leash"),
        ("* sofa\n* Domestic Dogs\n* lamp", "sofa, lamp"),
        ("There are two dogs", "two"),
        ("hotdog stand, dogwood tree", "hotdog stand, dogwood tree"),  # not inside other words
        ("The image contains: sand, sea, sky.", "sand, sea, sky"),
    ],
)
def test_clean_answer(answer, expected):
    assert clean_answer(answer, DOG) == expected


def test_clean_answer_plural_subject():
    assert clean_answer("Puppies; ball\n- a puppy", subject_names("puppy")) == "ball"
    assert clean_answer("boxes, tape, a box", subject_names("box")) == "tape"


# -- fitting the prompt to 77 tokens -----------------------------------------------------------


def test_fit_prompt_short_context_unchanged():
    count = clip_token_counter()
    assert fit_prompt("grass, ball", count) == "A photo only remain grass, ball."
    assert count("A photo only remain grass, ball.") == _sd_tokens("A photo only remain grass, ball.")


def test_fit_prompt_long_context_cut_at_whole_words():
    rng = random.Random(3)
    vocab = ["red brick wall", "wooden fence", "tall green trees", "a parked bicycle", "blue sky", "street lamp",
             "overgrown bushes", "stone path", "white clouds", "children playing"]
    context = ", ".join(rng.choice(vocab) for _ in range(60))
    assert _sd_tokens(PREFIX + context + ".") > 77
    prompt = fit_prompt(context, clip_token_counter())
    assert prompt.startswith(PREFIX) and prompt.endswith(".")
    assert _sd_tokens(prompt) <= 77
    kept = prompt[len(PREFIX) : -1]
    assert not kept.endswith(",") and kept
    orig_words, kept_words = context.split(), kept.split()
    k = len(kept_words)
    # a word prefix of the original: whole words, the last one only loses a trailing comma
    assert kept_words[:-1] == orig_words[: k - 1]
    assert kept_words[-1] == orig_words[k - 1].rstrip(",")
    assert orig_words[k - 1].startswith(kept_words[-1])
    # and the longest such prefix: one more word would not fit
    longer = PREFIX + " ".join(orig_words[: k + 1]).rstrip(",") + "."
    assert _sd_tokens(longer) > 77


def test_fit_prompt_with_a_word_counter():
    words = lambda s: len(s.split())  # noqa: E731 - a counter whose answers are easy to do by hand
    assert fit_prompt("a, b, c, d, e, f", words, max_tokens=8) == "A photo only remain a, b, c, d."
    assert fit_prompt("a, b, c, d", words, max_tokens=8) == "A photo only remain a, b, c, d."
    assert fit_prompt("a b c d e", words, max_tokens=5) == "A photo only remain a."


# -- tiny backend end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory, tiny_weights) -> Path:
    """One store for the tiny end-to-end tests: the random LLaVA is built once per run (conftest.py)."""
    return seed_home(tiny_weights, tmp_path_factory.mktemp("prompt-home"))


def test_tiny_end_to_end_export_show_and_rerun(invoke, tiny_home, tmp_path):
    data = write_tree(tmp_path / "id", {"cat": 5, "dog": 5, "fish": 4})  # + cat/broken.jpg, cat/notes.txt
    args = ("prompt", str(data.root), "--profile", "tiny", "--per-class", "3", "--name", "ctx", "--export", "-")
    r = invoke(*args, home=tiny_home)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 9
    names = ["cat", "dog", "fish"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["class_name"] == names[row["class_index"]]
        assert Path(row["image_path"]).parent.name == row["class_name"]
        assert row["backend"] == "tiny" and row["model"] == "synood-tiny-llava"
        assert row["context"]
        assert row["prompt"].startswith(PREFIX) and row["prompt"].endswith(".")
        assert row["prompt"][len(PREFIX) : -1] == row["context"] or _sd_tokens(PREFIX + row["context"] + ".") > 77
        assert _sd_tokens(row["prompt"]) <= 77
    # the top 3 per class by bytes per pixel (all images are 48x48), measured here
    for ci, cname in enumerate(names):
        expected = _expected_selection(data.root / cname, 3, lambda p: (48, 48))
        assert sorted(r_["image_path"] for r_ in rows if r_["class_index"] == ci) == sorted(str(p) for p in expected)
    broken = str(data.root / "cat" / "broken.jpg")
    assert broken not in {row["image_path"] for row in rows}

    show = invoke("store", "show", "ctx", "--format", "json", home=tiny_home)
    assert show.returncode == 0, show.stderr
    manifest = json.loads(show.stdout)
    assert manifest["kind"] == "prompts" and manifest["status"] == "complete"
    s = manifest["summary"]
    assert s["rows"] == 9 and s["classes_covered"] == 3 and s["unreadable"] == 1 and s["empty_answers"] == 0
    assert any(f.startswith(broken + ":") for f in s["failures"]), s["failures"]
    rows_file = Path(manifest["path"]) / "prompts.jsonl"
    assert _rows(rows_file) == rows
    before = rows_file.read_bytes(), rows_file.stat().st_mtime_ns

    # the same command again finds its own work: nothing is asked, nothing rewritten
    again = invoke(*args, home=tiny_home)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert [json.loads(line) for line in again.stdout.splitlines()] == rows
    assert (rows_file.read_bytes(), rows_file.stat().st_mtime_ns) == before
    assert json.loads(invoke("store", "show", "ctx", "--format", "json", home=tiny_home).stdout)["id"] == manifest["id"]

    # a class subset is another artifact, holding only that class
    sub = invoke("prompt", str(data.root), "--profile", "tiny", "--per-class", "2", "--classes", "2", "--export", "-", home=tiny_home)
    assert sub.returncode == 0, sub.stderr
    sub_rows = [json.loads(line) for line in sub.stdout.splitlines()]
    assert sorted(r_["image_path"] for r_ in sub_rows) == sorted(str(p) for p in _expected_selection(data.root / "fish", 2, lambda p: (48, 48)))
    assert {r_["class_index"] for r_ in sub_rows} == {2}


def test_dry_run_prints_counts_and_builds_nothing(invoke, synood_home, tmp_path):
    data = write_tree(tmp_path / "id", {"cat": 5, "dog": 5, "fish": 4})
    r = invoke("prompt", str(data.root), "--profile", "tiny", "--per-class", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert lines[0] == ["class_index", "class_name", "selected", "first_files"]
    assert [ln[:3] for ln in lines[1:4]] == [["0", "cat", "3"], ["1", "dog", "3"], ["2", "fish", "3"]]
    assert lines[4][0] == "total" and lines[4][2] == "9" and "1 unreadable" in lines[4][3]
    # no model, no artifact
    assert not (synood_home / "artifacts" / "prompts").exists()
    assert not (synood_home / "artifacts" / "weights").exists()


# -- errors ------------------------------------------------------------------------------------


@pytest.fixture
def three_classes(tmp_path) -> Path:
    return write_tree(tmp_path / "id", {"cat": 2, "dog": 2, "fish": 2}, corrupt=False, junk=False).root


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--classes", "0:99"], ["0:99", "3 classes"]),
        (["--classes", "a:b"], ["a:b"]),
        (["--mllm", "transformers"], ["--mllm transformers"]),
        (["--mllm", "openai", "--api-model", "m"], ["--api-base"]),
        (["--mllm", "openai", "--api-base", "http://127.0.0.1:9/v1"], ["--api-model"]),
        (["--question", "What is around it?"], ["{class_name}"]),
        (["--per-class", "0"], ["--per-class"]),
        (["--select", "largest"], ["largest"]),
    ],
)
def test_usage_errors_before_any_work(invoke, synood_home, three_classes, extra, fragments):
    r = invoke("prompt", str(three_classes), "--profile", "tiny", *extra)
    assert_clean_error(r, 2, *fragments)
    assert r.stdout == ""
    assert not (synood_home / "artifacts").exists()  # nothing loaded, nothing written


def test_flat_and_missing_folders(invoke, synood_home, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        make_image("flat", i).save(flat / f"im{i}.png")
    r = invoke("prompt", str(flat), "--profile", "tiny")
    assert_clean_error(r, 2, "flat folder")
    r = invoke("prompt", str(tmp_path / "nope"), "--profile", "tiny")
    assert_clean_error(r, 2, "not found")
    assert not (synood_home / "artifacts").exists()


def test_uncached_model_offline_exit_3(invoke, synood_home, three_classes, tmp_path):
    hf_home = tmp_path / "hf-empty"
    hf_home.mkdir()
    r = invoke("prompt", str(three_classes), "--mllm", "some-org/some-model",
               env={"HF_HOME": str(hf_home), "HF_HUB_CACHE": None, "HF_HUB_OFFLINE": "1"})
    assert_clean_error(r, 3, "some-org/some-model", str(hf_home / "hub"))
    assert "hint:" in r.stderr
    assert not (synood_home / "artifacts").exists()


def test_local_folder_without_config_exit_2(invoke, three_classes, tmp_path):
    empty = tmp_path / "model-dir"
    empty.mkdir()
    r = invoke("prompt", str(three_classes), "--mllm", str(empty))
    assert_clean_error(r, 2, "config.json")


# -- openai-compatible endpoint ----------------------------------------------------------------


@contextmanager
def fake_endpoint(mode: str = "ok", pair: bool = False):
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat API.

    mode "ok": the first chat request gets 429, every later one an answer naming the image's size;
    "500": every chat request fails with 500; "401": every chat request is refused.
    With `pair`, chat requests 2 and 3 are answered only once both have arrived, so a client that
    keeps two requests in flight is seen doing so whatever the machine's load (no timing window).
    """
    state = {"chat": 0, "requests": [], "inflight": 0, "max_inflight": 0, "auth": set()}
    lock = threading.Lock()
    both_in_flight = threading.Barrier(2)

    class Handler(JsonHandler):
        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "test-vlm", "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["chat"] += 1
                n = state["chat"]
                state["requests"].append(body)
                state["auth"].add(self.headers.get("Authorization"))
                state["inflight"] += 1
                state["max_inflight"] = max(state["max_inflight"], state["inflight"])
            try:
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if mode == "500":
                    return self._send(500, {"error": "boom"})
                if mode == "401":
                    return self._send(401, {"error": "bad key"})
                if n == 1:
                    return self._send(429, {"error": "slow down"})
                if pair and n in (2, 3):
                    try:
                        both_in_flight.wait(timeout=20)  # under the client's 60 s: a serial client breaks it, max_inflight stays 1
                    except threading.BrokenBarrierError:
                        pass
                time.sleep(0.25)  # longer than a quarter of the retry backoff: requests overlap
                from PIL import Image

                content = body["messages"][0]["content"]
                text = next(c["text"] for c in content if c["type"] == "text")
                url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
                cls = re.search(r"other than the (.+?), as", text).group(1)
                with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                    w, h = im.size
                answer = f"The image shows a {cls}, grass, bench{w}x{h}."
                self._send(200, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                })
            finally:
                with lock:
                    state["inflight"] -= 1

    with serve_json(Handler) as url:
        yield url, state


def _sized_tree(root: Path) -> dict[Path, tuple[int, int]]:
    """3 classes of JPEGs whose sizes are all different, so an answer names its image."""
    sizes = {}
    k = 0
    for cname in ("cat", "dog", "fish"):
        (root / cname).mkdir(parents=True)
        for i in range(3):
            side = 40 + 2 * k
            k += 1
            p = root / cname / f"{cname}{i}.jpg"
            make_image(cname, i, size=side).save(p, format="JPEG", quality=90)
            sizes[p] = (side, side)
    return sizes


def test_openai_backend_retries_and_maps_answers(invoke, synood_home, tmp_path, no_proxy):
    from PIL import Image

    root = tmp_path / "id"
    sizes = _sized_tree(root)
    # a JPEG whose header reads but whose data is cut: high bytes per pixel, so it is selected,
    # and it fails only when decoded
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(5).randbytes(64 * 64 * 3)).save(buf, format="JPEG", quality=95)
    cut = root / "dog" / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.7)])
    with Image.open(cut) as im:
        assert im.size == (64, 64)  # the header is intact
    assert os.path.getsize(cut) / (64 * 64) > max(os.path.getsize(p) / (w * h) for p, (w, h) in sizes.items())

    with fake_endpoint("ok", pair=True) as (base, state):
        r = invoke("prompt", str(root), "--mllm", "openai", "--api-base", base, "--api-model", "test-vlm",
                   "--api-key-env", "MY_TEST_KEY", "--concurrency", "2", "--per-class", "2", "--batch-size", "8",
                   "--export", "-", env={"MY_TEST_KEY": "sekrit"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]

    # expected: top 2 per class by bytes per pixel; in dog that is cut.jpg, which fails to decode
    size_of = lambda p: (64, 64) if p == cut else sizes[p]  # noqa: E731
    expected = {c: _expected_selection(root / c, 2, size_of) for c in ("cat", "dog", "fish")}
    assert expected["dog"][0] == cut
    good = [p for c in expected.values() for p in c if p != cut]
    assert sorted(row["image_path"] for row in rows) == sorted(str(p) for p in good)
    assert len(rows) == 5
    for row in rows:
        assert set(row) == ROW_KEYS
        w, h = sizes[Path(row["image_path"])]
        assert row["context"] == f"grass, bench{w}x{h}"  # the answer about this very image, class removed
        assert row["prompt"] == f"A photo only remain grass, bench{w}x{h}."
        assert row["backend"] == "openai" and row["model"] == "test-vlm"

    # the requests: one per decodable image plus the one that got 429
    assert state["chat"] == 6
    assert state["max_inflight"] == 2
    assert state["auth"] == {"Bearer sekrit"}
    seen_sizes = []
    for body in state["requests"]:
        assert body["model"] == "test-vlm"
        content = body["messages"][0]["content"]
        text = next(c["text"] for c in content if c["type"] == "text")
        assert text in {QUESTION.format(c) for c in ("cat", "dog", "fish")}
        url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        assert url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url[len("data:image/jpeg;base64,") :]))) as im:
            assert im.format == "JPEG"
            im.load()
            seen_sizes.append(im.size)
    assert sorted(set(seen_sizes)) == sorted(sizes[p] for p in good)

    art = json.loads(invoke("store", "show", glob.glob(str(synood_home / "artifacts/prompts/*"))[0].split("/")[-1], "--format", "json").stdout)
    s = art["summary"]
    assert s["rows"] == 5 and s["unreadable"] == 1 and s["classes_covered"] == 3
    assert any(f.startswith(str(cut) + ":") for f in s["failures"]), s["failures"]


def _assert_error_line(r, code: int, *fragments: str) -> None:
    """An error met after work began: progress lines may come first, then one `error:` line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in errors[0], r.stderr
    assert "hint:" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_endpoint_not_answering_exit_3(invoke, synood_home, three_classes, no_proxy):
    base = f"http://127.0.0.1:{_free_port()}/v1"
    r = invoke("prompt", str(three_classes), "--mllm", "openai", "--api-base", base, "--api-model", "m")
    assert_clean_error(r, 3, "does not answer", base)
    assert not (synood_home / "artifacts").exists()  # before any work


def test_openai_server_errors_exit_3(invoke, synood_home, three_classes, no_proxy, monkeypatch):
    from synood_cli.models import mllm

    waits = []  # the client's back-off pauses, recorded (and still taken) instead of timed
    monkeypatch.setattr(mllm, "time", types.SimpleNamespace(sleep=lambda s: (waits.append(s), time.sleep(s))))
    with fake_endpoint("500") as (base, state):
        r = invoke("prompt", str(three_classes), "--mllm", "openai", "--api-base", base, "--api-model", "m",
                   "--retries", "1", "--classes", "0", "--per-class", "1")
    _assert_error_line(r, 3, "HTTP 500", base)
    assert state["chat"] == 2  # the first try and one retry
    assert len(waits) == 1 and 0.5 <= waits[0] <= 0.75  # one back-off of 0.5 s plus up to half of it in jitter
    rows = glob.glob(str(synood_home / "artifacts/prompts/*/prompts.jsonl"))
    assert all(Path(p).read_text() == "" for p in rows)

    with fake_endpoint("401") as (base, state):
        r = invoke("prompt", str(three_classes), "--mllm", "openai", "--api-base", base, "--api-model", "m",
                   "--retries", "3", "--classes", "0", "--per-class", "1")
    _assert_error_line(r, 3, "HTTP 401")
    assert state["chat"] == 1  # not retried


# -- resumption after a kill -------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_kill(invoke, tiny_weights, tmp_path):
    data = write_tree(tmp_path / "id", {"ant": 3, "bee": 3, "cow": 3}, corrupt=False, junk=False)
    args = ["prompt", str(data.root), "--profile", "tiny", "--per-class", "3", "--batch-size", "1"]
    home = seed_home(tiny_weights, tmp_path / "home-killed")
    # killed when it asks the MLLM about its 4th image: 3 rows appended, 6 to go
    log = tmp_path / "killed.log"
    proc, paused = start_paused("synood_cli.models.mllm:TransformersAnswerer.answer", 4, args, home, log)
    kill_when_paused(proc, paused, log)
    files = glob.glob(str(home / "artifacts" / "prompts" / "*" / "prompts.jsonl"))
    rows_file = Path(files[0])
    manifest = json.loads((rows_file.parent / "manifest.json").read_text())
    assert manifest["status"] == "partial"
    raw = rows_file.read_bytes()
    done_before = [json.loads(line) for line in raw.splitlines(keepends=True) if line.endswith(b"\n")]
    assert len(done_before) == 3 and raw.endswith(b"\n")
    # a crash in the middle of an append leaves half a line
    with open(rows_file, "ab") as f:
        f.write(b'{"image_path": "' + str(data.root).encode() + b'/ant/img')

    # rerun to completion (in-process: the imports are already paid for)
    r = invoke(*args, home=home)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "3 rows done, 6 images to go" in r.stderr
    rows = _rows(rows_file)
    assert rows[: len(done_before)] == done_before  # nothing done before the kill was lost or redone
    assert len(rows) == 9
    assert len({row["image_path"] for row in rows}) == 9
    assert json.loads((rows_file.parent / "manifest.json").read_text())["status"] == "complete"

    # the same run without a kill, in another store
    home2 = seed_home(tiny_weights, tmp_path / "home-clean")
    r2 = invoke(*args, home=home2)
    assert r2.returncode == 0, r2.stderr
    clean_files = glob.glob(str(home2 / "artifacts" / "prompts" / "*" / "prompts.jsonl"))
    assert [Path(p).parent.name for p in clean_files] == [rows_file.parent.name]  # same config, same id
    clean = _rows(Path(clean_files[0]))
    key = lambda row: row["image_path"]  # noqa: E731
    assert sorted(rows, key=key) == sorted(clean, key=key)
