"""`synood evaluate`: ID vs OOD folders (or score files from any tool) -> FPR95, AUROC, AUPR."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.flags import BENCHMARKS, TABLE_FORMATS, choices, in_panel, listed
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
loaded: `synood score` output in any format (csv, tsv, jsonl, parquet; `-` reads stdin) or any
tool's file with a `score` column (higher = ID); a `method` column evaluates each method.

Thresholds for deployment: the footer and the JSON give, per method, the score that keeps 95% of
the ID images (and each --tpr); an image scoring below it is OOD. Scores of different methods,
models or negative settings live on different scales: use a threshold only with the scores it was
made for. `synood score --threshold fpr95 --calibration result.json` reads it from the JSON."""

EPILOG = """[bold]Examples[/bold]

  synood evaluate --benchmark imagenet-mos --data-root /data/ood --reference

  synood evaluate --benchmark openood-imagenet-near --data-root OpenOOD/data --checkpoint synood-in1k --reference

  synood evaluate --id data/val --ood data/inat --ood sun=data/SUN --method neglabel --model ViT-B-16 --pretrained openai

  synood evaluate --id benchmark_imglist/imagenet/test_imagenet.txt --ood ninco=benchmark_imglist/imagenet/test_ninco.txt --data-root data/images_largescale

  synood evaluate --id hf:ORG/imagenet-val:validation --ood ssb=ssb_hard.parquet --image-column image

  synood evaluate --id data/val --ood data/ood --profile tiny --format json --plot roc.png --save-scores scores/

  synood evaluate --id-scores id.csv --ood-scores inat.csv --ood-scores sun=sun.csv

  synood evaluate --id data/val --ood data/inat --checkpoint synood-in1k --compare neglabel,synood

  synood evaluate --id data/val --ood data/inat --tpr 0.9 --format json > result.json

  synood score data/val -o val.parquet && cat val.parquet | synood evaluate --id-scores - --ood-scores inat.parquet"""


