"""`synood evaluate`: ID vs OOD folders (or score files from any tool) -> FPR95, AUROC, AUPR."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.render import error_boundary
from synood_cli.errors import UsageError

HELP = """Evaluate OOD detection: score an ID set and OOD sets, print metrics per OOD set and their average.

A set is a folder (class subfolders, or flat; a flat ImageNet val folder takes LOC_val_solution.csv
or val.txt labels), an OpenOOD image list (.txt, paths under --data-root), hf:NAME[:SPLIT], a
save_to_disk folder, or Parquet. --benchmark imagenet-mos|openood-imagenet-near|openood-imagenet-far
finds a named suite's sets under --data-root and prints the papers' table (--reference adds the
published rows). Every input is listed in one table before any model loads.

Metrics: FPR95 (OOD accepted at 95% ID recall, the MOS/NegLabel/SynOOD convention), AUROC,
AUPR-IN, AUPR-OUT, and OpenOOD v1.5's FPR95 (ID rejected at 95% OOD recall), all ties handled
exactly; ID top-1 accuracy when the ID set has labels. With --id-scores/--ood-scores no model is
loaded: any tool's score files (csv/tsv/jsonl with a `score` column, higher = ID)."""

EPILOG = """[bold]Examples[/bold]

  synood evaluate --benchmark imagenet-mos --data-root /data/ood --reference

  synood evaluate --benchmark openood-imagenet-near --data-root OpenOOD/data --checkpoint synood-in1k --reference

  synood evaluate --id data/val --ood data/inat --ood sun=data/SUN --method neglabel --model ViT-B-16 --pretrained openai

  synood evaluate --id benchmark_imglist/imagenet/test_imagenet.txt --ood ninco=benchmark_imglist/imagenet/test_ninco.txt --data-root data/images_largescale

  synood evaluate --id hf:ORG/imagenet-val:validation --ood ssb=ssb_hard.parquet --image-column image

  synood evaluate --id data/val --ood data/ood --profile tiny --format json --plot roc.png --save-scores scores/

  synood evaluate --id-scores id.csv --ood-scores inat.csv --ood-scores sun=sun.csv

  synood evaluate --id data/val --ood data/inat --checkpoint synood-in1k --compare neglabel,synood"""


