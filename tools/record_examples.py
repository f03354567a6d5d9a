#!/usr/bin/env python3
"""Re-record examples.md: rerun every `$` command of its ```console blocks and rewrite the outputs.

A dev tool (not shipped, not run in CI): examples.md shows real sessions, so after a change of
output (ids, help, tables) it is re-recorded on the final code with one command:

    /work/main/.venv/bin/python tools/record_examples.py            # rewrites ./examples.md

It runs this checkout's code, wipes and rebuilds /tmp/ex and /tmp/ex6 (the `fresh:` folders), and
took 11 min on the shared 2-core machine (26 min under heavy load: the synthesis steps dominate).
The file is replaced only at the end; the exit codes that changed are listed on stderr.

Each ```console block is preceded by a `<!-- record ... -->` comment (GitHub does not render it)
that says how to run it; prose and the commands themselves are left as they are, only each
command's output and its `[exit N]` line are replaced. Directives, one per line:

    not run               leave the block as it is (real weights, SLURM, ...)
    cwd: DIR              where the commands run (made if missing)
    home: DIR             SYNOOD_HOME for the block
    fresh: DIR [DIR...]   removed before the block (only under /tmp/)
    sample-data: DIR      DIR/data/{train,val,ood,unknown} and DIR/classnames.txt, made with the
                          test suite's generator (tests/conftest.py), as the header describes
    file: NAME            write cwd/NAME from the block's recorded `$ cat NAME` output first
    setup: COMMAND        run before the block (output hidden unless it fails; then the tool stops)

Commands run with bash in that cwd, `synood`/`python`/`torchrun` from the venv's bin first on
PATH, this checkout's code (PYTHONPATH=<repo root>), HF_HUB_OFFLINE=1, PYTHONUNBUFFERED=1, no
COLUMNS/LINES (tables then take their full width, as without a terminal), stdout and stderr into
one pipe (the order a user sees), carriage returns shown as line breaks (progress bars).
Every command gets an `[exit N]` line; blank lines after it are kept. The header's
"Recorded on YYYY-MM-DD" takes today's date (UTC).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_RE = re.compile(r"^\[exit (-?\d+)\]$")
HEREDOC_RE = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
RECORDED_ON_RE = re.compile(r"Recorded on \d{4}-\d{2}-\d{2}")  # the header's date, kept current
# Settings that would change what the commands print or where they run.
DROP_ENV = ("COLUMNS", "LINES", "JUPYTER_COLUMNS", "JUPYTER_LINES", "FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE",
            "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_DATASETS_CACHE")
DROP_PREFIX = ("SYNOOD_", "SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_")

SAMPLE_DATA = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import write_flat, write_tree
root = Path(sys.argv[2])
write_tree(root / "data/train", {"cat": 6, "dog": 6, "fish": 6})
write_tree(root / "data/val", {"cat": 4, "dog": 4, "fish": 4}, corrupt=False, junk=False)
write_flat(root / "data/ood", 8, "ood")
write_flat(root / "data/unknown", 5, "unk")
(root / "classnames.txt").write_text("cat\\ndog\\nfish\\n")
"""


class RecordError(Exception):
    pass


@dataclass
class Entry:
    """One `$ command`: its lines as written, its recorded output, the blank lines after it."""

    command: list[str]
    output: list[str]
    exit_code: int | None
    trailer: list[str]

    def shell(self) -> str:
        return "\n".join(self.command)[2:]


@dataclass
class Directives:
    line: int
    not_run: bool = False
    cwd: str | None = None
    home: str | None = None
    fresh: list[str] = field(default_factory=list)
    sample_data: str | None = None
    files: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)


def parse_directives(text: str, line: int) -> Directives:
    d = Directives(line)
    for raw in text.splitlines():
        item = raw.strip()
        if not item:
            continue
        if item == "not run":
            d.not_run = True
            continue
        key, sep, value = item.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise RecordError(f"line {line}: record directive {item!r} is not 'key: value' or 'not run'")
        if key == "cwd":
            d.cwd = value
        elif key == "home":
            d.home = value
        elif key == "fresh":
            d.fresh += value.split()
        elif key == "sample-data":
            d.sample_data = value
        elif key == "file":
            d.files.append(value)
        elif key == "setup":
            d.setup.append(value)
        else:
            raise RecordError(f"line {line}: unknown record directive {key!r}")
    if not d.not_run and (d.cwd is None or d.home is None):
        raise RecordError(f"line {line}: a record comment needs cwd: and home: (or 'not run')")
    for p in d.fresh + [d.sample_data or "/tmp/x"]:
        if not os.path.normpath(p).startswith("/tmp/") or ".." in Path(p).parts:
            raise RecordError(f"line {line}: {p!r}: fresh and sample-data folders must lie under /tmp/")
    return d


def parse_block(lines: list[str], first_line: int) -> tuple[list[str], list[Entry]]:
    """Split a console block's body into the lines before the first `$` and its entries."""
    head: list[str] = []
    entries: list[Entry] = []
    i = 0
    while i < len(lines) and not lines[i].startswith("$ "):
        head.append(lines[i])
        i += 1
    while i < len(lines):
        command = [lines[i]]
        i += 1
        m = HEREDOC_RE.search(command[0])
        if m:
            while i < len(lines) and lines[i].strip() != m.group(2):
                command.append(lines[i])
                i += 1
            if i == len(lines):
                raise RecordError(f"line {first_line + len(command)}: heredoc {m.group(2)} never ends")
            command.append(lines[i])
            i += 1
        else:
            while command[-1].endswith("\\") and i < len(lines):
                command.append(lines[i])
                i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            body.append(lines[i])
            i += 1
        exit_code, trailer = None, []
        for j, text in enumerate(body):
            m = EXIT_RE.match(text)
            if m:
                exit_code, trailer, body = int(m.group(1)), body[j + 1:], body[:j]
                break
        else:
            while body and not body[-1].strip():
                trailer.insert(0, body.pop())
        entries.append(Entry(command, body, exit_code, trailer))
    return head, entries