@error_boundary
def evaluate(
    ctx: typer.Context,
    id_dir: Optional[str] = typer.Option(None, "--id", help=f"ID set: {inputs.SPEC_HELP}. Class subfolders or labels give accuracy and class names.", rich_help_panel="Inputs"),
    ood: List[str] = typer.Option([], "--ood", help="OOD set, repeatable; name it with name=SPEC. With --benchmark, KEY=SPEC replaces one of the suite's sets.", rich_help_panel="Inputs"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help=f"Named suite: {listed(BENCHMARKS)} (needs --data-root).", **choices(BENCHMARKS, "<suite>"), rich_help_panel="Benchmarks"),
    data_root: Optional[Path] = in_panel(inputs.DATA_ROOT, "Inputs", help=f"{inputs.DATA_ROOT.help[:-1]}; with --benchmark, the folder holding the suite."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="With --benchmark, evaluate the sets found when some are missing.", rich_help_panel="Benchmarks"),
    reference: bool = typer.Option(False, "--reference", help="With --benchmark, add the published NegLabel/SynOOD (and MCM, CSP) rows.", rich_help_panel="Benchmarks"),
    labels: Optional[Path] = in_panel(inputs.LABELS, "Inputs"),
    image_column: Optional[str] = in_panel(inputs.IMAGE_COLUMN, "Inputs"),
    label_column: Optional[str] = in_panel(inputs.LABEL_COLUMN, "Inputs"),
    id_scores: Optional[Path] = typer.Option(None, "--id-scores", help="Score file of the ID set (no model is loaded).", rich_help_panel="Score files (no model)"),
    ood_scores: List[str] = typer.Option([], "--ood-scores", help="Score file of an OOD set, repeatable; name=FILE names it.", rich_help_panel="Score files (no model)"),
    profile: Optional[str] = in_panel(common.SCORE_PROFILE, "Method and model"),
    method: Optional[str] = in_panel(common.METHOD, "Method and model"),
    checkpoint: Optional[str] = in_panel(common.CHECKPOINT, "Method and model"),
    compare: Optional[str] = typer.Option(None, "--compare", help="Several methods in one table, e.g. neglabel,synood (images are encoded once).", rich_help_panel="Method and model"),
    model: Optional[str] = in_panel(common.MODEL, "Method and model"),
    pretrained: Optional[str] = in_panel(common.PRETRAINED, "Method and model"),
    classnames: Optional[Path] = in_panel(common.CLASSNAMES, "Inputs"),
    lexicon: Optional[str] = in_panel(common.LEXICON, "Method and model"),
    groups: Optional[int] = in_panel(common.GROUPS, "Method and model"),
    neg_ratio: Optional[float] = in_panel(common.NEG_RATIO, "Method and model"),
    pool: Optional[str] = in_panel(common.POOL, "Method and model"),
    negative_filter: Optional[str] = in_panel(common.NEGATIVE_FILTER, "Method and model"),
    adaptive_protocol: str = typer.Option("published", "--adaptive-protocol", help="How adaneg (transductive) sees the sets: published (OpenOOD-VLM's: per OOD set a fresh memory, that set and the ID set shuffled together with --seed, batches of 256; the ID scores then differ per OOD set) or stream (the ID set, then each OOD set as given, one memory, --batch-size).", **choices(("published", "stream")), rich_help_panel="Method and model"),
    tpr: List[float] = typer.Option([], "--tpr", help="Also report the threshold keeping this fraction of ID images, repeatable (0.95 is always reported).", rich_help_panel="Output"),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json.", **choices(TABLE_FORMATS), rich_help_panel="Output"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write ROC curves (FPR95 points marked) and score histograms; .png, .pdf or .svg.", rich_help_panel="Output"),
    save_scores: Optional[Path] = typer.Option(None, "--save-scores", help="Keep per-image scores as CSV files in this folder.", rich_help_panel="Output"),
    batch_size: Optional[str] = in_panel(common.BATCH_SIZE, "Performance"),
    num_workers: Optional[int] = in_panel(common.NUM_WORKERS, "Performance"),
    exact_preprocess: bool = in_panel(common.EXACT_PREPROCESS, "Performance"),
    decode_device: str = in_panel(common.DECODE_DEVICE, "Performance"),
    strict: bool = in_panel(common.STRICT, "Output"),
) -> None:
    from synood_cli.cli.tables import check_format, render_metrics, render_suite
    from synood_cli.metrics import plot_roc

    check_format(fmt)
    if adaptive_protocol not in ("published", "stream"):
        raise UsageError(f"unknown --adaptive-protocol {adaptive_protocol!r}", hint="published or stream")
    if plot is not None:
        from synood_cli.metrics import plot_format

        plot_format(plot)
    tprs = _check_tprs(tpr)
    state = ctx.obj
    reporter = state.reporter()
    if (reference or allow_partial) and not benchmark:
        raise UsageError(f"{'--reference' if reference else '--allow-partial'} needs --benchmark NAME", hint="e.g. --benchmark imagenet-mos --data-root DIR")
    if id_scores is not None or ood_scores:
        if id_dir or ood or benchmark:
            raise UsageError("give either image sets (--id/--ood/--benchmark) or score files (--id-scores/--ood-scores), not both")
        by_method, curves, extra = _from_score_files(id_scores, ood_scores, method, tprs, reporter)
        label = " · ".join(str(x) for x in [", ".join(m for m in by_method if m), extra.get("model")] if x)
        render_metrics(by_method, fmt, "OOD detection from score files" + (f" · {label}" if label else ""), extra)
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
                                     exact_preprocess, decode_device, pool, negative_filter)
        by_method, curves, extra = _evaluate_sets(state, reporter, cfg, id_set, ood_sets, classnames, save_scores, tprs, show_inputs=suite is None,
                                                  protocol=adaptive_protocol)
        if suite is not None:
            render_suite(suite, by_method, fmt, extra, reference)
        else:
            render_metrics(by_method, fmt, f"OOD detection · {', '.join(by_method)} · {extra['model']}", extra)
    from synood_cli.distributed import is_leader

    if plot is not None and is_leader():  # torchrun/srun: every rank holds the results, rank 0 writes files
        methods = ", ".join(m for m in by_method if m) or "scores"
        plot_roc(curves, plot, title=" · ".join(x for x in [methods, extra.get("model"), extra.get("checkpoint") and f"checkpoint {extra['checkpoint']}"] if x))
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
    from synood_cli.data.overlap import overlap_warnings

    for line in overlap_warnings(id_set, ood_sets):
        reporter.warn(line)
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


def _check_tprs(tpr: list[float]) -> list[float]:
    """0.95 first (FPR95's threshold), then each --tpr once; refused before any work when not in (0, 1]."""
    for t in tpr:
        if not 0 < t <= 1:
            raise UsageError(f"--tpr {t:g} is not a fraction in (0, 1]", hint="e.g. --tpr 0.9 keeps 90% of ID images")
    return list(dict.fromkeys([0.95, *tpr]))


