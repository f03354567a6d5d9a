"""A model-using command ends as soon as it is done: no interpreter teardown after the last row.

CPython's finalisation ran full garbage collections over the ~400,000 objects torch and the HF
libraries keep, so `score` sat 1-4 s after its last row. Timing it would be flaky on a shared
machine; instead these tests watch for the teardown itself (a gc callback fires in it).
"""

from __future__ import annotations

import subprocess
import sys

from conftest import subprocess_env

PROBE = """
import atexit, gc, sys, threading, time, types
sys.modules.setdefault("torch", types.ModuleType("torch"))  # what a model-using command has loaded (without paying for it)
atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))
sys.argv = ["synood"] + {args!r}
from synood_cli.cli.app import main
if "{thread}" == "yes":  # still working when the command ends
    threading.Thread(target=lambda: (time.sleep(1.5), print("thread finished", file=sys.stderr, flush=True))).start()
done = []
gc.callbacks.append(lambda phase, info: done and phase == "start" and print("teardown gc", file=sys.stderr, flush=True))
try:
    main()
finally:  # reached only when main() returns or raises, i.e. when the interpreter is left to tear itself down
    done.append(True)
"""


def _run(tmp_path, args, thread="no"):
    env = subprocess_env(tmp_path / "home")
    p = subprocess.run([sys.executable, "-c", PROBE.format(args=args, thread=thread)], capture_output=True, text=True, env=env, timeout=120)
    return p


def test_a_finished_command_skips_the_teardown_but_runs_atexit(tmp_path):
    p = _run(tmp_path, ["profiles", "ls", "--format", "json"])
    assert p.returncode == 0, p.stderr
    assert '"tiny"' in p.stdout  # the data was flushed before the process ended
    assert "atexit ran" in p.stderr
    assert "teardown gc" not in p.stderr, p.stderr


def test_the_exit_code_survives(tmp_path):
    p = _run(tmp_path, ["profiles", "ls", "--format", "xml"])
    assert p.returncode == 2, p.stderr
    assert "atexit ran" in p.stderr and "teardown gc" not in p.stderr


def test_a_running_thread_is_waited_for(tmp_path):
    p = _run(tmp_path, ["profiles", "ls", "--format", "json"], thread="yes")
    assert p.returncode == 0, p.stderr
    assert "thread finished" in p.stderr and "atexit ran" in p.stderr
