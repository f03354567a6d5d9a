"""Shared fixtures: a temp SYNOOD_HOME for every test, real image folders, a CLI runner.

End-to-end tests run the real `synood` CLI in a subprocess with HF_HUB_OFFLINE=1, as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


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


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, home: Path | None = None, env: dict | None = None, timeout: int = 300, input: str | None = None) -> Result:
    """Run `python -m synood_cli ARGS` in a subprocess, offline, with its own store."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNOOD_")}
    full_env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    if home is not None:
        full_env["SYNOOD_HOME"] = str(home)
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
