"""`synood finetune` and `synood run`: train the SynOOD adapter and negatives; the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.flags import TABLE_FORMATS, choices
from synood_cli.cli.render import error_boundary, esc, leader_print

HELP = """Fine-tune CLIP for OOD detection on the synthesized near-boundary images (CLIP stays frozen).

Each synthesized image gets its nearest negative label; then a residual image-feature adapter and
the negative label features are trained (the research code's optimizers and schedules by default).
Image features are computed once and cached by content: this is exact because CLIP preprocessing
has no randomness, so a second finetune with other hyperparameters re-encodes nothing."""

EPILOG = """[bold]Examples[/bold]

  synood finetune --id data/imagenet/train --prompts ctx --synth near --name synood-in1k

  synood finetune --prompts ctx --synth near --profile tiny --joint --adapter-epochs 5

  synood evaluate --id data/val --ood data/inat --checkpoint synood-in1k --compare neglabel,synood"""

RUN_HELP = """Run the whole SynOOD pipeline: prompt -> synthesize -> finetune -> evaluate (NegLabel vs SynOOD).

Every stage is an artifact found by hash: rerun the same command after a crash and it continues at
the stage and batch where it stopped."""

RUN_EPILOG = """[bold]Examples[/bold]

  synood run data/train --profile tiny --id-val data/val --ood data/ood

  synood run data/imagenet/train --profile paper --classes 0:1000 --id-val data/val --ood inat=data/iNaturalist --name in1k"""


@error_boundary
def finetune(
    ctx: typer.Context,
    prompts: str = typer.Option(..., "--prompts", help="The prompts artifact (name or id)."),
    synth: str = typer.Option(..., "--synth", help="The synth artifact (name or id) made from those prompts."),
    id_folder: Optional[Path] = typer.Option(None, "--id", help="ID training folder (its classes name the ID labels) \\[default: the prompts' folder]."),
    classnames: Optional[Path] = typer.Option(None, "--classnames", help="ID class names file instead of --id."),
    profile: str = common.PROFILE,
    model: Optional[str] = common.MODEL,
    pretrained: Optional[str] = common.PRETRAINED,
    lexicon: Optional[str] = common.LEXICON,
    neg_ratio: Optional[float] = common.NEG_RATIO,
    pool: Optional[str] = common.POOL,
    adapter_epochs: Optional[int] = typer.Option(None, "--adapter-epochs", help="Adapter epochs \\[default: the profile's: 3; world 60]."),
    adapter_lr: Optional[float] = typer.Option(None, "--adapter-lr", help="Adapter Adam learning rate, cosine to --adapter-min-lr \\[default: the profile's: 1e-3]."),
    adapter_min_lr: Optional[float] = typer.Option(None, "--adapter-min-lr", help="Adapter final learning rate \\[default: the profile's: 1e-5]."),
    adapter_weight_decay: Optional[float] = typer.Option(None, "--adapter-weight-decay", help="Adapter weight decay \\[default: the profile's: 1e-5]."),
    negatives_epochs: Optional[int] = typer.Option(None, "--negatives-epochs", help="Negative-feature epochs \\[default: the profile's: 5; world 60]."),
    negatives_lr: Optional[float] = typer.Option(None, "--negatives-lr", help="Negative-feature SGD learning rate, cosine \\[default: the profile's: 2e-2]."),
    negatives_momentum: Optional[float] = typer.Option(None, "--negatives-momentum", help="SGD momentum \\[default: the profile's: 0.9]."),
    negatives_weight_decay: Optional[float] = typer.Option(None, "--negatives-weight-decay", help="Negative-feature weight decay \\[default: the profile's: 1e-5]."),
    train_batch_size: Optional[int] = typer.Option(None, "--train-batch-size", help="Training batch size \\[default: the profile's: 128; world 32]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Held-out share for validation loss and accuracy \\[default: 0.05; paper profile 0, all data as the research code]."),
    negatives_logits: Optional[str] = typer.Option(None, "--negatives-logits", help="Softmax of the negatives stage: all (ID + negatives) or negatives (only the negatives, the research code's) \\[default: all; paper profile negatives]."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Cosine learning rate stepped per batch (step) or per epoch (epoch, the research code's) \\[default: step; paper profile epoch]."),
    id_template: Optional[str] = typer.Option(None, "--id-template", help="Template of the ID class texts the adapter is trained against \\[default: NegLabel's 'the nice {}'; the research adapter's was 'a nice {}']."),
    joint: bool = typer.Option(False, "--joint", help="Train adapter and negatives together on one objective (the paper's description; the research code trained them apart)."),
    name: Optional[str] = typer.Option(None, "--name", help="Store alias for the checkpoint."),
    exact_preprocess: bool = common.EXACT_PREPROCESS,
) -> None:
    from synood_cli.finetuning import FinetuneConfig, profile_train_config, run_finetune

    common.validate_negative_options(neg_ratio=neg_ratio)
    state = ctx.obj
    reporter = state.reporter()
    train_cfg = profile_train_config(
        profile, state.seed,
        adapter_epochs=adapter_epochs, adapter_lr=adapter_lr, adapter_min_lr=adapter_min_lr, adapter_weight_decay=adapter_weight_decay,
        negatives_epochs=negatives_epochs, negatives_lr=negatives_lr, negatives_momentum=negatives_momentum,
        negatives_weight_decay=negatives_weight_decay, batch_size=train_batch_size, val_fraction=val_fraction, joint=joint,
        negatives_logits=negatives_logits, schedule=schedule,
    )
    cfg = FinetuneConfig(
        prompts=prompts, synth=synth, home=state.home, id_folder=id_folder, classnames=classnames, profile=profile, model=model,
        pretrained=pretrained, lexicon=lexicon, neg_ratio=neg_ratio, pool=pool, id_template=id_template, train=train_cfg, device=state.device,
        precision=state.precision, exact_preprocess=exact_preprocess,
    )
    art, stats = run_finetune(cfg, name=name, reporter=reporter)
    s = art.manifest["summary"]
    for stage, final in s.get("final", {}).items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
        leader_print(esc(f"{stage.removesuffix('_final')}: {shown}"))
    leader_print(
        f"{art.ref}: {s['assigned_labels']} negative labels fine-tuned on {s['synth_images']} synthesized and {s['id_images']} ID images; "
        f"{stats.encoded} images encoded now, {stats.cached} from the cache" + (f" (name {name})" if name else ""),
        soft_wrap=True,
    )
    t = s.get("threshold")
    if t:  # what `synood score --checkpoint ... --threshold fpr95` will use
        leader_print(f"threshold at {100 * t['tpr']:g}% TPR on {t['n_id']} {t['split']} ID images ({t['method']} score < T is OOD): {t['threshold']!r}", soft_wrap=True)


@error_boundary
def run(
    ctx: typer.Context,
    train: Path = typer.Argument(..., help="ID training images: one subfolder per class, or a labelled image list (.txt)."),
    id_val: str = typer.Option(..., "--id-val", help="ID validation set for the final evaluation (a folder, image list, hf:NAME:SPLIT or Parquet)."),
    ood: List[str] = typer.Option(..., "--ood", help="OOD set(s) for the final evaluation; name=SPEC names a set."),
    data_root: Optional[Path] = inputs.DATA_ROOT,
    profile: str = common.PROFILE,
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="Class range for prompts and synthesis \\[default: all]."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Source images per class \\[default: from the profile]."),
    old_per_class: Optional[int] = typer.Option(None, "-n", hidden=True, help="Deprecated: -n is --dry-run elsewhere; use --per-class."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Synthesis noise-update iterations \\[default: from the profile]."),
    lexicon: Optional[str] = common.LEXICON,
    name: Optional[str] = typer.Option(None, "--name", help="Suffix for the stage aliases (prompts-NAME, synth-NAME, checkpoint-NAME)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json.", **choices(TABLE_FORMATS)),
    plot: Optional[Path] = typer.Option(None, "--plot", help="ROC curves and histograms (.png, .pdf, .svg) \\[default: STORE/reports/run-NAME/roc.png]."),
) -> None:
    from synood_cli.cli.demo import pipeline_thresholds, report_pictures
    from synood_cli.cli.tables import check_format, render_metrics
    from synood_cli.pipeline import PipelineConfig, run_pipeline

    from synood_cli.cli.flags import deprecated

    check_format(fmt)
    if plot is not None:
        from synood_cli.metrics import plot_format

        plot_format(plot)
    per_class = deprecated("-n", "--per-class", old_per_class, per_class)
    state = ctx.obj
    reporter = state.reporter()
    oods = [common.split_named(o) for o in ood]
    cfg = PipelineConfig(
        train=train, id_val=id_val, ood=[(n, p) for n, p in oods], home=state.home, profile=profile, classes=classes,
        per_class=per_class, seed=state.seed, device=state.device, precision=state.precision, name=name, data_root=data_root,
        lexicon=lexicon, synth_overrides={} if iterations is None else {"iterations": iterations},
    )
    result = run_pipeline(cfg, reporter)
    ev = result.evaluation
    render_metrics({m: (ev.metrics[m], ev.average[m]) for m in ev.methods}, fmt, f"synood run · {profile} profile",
                   {"id_images": len(ev.id.preds), "id_accuracy": ev.id_accuracy, "thresholds": pipeline_thresholds(ev)})
    leader_print(f"artifacts: {result.prompts.ref} -> {result.synth.ref} -> {result.checkpoint.ref}", soft_wrap=True)
    from synood_cli.distributed import is_leader

    if is_leader():  # torchrun/srun: one rank writes the pictures
        report_pictures(state, result, f"run-{name}" if name else "run", plot, f"synood run · {profile} profile")
    if profile == "tiny":
        from synood_cli.cli.demo import DISCLAIMER

        leader_print(f"[yellow]{DISCLAIMER}[/yellow]")
