"""A small generated dataset for `synood demo` and the tests: shapes as ID, textures as OOD.

Drawn with PIL from a seed (no downloads): three ID classes of simple shapes (a `train` split for
the pipeline and an `id` split for evaluation), two OOD sets (stripes, noise), and one truncated
JPEG among the ID images so that the demo shows how an unreadable file is reported and counted.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from synood_cli.store import Artifact, Store

ID_CLASSES = ("circle", "square", "triangle")
OOD_SETS = ("stripes", "noise")


def _shape(kind: str, rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randrange(140, 256) for _ in range(3))
    fg = tuple(rng.randrange(0, 120) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.randrange(size // 5, size // 3)
    cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img


def _texture(kind: str, rng: random.Random, size: int):
    from PIL import Image

    if kind == "noise":
        return Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    period = rng.randrange(4, 16)
    a, b = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
    img = Image.new("RGB", (size, size))
    img.putdata([a if ((x + y * rng.choice((0, 1))) // period) % 2 else b for y in range(size) for x in range(size)])
    return img


def write_demo_images(root: Path, per_class: int = 12, size: int = 64, seed: int = 0) -> dict:
    """Write train/<class>/*.jpg, id/<class>/*.{png,jpg} and ood/<set>/*.png under `root`; return counts."""
    rng = random.Random(seed)
    counts = {}
    for cls in ID_CLASSES:
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            _shape(cls, rng, size).save(folder / f"{cls}_train_{i:03d}.jpg", quality=rng.randrange(60, 95))
        folder = root / "id" / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            _shape(cls, rng, size).save(folder / f"{cls}_{i:03d}.{ext}")
        counts[cls] = per_class
    for name in OOD_SETS:
        folder = root / "ood" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            _texture(name, rng, size).save(folder / f"{name}_{i:03d}.png")
        counts[name] = per_class
    buf = io.BytesIO()
    _shape("circle", rng, size).save(buf, format="JPEG")
    (root / "id" / "circle" / "circle_broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    counts["corrupt"] = 1
    return counts


def ensure_demo_dataset(store: Store, per_class: int = 12, seed: int = 0, name: str = "demo-data") -> Artifact:
    config = {"generator": "shapes-vs-textures", "version": 2, "per_class": per_class, "seed": seed}
    return store.build("dataset", config, lambda folder: write_demo_images(folder, per_class, seed=seed), name=name)


# -- the generated world (`synood demo`'s default) -------------------------------------------------

WORLD_OOD_SETS = ("near", "far", "textures", "empty")
WORLD_DEMO_COUNTS = {"train": 4, "val": 15, "ood": 10}  # images per ID kind / per OOD kind, pattern or context


def write_world_demo(root: Path, seed: int = 0, train: int = 4, val: int = 15, ood: int = 10) -> dict:
    """The world (docs/world.md) under root/world, plus one truncated PNG among the ID validation images.

    The broken file shows how an unreadable image is reported and counted, as in the tiny demo.
    """
    from synood_cli.world.generate import write_world

    meta = write_world(root / "world", seed=seed, train=train, val=val, ood=ood)
    good = (root / "world" / "id" / "val" / "circle" / "circle_0000.png").read_bytes()
    (root / "world" / "id" / "val" / "circle" / "circle_broken.png").write_bytes(good[: len(good) // 2])
    return {"world": meta["images_per_label"], "seed": seed, "corrupt": 1}


def ensure_world_demo_dataset(store: Store, seed: int = 0, name: str = "demo-world") -> Artifact:
    from synood_cli.world.generate import WORLD_VERSION

    config = {"generator": "world", "world_version": WORLD_VERSION, "seed": seed, **WORLD_DEMO_COUNTS}
    return store.build("dataset", config, lambda folder: write_world_demo(folder, seed, **WORLD_DEMO_COUNTS), name=name)
