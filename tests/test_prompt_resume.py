"""A resumed `synood prompt` run asks the MLLM only about images it has no outcome for.

Images recorded in failures.jsonl (an empty answer, an unreadable header) are outcomes too: a
rerun must not ask about them again, nor append their failure rows a second time. The MLLM is a
real HTTP server on 127.0.0.1 that records what it was asked and answers by image size.
"""

from __future__ import annotations

import glob
import io
import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import JsonHandler, make_image, serve_json

CAT, DOG = (40, 42, 44), (46, 48)  # image sides, one per image
EMPTY = 42  # this cat's answer names only the cat: cleaned, nothing is left (an "empty answer" failure)


@contextmanager
def endpoint(state: dict):
    """Answers "grass, bench{side}", or only the class for side EMPTY; HTTP 401 (not retried) for sides in state["refuse"]."""

    class Handler(JsonHandler):
        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

        def do_POST(self):
            import base64

            from PIL import Image

            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            url = next(c["image_url"]["url"] for c in body["messages"][0]["content"] if c["type"] == "image_url")
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                side = im.size[0]
            state["asked"].append(side)
            if side in state["refuse"]:
                return self._send(401, {"error": "refused"})
            answer = "The image shows a cat." if side == EMPTY else f"grass, bench{side}"
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

    with serve_json(Handler) as url:
        yield url


def _paths(file: Path) -> list[str]:
    return [json.loads(line)["image_path"] for line in file.read_text().splitlines()] if file.exists() else []


def test_a_resumed_run_does_not_ask_again_about_recorded_failures(invoke, synood_home, tmp_path, no_proxy):
    root = tmp_path / "id"
    for cls, sides in (("cat", CAT), ("dog", DOG)):
        (root / cls).mkdir(parents=True)
        for i, side in enumerate(sides):
            make_image(cls, i, size=side).save(root / cls / f"{cls}{i}.jpg", format="JPEG", quality=90)
    garbage = root / "cat" / "zz.jpg"
    garbage.write_bytes(b"not a jpeg at all")  # its header cannot be read: recorded as unreadable when selected
    state = {"asked": [], "refuse": set(DOG)}
    with endpoint(state) as base:
        args = ("prompt", str(root), "--mllm", "openai", "--api-base", base, "--api-model", "m", "--per-class", "3",
                "--batch-size", "1", "--concurrency", "1", "--retries", "0")
        # run 1: the three cats answered (one empty), then the endpoint refuses the first dog: exit 3, partial
        r = invoke(*args)
        assert r.returncode == 3, r.stderr
        assert sorted(state["asked"]) == [*CAT, DOG[0]]
        folder = Path(glob.glob(str(synood_home / "artifacts/prompts/*"))[0])
        fails = folder / "failures.jsonl"
        empty = str(root / "cat" / "cat1.jpg")  # side 42
        assert sorted(_paths(fails)) == sorted([str(garbage), empty])
        assert len(_paths(folder / "prompts.jsonl")) == 2

        # run 2, still refused: only the first dog is asked again; no failure row is added twice
        state["asked"].clear()
        r = invoke(*args)
        assert r.returncode == 3, r.stderr
        assert state["asked"] == [DOG[0]]
        assert sorted(_paths(fails)) == sorted([str(garbage), empty])

        # run 3, answered: the two dogs only; the artifact is complete with each failure once
        state["asked"].clear()
        state["refuse"] = set()
        r = invoke(*args)
        assert r.returncode == 0, r.stderr
        assert sorted(state["asked"]) == list(DOG)
    assert sorted(_paths(fails)) == sorted([str(garbage), empty])
    assert len(_paths(folder / "prompts.jsonl")) == 4
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["summary"]["empty_answers"] == 1 and manifest["summary"]["unreadable"] == 1
