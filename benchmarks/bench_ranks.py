"""`synood score` on one process against torchrun with 2 ranks, on the same images (issue 15).

Both runs score the same folder of JPEGs on the tiny profile (encoder cost near zero, so this
measures the loader and the per-round gathering) with the same batch size; the 2-rank run must
print the same bytes. Reported: wall seconds of each (start-up included: it is what a user
waits for), the marginal rate over the images (N images minus a 1-batch run, start-up excluded),
and the ratios 2-rank / 1-process. On a 2-core machine the ranks share the cores their decoding
workers need, so expect little gain; on a GPU node each rank has its own GPU and cores.

    python benchmarks/bench_ranks.py                 # 3000 images
    python benchmarks/bench_ranks.py --images 1000 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import device_info, emit, make_jpeg_folder

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], home: Path) -> tuple[float, bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNOOD_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update({"SYNOOD_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, env=env, check=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "synood-bench-ranks")
    args = ap.parse_args()
    data = make_jpeg_folder(args.work / "images", args.images)
    one_batch = args.work / "one-batch"
    if not one_batch.exists():
        one_batch.mkdir(parents=True)
        for p in sorted(data.rglob("*.jpg"))[: args.batch_size]:
            (one_batch / p.name).symlink_to(p)
    classes = args.work / "classes.txt"
    classes.write_text("".join(f"class{i:03d}\n" for i in range(10)))
    home = args.work / "home"
    score = ["score", "--profile", "tiny", "--classnames", str(classes), "--batch-size", str(args.batch_size), "--format", "csv", "-q"]
    one = [sys.executable, "-m", "synood_cli"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "synood_cli"]
    run(one + score + [str(one_batch)], home)  # builds the tiny weights and the negatives cache once
    # OMP_NUM_THREADS=1 as torchrun sets it, so both runs compute the same bytes
    os.environ["OMP_NUM_THREADS"] = "1"
    t1_small, _ = run(one + score + [str(one_batch)], home)
    t1, out1 = run(one + score + [str(data)], home)
    t2_small, _ = run(two + score + [str(one_batch)], home)
    t2, out2 = run(two + score + [str(data)], home)
    n = args.images
    rate = lambda t, small: round((n - args.batch_size) / max(t - small, 1e-9), 1)  # noqa: E731
    emit({
        "benchmark": "ranks", **device_info(torch.device("cpu")), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "images": n, "batch_size": args.batch_size, "same_output": out1 == out2, "rows": out1.count(b"\n") - 1,
        "one_process": {"wall_s": round(t1, 2), "one_batch_wall_s": round(t1_small, 2), "marginal_img_s": rate(t1, t1_small)},
        "two_ranks": {"wall_s": round(t2, 2), "one_batch_wall_s": round(t2_small, 2), "marginal_img_s": rate(t2, t2_small)},
        "ratios": {"wall_two_over_one": round(t2 / t1, 2), "marginal_rate_two_over_one": round(rate(t2, t2_small) / rate(t1, t1_small), 2)},
    })


if __name__ == "__main__":
    main()
