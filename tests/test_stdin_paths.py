"""`synood score -` reads image file names from stdin with a bound, and skips what is not a readable image file (issue 21)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from conftest import make_image
from synood_cli.data.sources import read_listed_files
from synood_cli.errors import UsageError
from test_image_guard import in_process

TINY = ["--profile", "tiny"]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """The current folder holds images whose names start and end with spaces, a FIFO, a /dev/zero link, a list and a folder."""
    monkeypatch.chdir(tmp_path)
    make_image("s", 0).save(tmp_path / " lead.png")
    make_image("s", 1).save(tmp_path / "trail.png ", format="PNG")  # its extension is ".png ", as a folder scan sees it
    make_image("s", 2).save(tmp_path / "plain.png")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    (tmp_path / "list.txt").write_text("plain.png 0\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\n")
    return tmp_path


def test_names_are_kept_as_written_and_non_files_skipped(here):
    lines = ["/", "sub", "hf:org/name:test", "fifo.jpg", "zero.png", "list.txt", "missing.png", "x" * 300 + ".png",
             " lead.png", "trail.png ", "plain.png\r", "", "plain.png"]
    files, skipped = read_listed_files(io.BytesIO(("\n".join(lines) + "\n").encode()))
    assert [f.name for f in files] == [" lead.png", "plain.png", "plain.png"]
    reasons = dict(skipped)
    assert reasons["trail.png "].startswith("not an image extension")  # found as written: not stripped to a missing "trail.png"
    assert reasons["/"].startswith("a folder") and reasons["sub"].startswith("a folder")
    assert reasons["hf:org/name:test"].startswith("no such file (stdin names image files only")  # never a download
    assert reasons["fifo.jpg"] == "not a regular file: a FIFO"
    assert reasons["zero.png"] == "not a regular file: a character device"
    assert reasons["list.txt"].startswith("not an image extension")
    assert reasons["missing.png"] == "no such file"
    long_name = next(name for name in reasons if name.startswith("xxx"))
    assert reasons[long_name] == "file name too long" and len(long_name) < 230 and "(304 characters)" in long_name


def test_lines_are_read_with_a_bound(here):
    files, skipped = read_listed_files(io.BytesIO(b"a" * 10_000_000 + b"\nplain.png\n"))
    assert [f.name for f in files] == ["plain.png"]
    (shown, reason), = skipped
    assert len(shown) < 100 and reason == "stdin line 1 is 10,000,001 bytes long; no file name is over 4,096"
    with open("/dev/zero", "rb") as zero, pytest.raises(UsageError, match="line 1 holds a NUL byte"):
        read_listed_files(zero)  # not read until MemoryError
    with pytest.raises(UsageError, match="line 3 holds a NUL byte"):
        read_listed_files(io.BytesIO(b"plain.png\n\n" + b"b" * 9000 + b"\0"))
    with pytest.raises(UsageError, match="line 2 holds a NUL byte"):  # os.stat would raise ValueError on it
        read_listed_files(io.BytesIO(b"plain.png\nplain.png\0.jpg\n"))


def test_score_stdin_skips_planted_names(here, shared_home):
    listed = "/\nhf:org/name\nfifo.jpg\nzero.png\n" + "y" * 300 + ".png\n lead.png\ntrail.png \n"
    r = in_process(shared_home, "score", "-", *TINY, "--classnames", "classes.txt", "--format", "jsonl", input=listed.encode())
    assert r.returncode == 0, r.stderr
    assert sorted(Path(line.split('"path": "')[1].split('"')[0]).name for line in r.stdout.splitlines()) == [" lead.png"]
    assert "skipped fifo.jpg: not a regular file: a FIFO" in r.stderr and "skipped /: a folder" in r.stderr
    assert "skipped trail.png : not an image extension" in r.stderr
    assert "y" * 301 not in r.stderr and "file name too long" in r.stderr


@pytest.mark.parametrize("stdin, fragment", [
    (b"\0" * 4096, "holds a NUL byte"),
    (b"z" * 10_000_000 + b"\n", "is 10,000,001 bytes long"),
    (b"q" * 300 + b".png\n", "file name too long"),
])
def test_score_stdin_hostile_input_is_one_line_exit_2(here, stdin, fragment):
    r = in_process(here / "home", "score", "-", *TINY, input=stdin)
    assert r.returncode == 2, r.stderr
    assert "internal error" not in r.stderr and r.stderr.count("error:") == 1 and fragment in r.stderr
    assert len(r.stderr) < 1000, len(r.stderr)  # a long value is shortened, never echoed whole


@pytest.mark.parametrize("args", [["score", "n" * 300 + ".png"], ["evaluate", "--id", "n" * 300, "--ood", "."], ["prompt", "d/" + "n" * 5000]])
def test_a_too_long_name_as_an_argument_is_one_line_exit_2(here, args):
    r = in_process(here / "home", *args, *TINY)
    assert r.returncode == 2 and "internal error" not in r.stderr and "file name too long" in r.stderr, r.stderr
    assert len(r.stderr) < 600
