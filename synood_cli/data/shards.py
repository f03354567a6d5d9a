"""Image shards: Parquet files written with `datasets` (an Image column of PNG bytes plus metadata).

One shard per class, written to a temp name and renamed when complete, so a shard that exists is
complete. Pass PIL images, not paths: a column of paths would store only the paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from synood_cli.store import disk_full_hint, temp_next_to


def shard_name(class_index: int) -> str:
    return f"shards/class-{class_index:05d}.parquet"


def write_shard(path: Path, rows: list[dict]) -> None:
    """Write rows (with a PIL `image`) as one Parquet file, atomically."""
    import datasets

    datasets.disable_progress_bars()
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    features = datasets.Features(
        {k: datasets.Image() if k == "image" else _feature(v[0]) for k, v in columns.items()}
    )
    ds = datasets.Dataset.from_dict(columns, features=features)
    try:
        tmp = temp_next_to(path)  # unpredictable name (mkstemp): a planted link is never written through
    except OSError as e:
        raise (disk_full_hint(e, path) or e) from None
    try:
        ds.to_parquet(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise (disk_full_hint(e) or e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _feature(value):
    import datasets

    if isinstance(value, bool):
        return datasets.Value("bool")
    if isinstance(value, int):
        return datasets.Value("int64")
    if isinstance(value, float):
        return datasets.Value("float64")
    return datasets.Value("string")


def read_shard(path: Path):
    """A `datasets.Dataset` whose `image` column decodes to PIL images."""
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_parquet(str(path), keep_in_memory=True)


def safe_folder_name(name: str, fallback: str) -> str:
    """A class name as one folder name that stays inside the export folder.

    Class names come from --classnames files and folder names: `../x`, `/etc`, `a/b`, `.` or
    control characters must not pick the folder an image is written to.
    """
    import re
    import unicodedata

    text = unicodedata.normalize("NFC", str(name))
    text = "".join(ch if ch.isprintable() else "_" for ch in text)
    text = re.sub(r"[/\\:]+", "_", text).strip().strip(".").strip()
    return text[:120] or fallback


def export_names(class_names: dict[int, str]) -> dict[int, str]:
    """Safe, unique folder names per class index (a clash gets `-<class index>` appended)."""
    out: dict[int, str] = {}
    used: set[str] = set()
    for c in sorted(class_names):
        name = safe_folder_name(class_names[c], f"class-{c:05d}")
        if name.lower() in used:
            name = f"{name}-{c:05d}"
        used.add(name.lower())
        out[c] = name
    return out


def export_image_folder(shard_paths: list[Path], to: Path, class_names: dict[int, str] | None = None) -> int:
    """Write every shard's images as PNGs into an ImageFolder tree `to/<class>/<n>.png`."""
    import pyarrow.parquet as pq

    found: dict[int, str] = {}
    for shard in shard_paths:
        t = pq.read_table(shard, columns=["class_index", "class_name"])
        for c, n in zip(t.column("class_index").to_pylist(), t.column("class_name").to_pylist()):
            found.setdefault(int(c), n or f"class-{int(c):05d}")
    found.update(class_names or {})
    folders = export_names(found)
    root = Path(os.path.realpath(to))
    count = 0
    for shard in shard_paths:
        ds = read_shard(shard)
        for i, row in enumerate(ds):
            folder = root / folders[int(row["class_index"])]
            stem = safe_folder_name(Path(str(row["source_path"])).stem, "image")
            target = folder / f"{stem}-{i:04d}.png"
            if os.path.commonpath([root, os.path.realpath(target)]) != str(root):  # a symlinked class folder
                from synood_cli.errors import UsageError

                raise UsageError(f"export target {target} resolves outside {to}", hint="export into an empty folder")
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(target)
            count += 1
    return count


def export_parquet(shard_paths: list[Path], to: Path) -> int:
    """Copy the shards into `to` as they are (Parquet with the datasets Image feature), each atomically.

    `datasets.load_dataset("parquet", data_dir=to)` or any Parquet reader takes the folder as one
    table. Returns the number of rows copied; an existing identical file is left alone (rerunnable).
    """
    import shutil

    import pyarrow.parquet as pq

    to.mkdir(parents=True, exist_ok=True)
    rows = 0
    for shard in shard_paths:
        target = to / shard.name
        rows += pq.ParquetFile(shard).metadata.num_rows
        if target.exists() and _same_bytes(target, shard):
            continue
        tmp = None
        try:
            tmp = temp_next_to(target)  # unpredictable name (mkstemp): a planted link is never written through
            shutil.copyfile(shard, tmp)
            os.replace(tmp, target)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise (disk_full_hint(e) or e) from None
    return rows


def _same_bytes(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)


def push_to_hub(shard_paths: list[Path], repo: str, private: bool = False) -> int:
    """Upload the shards as one Hugging Face dataset (the user's own token); returns the row count."""
    from synood_cli.errors import ResourceMissing
    from synood_cli.runtime import is_offline

    if is_offline():
        raise ResourceMissing(f"cannot push to {repo}: HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE (and drop --offline) to upload")
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths], split="train")
    try:
        ds.push_to_hub(repo, private=private)
    except Exception as exc:  # auth, network, permissions: one line, the user's fix is outside synood
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise ResourceMissing(f"push to {repo} failed: {first}", hint="log in with `hf auth login` and check the repo name and your write access") from None
    return len(ds)
