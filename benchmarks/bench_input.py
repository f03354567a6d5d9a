"""Input pipeline: how close scoring gets to the speed of decoding JPEGs (issue 14).

Measured on the same 500x375 JPEGs (quality 90) in one run:
- per core (one thread, in process): decode only (PIL; torchvision's decode_jpeg), today's path
  (PIL decode + open_clip's PIL preprocess at ViT-B/16's 224 px: the baseline, kept behind
  `--exact-preprocess`), and the new path's CPU work (decode_jpeg + the batched torch
  resize/crop/normalise, which runs here only because the encoder is on the CPU); the new path
  at the tiny model's 64 px with and without the reduced-scale JPEG decode (data/decoding.py: a
  500x375 JPEG is decoded at 1/2 for 64 px, at full size for 224 px);
- per core on large photos (`--large-images` each of 2016x1512 and 4032x3024, 224 px), where the
  reduced-scale decode applies at 224 px (1/2 and 1/4): decode only, today's path, the new path
  with full and reduced decodes;
- `synood score` end to end on the tiny profile (encoder cost near zero), new path and
  `--exact-preprocess`, as the marginal rate: (N - 1) images / (time for N - time for 1), so
  start-up is left out; CPU seconds per image include the decoding worker processes. On a
  loaded machine start-up varies by seconds and this difference is noisy, so the same scoring
  loop is also timed in process (`score_tiny_in_process`: `iter_scores`, start-up excluded;
  also with the reduced-scale decode off, `new_full_decode`, the path before it).
Ratios: end-to-end img/s over the one-core PIL decode-only rate (target >= 1.0 on 2 cores) and
CPU time per image over decode-only (target <= 1.3).

    python benchmarks/bench_input.py               # 800 images
    python benchmarks/bench_input.py --images 200
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import device_info, emit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # measure this checkout's synood_cli, in process and in the subprocesses


def make_photos(root: Path, n: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """n photo-like JPEGs (quality 90, 500x375 unless `size`): smooth gradients, shapes, mild
    noise; made once."""
    from PIL import Image, ImageDraw

    w, h = size
    marker = root / f".done-{n}-{seed}"
    files = [root / f"img{i:05d}.jpg" for i in range(n)]
    if marker.exists():
        return files
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    k = w / 500  # shapes scale with the picture
    for i, f in enumerate(files):
        chans = [rng.uniform(40, 215) + 60 * np.sin(rng.uniform(1, 8) * (rng.uniform(-1, 1) * xx / w + rng.uniform(-1, 1) * yy / h)) for _ in range(3)]
        arr = np.stack(chans, -1) + np.random.default_rng(i).normal(0, 6, (h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(rng.randrange(3, 12)):
            x, y = rng.randrange(w), rng.randrange(h)
            d.ellipse([x, y, x + k * rng.randrange(10, 200), y + k * rng.randrange(10, 200)], fill=tuple(rng.randrange(256) for _ in range(3)))
        img.save(f, quality=90)
    marker.touch()
    return files


def per_core(fns: dict, files, passes: int = 3) -> dict:
    """img/s and CPU ms per image of each fn over the files, one thread, after a warm-up pass:
    the best of `passes`, the fns taking turns (on this shared machine the CPU time of one
    and the same decode varied 0.70-1.0 ms between runs a minute apart; taking turns spreads
    that over all of them)."""
    for f in files:  # page cache
        f.read_bytes()
    best: dict = {}
    for fn in fns.values():
        fn(files[: min(16, len(files))])
    for _ in range(passes):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(files)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall)
    return {name: {"img_s": round(len(files) / wall, 1), "cpu_ms_per_image": round(1000 * cpu / len(files), 3)} for name, (cpu, wall) in best.items()}


def pil_decode(files):
    from PIL import Image

    for f in files:
        with Image.open(f) as im:
            im.load()
            im.convert("RGB")


def tv_decode(files):
    from torchvision.io import ImageReadMode, decode_jpeg

    for f in files:
        decode_jpeg(torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)


def today_path(preprocess):
    from PIL import Image

    def run(files):
        for f in files:
            with Image.open(f) as im:
                im.load()
                preprocess(im.convert("RGB"))

    return run


def new_path(prep, batch: int = 64, draft: bool = False):
    """What a worker and the main process do per image with the encoder on the CPU; `draft`:
    large JPEGs decoded at a reduced DCT scale, as the loader does by default."""
    from synood_cli.data.decoding import decode_rgb, decode_rgb_reduced

    def one(f):
        if draft:
            image, source = decode_rgb_reduced(f.read_bytes(), prep.draft_min_side)
            return prep.resize_crop_one(image, source)
        return prep.resize_crop_one(decode_rgb(f.read_bytes()))

    def run(files):
        for s in range(0, len(files), batch):
            prep([one(f) for f in files[s : s + batch]], torch.device("cpu"))

    return run


def score_run(args: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s of the process and its workers) of one `synood score` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "synood_cli", "score", *args], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"synood score failed: {proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(folder: Path, one: Path, n: int, extra: list[str], env: dict, repeat: int) -> dict:
    """Marginal rate of `synood score` over n images: best of `repeat` (n-image run minus 1-image run)."""
    common = ["--profile", "tiny", "-o", os.devnull, *extra]
    best = None
    for _ in range(repeat):
        w1, c1 = score_run([str(one), *common], env)
        wn, cn = score_run([str(folder), *common], env)
        if wn - w1 <= 0.05 * wn:  # start-up noise swamped the scoring time: not a measurement
            continue
        cand = ((n - 1) / (wn - w1), 1000 * (cn - c1) / (n - 1), w1, wn)
        best = cand if best is None or cand[0] > best[0] else best
    if best is None:
        return {"img_s": None, "cpu_ms_per_image": None, "note": "start-up varied more than the scoring took; rerun on an idle machine"}
    return {"img_s": round(best[0], 1), "cpu_ms_per_image": round(best[1], 3), "one_image_wall_s": round(best[2], 2), "n_images_wall_s": round(best[3], 2)}


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the loader's worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def in_process(files: list[Path], workers: int, repeat: int) -> dict:
    """`iter_scores` (what `synood score` runs per batch) on the tiny profile, start-up excluded.

    Fast path, fast path without the reduced-scale JPEG decode and --exact-preprocess
    alternate; the best of `repeat` passes is kept.
    """
    from synood_cli.data.folders import imagenet_classnames
    from synood_cli.scoring import ScoringConfig, iter_scores, prepare_scoring

    cfg = ScoringConfig(home=Path(tempfile.mkdtemp(prefix="synood-bench-input-lib-")), profile="tiny", num_workers=workers)
    setup = prepare_scoring(cfg, imagenet_classnames())
    list(iter_scores(setup, files[:64]))  # warm-up
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, exact, draft in (("new", False, True), ("new_full_decode", False, False), ("exact_preprocess", True, True)):
            setup.clip.exact_preprocess, setup.clip.jpeg_draft = exact, draft
            c0, t0 = cpu_seconds(), time.perf_counter()
            n = sum(len(b.paths) for b in iter_scores(setup, files))
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            if name not in best or n / wall > best[name][0]:
                best[name] = (n / wall, 1000 * cpu / n)
    setup.clip.exact_preprocess, setup.clip.jpeg_draft = False, True
    return {k: {"img_s": round(v[0], 1), "cpu_ms_per_image": round(v[1], 3)} for k, v in best.items()}


def _ratio(a, b):
    return None if a is None or b is None else round(a / b, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--repeat", type=int, default=2, help="end-to-end pairs of runs; the best is kept")
    ap.add_argument("--num-workers", type=int, default=None, help="passed to synood score [default: its own]")
    ap.add_argument("--large-images", type=int, default=16, help="photos of each large size (per-core figures at 224 px)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "synood-bench-photos")
    args = ap.parse_args()

    from open_clip import image_transform

    from synood_cli.data.loading import available_cpus, default_num_workers
    from synood_cli.data.preprocess import TensorPreprocess

    files = make_photos(args.data / "all", args.images)
    one = args.data / "one" / files[0].name
    one.parent.mkdir(parents=True, exist_ok=True)
    one.write_bytes(files[0].read_bytes())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ref224 = image_transform(224, is_train=False)
    prep224 = TensorPreprocess.from_transform(ref224)
    prep64 = TensorPreprocess.from_transform(image_transform(64, is_train=False))
    core = per_core({
        "decode_only_pil": pil_decode,
        "decode_only_torchvision": tv_decode,
        "today_pil_preprocess_224": today_path(ref224),
        "new_decode_plus_batched_preprocess_224": new_path(prep224),
        "new_64_full_decode": new_path(prep64),
        "new_64_reduced_decode": new_path(prep64, draft=True),
    }, files)
    large = {}
    for w, h in ((2016, 1512), (4032, 3024)) if args.large_images > 0 else ():
        big = make_photos(args.data / f"large-{w}x{h}", args.large_images, size=(w, h))
        large[f"{w}x{h}"] = per_core({
            "decode_only_pil": pil_decode,
            "decode_only_torchvision": tv_decode,
            "today_pil_preprocess_224": today_path(ref224),
            "new_224_full_decode": new_path(prep224),
            "new_224_reduced_decode": new_path(prep224, draft=True),
        }, big)
    torch.set_num_threads(threads)

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1",
           "SYNOOD_HOME": tempfile.mkdtemp(prefix="synood-bench-input-home-")}
    workers = [] if args.num_workers is None else ["--num-workers", str(args.num_workers)]
    score_run([str(one), "--profile", "tiny", "-o", os.devnull], env)  # builds the tiny weights and caches the negatives
    e2e = {
        "new": end_to_end(args.data / "all", one, args.images, workers, env, args.repeat),
        "exact_preprocess": end_to_end(args.data / "all", one, args.images, workers + ["--exact-preprocess"], env, args.repeat),
    }
    lib = in_process(files, args.num_workers if args.num_workers is not None else default_num_workers(), args.repeat)
    dec = core["decode_only_pil"]
    emit({
        "benchmark": "input",
        **device_info(torch.device("cpu")),
        "cores": available_cpus(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "images": args.images,
        "image": "500x375 JPEG q90",
        "workers": args.num_workers if args.num_workers is not None else default_num_workers(),
        "per_core": core,
        "per_core_large_224": large,
        "score_tiny_end_to_end": e2e,
        "score_tiny_in_process": lib,
        "ratios": {k: v for k, v in {
            "in_process_new_over_decode_only_1core": round(lib["new"]["img_s"] / dec["img_s"], 2),
            "in_process_cpu_per_image_new_over_decode_only": round(lib["new"]["cpu_ms_per_image"] / dec["cpu_ms_per_image"], 2),
            "in_process_exact_over_decode_only_1core": round(lib["exact_preprocess"]["img_s"] / dec["img_s"], 2),
            "in_process_cpu_per_image_exact_over_decode_only": round(lib["exact_preprocess"]["cpu_ms_per_image"] / dec["cpu_ms_per_image"], 2),
            "e2e_new_over_decode_only_1core": _ratio(e2e["new"]["img_s"], dec["img_s"]),
            "e2e_exact_over_decode_only_1core": _ratio(e2e["exact_preprocess"]["img_s"], dec["img_s"]),
            "e2e_cpu_per_image_new_over_decode_only": _ratio(e2e["new"]["cpu_ms_per_image"], dec["cpu_ms_per_image"]),
            "e2e_cpu_per_image_exact_over_decode_only": _ratio(e2e["exact_preprocess"]["cpu_ms_per_image"], dec["cpu_ms_per_image"]),
            "per_core_new_over_today_224": _ratio(core["new_decode_plus_batched_preprocess_224"]["img_s"], core["today_pil_preprocess_224"]["img_s"]),
            "in_process_new_over_exact": _ratio(lib["new"]["img_s"], lib["exact_preprocess"]["img_s"]),
            "in_process_new_over_new_full_decode": _ratio(lib["new"]["img_s"], lib["new_full_decode"]["img_s"]),
            "per_core_64_reduced_over_full_decode": _ratio(core["new_64_reduced_decode"]["img_s"], core["new_64_full_decode"]["img_s"]),
            **{f"large_{k}_{what}": v for k, fig in large.items() for what, v in {
                "reduced_over_full_decode": _ratio(fig["new_224_reduced_decode"]["img_s"], fig["new_224_full_decode"]["img_s"]),
                "reduced_over_today": _ratio(fig["new_224_reduced_decode"]["img_s"], fig["today_pil_preprocess_224"]["img_s"]),
                "reduced_over_decode_only_pil": _ratio(fig["new_224_reduced_decode"]["img_s"], fig["decode_only_pil"]["img_s"]),
                "cpu_reduced_over_decode_only_pil": _ratio(fig["new_224_reduced_decode"]["cpu_ms_per_image"], fig["decode_only_pil"]["cpu_ms_per_image"]),
            }.items()},
        }.items() if v is not None},
    })


if __name__ == "__main__":
    main()
