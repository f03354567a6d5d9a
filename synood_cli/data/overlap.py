"""Sets given the wrong way round: caught by looking at the folders, before any model loads (no torch here)."""

from __future__ import annotations

from pathlib import Path

from synood_cli.data.folders import ImageSet


def overlap_warnings(id_set: ImageSet, ood_sets: list[ImageSet], limit: int = 3) -> list[str]:
    """What looks wrong in how the sets were given: ID class folders that hold class folders, OOD images that are also ID images.

    `--id data` (the parent of train/ and ood/) makes `train` and `ood` two ID "classes" and
    scores the OOD images as ID too; the metrics are then meaningless without an error.
    """
    out = []
    if id_set.reader is None and id_set.classes:
        for c in id_set.classes:
            folder = Path(id_set.root) / c
            try:
                subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
            except OSError:
                continue
            if len(subs) >= 2:
                shown = ", ".join(subs[:limit]) + (", ..." if len(subs) > limit else "")
                out.append(f"ID class folder {folder} holds {len(subs)} subfolders ({shown}): did you mean --id {folder}?")
                break
    if id_set.reader is None:
        id_files = {str(Path(p).resolve()) for p in id_set.files}
        for s in ood_sets:
            if s.reader is not None:
                continue
            both = [p for p in s.files if str(Path(p).resolve()) in id_files]
            if both:
                out.append(f"{len(both)} of the {len(s.files)} images of OOD set {s.name} are also in the ID set (first: {both[0]}): "
                           "they count as ID and as OOD")
    return out