def _from_score_files(id_scores, ood_scores, method, tprs, reporter):
    """Metrics from score files; the method and model come from what the files record (Parquet, JSON Lines)."""
    from synood_cli.metrics import read_scores, thresholds_at
    from synood_cli.scoring import metrics_from_scores

    if id_scores is None or not ood_scores:
        raise UsageError("score-file evaluation needs --id-scores FILE and at least one --ood-scores FILE")
    specs = [(None, str(id_scores))] + [common.split_named(s) for s in ood_scores]
    if sum(1 for _, p in specs if p == "-") > 1:
        raise UsageError("only one score file can come from stdin (-)")
    files = [read_scores(p) for _, p in specs]
    id_f, ood_f = files[0], files[1:]
    named = [f for f in files if f.methods != [None]]
    methods = named[0].methods if named else [None]  # a file of unnamed scores (another tool's) stands for the one method of the others
    if method is not None:
        if method not in methods and methods != [None]:
            raise UsageError(f"{named[0].name} has no scores of method {method} (it has {', '.join(_names(methods))})")
        methods = [method]
    for f in files:
        missing = [m for m in methods if _pick(f, m, methods) is None]
        if missing:
            raise UsageError(f"{f.name} holds scores of {', '.join(_names(f.methods))}, but {named[0].name if named else id_f.name} of {', '.join(_names(missing))}",
                             hint="score every set with the same method, or pick one with --method")
    _check_identities(files, methods, reporter)
    by_method, curves, thresholds = {}, {}, {}
    for m in methods:
        ood = {(name or Path(p).stem if p != "-" else name or "stdin"): _pick(f, m, methods) for (name, p), f in zip(specs[1:], ood_f)}
        id_s = _pick(id_f, m, methods)
        by_method[m] = metrics_from_scores(id_s, ood)
        thresholds[m] = thresholds_at(id_s, tprs)
        curves.update({((k, m) if m is not None else k): (id_s, v) for k, v in ood.items()})
    extra = {"id_images": len(_pick(id_f, methods[0], methods)), "thresholds": thresholds}
    for key in ("model", "checkpoint"):
        if id_f.meta.get(key) is not None:
            extra[key] = id_f.meta[key]
    if id_f.identities is not None and all(m in id_f.identities for m in methods):
        # the thresholds come from the ID scores alone: their identity is the ID file's
        extra["identities"] = {m: id_f.identities[m] for m in methods}
    return by_method, curves, extra


def _pick(f, m, methods):
    """File `f`'s scores of method `m`: exactly its rows; unnamed scores only where one method is evaluated."""
    if m in f.scores:
        return f.scores[m]
    if list(f.scores) == [None] and len(methods) == 1:
        return f.scores[None]
    return None


def _names(methods) -> list[str]:
    return [m if m is not None else "unnamed scores" for m in methods]


def _check_identities(files, methods, reporter) -> None:
    """Every file's scores must have been made the same way (identity.KEYS); files that record nothing are warned about."""
    from synood_cli.identity import KEYS, check_identity

    for key in ("model", "checkpoint"):  # what files without a full identity (older synood, other tools) may still say
        seen = {f.meta.get(key) for f in files if f.meta.get(key) is not None}
        if len(seen) > 1:
            raise UsageError(f"the score files come from different {key}s ({', '.join(map(str, sorted(seen)))}): their scores are not comparable",
                             hint="score every set with the same settings")
    known = [f for f in files if f.identities is not None]
    for m in methods:
        with_m = [f for f in known if m in f.identities]
        for f in with_m[1:]:
            check_identity(f.identities[m], with_m[0].identities[m], f.name, f"in {with_m[0].name}", keys=list(KEYS),
                           hint="score every set with the same settings: scores made another way are not comparable")
    for f in files:  # after the refusals: a refused run shows its error first
        if f.note:
            reporter.warn(f.note)
        if f.identities is None:
            reporter.warn(f"{f.name} records no scoring identity (another tool's file?): nothing could be checked about how its scores were made")


