"""`synood negatives`: mine NegLabel negative labels for a set of ID classes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli import common
from synood_cli.cli.render import error_boundary

HELP = """Mine NegLabel negative labels: the candidate words (NegLabel's WordNet 3.0 pool by default, or
--lexicon wordnet|basic|FILE) least similar to the ID classes, 15% of each part of speech by
default, embedded with NegLabel's templates ("the nice {}", "This is a {} photo").

Cached in the store by (model, classes, lexicon): a second call returns at once. Labels go to
stdout (label, kind and affinity, tab-separated) or to -o/--output; the summary goes to stderr."""

EPILOG = """[bold]Examples[/bold]

  synood negatives --classnames classnames.txt -o my-negatives.txt --name in1k-negatives

  synood negatives --classnames data/train --profile tiny --lexicon words.txt | head"""


@error_boundary
def negatives(
    ctx: typer.Context,
    classes: Optional[Path] = typer.Option(None, "--classnames", help="ID class names: a text file (one per line) or a class-folder tree \\[required]."),
    old_classes: Optional[Path] = typer.Option(None, "--classes", hidden=True, help="Deprecated spelling of --classnames."),
    profile: str = common.PROFILE,
    model: Optional[str] = common.MODEL,
    pretrained: Optional[str] = common.PRETRAINED,
    lexicon: Optional[str] = common.LEXICON,
    neg_ratio: Optional[float] = common.NEG_RATIO,
    pool: Optional[str] = common.POOL,
    negative_filter: Optional[str] = common.NEGATIVE_FILTER,
    percentile: Optional[float] = typer.Option(None, "--percentile", help="Affinity quantile over the ID classes \\[default: 0.95]."),
    name: Optional[str] = typer.Option(None, "--name", help="Store alias for the mined negatives."),
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the labels to this file (usable later as --lexicon)."),
    old_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Deprecated spelling of --output."),
) -> None:
    from synood_cli.cli.flags import deprecated
    from synood_cli.errors import UsageError

    classes = deprecated("--classes FILE", "--classnames FILE (--classes elsewhere is a class index range)", old_classes, classes)
    out = deprecated("--out", "-o/--output", old_out, out)
    if classes is None:
        raise UsageError("negatives needs --classnames FILE|DIR", hint="a text file with one ID class name per line, or a class-folder tree")
    from synood_cli.lexicons import load_lexicon
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.negatives import mine_negatives
    from synood_cli.profiles import load_profile
    from synood_cli.runtime import resolve_device, resolve_dtype
    from synood_cli.cli.outfile import write_output
    from synood_cli.store import Store

    state = ctx.obj
    reporter = state.reporter()
    common.validate_negative_options(neg_ratio=neg_ratio, percentile=percentile)
    cfg = common.scoring_config(state, profile, "neglabel", model, pretrained, lexicon, None, neg_ratio, None, 0, pool=pool,
                                negative_filter=negative_filter)
    if percentile is not None:
        cfg.percentile = percentile
    class_names = common.class_names_from(classes)
    lex = load_lexicon(cfg.lexicon)
    source = clip_source(load_profile(cfg.profile), cfg.model, cfg.pretrained)
    device = resolve_device(cfg.device)
    store = Store(cfg.home)
    reporter.info(f"loading CLIP {source.describe()} on {device}")
    clip = load_clip(source, store, device, resolve_dtype(cfg.precision, device))
    neg = mine_negatives(clip, class_names, lex, store, cfg.neg_ratio, cfg.percentile, name=name, reporter=reporter,
                        pool=cfg.pool, pool_seed=cfg.seed, negative_filter=cfg.negative_filter)
    summary = neg.artifact.manifest.get("summary", {})
    if out is not None:
        text = "".join(f"{label}\t{kind}\n" for label, kind in zip(neg.labels, neg.kinds))
        write_output(out, text.encode())  # a FIFO or /dev/stdout is written directly, never replaced
    else:
        from safetensors.torch import load_file

        aff = load_file(str(neg.artifact.file("negatives.safetensors")))["affinity"].tolist()
        for label, kind, a in zip(neg.labels, neg.kinds, aff):
            print(f"{label}\t{kind}\t{a!r}")
    reporter.info(
        f"{len(neg.labels)} negatives ({summary.get('nouns')} nouns, {summary.get('adjectives')} adjectives) "
        f"from {lex.name} for {len(class_names)} ID classes; artifact {neg.artifact.ref}"
        + (f", written to {out}" if out else "")
    )
