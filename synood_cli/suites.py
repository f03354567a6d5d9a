"""Named benchmark suites: which sets, where they usually live, how many images, published numbers.

`imagenet-mos` is the ImageNet-1k table of MOS / MCM / NegLabel / SynOOD (ImageNet val as ID;
iNaturalist, SUN, Places, Textures as OOD, FPR95 with ID positive). The two OpenOOD v1.5 suites use
OpenOOD's image lists (`benchmark_imglist/imagenet/test_*.txt` over `images_largescale/`) and its
FPR95 convention (OOD positive). Each set lists the folder spellings in common use; the first that
exists under `--data-root` wins (case-insensitively), and `--ood KEY=PATH` overrides one set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from synood_cli.data.folders import ImageSet
from synood_cli.data.sources import IMGLIST_SUFFIXES, InputOptions, open_image_set
from synood_cli.errors import UsageError
from synood_cli.reporting import NullReporter, Reporter

_OPENOOD_LISTS = ("benchmark_imglist/imagenet", "")
_OPENOOD_IMAGE_ROOTS = ("images_largescale", "images_classic", "")


@dataclass(frozen=True)
class SetSpec:
    key: str
    label: str
    expected: int
    folders: tuple[str, ...] = ()
    imglist: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    id: SetSpec
    ood: tuple[SetSpec, ...]
    fpr_key: str  # which FPR95 convention the papers report for this suite (docs/method.md, "Metrics")
    references: dict[str, dict[str, tuple[float | None, float | None]]] = field(default_factory=dict)
    reference_note: str = ""
    # methods whose published numbers come from test-time adaptation (the scores saw the test stream)
    test_time_adaptive: frozenset[str] = frozenset()

    def ood_keys(self) -> list[str]:
        return [s.key for s in self.ood]


_IMAGENET_VAL = SetSpec(
    "imagenet", "ImageNet-1k val", 50_000,
    folders=("imagenet/val", "ILSVRC2012/val", "ILSVRC-2012/val", "id_data/ILSVRC-2012/val", "id_data/imagenet/val",
             "imagenet_1k/val", "images_largescale/imagenet_1k/val", "ILSVRC/Data/CLS-LOC/val", "val"),
)
_OPENOOD_ID = SetSpec("imagenet", "ImageNet-1k test", 45_000, folders=(), imglist="test_imagenet.txt")

SUITES: dict[str, Suite] = {
    "imagenet-mos": Suite(
        "imagenet-mos",
        "ImageNet-1k OOD benchmark (MOS / NegLabel / SynOOD)",
        _IMAGENET_VAL,
        (
            SetSpec("inaturalist", "iNaturalist", 10_000, ("iNaturalist", "ood_data/iNaturalist", "iNaturalist/images")),
            SetSpec("sun", "SUN", 10_000, ("SUN", "ood_data/SUN", "SUN/images")),
            SetSpec("places", "Places", 10_000, ("Places", "Places365", "ood_data/Places", "Places/images")),
            SetSpec("textures", "Textures", 5_640, ("dtd/images", "Textures", "ood_data/dtd/images", "Textures/images", "dtd")),
        ),
        fpr_key="fpr95",
        references={
            # MCM (Ming et al. 2022), CLIP ViT-B/16; the averages are docs/method.md "Metrics"'s
            "MCM": {"inaturalist": (30.91, 94.61), "sun": (37.59, 92.57), "places": (44.69, 89.77),
                    "textures": (57.77, 86.11), "average": (42.74, 90.77)},
            "NegLabel": {"inaturalist": (1.91, 99.49), "sun": (20.53, 95.49), "places": (35.59, 91.64),
                         "textures": (43.56, 90.22), "average": (25.40, 94.21)},
            "NegRefine": {"average": (21.17, 94.83)},
            "CSP": {"average": (17.51, 95.76)},
            # the log in OpenOOD-VLM's scripts/ood/adaneg/imagenet.sh (its own metric code)
            "AdaNeg": {"average": (17.95, 96.70)},
            "SynOOD": {"inaturalist": (1.57, None), "sun": (20.46, None), "places": (None, 97.37),
                       "textures": (None, 95.29), "average": (14.27, 97.01)},
        },
        reference_note="published numbers, CLIP ViT-B/16; – where a paper gives no per-set value we could verify; "
        "AdaNeg's from its repository's log, test-time adaptive (its scores adapt to the test stream)",
        test_time_adaptive=frozenset({"AdaNeg"}),
    ),
    "openood-imagenet-near": Suite(
        "openood-imagenet-near",
        "OpenOOD v1.5 ImageNet-1k near-OOD",
        _OPENOOD_ID,
        (
            SetSpec("ssb_hard", "SSB-hard", 49_000, ("images_largescale/ssb_hard", "ssb_hard"), "test_ssb_hard.txt"),
            SetSpec("ninco", "NINCO", 5_879, ("images_largescale/ninco", "ninco", "NINCO"), "test_ninco.txt"),
        ),
        fpr_key="fpr95_ood_positive",
        references={"SynOOD": {"average": (71.68, 77.55)}},
        reference_note="published SynOOD averages, CLIP ViT-B/16; FPR95 in OpenOOD v1.5's convention",
    ),
    "openood-imagenet-far": Suite(
        "openood-imagenet-far",
        "OpenOOD v1.5 ImageNet-1k far-OOD",
        _OPENOOD_ID,
        (
            SetSpec("inaturalist", "iNaturalist", 10_000, ("images_largescale/inaturalist", "inaturalist", "iNaturalist"), "test_inaturalist.txt"),
            SetSpec("textures", "Textures", 5_160, ("images_classic/texture", "texture", "textures"), "test_textures.txt"),
            SetSpec("openimage_o", "OpenImage-O", 15_869, ("images_largescale/openimage_o", "openimage_o"), "test_openimage_o.txt"),
        ),
        fpr_key="fpr95_ood_positive",
        references={"SynOOD": {"average": (17.11, 96.21)}},
        reference_note="published SynOOD averages, CLIP ViT-B/16; FPR95 in OpenOOD v1.5's convention",
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        import difflib

        close = difflib.get_close_matches(name, list(SUITES), n=1)
        raise UsageError(
            f"unknown benchmark {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
            hint="benchmarks: " + ", ".join(SUITES),
        )
    return SUITES[name]


@dataclass
class FoundSet:
    """One set of a suite after looking for it: where, how many images, or why not."""

    spec: SetSpec
    role: str  # "id" or "ood"
    source: str | None
    tried: list[str]
    image_set: ImageSet | None = None
    error: str | None = None

    @property
    def found(self) -> int:
        return len(self.image_set.files) if self.image_set is not None else 0

    @property
    def status(self) -> str:
        if self.image_set is None:
            return "missing"
        return "ok" if self.found == self.spec.expected else "count differs"


def find_ci(root: Path, rel: str) -> Path | None:
    """`root/rel` matching each component case-insensitively (first exact, then any case)."""
    here = root
    for part in Path(rel).parts:
        exact = here / part
        if exact.exists():
            here = exact
            continue
        try:
            match = sorted(e for e in os.listdir(here) if e.lower() == part.lower())
        except OSError:
            return None
        if not match:
            return None
        here = here / match[0]
    return here


def _locate(spec: SetSpec, root: Path) -> tuple[str | None, Path | None, list[str]]:
    """(spec to open, image root for a list, paths tried) for one set under the data root."""
    tried: list[str] = []
    if spec.imglist:
        for folder in _OPENOOD_LISTS:
            rel = f"{folder}/{spec.imglist}" if folder else spec.imglist
            tried.append(str(root / rel))
            found = find_ci(root, rel)
            if found is not None and found.is_file():
                return str(found), _image_root(found, root), tried
    for rel in spec.folders:
        tried.append(str(root / rel))
        found = find_ci(root, rel)
        if found is not None and found.is_dir():
            return str(found), None, tried
    return None, None, tried


def _image_root(imglist: Path, root: Path) -> Path:
    """The folder an OpenOOD list's paths are relative to: the first candidate holding its first file."""
    from synood_cli.data.imglist import first_listed_path

    first = first_listed_path(imglist)
    for sub in _OPENOOD_IMAGE_ROOTS:
        base = root / sub if sub else root
        if first and (base / first).exists():
            return base
    return root / _OPENOOD_IMAGE_ROOTS[0] if (root / _OPENOOD_IMAGE_ROOTS[0]).is_dir() else root