def _evaluate_sets(state, reporter, cfg, id_set, ood_sets, classnames, save_scores, tprs=(0.95,), show_inputs=True, protocol="published"):
    from synood_cli.scoring import evaluate as run_evaluation
    from synood_cli.metrics import thresholds_at
    from synood_cli.scoring import prepare_scoring, score_identity, scoring_identity

    class_names = common.class_names_from(classnames, fallback_set=id_set, checkpoint_config=cfg)
    if cfg.checkpoint and id_set.class_names and classnames is None and id_set.class_names != class_names:
        from synood_cli.scoring import refuse_other_classes

        refuse_other_classes(f"the ID set {id_set.name}", id_set.class_names, cfg.checkpoint, class_names)
    if show_inputs:  # after every cheap check, before the model loads
        inputs.render_inputs([inputs.row_for("id", id_set)] + [inputs.row_for("ood", s) for s in ood_sets], reporter)
    for s in [id_set] + ood_sets:
        common.report_skipped(s.skipped, reporter, s.name)
    identity = scoring_identity(cfg)
    setup = prepare_scoring(cfg, class_names, reporter)
    identities = {m: score_identity(setup, m, protocol) for m in setup.scorers}
    result = run_evaluation(setup, id_set, ood_sets, reporter, protocol)
    failed = sum(len(s.failures) for s in [result.id, *result.ood.values()])
    skipped = sum(len(s.skipped) for s in [result.id, *result.ood.values()])
    if failed or skipped:
        reporter.warn(f"{failed} unreadable image(s) and {skipped} listed file(s) that are not images or are missing were skipped (listed above)")
    from synood_cli.distributed import is_leader

    if save_scores is not None and is_leader():
        _save_scores(save_scores, [result.id, *result.ood.values(), *_paired_sets(result)], class_names, identities)
        reporter.info(f"per-image scores in {save_scores}")
    curves = {(k, m): (result.id_scores_for(m, k), v.scores[m]) for m in result.methods for k, v in result.ood.items()}
    extra = {
        "id_images": len(result.id.preds),
        "id_accuracy": result.id_accuracy,
        "failed": failed,
        "skipped": skipped,
        "model": identity["model"],
        "checkpoint": identity["checkpoint"],
        "scoring": identity,
        "identities": identities,  # what `score --calibration` compares, key by key, with the scores it judges
        "thresholds": {m: thresholds_at(result.id.scores[m], tprs) for m in result.methods},
    }
    if result.paired:
        extra["id_scores_per_ood_set"] = sorted(result.paired)
        extra["notes"] = [f"{m}: published protocol (OpenOOD-VLM): a fresh memory per OOD set, scored shuffled with the ID set, so its ID "
                          "scores differ per OOD set and each set's metrics use its own; its thresholds come from the ID set adapted alone"
                          for m in sorted(result.paired)]
    if cfg.checkpoint:
        extra["checkpoint_threshold"] = _checkpoint_threshold(cfg)
    return {m: (result.metrics[m], result.average[m]) for m in result.methods}, curves, extra


def _checkpoint_threshold(cfg) -> dict | None:
    """What `synood finetune` stored with the checkpoint (None for checkpoints made before it did); type-checked, exit 3 when damaged."""
    from synood_cli.thresholds import THRESHOLD_FILE, checkpoint_folder_and_id, from_threshold_file, read_json

    f = checkpoint_folder_and_id(cfg.home, cfg.checkpoint)[0] / THRESHOLD_FILE
    if not f.is_file():
        return None
    what = f"the threshold of checkpoint {cfg.checkpoint}"
    from_threshold_file(f, what, "synood", 0.95, damaged=True) if "synood" in cfg.methods else None
    return read_json(f, what, "rerun `synood finetune`", damaged=True)


def _paired_sets(result) -> list:
    """Under the published protocol, the ID scores of each OOD set's run, as sets named `ID+OOD` (only the methods that have them)."""
    from dataclasses import replace

    ood_names = list(result.ood)
    return [replace(result.id, name=f"{result.id.name}+{k}", scores={m: result.paired[m][k] for m in result.paired})
            for k in ood_names if result.paired]


def _save_scores(folder: Path, sets, class_names, identities: dict) -> None:
    """One plain CSV per set; with several methods (--compare) one row per image and method, named in a `method` column.

    Each CSV gets its identity sidecar (NAME.csv.identity.json), so `synood evaluate
    --id-scores/--ood-scores` reads them back, each method apart, and can calibrate.
    """
    from synood_cli.cli.output import RowWriter

    folder.mkdir(parents=True, exist_ok=True)
    for s in sets:
        methods = list(s.scores)
        several = len(methods) > 1
        meta = {"identities": identities}
        if not several:
            meta.update(method=methods[0], model=identities[methods[0]]["model"], checkpoint=identities[methods[0]]["checkpoint"])
        w = RowWriter("csv", str(folder / f"{s.name}.csv"), ["path"] + (["method"] if several else []) + ["score", "pred_class", "pred_name"], meta)
        rows = []
        for m in methods:
            for i, (p, c) in enumerate(zip(s.paths, s.preds.tolist())):
                rows.append({"path": str(p), "method": m, "score": float(s.scores[m][i]), "pred_class": int(c), "pred_name": class_names[c]})
        w.write(rows)
        w.close()
