"""Options and small helpers shared by the model-using commands (score, evaluate, negatives, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli.flags import METHODS, POOLS, PROFILES, choices, listed
from synood_cli.errors import UsageError

PROFILE = typer.Option("default", "--profile", "-p", envvar="SYNOOD_PROFILE", help="Preset: tiny (offline, random), world (offline, trained on the generated world), default or paper; see `synood profiles ls`.", **choices(PROFILES, "<profile>"))
# score/evaluate: a checkpoint brings its own profile, so the default is decided after --checkpoint is read
SCORE_PROFILE = typer.Option(None, "--profile", "-p", envvar="SYNOOD_PROFILE", help="Preset: tiny (offline, random), world (offline, trained on the generated world), default or paper \\[default: the checkpoint's, else default]; see `synood profiles ls`.", **choices(PROFILES, "<profile>"))
METHOD = typer.Option(None, "--method", "-m", help=f"Score method: {listed(METHODS)} \\[default: synood with --checkpoint, else neglabel]. Each method's scores live on their own scale. adaneg is transductive: an image's score depends on the images scored before it (and on its batch), so it is opt-in and refused under several ranks.", **choices(METHODS, "<method>"))
CHECKPOINT = typer.Option(None, "--checkpoint", help="A `synood finetune` checkpoint (name, id or folder): scores with the SynOOD method.")
MODEL = typer.Option(None, "--model", help="open_clip name (ViT-B-16), hf:ORG/REPO, local:DIR, tiny or world \\[default: from the profile].")
PRETRAINED = typer.Option(None, "--pretrained", help="open_clip tag (openai) or a .safetensors file \\[default: from the profile].")
CLASSNAMES = typer.Option(None, "--classnames", help="ID class names: a text file (one per line, in folder order) or a class-folder tree.")
LEXICON = typer.Option(None, "--lexicon", help="Negative-label candidates: neglabel (NegLabel's WordNet pool), wordnet, wordnet-full, basic, or a word-list file \\[default: from the profile].")
GROUPS = typer.Option(None, "--groups", help="NegLabel groups G \\[default: 100; tiny profile 10].")
POOL = typer.Option(
    None, "--pool", help="Negative candidates' pool: neglabel (the lexicon's words) or csp (CSP's conjugated pool: each adjective with a seeded superclass word, "
    "\"gooey landscape\", texts as template ensembles; the superclass draw uses --seed) \\[default: neglabel].", **choices(POOLS),
)
NEGATIVE_FILTER = typer.Option(
    None, "--negative-filter", help="Drop mined negatives: none, or wordnet (nouns that WordNet puts under an ID class, and proper nouns; "
    "our offline stand-in for NegRefine's LLM filter, not NegRefine's method) \\[default: none].", **choices(("none", "wordnet")),
)
NEG_RATIO = typer.Option(None, "--neg-ratio", help="Share of candidates kept as negatives \\[default: 0.15].")
BATCH_SIZE_AUTO_HELP = (
    "auto: on CUDA the largest batch whose cost, measured on a probe of 1 and 2 images, fits in 80% of the free GPU memory "
    "(the choice is logged; a batch that still runs out of memory is halved, nothing lost); on a CPU auto is the profile's batch size"
)
BATCH_SIZE = typer.Option(None, "--batch-size", "-b", metavar="N|auto", help=f"Images per batch, or {BATCH_SIZE_AUTO_HELP} \\[default: from the profile].")
NUM_WORKERS = typer.Option(None, "--num-workers", "-j", help="Decoding worker processes; 0 decodes in the main process \\[default: one per available core; 0 on one core].")
EXACT_PREPROCESS = typer.Option(
    False, "--exact-preprocess",
    help="Preprocess with open_clip's own PIL transform, per image in the workers: features bit-identical to published code, "
    "at several times the CPU cost per image \\[default: workers only decode (large JPEGs at a reduced DCT scale); resize, crop and normalise run batched on the encoder's device].",
)
DECODE_DEVICE = typer.Option(
    "cpu", "--decode-device", envvar="SYNOOD_DECODE_DEVICE",
    help="Where JPEGs are decoded: cpu, cuda\\[:N] (nvJPEG, batched; a file it refuses is decoded on the CPU) or auto (the encoder's device).",
)
STRICT = typer.Option(False, "--strict", help="Exit 4 if any file could not be read (they are still reported and skipped).")


def validate_negative_options(groups: int | None = None, neg_ratio: float | None = None, percentile: float | None = None) -> None:
    """--groups, --neg-ratio and --percentile out of range: exit 2 before any model loads (they were checked only after)."""
    import math

    if groups is not None and groups < 1:
        raise UsageError(f"--groups must be at least 1, got {groups}", hint="NegLabel uses 100 groups (the tiny profile 10)")
    if neg_ratio is not None and not (math.isfinite(neg_ratio) and 0 < neg_ratio <= 1):
        raise UsageError(f"--neg-ratio must be in (0, 1], got {neg_ratio}", hint="the share of candidates kept as negatives: NegLabel keeps 0.15")
    if percentile is not None and not (math.isfinite(percentile) and 0 <= percentile <= 1):
        raise UsageError(f"--percentile must be in [0, 1], got {percentile}", hint="NegLabel uses 0.95")


def scoring_config(
    state, profile: str | None, method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint=None,
    exact_preprocess: bool = False, decode_device: str = "cpu", pool: str | None = None,
    negative_filter: str | None = None,
):
    from synood_cli.batching import parse_batch_size
    from synood_cli.data.loading import default_num_workers
    from synood_cli.scoring import ScoringConfig

    validate_negative_options(groups, neg_ratio)
    batch_size = parse_batch_size(batch_size)

    if num_workers is None:
        num_workers = default_num_workers()
    if method is None:
        method = "synood" if checkpoint else "neglabel"
    return ScoringConfig(
        checkpoint=checkpoint,
        home=state.home,
        profile=profile,
        method=method,
        model=model,
        pretrained=pretrained,
        lexicon=lexicon,
        groups=groups,
        neg_ratio=neg_ratio,
        pool=pool,
        negative_filter=negative_filter,
        seed=state.seed,
        batch_size=batch_size,
        num_workers=num_workers,
        device=state.device,
        precision=state.precision,
        exact_preprocess=exact_preprocess,
        decode_device=decode_device,
    ).resolved()


def split_named(spec: str) -> tuple[str | None, str]:
    """`name=PATH` -> (name, PATH); a plain PATH -> (None, PATH)."""
    if "=" in spec:
        name, _, path = spec.partition("=")
        if name and "/" not in name and not Path(spec).exists():
            return name, path
    return None, spec


def class_names_from(classnames: Optional[Path], fallback_set=None, reporter=None, checkpoint_config=None) -> list[str]:
    """--classnames FILE|DIR, else the checkpoint's classes, else the ID folder's, else ImageNet-1k's."""
    from synood_cli.data.folders import read_classnames, scan_folder

    checkpoint_names = None
    if checkpoint_config is not None and checkpoint_config.checkpoint:
        from synood_cli.scoring import checkpoint_class_names

        checkpoint_names = checkpoint_class_names(checkpoint_config)
    if classnames is not None:
        if Path(classnames).is_dir():
            s = scan_folder(classnames)
            if not s.classes:
                raise UsageError(f"--classnames {classnames} is a flat folder: it has no class subfolders")
            names = s.class_names
        else:
            names = read_classnames(classnames)
        if checkpoint_names is not None and names != checkpoint_names:
            from synood_cli.scoring import refuse_other_classes

            refuse_other_classes(f"--classnames {classnames}", names, checkpoint_config.checkpoint, checkpoint_names)
        return names
    if checkpoint_names is not None:
        return checkpoint_names
    if fallback_set is not None:
        if fallback_set.class_names:
            return fallback_set.class_names
        raise UsageError(
            f"the ID folder {fallback_set.root} is flat, so it names no classes",
            hint="pass --classnames FILE (one class name per line)",
        )
    from synood_cli.data.folders import imagenet_classnames

    if reporter is not None:
        reporter.info("ID classes: the 1000 ImageNet-1k names (pass --classnames to change)")
    return imagenet_classnames()


def report_skipped(skipped: list, reporter, where: str = "", limit: int = 20) -> None:
    """One warning per skipped file, up to `limit` (the input table and the summary have the counts)."""
    for path, reason in skipped[:limit]:
        reporter.warn(f"skipped {path}: {reason}")
    if len(skipped) > limit:
        reporter.warn(f"... and {len(skipped) - limit} more skipped" + (f" in {where}" if where else ""))


def check_strict(strict: bool, unreadable: int) -> None:
    """Under --strict, unreadable inputs turn a finished run into exit 4."""
    if strict and unreadable:
        from synood_cli.errors import DataError

        raise DataError(f"{unreadable} input file(s) could not be read (see the warnings above)", hint="fix or remove them, or drop --strict")


def check_nonfinite(count: int, reporter, strict: bool) -> None:
    """Non-finite scores (NaN weights, say) are counted and reported; under --strict they are exit 4."""
    if not count:
        return
    message = f"{count} image(s) got a non-finite score (NaN or inf; written as null in JSON, nan in CSV)"
    if strict:
        from synood_cli.errors import DataError

        raise DataError(message, hint="check the checkpoint and model weights for NaN values")
    reporter.warn(message + "; check the checkpoint and model weights")
