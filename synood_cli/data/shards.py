"""Image shards: Parquet files written with `datasets` (an Image column of PNG bytes plus metadata).

One shard per class, written to a temp name and renamed when complete, so a shard that exists is
complete. Pass PIL images, not paths: a column of paths would store only the paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from synood_cli.store import disk_full_hint


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


def export_image_folder(shard_paths: list[Path], to: Path, class_names: dict[int, str] | None = None) -> int:
    """Write every shard's images as PNGs into an ImageFolder tree `to/<class>/<n>.png`."""
    count = 0
    for shard in shard_paths:
        ds = read_shard(shard)
        for i, row in enumerate(ds):
            c = int(row["class_index"])
            folder = to / (class_names or {}).get(c, row.get("class_name") or f"class-{c:05d}")
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{Path(row['source_path']).stem}-{i:04d}.png")
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
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(shard, tmp)
            os.replace(tmp, target)
        except OSError as e:
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