@error_boundary
def evaluate(
    ctx: typer.Context,
    id_dir: Optional[str] = typer.Option(None, "--id", help=f"ID set: {inputs.SPEC_HELP}. Class subfolders or labels give accuracy and class names."),
    ood: List[str] = typer.Option([], "--ood", help="OOD set, repeatable; name it with name=SPEC. With --benchmark, KEY=SPEC replaces one of the suite's sets."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Named suite: imagenet-mos, openood-imagenet-near, openood-imagenet-far (needs --data-root)."),
    data_root: Optional[Path] = inputs.DATA_ROOT,
    allow_partial: bool = typer.Option(False, "--allow-partial", help="With --benchmark, evaluate the sets found when some are missing."),
    reference: bool = typer.Option(False, "--reference", help="With --benchmark, add the published NegLabel/SynOOD (and MCM, CSP) rows."),
    labels: Optional[Path] = inputs.LABELS,
    image_column: Optional[str] = inputs.IMAGE_COLUMN,
    label_column: Optional[str] = inputs.LABEL_COLUMN,
    id_scores: Optional[Path] = typer.Option(None, "--id-scores", help="Score file of the ID set (no model is loaded)."),
    ood_scores: List[str] = typer.Option([], "--ood-scores", help="Score file of an OOD set, repeatable; name=FILE names it."),
    profile: str = common.PROFILE,
    method: Optional[str] = common.METHOD,
    checkpoint: Optional[str] = common.CHECKPOINT,
    compare: Optional[str] = typer.Option(None, "--compare", help="Several methods in one table, e.g. neglabel,synood (images are encoded once)."),
    model: Optional[str] = common.MODEL,
    pretrained: Optional[str] = common.PRETRAINED,
    classnames: Optional[Path] = common.CLASSNAMES,
    lexicon: Optional[str] = common.LEXICON,
    groups: Optional[int] = common.GROUPS,
    neg_ratio: Optional[float] = common.NEG_RATIO,
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write ROC curves and score histograms to this PNG."),
    save_scores: Optional[Path] = typer.Option(None, "--save-scores", help="Keep per-image scores as CSV files in this folder."),
    batch_size: Optional[int] = common.BATCH_SIZE,
    num_workers: Optional[int] = common.NUM_WORKERS,
    exact_preprocess: bool = common.EXACT_PREPROCESS,
    decode_device: str = common.DECODE_DEVICE,
    strict: bool = common.STRICT,
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics, render_suite
    from synood_cli.metrics import plot_roc

    check_format(fmt)
    state = ctx.obj
    reporter = state.reporter()
    if (reference or allow_partial) and not benchmark:
        raise UsageError(f"{'--reference' if reference else '--allow-partial'} needs --benchmark NAME", hint="e.g. --benchmark imagenet-mos --data-root DIR")
    if id_scores is not None or ood_scores:
        if id_dir or ood or benchmark:
            raise UsageError("give either image sets (--id/--ood/--benchmark) or score files (--id-scores/--ood-scores), not both")
        by_method, curves, extra = _from_score_files(id_scores, ood_scores)
        render_metrics(by_method, fmt, "OOD detection from score files", extra)
    else:
        if compare and method:
            raise UsageError("give --method or --compare, not both")
        opts = inputs.input_options(data_root, image_column, label_column, labels, classnames)
        suite = None
        # the inputs first: a wrong path is reported in a second, before torch and open_clip are imported
        if benchmark:
            from synood_cli.suites import get_suite

            suite = get_suite(benchmark)
            id_set, ood_sets = _open_suite(suite, data_root, opts, id_dir, ood, allow_partial, reporter)
        else:
            id_set, ood_sets = _open_sets(id_dir, ood, opts, reporter)
        cfg = common.scoring_config(state, profile, compare or method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint,
                                     exact_preprocess, decode_device)
        by_method, curves, extra = _evaluate_sets(state, reporter, cfg, id_set, ood_sets, classnames, save_scores, show_inputs=suite is None)
        if suite is not None:
            render_suite(suite, by_method, fmt, extra, reference)
        else:
            render_metrics(by_method, fmt, f"OOD detection · {', '.join(by_method)} · {extra['model']}", extra)
    if plot is not None:
        plot_roc(curves, plot)
        reporter.info(f"wrote {plot}")
    common.check_strict(strict, extra.get("failed", 0) + extra.get("skipped", 0))


def _open_sets(id_spec, ood, opts, reporter):
    """--id/--ood: open every set (listing only), show the input table, refuse clashes."""
    if not id_spec or not ood:
        raise UsageError("evaluate needs --id SET and at least one --ood SET", hint="or --benchmark NAME --data-root DIR, or --id-scores FILE --ood-scores FILE")
    id_set = inputs.open_named(id_spec, opts, role="id")
    ood_sets = [inputs.open_named(spec, opts) for spec in ood]
    names = [s.name for s in ood_sets]
    if len(set(names)) != len(names):
        raise UsageError(f"two OOD sets share a name ({', '.join(names)})", hint="name them with --ood name=SPEC")
    return id_set, ood_sets


def _open_suite(suite, data_root, opts, id_spec, ood, allow_partial, reporter):
    """--benchmark: find the suite's sets, show what was found, refuse missing ones unless --allow-partial."""
    from synood_cli.suites import resolve_suite, select_sets

    if data_root is None:
        raise UsageError(f"--benchmark {suite.name} needs --data-root DIR", hint="the folder that holds the suite's datasets")
    overrides = {}
    if id_spec:
        overrides["id"] = id_spec
    for spec in ood:
        name, path = common.split_named(spec)
        if name is None:
            raise UsageError(f"with --benchmark, --ood takes KEY=SPEC to replace one set, got {spec!r}", hint="keys: " + ", ".join(suite.ood_keys()))
        overrides[name] = path
    found = resolve_suite(suite, data_root, opts, overrides)
    rows = []
    for f in found:
        if f.image_set is not None:
            rows.append(inputs.row_for(f.role, f.image_set, f.spec.expected, f.status))
        else:
            rows.append({"role": f.role, "name": f.spec.key, "source": f.source or (f.tried[0] + (f" (+{len(f.tried) - 1} more)" if len(f.tried) > 1 else "")), "layout": f.error,
                         "expected": f.spec.expected, "found": 0, "status": "missing"})
    inputs.render_inputs(rows, reporter)
    return select_sets(suite, found, allow_partial, reporter)


def _from_score_files(id_scores, ood_scores):
    from synood_cli.metrics import read_score_file
    from synood_cli.scoring import metrics_from_scores

    if id_scores is None or not ood_scores:
        raise UsageError("score-file evaluation needs --id-scores FILE and at least one --ood-scores FILE")
    id_s = read_score_file(id_scores)
    ood = {}
    for spec in ood_scores:
        name, path = common.split_named(spec)
        ood[name or Path(path).stem] = read_score_file(path)
    per_set, average = metrics_from_scores(id_s, ood)
    return {"scores": (per_set, average)}, {k: (id_s, v) for k, v in ood.items()}, {"id_images": len(id_s)}


def _evaluate_sets(state, reporter, cfg, id_set, ood_sets, classnames, save_scores, show_inputs=True):
    from synood_cli.scoring import evaluate as run_evaluation
    from synood_cli.scoring import prepare_scoring

    class_names = common.class_names_from(classnames, fallback_set=id_set, checkpoint_config=cfg)
    if cfg.checkpoint and id_set.class_names and classnames is None and id_set.class_names != class_names:
        raise UsageError(
            f"the ID set's {len(id_set.class_names)} classes differ from the {len(class_names)} the checkpoint was trained on",
            hint="pass the matching ID set, or --classnames",
        )
    if show_inputs:  # after every cheap check, before the model loads
        inputs.render_inputs([inputs.row_for("id", id_set)] + [inputs.row_for("ood", s) for s in ood_sets], reporter)
    for s in [id_set] + ood_sets:
        common.report_skipped(s.skipped, reporter, s.name)
    setup = prepare_scoring(cfg, class_names, reporter)
    result = run_evaluation(setup, id_set, ood_sets, reporter)
    failed = sum(len(s.failures) for s in [result.id, *result.ood.values()])
    skipped = sum(len(s.skipped) for s in [result.id, *result.ood.values()])
    if failed or skipped:
        reporter.warn(f"{failed} unreadable image(s) and {skipped} listed file(s) that are not images or are missing were skipped (listed above)")
    if save_scores is not None:
        _save_scores(save_scores, [result.id, *result.ood.values()], class_names)
        reporter.info(f"per-image scores in {save_scores}")
    curves = {(k if len(result.methods) == 1 else f"{k} ({m})"): (result.id.scores[m], v.scores[m]) for m in result.methods for k, v in result.ood.items()}
    extra = {
        "id_images": len(result.id.preds),
        "id_accuracy": result.id_accuracy,
        "failed": failed,
        "skipped": skipped,
        "model": setup.clip.source.describe(),
    }
    return {m: (result.metrics[m], result.average[m]) for m in result.methods}, curves, extra


def _save_scores(folder: Path, sets, class_names) -> None:
    """One CSV per set: `score` is the first method's, then one `score_<method>` column per method."""
    from synood_cli.cli.output import RowWriter

    folder.mkdir(parents=True, exist_ok=True)
    for s in sets:
        methods = list(s.scores)
        extra_cols = [f"score_{m}" for m in methods] if len(methods) > 1 else []
        w = RowWriter("csv", str(folder / f"{s.name}.csv"), ["path", "score", "pred_class", "pred_name"] + extra_cols)
        rows = []
        for i, (p, c) in enumerate(zip(s.paths, s.preds.tolist())):
            row = {"path": str(p), "score": float(s.scores[methods[0]][i]), "pred_class": int(c), "pred_name": class_names[c]}
            row.update({f"score_{m}": float(s.scores[m][i]) for m in methods} if extra_cols else {})
            rows.append(row)
        w.write(rows)
        w.close()
