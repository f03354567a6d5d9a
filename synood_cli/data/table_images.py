"""Images stored as rows of a table: a Hugging Face dataset, a `save_to_disk` folder or Parquet files.

Every source becomes a memory-mapped `datasets.Dataset` (nothing is loaded into RAM), whose image
column is read as encoded bytes and decoded by our loader, so an undecodable row is reported and
counted like a corrupt file instead of aborting the run. Rows are named `SOURCE#ROW` in outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from synood_cli.data.folders import ImageSet, imagenet_classnames
from synood_cli.errors import ResourceMissing, UsageError, first_line

HF_PREFIX = "hf:"


class TableImages:
    """Row i's encoded image bytes (picklable, so DataLoader workers can read rows too)."""

    def __init__(self, dataset, column: str):
        self.dataset = dataset
        self.column = column

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, i: int) -> bytes:
        value = self.dataset[i][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                with open(value["path"], "rb") as f:
                    return f.read()
            raise ValueError("the row's image has neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise ValueError(f"the image column holds {type(value).__name__}, not encoded image bytes")


def is_table_source(spec: str) -> bool:
    """True for `hf:...`, a .parquet file, a folder of .parquet files, or a `save_to_disk` folder."""
    if spec.startswith(HF_PREFIX):
        return True
    p = Path(spec).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".parquet"
    if p.is_dir():
        return _saved_kind(p) is not None or bool(_parquet_files(p))
    return False


def _saved_kind(folder: Path) -> str | None:
    if (folder / "dataset_dict.json").is_file():
        return "dict"
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return "dataset"
    return None


def _parquet_files(folder: Path) -> list[Path]:
    """Parquet files under a folder that holds no image files (else it is an image folder)."""
    from synood_cli.data.folders import is_image_file

    parquet = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            if f.lower().endswith(".parquet"):
                parquet.append(Path(dirpath, f))
            elif is_image_file(f):
                return []  # an image folder: stop at the first image, not after walking a million files
    return sorted(parquet)


def load_table(spec: str):
    """(datasets.Dataset, display source, layout) for a table spec; every failure is one clear error."""
    import datasets

    datasets.disable_progress_bars()
    if spec.startswith(HF_PREFIX):
        return _load_hub(spec[len(HF_PREFIX):])
    p = Path(spec).expanduser()
    kind = _saved_kind(p) if p.is_dir() else None
    if kind == "dict":
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise UsageError(
            f"{spec} holds a DatasetDict with splits {', '.join(splits) or '(none)'}",
            hint=f"pass one split's folder, e.g. {p / (splits[0] if splits else 'test')}",
        )
    try:
        source = str(p.resolve())  # rows are named SOURCE#ROW in artifacts that later stages re-read
        if kind == "dataset":
            return datasets.load_from_disk(str(p)), source, "save_to_disk folder"
        files = [p] if p.is_file() else _parquet_files(p)
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        return ds, source, f"parquet ({len(files)} file{'s' if len(files) != 1 else ''})"
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise UsageError(f"cannot read {spec} as a dataset: {first_line(exc, 300)}", hint="check that the files are complete Parquet / save_to_disk output") from None


def _load_hub(name_split: str):
    import datasets

    name, _, split = name_split.partition(":")
    if not name:
        raise UsageError("hf: needs a dataset name, e.g. hf:ORG/NAME:validation")
    from synood_cli.runtime import is_offline

    offline = is_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        if not split:
            splits = datasets.get_dataset_split_names(name)
            if len(splits) != 1:
                raise UsageError(f"hf:{name} has splits {', '.join(splits)}", hint=f"name one: hf:{name}:{splits[0] if splits else 'test'}")
            split = splits[0]
        ds = datasets.load_dataset(name, split=split)
    except UsageError:
        raise
    except ValueError as exc:  # unknown split
        raise UsageError(f"hf:{name}: {first_line(exc, 300)}", hint=f"name a split that exists: hf:{name}:SPLIT") from None
    except Exception as exc:  # not found, gated, no network, not cached offline
        where = " (offline: only datasets already in the HF cache load)" if offline else ""
        raise ResourceMissing(
            f"cannot load Hugging Face dataset {name!r}{where}: {first_line(exc, 300)}",
            hint="check the name; for a gated dataset run `hf auth login`; offline, load it once online or pass a local folder",
        ) from None
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - load_dataset with split returns a Dataset
        raise UsageError(f"hf:{name} gave several splits", hint=f"name one: hf:{name}:SPLIT")
    return ds, f"hf:{name}:{split}", "hf dataset"


def _image_column(ds, wanted: str | None, source: str) -> str:
    import datasets

    features = ds.features
    if wanted:
        if wanted not in features:
            raise UsageError(f"{source} has no column {wanted!r}", hint=f"columns: {', '.join(features)}")
        return wanted
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if len(images) == 1:
        return images[0]
    # Parquet written without datasets' metadata: a binary column, or a {bytes, path} struct
    binary = [k for k, f in features.items() if (isinstance(f, datasets.Value) and f.dtype in ("binary", "large_binary"))
              or (isinstance(f, dict) and "bytes" in f)]
    candidates = images or binary
    if len(candidates) == 1:
        return candidates[0]
    raise UsageError(
        f"{source}: cannot tell which column holds the images ({', '.join(candidates) or 'no image column'})",
        hint=f"pass --image-column NAME; columns: {', '.join(features)}",
    )


def _labels(ds, wanted: str | None, source: str, class_names: list[str] | None):
    """(labels or None, class names, note) from a ClassLabel column or --label-column."""
    import datasets

    features = ds.features
    if wanted is None:
        found = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
        if len(found) != 1:
            return None, list(class_names or []), ""
        wanted = found[0]
    elif wanted not in features:
        raise UsageError(f"{source} has no column {wanted!r}", hint=f"columns: {', '.join(features)}")
    feature = features[wanted]
    values = list(ds.select_columns([wanted])[wanted])
    if not all(isinstance(v, int) for v in values):
        raise UsageError(f"{source}: label column {wanted!r} is not integer class indices", hint="pass an integer (or ClassLabel) column as --label-column")
    if any(v < 0 for v in values):
        return None, list(class_names or []), f", {wanted} has -1 (unlabelled)"
    top = max(values) if values else -1
    if class_names is not None:
        names = list(class_names)
        note = ""
    elif isinstance(feature, datasets.ClassLabel):
        # "tench, Tinca tinca" -> "tench": the first synonym reads best in a CLIP prompt
        names = [n.split(",")[0].strip().replace("_", " ") for n in feature.names]
        note = f", classes from {wanted}"
    elif top < 1000:
        names = imagenet_classnames()
        note = f", {wanted} as ImageNet-1k labels"
    else:
        raise UsageError(f"{source}: label {top} needs class names", hint="pass --classnames FILE")
    if top >= len(names):
        raise UsageError(f"{source}: label {top} but only {len(names)} class names", hint="pass --classnames with a name per class")
    return values, names, note


def read_table_set(spec: str, name: str | None = None, image_column: str | None = None,
                   label_column: str | None = None, class_names: list[str] | None = None) -> ImageSet:
    """An `ImageSet` over a table's rows: `files` are `SOURCE#ROW` names, `reader` gives the bytes."""
    import datasets

    ds, source, layout = load_table(spec)
    column = _image_column(ds, image_column, source)
    labels, names, note = _labels(ds, label_column, source, class_names)
    images = ds.select_columns([column])
    if isinstance(images.features[column], datasets.Image):
        images = images.cast_column(column, datasets.Image(decode=False))
    if len(images) == 0:
        raise UsageError(f"{source} has no rows")
    default_name = spec[len(HF_PREFIX):].replace("/", "-").replace(":", "-") if spec.startswith(HF_PREFIX) else Path(spec).stem
    return ImageSet(
        name=name or default_name,
        root=Path(source),
        files=[Path(f"{source}#{i}") for i in range(len(images))],
        labels=labels,
        classes=[str(i) for i in range(len(names))] if labels is not None else [],
        class_names=names,
        layout=layout + note,
        reader=TableImages(images, column),
    )
