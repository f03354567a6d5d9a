"""Shared fixtures: a temp SYNOOD_HOME for every test, real image folders, a CLI runner.

End-to-end tests run the real `synood` CLI in a subprocess with HF_HUB_OFFLINE=1, as a user would.
Torch runs on one thread, in this process and (OMP_NUM_THREADS=1) in every CLI subprocess: results
made in-process and by a subprocess are then bitwise comparable (CPU kernels may round differently
with another thread count), and on a shared 2-core machine one thread is also the faster choice.
Tests marked `wordnet` need WordNet 3.0: they skip without it, and fail without it when `CI` is set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The HF libraries read HF_HUB_OFFLINE once, when first imported; session- and module-scoped
# fixtures (tiny weights, shared pipelines) import them before any per-test setting applies.
os.environ["HF_HUB_OFFLINE"] = "1"

REAL_WORDNET = Path("/usr/share/wordnet")


def wordnet_installed() -> bool:
    return (REAL_WORDNET / "index.noun").is_file() and (REAL_WORDNET / "index.adj").is_file()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
    if not wordnet_installed() and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason=f"WordNet 3.0 is not installed in {REAL_WORDNET} (apt-get install wordnet-base)")
        for item in items:
            if item.get_closest_marker("wordnet"):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _wordnet_in_ci(request):
    """In CI (`CI` set) a missing WordNet fails the tests that need it instead of skipping them."""
    if request.node.get_closest_marker("wordnet") and not wordnet_installed():
        pytest.fail(f"CI is set and WordNet 3.0 is not installed in {REAL_WORDNET}: apt-get install wordnet-base")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def synood_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty store; nothing leaks into ~/.cache."""
    home = tmp_path / "synood-home"
    monkeypatch.setenv("SYNOOD_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))  # Parquet inputs are cached as Arrow here
    monkeypatch.delenv("SYNOOD_PROFILE", raising=False)
    monkeypatch.delenv("SYNOOD_DEVICE", raising=False)
    return home


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory) -> Path:
    """A store reused across CLI tests so tiny weights and text features are built once."""
    return tmp_path_factory.mktemp("shared-home")


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the tests' local HTTP endpoints (an OpenAI-style chat server): JSON answers, no request log."""

    def log_message(self, *a):  # keep the test output clean
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve_json(handler: type[JsonHandler]):
    """Serve `handler` on a free loopback port in a thread; yields the OpenAI-style base URL (…/v1)."""
    import threading

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to the loopback endpoints must not go through a proxy set in the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def files_builder(files: dict[str, bytes]):
    """A `Store.build` payload that writes `files` (relative path -> bytes) into the artifact folder."""

    def build(folder: Path) -> dict:
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return {"files": len(files)}

    return build


