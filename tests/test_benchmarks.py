"""Keep the benchmark scripts alive: each runs on the tiny models and prints one JSON line.

The scripts run from this checkout (PYTHONPATH is the repository root), not from whatever copy of
synood the interpreter would find otherwise; a first check proves that in the scripts' own setting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def bench_env(tmp_path: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "SYNOOD_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path),
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_benchmarks_import_this_checkout(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import synood_cli; print(synood_cli.__file__)"],
                          capture_output=True, text=True, cwd=BENCH, env=bench_env(tmp_path), check=True)
    assert Path(proc.stdout.strip()).resolve() == ROOT / "synood_cli" / "__init__.py"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args",
    [
        ("bench_score.py", ["--images", "48", "--negatives", "300"]),
        ("bench_synthesize.py", ["--images", "2", "--batch-size", "2"]),
        ("bench_finetune.py", ["--images", "32"]),
    ],
)
def test_benchmark_runs_tiny(script, args, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--tiny", "--device", "cpu", *args],
        capture_output=True, text=True, timeout=240, cwd=BENCH, env=bench_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == script.removeprefix("bench_").removesuffix(".py")
    assert result["device"] == "cpu" and "torch" in result
    ratio = result.get("ratio") or result["end_to_end"]["ratio"]
    assert ratio > 0
