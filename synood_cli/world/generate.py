"""Write the generated world as image folders every synood command reads.

    python -m synood_cli.world.generate OUT [--seed 0] [--train 100] [--val 50] [--ood 20]

Layout (ImageNet-like: class folders for ID, one flat folder per OOD set)::

    OUT/id/train/<kind>/<kind>_0000.png    ID kinds, training split
    OUT/id/val/<kind>/<kind>_0000.png      ID kinds, validation split (other images)
    OUT/ood/near/<kind>_0000.png           near-OOD: kinds one small detail away from an ID kind
    OUT/ood/far/<kind>_0000.png            far-OOD: other kinds
    OUT/ood/textures/<pattern>_0000.png    far-OOD: full-frame patterns, no object
    OUT/ood/empty/<context>_0000.png       far-OOD: contexts without any object
    OUT/lexicon.txt                        the world's words, for --lexicon FILE
    OUT/captions.tsv                       path TAB caption of every image
    OUT/world.json                         seed, counts and the kinds of each set

The folder is made under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from synood_cli.errors import UsageError
from synood_cli.world import shapes, spec

WORLD_VERSION = 1

# set -> (folder under OUT, class subfolders?)
LAYOUT = {
    "id_train": ("id/train", True),
    "id_val": ("id/val", True),
    "near": ("ood/near", False),
    "far": ("ood/far", False),
    "textures": ("ood/textures", False),
    "empty": ("ood/empty", False),
}


def set_counts(train: int, val: int, ood: int) -> dict[str, int]:
    """Images per label of each set (`ood` per kind, pattern or context of an OOD set)."""
    return {"id_train": train, "id_val": val, "near": ood, "far": ood, "textures": ood, "empty": ood}


def write_world(out: Path, seed: int = 0, train: int = 100, val: int = 50, ood: int = 20) -> dict:
    """Write the world under `out` (which must not exist or be empty); returns world.json's content."""
    from PIL import Image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty folder", hint="pick a new folder; the world is written whole")
    for name, n in (("train", train), ("val", val), ("ood", ood)):
        if n < 0:
            raise UsageError(f"--{name} must be >= 0, got {n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = set_counts(train, val, ood)
        captions = []
        for set_name, (folder, tree) in LAYOUT.items():
            labels = spec.SET_LABELS[set_name]
            for label, label_name in enumerate(labels):
                target = tmp / folder / label_name if tree else tmp / folder
                target.mkdir(parents=True, exist_ok=True)
                for i in range(counts[set_name]):
                    img, _, attrs = spec.set_image(seed, set_name, label, i)
                    path = target / f"{label_name}_{i:04d}.png"
                    Image.fromarray(img).save(path, compress_level=1)
                    captions.append(f"{path.relative_to(tmp).as_posix()}\t{spec.caption(attrs)}")
        (tmp / "lexicon.txt").write_text("\n".join(spec.lexicon_lines()) + "\n", encoding="utf-8")
        (tmp / "captions.tsv").write_text("\n".join(captions) + "\n", encoding="utf-8")
        meta = {
            "world_version": WORLD_VERSION, "seed": seed, "images_per_label": counts,
            "id_kinds": list(spec.ID_NAMES), "near_kinds": {k: shapes.NEAR_OF[k] for k in spec.NEAR_NAMES},
            "far_kinds": list(spec.FAR_NAMES), "textures": list(spec.SET_LABELS["textures"]),
            "contexts": list(spec.CONTEXT_NAMES), "colours": list(spec.COLOUR_NAMES),
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the synood generated world as image folders.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=100, help="images per ID kind in id/train")
    ap.add_argument("--val", type=int, default=50, help="images per ID kind in id/val")
    ap.add_argument("--ood", type=int, default=20, help="images per kind, pattern or context in each OOD set")
    a = ap.parse_args(argv)
    try:
        meta = write_world(a.out, a.seed, a.train, a.val, a.ood)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(meta["images_per_label"][s] * len(spec.SET_LABELS[s]) for s in LAYOUT)
    print(f"wrote {n} images to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