def base_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV and not k.startswith(DROP_PREFIX)}
    env.update({
        "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run(command: str, cwd: Path, env: dict[str, str], timeout: int) -> tuple[list[str], int]:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    text = proc.stdout.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    return (text.split("\n") if text else []), proc.returncode


def prepare(d: Directives, entries: list[Entry], env: dict[str, str], venv: Path, timeout: int) -> Path:
    for p in d.fresh:
        shutil.rmtree(p, ignore_errors=True)
    cwd = Path(d.cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    if d.sample_data:
        subprocess.run([str(venv / "bin" / "python"), "-c", SAMPLE_DATA, str(REPO / "tests"), d.sample_data],
                       env=env, check=True)
    for name in d.files:
        shown = [e for e in entries if e.shell() == f"cat {name}"]
        if not shown:
            raise RecordError(f"line {d.line}: file: {name} needs a `$ cat {name}` in the block")
        (cwd / name).write_text("\n".join(shown[0].output) + "\n")
    for command in d.setup:
        out, code = run(command, cwd, env, timeout)
        if code != 0:
            raise RecordError(f"line {d.line}: setup `{command}` exited {code}:\n" + "\n".join(out))
    return cwd


def record(text: str, venv: Path, timeout: int, log) -> tuple[str, list[str]]:
    """The re-recorded text, and notes on exit codes that changed."""
    hf_cache = tempfile.mkdtemp(prefix="record-examples-hf-")
    try:
        return _record(text.split("\n"), hf_cache, venv, timeout, log)
    finally:
        shutil.rmtree(hf_cache, ignore_errors=True)


def _record(lines: list[str], hf_cache: str, venv: Path, timeout: int, log) -> tuple[str, list[str]]:
    out: list[str] = []
    notes: list[str] = []
    pending: Directives | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- record"):
            start = i
            chunk = [line[len("<!-- record"):]]
            while "-->" not in chunk[-1]:
                i += 1
                if i == len(lines):
                    raise RecordError(f"line {start + 1}: record comment never closes")
                chunk.append(lines[i])
            chunk[-1] = chunk[-1][: chunk[-1].index("-->")]
            if pending is not None:
                raise RecordError(f"line {start + 1}: two record comments before one console block")
            pending = parse_directives("\n".join(chunk).lstrip(":"), start + 1)
            out += lines[start:i + 1]
            i += 1
            continue
        if line.strip() != "```console":
            out.append(RECORDED_ON_RE.sub(f"Recorded on {time.strftime('%Y-%m-%d', time.gmtime())}", line, count=1))
            i += 1
            continue
        fence_line = i + 1
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise RecordError(f"line {fence_line}: console block never closes")
        if pending is None:
            raise RecordError(f"line {fence_line}: console block without a <!-- record ... --> comment before it")
        d, pending = pending, None
        body = lines[i + 1:end]
        out.append(line)
        if d.not_run:
            out += body
        else:
            head, entries = parse_block(body, fence_line + 1)
            env = base_env(venv)
            env["SYNOOD_HOME"] = d.home
            env["HF_DATASETS_CACHE"] = hf_cache  # fresh per recording: `datasets` prints what it generates
            started = time.monotonic()
            cwd = prepare(d, entries, env, venv, timeout)
            out += head
            for e in entries:
                t0 = time.monotonic()
                new_output, code = run(e.shell(), cwd, env, timeout)
                log(f"  [exit {code}] {time.monotonic() - t0:5.1f} s  {e.command[0][:100]}")
                if e.exit_code is not None and code != e.exit_code:
                    notes.append(f"line {fence_line}: exit {e.exit_code} -> {code}: {e.command[0]}")
                out += e.command + new_output + [f"[exit {code}]"] + e.trailer
            log(f"block at line {fence_line}: {len(entries)} commands in {time.monotonic() - started:.1f} s")
        out.append(lines[end])
        i = end + 1
    if pending is not None:
        raise RecordError(f"line {pending.line}: record comment with no console block after it")
    return "\n".join(out), notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default=str(REPO / "examples.md"), help="the file to re-record (default: examples.md)")
    ap.add_argument("-o", "--output", help="write here instead of rewriting PATH")
    ap.add_argument("--venv", default="/work/main/.venv", help="the venv whose bin/ holds synood, python, torchrun")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per command")
    args = ap.parse_args(argv)
    venv = Path(args.venv)
    if not (venv / "bin" / "synood").is_file():
        print(f"error: no synood in {venv / 'bin'}", file=sys.stderr)
        return 2
    env = base_env(venv)
    where, _ = run("command -v synood; python -c 'import synood_cli; print(synood_cli.__file__)'", REPO, env, 60)
    print(f"recording with {where[0]} and {where[-1]}", file=sys.stderr)
    if not where[-1].startswith(str(REPO)):
        print(f"error: synood_cli does not come from {REPO}", file=sys.stderr)
        return 1
    path = Path(args.path)
    started = time.monotonic()
    try:
        text, notes = record(path.read_text(), venv, args.timeout, lambda s: print(s, file=sys.stderr, flush=True))
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    target = Path(args.output) if args.output else path
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    for note in notes:
        print(f"changed: {note}", file=sys.stderr)
    print(f"wrote {target} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
