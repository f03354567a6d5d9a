"""Shared bits of the benchmarks: device facts, timing, JPEG folders, the JSON result line."""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

import torch


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def make_jpeg_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """n JPEGs of 224-500 px (class subfolders), made once and reused."""
    from PIL import Image

    marker = root / f".done-{n}-{classes}-{seed}"
    if marker.exists():
        return root
    rng = random.Random(seed)
    for i in range(n):
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = rng.randrange(224, 501), rng.randrange(224, 501)
        img = Image.effect_noise((w, h), rng.randrange(20, 80)).convert("RGB")
        img.save(folder / f"img{i:06d}.jpg", quality=rng.randrange(70, 95))
    marker.touch()
    return root


def emit(result: dict) -> None:
    """The one JSON line every benchmark prints (stdout), with ratios rounded for reading."""
    print(json.dumps(result, sort_keys=False))
    sys.stdout.flush()
