"""`synood prompt`: select ID source images and write MLLM context prompts for them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli import common, inputs
from synood_cli.cli.flags import choices
from synood_cli.cli.render import error_boundary, leader_print
from synood_cli.models.mllm import IMAGE_FITS as IMAGE_FIT_CHOICES

HELP = """Select ID training images and ask an image-text model for their context, without the class object.

Per class the top --per-class images by JPEG bytes per pixel are kept (ties by file name); each
answer is cleaned of the class's names and becomes "A photo only remain {context}.", cut at whole
words to 77 diffusion tokens. Rows are appended per finished batch: rerun the same command after a
crash and it resumes (at most the batch in flight is redone)."""

EPILOG = """[bold]Examples[/bold]

  synood prompt data/imagenet/train --classes 0:100 --per-class 50 --mllm llava-hf/llava-1.5-7b-hf --name ctx-0-100

  synood prompt data/train --mllm openai --api-base http://localhost:8000/v1 --api-model Qwen/Qwen2-VL-7B-Instruct

  synood prompt data/train --profile tiny --per-class 4 --dry-run

  synood prompt hf:ILSVRC/imagenet-1k:train --classes 0:100 --name ctx-0-100

  synood prompt benchmark_imglist/imagenet/train_imagenet.txt --data-root data/images_largescale --classes 0:100

  synood store show ctx-0-100 ; synood prompt ... --export prompts.jsonl"""


@error_boundary
def prompt(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="ID training images: one subfolder per class, a labelled image list (.txt, with --data-root), or a labelled hf:NAME:SPLIT / save_to_disk / Parquet table."),
    data_root: Optional[Path] = inputs.DATA_ROOT,
    image_column: Optional[str] = inputs.IMAGE_COLUMN,
    label_column: Optional[str] = inputs.LABEL_COLUMN,
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="Class indices in sorted folder order: A:B (half-open), 7, or 0:10,20 \\[default: all]."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Images per class \\[default: 50; tiny profile 4]."),
    old_per_class: Optional[int] = typer.Option(None, "-n", hidden=True, help="Deprecated: -n is --dry-run elsewhere; use --per-class."),
    select: str = typer.Option("bytes-per-pixel", "--select", help="bytes-per-pixel (the paper's), random (seeded) or all."),
    mllm: Optional[str] = typer.Option(None, "--mllm", help="A transformers model id or folder, openai, tiny, or world (the generated world's context describer) \\[default: from the profile]."),
    api_base: Optional[str] = typer.Option(None, "--api-base", help="OpenAI-compatible endpoint for --mllm openai, e.g. http://localhost:8000/v1."),
    api_model: Optional[str] = typer.Option(None, "--api-model", help="Model name the endpoint serves."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key (sent as a bearer token if set)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight for --mllm openai."),
    retries: int = typer.Option(5, "--retries", help="Retries per request on 429/5xx/timeouts (exponential backoff)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds per request for --mllm openai."),
    question: Optional[str] = typer.Option(None, "--question", help="Question template with {class_name}."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Answer length limit \\[default: 64]."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", metavar="N|auto", help=f"Images per generation batch (and per resumable append), or {common.BATCH_SIZE_AUTO_HELP} (an endpoint's: the profile's) \\[default: from the profile]."),
    classnames: Optional[Path] = common.CLASSNAMES,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub (off unless you ask)."),
    image_fit: str = typer.Option("auto", "--image-fit", help="How images reach a transformers MLLM: pad (to a square with the image-mean colour, as LLaVA-1.5 was trained: nothing cut off), processor (the processor's own resize and centre crop, llava-hf's) or auto (pad for LLaVA-1.5, processor otherwise).", **choices(IMAGE_FIT_CHOICES)),
    profile: str = common.PROFILE,
    name: Optional[str] = typer.Option(None, "--name", help="Store alias for the prompts artifact."),
    export: Optional[str] = typer.Option(None, "--export", help="Also write the rows as JSONL to this file (- for stdout)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the selection (counts per class, first files) and stop; no model is loaded."),
) -> None:
    from synood_cli.models.mllm import mllm_spec
    from synood_cli.profiles import load_profile
    from synood_cli.prompting import DEFAULT_QUESTION, PromptConfig, plan_prompts, read_prompts, run_prompts
    from synood_cli.store import Store

    from synood_cli.cli.flags import deprecated

    per_class = deprecated("-n", "--per-class", old_per_class, per_class)
    from synood_cli.batching import AUTO, parse_batch_size

    state = ctx.obj
    reporter = state.reporter()
    defaults = load_profile(profile).get("prompt", {})
    batch_size = parse_batch_size(batch_size)
    auto_batch = batch_size == AUTO  # the profile's batch size on a CPU, measured on CUDA once the MLLM is loaded
    spec = mllm_spec(
        mllm or defaults.get("mllm", "tiny"), api_base, api_model, api_key_env=api_key_env, concurrency=concurrency,
        timeout=timeout, retries=retries, trust_remote_code=trust_remote_code, seed=state.seed, image_fit=image_fit,
    )
    cfg = PromptConfig(
        folder=folder, mllm=spec, classes=classes, per_class=per_class if per_class is not None else defaults.get("per_class", 50),
        select=select, seed=state.seed, question=question or DEFAULT_QUESTION,
        max_new_tokens=max_new_tokens or defaults.get("max_new_tokens", 64), classnames=classnames, data_root=data_root,
        image_column=image_column, label_column=label_column,
        batch_size=defaults.get("batch_size", 8) if batch_size in (None, AUTO) else batch_size, auto_batch=auto_batch,
        device=state.device, precision=state.precision,
    )
    if dry_run:
        spec_check = cfg.mllm
        cfg.mllm = mllm_spec("tiny")  # a dry run never touches the model or endpoint
        plan = plan_prompts(cfg, reporter)
        cfg.mllm = spec_check
        _print_selection(plan)
        return
    plan = plan_prompts(cfg, reporter)
    for path, reason in plan.image_set.skipped:
        reporter.warn(f"skipped {path}: {reason}")
    store = Store(state.home)
    art = run_prompts(plan, store, name=name, reporter=reporter)
    s = art.manifest["summary"]
    leader_print(
        f"{art.ref}: {s['rows']} prompts for {s['classes_covered']} classes; "
        f"{s['empty_answers']} empty answers, {s['unreadable']} unreadable images" + (f" (name {name})" if name else "")
    )
    _name_unreadable(s, art.ref, reporter)
    if export:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_prompts(art))
        if export == "-":
            sys.stdout.write(lines)
        else:
            from synood_cli.cli.outfile import write_output
            from synood_cli.distributed import is_leader

            if is_leader():  # torchrun/srun: one rank writes the file
                write_output(Path(export), lines.encode())


def _name_unreadable(summary: dict, ref: str, reporter, shown: int = 5) -> None:
    """The first unreadable images by name, not only their count (the manifest lists up to 50)."""
    unreadable = [f for f in summary.get("failures", []) if not f.endswith(": empty answer")]
    for line in unreadable[:shown]:
        path, sep, reason = line.partition(": unreadable: ")  # failures read "PATH: unreadable: REASON"
        reporter.warn(f"unreadable image {path}: {reason}" if sep else f"unreadable image {line}")
    more = summary.get("unreadable", 0) - min(shown, len(unreadable))
    if more > 0:
        reporter.warn(f"... and {more} more unreadable images: synood store show {ref}")


def _print_selection(plan) -> None:
    names = plan.image_set.class_names
    by_class: dict[int, list] = {}
    for p, c in plan.selection.items:
        by_class.setdefault(c, []).append(p)
    print("class_index\tclass_name\tselected\tfirst_files")
    for c in plan.classes:
        files = by_class.get(c, [])
        print(f"{c}\t{names[c]}\t{len(files)}\t{', '.join(f.name for f in files[:3])}")
    print(f"total\t\t{len(plan.selection.items)}\t{len(plan.selection.unreadable)} unreadable")