def make_image(kind: str, seed: int, size: int = 48):
    """A small RGB image that differs per (kind, seed)."""
    from PIL import Image, ImageDraw

    rng = __import__("random").Random(f"{kind}-{seed}")
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        d.rectangle([x0, y0, x0 + rng.randrange(4, size // 2), y0 + rng.randrange(4, size // 2)], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def truncated_jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    make_image("broken", seed).save(buf, format="JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


@dataclass
class Dataset:
    root: Path
    good: list[Path]
    corrupt: list[Path]
    other: list[Path]


def write_tree(root: Path, classes: dict[str, int], corrupt: bool = True, junk: bool = True) -> Dataset:
    """An ImageFolder tree: PNG and JPEG (some with upper-case extensions), one truncated JPEG, one text file."""
    good, bad, other = [], [], []
    for ci, (cls, n) in enumerate(classes.items()):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = [".png", ".jpg", ".JPG", ".png"][i % 4]
            p = folder / f"img{i}{ext}"
            make_image(cls, i).save(p, format="PNG" if ext == ".png" else "JPEG")
            good.append(p)
    first = root / next(iter(classes))
    if corrupt:
        p = first / "broken.jpg"
        p.write_bytes(truncated_jpeg_bytes())
        bad.append(p)
    if junk:
        p = first / "notes.txt"
        p.write_text("not an image")
        other.append(p)
    return Dataset(root, good, bad, other)


def write_flat(root: Path, n: int, kind: str = "ood") -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(n):
        p = root / f"{kind}{i}.png"
        make_image(kind, i).save(p)
        good.append(p)
    return Dataset(root, good, [], [])


@pytest.fixture
def image_tree(tmp_path) -> Dataset:
    return write_tree(tmp_path / "id", {"cat": 5, "dog": 5, "fish": 4})


@pytest.fixture
def ood_folder(tmp_path) -> Dataset:
    return write_flat(tmp_path / "ood", 6)


def subprocess_env(home: Path | None = None) -> dict:
    """The environment of a CLI subprocess: offline, one torch thread, unbuffered, its own store."""
    # not SYNOOD_* settings, and not a launcher's ranks (a suite run inside torchrun or srun stays one process)
    launcher = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNOOD_") and not k.startswith(launcher)}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if home is not None:
        env["SYNOOD_HOME"] = str(home)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, home: Path | None = None, env: dict | None = None, timeout: int = 300, input: str | None = None) -> Result:
    """Run `python -m synood_cli ARGS` in a subprocess, offline, with its own store."""
    full_env = subprocess_env(home)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "synood_cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout, input=input
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(synood_home):
    def _run(*args, **kw):
        kw.setdefault("home", synood_home)
        return run_cli(*args, **kw)

    return _run


@pytest.fixture
def invoke(synood_home):
    """Run the CLI in-process with Typer's CliRunner (fast: imports are paid once per session)."""
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    runner = CliRunner()

    def _invoke(*args: str, home: Path | None = None, env: dict | None = None) -> Result:
        full_env = {"SYNOOD_HOME": str(home or synood_home), "COLUMNS": "200"}
        full_env.update(env or {})
        r = runner.invoke(app, list(args), env=full_env, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return _invoke


def rows_of(text: str, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return list(csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))


def assert_clean_error(r, code: int, *fragments: str):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error:")
    for f in fragments:
        assert f in r.stderr, r.stderr


# -- shared tiny models ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A store holding only the tiny profile's weights (CLIP, LLaVA, SD inpainting), built once per run."""
    import torch

    from synood_cli.models.clip import ClipSource, load_clip
    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.models.mllm import ensure_tiny_mllm
    from synood_cli.store import Store

    home = tmp_path_factory.mktemp("tiny-weights")
    store = Store(home)
    load_clip(ClipSource("synood-tiny-clip", "tiny", 0), store, torch.device("cpu"), torch.float32)
    ensure_tiny_mllm(store, 0)
    load_inpainter(TINY_DIFFUSION, store, torch.device("cpu"), torch.float32)
    return home


def seed_home(tiny_weights: Path, home: Path) -> Path:
    """A fresh store that starts with a copy of the tiny weights (a copy: tests may damage their store)."""
    shutil.copytree(tiny_weights / "artifacts" / "weights", home / "artifacts" / "weights")
    return home


# -- kill tests ------------------------------------------------------------------------------

PAUSING = Path(__file__).resolve().parent / "pausing.py"


def start_paused(target: str, n: int, args: list[str], home: Path, log: Path, env: dict | None = None):
    """Start `synood ARGS` in a subprocess that stops for good at the Nth call of TARGET (tests/pausing.py).

    Returns the process and the marker file it writes when it stops there.
    """
    marker = log.with_suffix(".paused")
    full_env = {**subprocess_env(home), **(env or {})}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(PAUSING), target, str(n), str(marker), *args], env=full_env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return proc, marker


def kill_when_paused(proc: subprocess.Popen, marker: Path, log: Path, guard_s: float = 600.0) -> None:
    """SIGKILL the process group once the run has reached its pause point (the marker file exists).

    `guard_s` only bounds a run that hangs or never gets there; the verdict is the state reached.
    """
    deadline = time.monotonic() + guard_s
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before its pause point {marker.name}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach its pause point in {guard_s} s:\n{log.read_text()}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, log.read_text())


@contextlib.contextmanager
def switched(obj, **attrs):
    """Set attributes of a shared object (a session-scoped model) for a with-block, then put them back."""
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield obj
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


class Tripwire:
    """Unpickling this writes a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))
