"""Image files are read only when they are regular files, under a pixel cap, with their name on every warning (issue 21)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest

from conftest import Result, make_image

TINY = ["--profile", "tiny"]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height (a few hundred bytes: PIL sees the size before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4)) + chunk(b"IEND", b""))
    return path


def palette_png(path: Path) -> Path:
    """A palette PNG with byte transparency: PIL warns on convert("RGB") without naming the file."""
    from PIL import Image

    im = Image.new("P", (16, 16))
    im.putpalette([i % 256 for i in range(768)])
    im.save(path, "PNG", transparency=bytes(range(256)))
    return path


def in_process(home: Path, *args: str, env: dict | None = None, input: bytes | None = None) -> Result:
    from typer.testing import CliRunner

    from synood_cli.cli.app import app

    # SYNOOD_MAX_PIXELS listed (unset unless given) so that CliRunner restores it: --max-pixels sets it in os.environ
    full = {"SYNOOD_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "SYNOOD_DEVICE": "cpu", "SYNOOD_MAX_PIXELS": None, **(env or {})}
    r = CliRunner().invoke(app, list(args), env=full, input=input, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture
def planted(tmp_path) -> Path:
    """A flat folder: two good images, a 10000x10000 PNG header, a FIFO and a link to /dev/zero named as images, a palette PNG."""
    root = tmp_path / "planted"
    root.mkdir()
    for i in range(2):
        make_image("good", i).save(root / f"good{i}.png")
    png_header(root / "bomb.png", 10000, 10000)
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.png")
    palette_png(root / "palette.png")
    return root


def test_regular_files_only(planted):
    from synood_cli.data.guard import NotRegularFile, read_regular

    assert read_regular(planted / "good0.png")[:4] == b"\x89PNG"
    for name, kind in (("fifo.jpg", "FIFO"), ("zero.png", "character device"), ("", "folder")):
        with pytest.raises(NotRegularFile, match=kind):  # the FIFO has no writer: a plain open() would block here
            read_regular(planted / name)


def test_pixel_cap_refuses_from_the_header(planted, monkeypatch):
    from synood_cli.data.decoding import decode_rgb
    from synood_cli.data.guard import ImageTooLarge, parse_max_pixels

    with pytest.raises(ImageTooLarge, match="10000x10000 = 100,000,000 pixels, over the limit of 89,478,485"):
        decode_rgb((planted / "bomb.png").read_bytes())
    monkeypatch.setenv("SYNOOD_MAX_PIXELS", "2000")  # 48 x 48 = 2304 px
    with pytest.raises(ImageTooLarge, match="48x48"):
        decode_rgb((planted / "good0.png").read_bytes())
    monkeypatch.setenv("SYNOOD_MAX_PIXELS", "2304")
    assert tuple(decode_rgb((planted / "good0.png").read_bytes()).shape) == (3, 48, 48)
    assert parse_max_pixels("1e8") == 100_000_000 and parse_max_pixels(None) == 89_478_485
    for bad in ("0", "-5", "nan", "1.5", "lots", "1e30"):
        with pytest.raises(Exception, match="positive whole number"):
            parse_max_pixels(bad)


@pytest.mark.parametrize("exact", [False, True])
def test_loader_reports_each_planted_file_by_name(planted, exact, recwarn):
    from synood_cli.data.loading import DecodedImageDataset, ImageFileDataset

    names = ["good0.png", "bomb.png", "fifo.jpg", "zero.png", "palette.png"]
    paths = [str(planted / n) for n in names]
    if exact:
        import torchvision.transforms as T

        ds = ImageFileDataset(paths, T.Compose([T.Resize((8, 8)), T.PILToTensor()]))
    else:
        ds = DecodedImageDataset(paths)
    errors = {n: ds[i][2] for i, n in enumerate(names)}
    assert errors["good0.png"] is None and errors["palette.png"] is None
    assert errors["bomb.png"].startswith("image too large: 10000x10000")
    assert errors["fifo.jpg"] == "not a regular file: a FIFO"
    assert errors["zero.png"] == "not a regular file: a character device"
    messages = [str(w.message) for w in recwarn]
    assert any(m.startswith(f"{planted / 'palette.png'}: Palette images") for m in messages), messages
    assert not any("decompression bomb" in m for m in messages), messages  # refused by name instead


def test_score_skips_planted_files_and_names_them(planted, shared_home):
    """`score FOLDER` with a FIFO, a /dev/zero link and a 100 MP PNG header: the run ends, each one named."""
    (planted / "classes.txt").write_text("a\nb\n")
    r = in_process(shared_home, "score", str(planted), *TINY, "--classnames", str(planted / "classes.txt"), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    scored = sorted(Path(line.split('"path": "')[1].split('"')[0]).name for line in r.stdout.splitlines())
    assert scored == ["good0.png", "good1.png", "palette.png"]
    assert f"{planted / 'bomb.png'}: image too large: 10000x10000" in r.stderr
    assert f"{planted / 'fifo.jpg'}: not a regular file: a FIFO" in r.stderr
    assert f"{planted / 'palette.png'}: Palette images" in r.stderr
    assert "DecompressionBomb" not in r.stderr and "3 unreadable" in r.stderr
    # the cap is a global option, also accepted after the command; a bad value is exit 2 before any work
    r = in_process(shared_home, "score", str(planted / "good0.png"), *TINY, "--classnames", str(planted / "classes.txt"), "--max-pixels", "100")
    assert r.returncode == 0 and "48x48 = 2,304 pixels, over the limit of 100 " in r.stderr and "1 unreadable" in r.stderr, r.stderr
    r = in_process(shared_home, "score", str(planted), *TINY, env={"SYNOOD_MAX_PIXELS": "many"})
    assert r.returncode == 2 and "SYNOOD_MAX_PIXELS must be a positive whole number" in r.stderr, r.stderr
