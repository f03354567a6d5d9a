"""Run the synood CLI with one function made to stop for good at its Nth call: kill tests kill on a state.

    python tests/pausing.py MODULE:ATTR N MARKER synood-args...

The Nth call of MODULE.ATTR (a function or `Class.method`) writes MARKER and then waits to be
killed (under torchrun: on every rank, or on rank $PAUSE_RANK only; with $PAUSE_SECONDS it
only waits that long and goes on: a slow call), so a test that waits for MARKER and sends SIGKILL always kills the run at the same point
(for example after two of three class shards are written), however busy the machine is. Everything
before that call is the real CLI's work; nothing is faked.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import sys
import time
from pathlib import Path


def pause_at(target: str, n: int, marker: Path) -> None:
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, last = attr.split(".")
    for p in parents:
        owner = getattr(owner, p)
    original = getattr(owner, last)
    calls = 0

    @functools.wraps(original)
    def paused(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, marker)
            if os.environ.get("PAUSE_SECONDS"):  # a slow call, not a dead one: wait, then go on
                time.sleep(float(os.environ["PAUSE_SECONDS"]))
                return original(*args, **kwargs)
            time.sleep(600)  # the test kills us long before; a lost child still ends
            os._exit(99)
        return original(*args, **kwargs)

    setattr(owner, last, paused)


def main() -> None:
    target, n, marker, *args = sys.argv[1:]
    # under torchrun, PAUSE_RANK=R pauses only rank R (the others run on: a hung rank)
    if os.environ.get("PAUSE_RANK") in (None, os.environ.get("RANK", "0")):
        pause_at(target, int(n), Path(marker))
    sys.argv = ["synood", *args]
    runpy.run_module("synood_cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
