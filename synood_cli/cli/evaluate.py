"""`synood evaluate`: ID vs OOD folders (or score files from any tool) -> FPR95, AUROC, AUPR."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common
from synood_cli.cli.render import error_boundary
from synood_cli.errors import UsageError

HELP = """Evaluate OOD detection: score an ID folder and OOD folders, print metrics per OOD set and their average.

Metrics: FPR95 (OOD accepted at 95% ID recall, the MOS/NegLabel/SynOOD convention), AUROC,
AUPR-IN, AUPR-OUT, and OpenOOD v1.5's FPR95 (ID rejected at 95% OOD recall), all ties handled
exactly; ID top-1 accuracy when the ID folder has class subfolders. With --id-scores/--ood-scores
no model is loaded: any tool's score files (csv/tsv/jsonl with a `score` column, higher = ID)."""

EPILOG = """[bold]Examples[/bold]

  synood evaluate --id data/val --ood data/inat --ood sun=data/SUN --method neglabel --model ViT-B-16 --pretrained openai

  synood evaluate --id data/val --ood data/ood --profile tiny --format json --plot roc.png --save-scores scores/

  synood evaluate --id-scores id.csv --ood-scores inat.csv --ood-scores sun=sun.csv

  synood evaluate --id data/val --ood data/inat --checkpoint synood-in1k --compare neglabel,synood"""


@error_boundary
def evaluate(
    ctx: typer.Context,
    id_dir: Optional[str] = typer.Option(None, "--id", help="ID image folder (class subfolders give accuracy and class names)."),
    ood: List[str] = typer.Option([], "--ood", help="OOD folder, repeatable; name a set with name=DIR."),
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
    strict: bool = common.STRICT,
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics
    from synood_cli.metrics import plot_roc

    check_format(fmt)
    state = ctx.obj
    reporter = state.reporter()
    if id_scores is not None or ood_scores:
        if id_dir or ood:
            raise UsageError("give either folders (--id/--ood) or score files (--id-scores/--ood-scores), not both")
        by_method, curves, extra = _from_score_files(id_scores, ood_scores)
        title = "OOD detection from score files"
    else:
        if not id_dir or not ood:
            raise UsageError("evaluate needs --id DIR and at least one --ood DIR", hint="or --id-scores FILE --ood-scores FILE")
        if compare and method:
            raise UsageError("give --method or --compare, not both")
        by_method, curves, extra = _from_folders(
            state, reporter, id_dir, ood, profile, compare or method, model, pretrained, classnames, lexicon, groups, neg_ratio,
            batch_size, num_workers, save_scores, checkpoint,
        )
        title = f"OOD detection · {', '.join(by_method)} · {extra['model']}"
    render_metrics(by_method, fmt, title, extra)
    if plot is not None:
        plot_roc(curves, plot)
        reporter.info(f"wrote {plot}")
    common.check_strict(strict, extra.get("failed", 0) + extra.get("skipped", 0))


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


def _from_folders(state, reporter, id_dir, ood, profile, method, model, pretrained, classnames, lexicon, groups,
                  neg_ratio, batch_size, num_workers, save_scores, checkpoint):
    from synood_cli.scoring import evaluate as run_evaluation
    from synood_cli.scoring import prepare_scoring

    cfg = common.scoring_config(state, profile, method, model, pretrained, lexicon, groups, neg_ratio, batch_size, num_workers, checkpoint)
    # every input is validated before the model loads
    id_set = common.scan_named(id_dir, classnames if classnames and not Path(classnames).is_dir() else None)
    ood_sets = [common.scan_named(spec) for spec in ood]
    names = [id_set.name] + [s.name for s in ood_sets]
    if len(set(names[1:])) != len(names) - 1:
        raise UsageError(f"two OOD sets share a name ({', '.join(names[1:])})", hint="name them with --ood name=DIR")
    class_names = common.class_names_from(classnames, fallback_set=id_set, checkpoint_config=cfg)
    if checkpoint and id_set.class_names and classnames is None and id_set.class_names != class_names:
        raise UsageError(
            f"the ID folder's {len(id_set.class_names)} classes differ from the {len(class_names)} the checkpoint was trained on",
            hint="pass the matching ID folder, or --classnames",
        )
    for s in [id_set] + ood_sets:
        common.report_skipped(s, reporter)
    setup = prepare_scoring(cfg, class_names, reporter)
    result = run_evaluation(setup, id_set, ood_sets, reporter)
    failed = sum(len(s.failures) for s in [result.id, *result.ood.values()])
    skipped = sum(len(s.skipped) for s in [result.id, *result.ood.values()])
    if failed or skipped:
        reporter.warn(f"{failed} unreadable image(s) and {skipped} non-image file(s) were skipped (listed above)")
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