def resolve_suite(suite: Suite, data_root: str | os.PathLike, options: InputOptions | None = None,
                  overrides: dict[str, str] | None = None) -> list[FoundSet]:
    """Find and list every set of a suite (ID first); nothing is decoded and no model is loaded.

    `overrides` maps a set key (or "id") to a spec of its own (any input form). A set that cannot be
    found or read comes back with `image_set=None` and the reason in `error`.
    """
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data-root {data_root} is not a folder", hint="pass the folder that holds the benchmark's datasets")
    overrides = dict(overrides or {})
    known = {"id", *suite.ood_keys()}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"{suite.name} has no set {unknown[0]!r}", hint="its sets: " + ", ".join(sorted(known)))
    opts = options or InputOptions()
    out = []
    for role, spec in [("id", suite.id)] + [("ood", s) for s in suite.ood]:
        key = "id" if role == "id" else spec.key
        set_opts = opts if role == "id" else replace(opts, labels=None, label_column=None, classnames=None)
        if key in overrides:
            source, image_root, tried = overrides[key], None, [overrides[key]]
            listed = Path(source).expanduser() if Path(source).expanduser().exists() else find_ci(root, source)
            if listed is not None and listed.is_file() and listed.suffix.lower() in IMGLIST_SUFFIXES:
                source, image_root = str(listed), _image_root(listed, root)  # like the suite's own lists
        else:
            source, image_root, tried = _locate(spec, root)
        if source is None:
            out.append(FoundSet(spec, role, None, tried, error="not found"))
            continue
        if image_root is not None:
            set_opts = replace(set_opts, data_root=image_root)
        try:
            image_set = open_image_set(source, name=spec.key, options=set_opts)
        except UsageError as exc:
            out.append(FoundSet(spec, role, source, tried, error=exc.message))
            continue
        if role == "id":
            from synood_cli.data.imagenet import as_imagenet_1k

            image_set = as_imagenet_1k(image_set)
        out.append(FoundSet(spec, role, source, tried, image_set))
    return out


