"""`-o` writes the named output and nothing else (issue 21): devices and FIFOs directly, regular files
through an unpredictable temp file; a full disk or a killed run leaves no `.partial` file.

Each test plants what a hostile neighbour could (a link at the old predictable temp name) or
points `-o` at a FIFO or at a link to a device we may touch (a symlink in tmp to /dev/null or
/dev/full: a regression replaces the link, never the device), runs the real command and checks
the files' content and type and the exit code.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import threading
from pathlib import Path

import pytest

from conftest import kill_when_paused, start_paused, write_flat, write_tree

TINY = ["--profile", "tiny", "--method", "mcm"]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory, shared_home):
    """Images, class names, and the CSV `score` writes to a plain new file (the reference)."""
    from test_finetune_cli import cli_in_process

    root = tmp_path_factory.mktemp("outfiles")
    tree = write_tree(root / "id", {"cat": 1, "dog": 1}, corrupt=False, junk=False)
    ood = write_flat(root / "ood", 4)
    args = ["score", str(ood.root), *TINY, "--classnames", str(tree.root)]
    ref = root / "reference.csv"
    r = cli_in_process(shared_home, *args, "-o", str(ref))
    assert r.returncode == 0, r.stderr
    return {"home": shared_home, "args": args, "csv": ref.read_text(), "root": root}


def score(invoke, scoring, out) -> object:
    return invoke(*scoring["args"], "-o", str(out), home=scoring["home"])


def read_fifo_in_thread(fifo: Path) -> tuple[threading.Thread, list]:
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("via_link", [False, True])
def test_score_into_a_fifo_writes_through_it_and_keeps_it(invoke, scoring, tmp_path, via_link):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    out = fifo
    if via_link:
        out = tmp_path / "link.csv"
        out.symlink_to(fifo)
    t, got = read_fifo_in_thread(fifo)
    r = score(invoke, scoring, out)
    t.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert got == [scoring["csv"].encode()]
    if via_link:
        assert os.readlink(out) == str(fifo)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"pipe.csv", out.name})  # no temp file


def test_score_into_a_link_to_dev_null_keeps_the_link_and_the_device(invoke, scoring, tmp_path):
    """`score -o /dev/null` as root replaced the device with a regular file; a link in tmp shows the same path safely."""
    link = tmp_path / "null.csv"
    link.symlink_to("/dev/null")
    r = score(invoke, scoring, link)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(link) and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["null.csv"]


def test_an_open_fd_path_is_written_through_that_fd(invoke, scoring, tmp_path):
    """`-o /dev/stdout >> log`: the shell's redirection is kept (append), never replaced; a link in tmp to /proc/self/fd/N shows it safely."""
    from synood_cli.cli.outfile import open_fd_alias

    assert (open_fd_alias(Path("/dev/stdout")), open_fd_alias(Path("/dev/stderr")), open_fd_alias(Path("/dev/fd/2"))) == (1, 2, 2)
    assert open_fd_alias(tmp_path / "plain.csv") is None
    log = tmp_path / "log.csv"
    log.write_text("keep\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        link = tmp_path / "stdout.csv"
        link.symlink_to(f"/proc/self/fd/{fd}")
        r = score(invoke, scoring, link)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == "keep\n" + scoring["csv"]
    assert os.readlink(link) == f"/proc/self/fd/{fd}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "stdout.csv"]


def test_negatives_into_a_link_to_a_fifo_writes_through_it(invoke, scoring, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    words = tmp_path / "words.txt"
    words.write_text("".join(f"{w}\tnoun\n" for w in ("tree", "car", "cloud", "road", "lamp", "cup", "door", "rock")) + "blue\tadj\n")
    fifo = tmp_path / "negatives.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "negatives.tsv"
    link.symlink_to(fifo)
    t, got = read_fifo_in_thread(fifo)
    r = invoke("negatives", "--classnames", str(classes), "--profile", "tiny", "--lexicon", str(words), "-o", str(link), home=scoring["home"])
    t.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.readlink(link) == str(fifo)
    assert got and got[0].decode().endswith("\tnoun\n") and len(got[0].splitlines()) >= 1


def test_a_planted_partial_link_is_never_followed(invoke, scoring, tmp_path):
    """`score -o DIR/out.csv` wrote the CSV into the target of a planted `DIR/.out.csv.partial` link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [outside / "a.txt", outside / "b.txt"]
    for v in victims:
        v.write_text("precious")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / ".out.csv.partial").symlink_to(victims[0])  # the old fixed name
    (folder / ".out.csv.zz0123.partial").symlink_to(victims[1])  # a name the stale-temp sweep matches
    out = folder / "out.csv"
    mask = os.umask(0o002)  # a group-shared folder: mkstemp's 0600 must not stay
    try:
        r = score(invoke, scoring, out)
    finally:
        os.umask(mask)
    assert r.returncode == 0, r.stderr
    for v in victims:
        assert stat.S_ISREG(os.lstat(v).st_mode) and v.read_text() == "precious"
    assert os.readlink(folder / ".out.csv.partial") == str(victims[0])
    assert os.readlink(folder / ".out.csv.zz0123.partial") == str(victims[1])
    assert stat.S_ISREG(os.lstat(out).st_mode) and out.read_text() == scoring["csv"]
    assert (out.stat().st_mode & 0o777) == 0o664
    assert sorted(p.name for p in folder.iterdir()) == [".out.csv.partial", ".out.csv.zz0123.partial", "out.csv", "out.csv.identity.json"]


def test_a_killed_run_s_partial_file_is_removed_by_the_next_run_a_live_one_kept(invoke, scoring, tmp_path):
    """A SIGKILL (a killed torchrun rank 0) leaves `.out.csv.*.partial`; the next run removes it unless a live run holds it."""
    import fcntl

    out = tmp_path / "out.csv"
    dead = tmp_path / ".out.csv.dead01.partial"
    dead.write_text("path,score\n")
    live = tmp_path / ".out.csv.live01.partial"
    live.write_text("path,score\n")
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the writer holds it
        r = score(invoke, scoring, out)
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and live.exists()
    assert out.read_text() == scoring["csv"]


@pytest.mark.slow
def test_score_killed_midway_leaves_a_partial_that_the_next_run_removes(invoke, scoring, tmp_path):
    out = tmp_path / "out.csv"
    log = tmp_path / "run.log"
    proc, marker = start_paused("synood_cli.cli.output:RowWriter.write", 1, [*scoring["args"], "-o", str(out)], scoring["home"], log)
    kill_when_paused(proc, marker, log)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv.")]
    assert len(left) == 1 and left[0].endswith(".partial") and not out.exists()
    r = score(invoke, scoring, out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_a_full_device_is_exit_3_naming_the_output(invoke, scoring, tmp_path):
    """A real ENOSPC from the kernel (/dev/full, through a link in tmp)."""
    link = tmp_path / "full.csv"
    link.symlink_to("/dev/full")
    r = score(invoke, scoring, link)
    assert r.returncode == 3, r.stderr
    assert f"error: disk full while writing {link}" in r.stderr and "the store" not in r.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and os.path.islink(link)
    assert [p.name for p in tmp_path.iterdir()] == ["full.csv"]


@pytest.fixture
def file_size_limit():
    """Set RLIMIT_FSIZE for this process: past it a write fails with EFBIG, as on a full disk (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_file_that_cannot_grow_leaves_no_partial_and_names_the_output(invoke, scoring, tmp_path, file_size_limit):
    """A regular file on a full disk: the write fails midway (a real EFBIG from a file-size limit), the temp file goes, the message names -o."""
    out = tmp_path / "out.csv"
    limit = len(scoring["csv"]) // 2
    assert limit > 60  # the header fits, the rows do not
    score(invoke, scoring, tmp_path / "warm.csv")  # every cache the run needs is in the store: only -o grows past the limit
    (tmp_path / "warm.csv").unlink()
    (tmp_path / "warm.csv.identity.json").unlink()  # the CSV's identity sidecar
    file_size_limit(limit)
    r = score(invoke, scoring, out)
    file_size_limit(resource.RLIM_INFINITY)
    assert r.returncode == 3, r.stderr
    assert f"while writing {out}" in r.stderr and "the store" not in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
