"""`synood serve` against `synood score` on the same images, in the same run, on loopback only.

A bounded load run: a fixed number of one-image requests at 1 and at 16 concurrent clients
(it stops by itself), images/s and p50/p99 latency; the same images through `synood score`,
once as one call over the whole folder and a few times as one call per image (what a service
built on the CLI would pay per request). Prints one JSON line with the device.

    python benchmarks/bench_serve.py --tiny                # the tiny profile, seconds on a CPU
    python benchmarks/bench_serve.py --tiny --requests 400 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import device_info, emit, make_jpeg_folder

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "synood_cli", *args]


def post(url: str, name: str, data: bytes) -> tuple[float, dict]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        out = json.loads(r.read())
    return time.perf_counter() - t0, out


def load_run(url: str, blobs: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    """`requests` one-image requests from `clients` threads; latency per request, images/s over the run."""
    work = [blobs[i % len(blobs)] for i in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda nb: post(url, *nb), work))
    wall = time.perf_counter() - t0
    lat = sorted(s for s, _ in results)
    assert all(r["scored"] == 1 for _, r in results), "a request was not scored"
    return {"clients": clients, "requests": requests, "img_s": round(requests / wall, 1),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1), "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny profile (offline, random weights)")
    ap.add_argument("--profile", default=None, help="a profile other than tiny (its weights must be cached)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256, help="one-image requests per concurrency level")
    ap.add_argument("--score-calls", type=int, default=3, help="one-image `synood score` calls timed")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "synood-bench-jpegs")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from synood_cli.runtime import resolve_device

    device = resolve_device(args.device)
    profile = "tiny" if args.tiny or args.profile is None else args.profile
    work = Path(tempfile.mkdtemp(prefix="synood-bench-serve-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNOOD_HOME": os.environ.get("SYNOOD_HOME", str(work / "home"))}
    folder = make_jpeg_folder(args.data / f"serve-{args.images}", args.images)
    files = sorted(folder.rglob("*.jpg"))
    classes = work / "classes.txt"
    classes.write_text("".join(f"class{i:03d}\n" for i in range(10)))
    common = ["--profile", profile, "--classnames", str(classes), "--device", args.device]

    # 1. synood score: one call over the folder (the first call also builds the store: not timed), then one call per image
    subprocess.run(cli("score", str(files[0]), *common, "-q"), env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cli("score", str(folder), *common, "-q", "--format", "jsonl"), env=env, check=True, capture_output=True, text=True)
    folder_s = time.perf_counter() - t0
    cli_scores = {Path(r["path"]).name: r["score"] for r in map(json.loads, proc.stdout.splitlines())}
    one_call = []
    for p in files[: args.score_calls]:
        t0 = time.perf_counter()
        subprocess.run(cli("score", str(p), *common, "-q"), env=env, check=True, capture_output=True)
        one_call.append(time.perf_counter() - t0)

    # 2. synood serve on 127.0.0.1, a free port
    log = work / "serve.log"
    t0 = time.perf_counter()
    server = subprocess.Popen(cli("serve", *common, "--port", "0", "--max-batch-size", str(args.max_batch_size),
                                  "--max-wait-ms", str(args.max_wait_ms), "--max-images", "64"),
                              env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        url = None
        while url is None:
            if server.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit(f"serve did not start:\n{log.read_text()}")
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else time.sleep(0.05)
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit(f"serve did not get ready:\n{log.read_text()}")
            time.sleep(0.05)
        startup = time.perf_counter() - t0
        blobs = [(p.name, p.read_bytes()) for p in files]
        served = {}
        for name, data in blobs:  # warm the path for every image once; the scores are compared with the CLI's
            served[name] = post(url + "/score", name, data)[1]["results"][0]["score"]
        runs = [load_run(url + "/score", blobs, args.requests, c) for c in (1, 16)]
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    batches = re.search(r"^synood_batch_size_count (\S+)$", metrics, re.M)
    images = re.search(r"^synood_batch_size_sum (\S+)$", metrics, re.M)
    diff = max(abs(served[k] - cli_scores[k]) for k in cli_scores)
    folder_img_s = len(files) / folder_s
    emit({
        "benchmark": "serve",
        **device_info(device),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "profile": profile,
        "images": len(files),
        "score_cli": {"folder_wall_s": round(folder_s, 2), "folder_img_s": round(folder_img_s, 1),
                      "one_image_call_s": round(statistics.median(one_call), 2)},
        "serve": {"startup_to_ready_s": round(startup, 2), "runs": runs,
                  "mean_batch_size": round(float(images.group(1)) / float(batches.group(1)), 2), "sigterm_exit": code},
        "ratio": round(runs[1]["img_s"] / folder_img_s, 2),  # serve at 16 clients / score over the whole folder
        "ratio_per_request": round(statistics.median(one_call) / (runs[0]["p50_ms"] / 1000), 1),  # one score call / one request (1 client, p50)
        "max_abs_score_diff": diff,
    })


if __name__ == "__main__":
    main()