def select_sets(suite: Suite, found: list[FoundSet], allow_partial: bool = False, reporter: Reporter = NullReporter()):
    """(ID set, OOD sets) to evaluate; a missing ID set, or a missing OOD set without `allow_partial`, is refused.

    A count that differs from the benchmark's is a warning, not an error: a few unreadable files
    should not stop a run, and the input table shows the numbers.
    """
    for f in found:
        if f.status == "count differs":
            reporter.warn(f"{f.spec.label}: found {f.found:,} images in {f.source}, the benchmark has {f.spec.expected:,}")
    id_found, oods = found[0], found[1:]
    missing = [f for f in oods if f.image_set is None]
    if id_found.image_set is None:
        raise UsageError(
            f"{suite.name}: the ID set ({id_found.spec.label}) {_why(id_found)}",
            hint="put it at one of those paths under --data-root, or pass --id SPEC",
        )
    if missing and not allow_partial:
        raise UsageError(
            f"{suite.name}: {len(missing)} of {len(oods)} OOD sets missing; {missing[0].spec.label} {_why(missing[0])}",
            hint="put the sets under --data-root, replace one with --ood KEY=SPEC, or pass --allow-partial to evaluate the sets found",
        )
    ood_sets = [f.image_set for f in oods if f.image_set is not None]
    if not ood_sets:
        raise UsageError(f"{suite.name}: none of its OOD sets were found", hint="check --data-root")
    if missing:
        reporter.warn(f"--allow-partial: evaluating {len(ood_sets)} of {len(oods)} OOD sets (missing: {', '.join(f.spec.label for f in missing)})")
    return id_found.image_set, ood_sets


def _why(f: FoundSet) -> str:
    if f.source is None:
        return "was not found (looked for " + ", ".join(f.tried) + ")"
    return f"at {f.source} could not be read: {f.error}"
