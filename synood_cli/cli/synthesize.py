"""`synood synthesize`: boundary-guided iterative inpainting into resumable per-class shards."""

from __future__ import annotations

from typing import Optional

import typer

from synood_cli.cli import common
from synood_cli.cli.flags import GUIDANCES, SOURCE_FITS, choices
from synood_cli.cli.render import err_console, error_boundary, esc, rank_prefix

HELP = """Regenerate each prompted ID image from its context prompt, pushing the start noise along the
gradient of an OOD score so the result lands near the ID/OOD boundary.

One Parquet shard per class, written atomically: rerun the same command after a crash and complete
shards are skipped. Under torchrun or accelerate launch each rank takes a disjoint slice of the
class range and its own GPU. Every image's start noise comes from the run seed and its path, so
results do not depend on batch size, order or rank count. Defaults are the paper code's settings
(512 px, strength 0.6, 20 steps, CFG 8, 3 iterations) with the corrected guidance: the real energy
score, pushed to the ID boundary at 95% TPR of the source images. The gradient is taken at the
unscaled latent u = z0 / vae_scale, as in the research code; docs/method.md has every formula."""

EPILOG = """[bold]Examples[/bold]

  synood synthesize --prompts ctx-0-100 --classes 0:100 --name near-0-100

  torchrun --nproc-per-node 8 -m synood_cli synthesize --prompts ctx --classes 0:1000 --name near

  synood synthesize --prompts ctx --profile tiny

  synood store show near-0-100 ; synood store export near-0-100 --to folder/"""


def _opt(value, defaults: dict, key: str, fallback):
    return value if value is not None else defaults.get(key, fallback)


@error_boundary
def synthesize(
    ctx: typer.Context,
    prompts: str = typer.Option(..., "--prompts", help="The prompts artifact (name or id) made by `synood prompt`."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="Class indices A:B (half-open), 7, or 0:10,20 \\[default: every class of the prompts]."),
    diffusion: Optional[str] = typer.Option(None, "--diffusion", help="A diffusers inpainting id or folder \\[default: from the profile: Stable Diffusion 2 inpainting for default and paper, see `synood profiles show`]."),
    size: Optional[int] = typer.Option(None, "--size", help="Output side in pixels \\[default: 512]."),
    strength: Optional[float] = typer.Option(None, "--strength", help="Share of the schedule re-run from the noised source \\[default: 0.6]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Scheduler steps (strength x steps are run) \\[default: 20]."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale \\[default: 8]."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Noise-update iterations \\[default: 3]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Step size: eps <- eps - lr * dL/du, the gradient at the unscaled latent u = z0 / vae_scale, as the research code \\[default: 10; paper profile 5: the loss is per image, so the research code's lr 10 over a batch of 2 is --lr 5]."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Inpainting mask: full (the whole image, the paper's setting)."),
    guidance: Optional[str] = typer.Option(None, "--guidance", help="energy or msp (higher = ID), mean-log-softmax (higher = OOD) or none \\[default: energy; paper profile mean-log-softmax].", **choices(GUIDANCES, "<guidance>")),
    target: Optional[str] = typer.Option(None, "--target", help="boundary (the score at 95% TPR of the source images, on the OOD side whatever the score's direction) or a number \\[default: boundary; paper profile -5]."),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help="clip (zero-shot over the ID names) or torchvision:NAME \\[default: clip]."),
    chain: Optional[bool] = typer.Option(None, "--chain/--no-chain", help="Feed each iteration's output to the next instead of restarting from the source."),
    source_fit: Optional[str] = typer.Option(None, "--source-fit", help="How a source becomes a --size square: crop (shorter side to --size, centre crop: the part CLIP sees) or squash (the whole picture resized, aspect ratio lost, as the research code) \\[default: crop; paper profile squash].", **choices(SOURCE_FITS)),
    batch_size: Optional[str] = common.BATCH_SIZE,
    profile: str = common.PROFILE,
    model: Optional[str] = typer.Option(None, "--model", help="CLIP for --guide-model clip \\[default: from the profile]."),
    pretrained: Optional[str] = common.PRETRAINED,
    name: Optional[str] = typer.Option(None, "--name", help="Store alias for the synthesized set."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete this run's earlier shards and start over (single process)."),
) -> None:
    from synood_cli.batching import AUTO, parse_batch_size
    from synood_cli.profiles import load_profile
    from synood_cli.store import Store
    from synood_cli.synthesis import SynthConfig, plan_synthesis, run_synthesis

    state = ctx.obj
    reporter = state.reporter()
    d = load_profile(profile).get("synthesize", {})
    batch_size = parse_batch_size(batch_size)
    auto_batch = batch_size == AUTO  # the profile's batch size on a CPU, measured on CUDA once the models are loaded
    batch_size = None if auto_batch else batch_size
    cfg = SynthConfig(
        prompts=prompts, classes=classes, diffusion=_opt(diffusion, d, "diffusion", "stabilityai/stable-diffusion-2-inpainting"),
        size=_opt(size, d, "size", 512), strength=_opt(strength, d, "strength", 0.6), steps=_opt(steps, d, "steps", 20),
        cfg=_opt(cfg_scale, d, "cfg", 8.0), iterations=_opt(iterations, d, "iterations", 3), lr=_opt(lr, d, "lr", 10.0),
        mask=_opt(mask, d, "mask", "full"), guidance=_opt(guidance, d, "guidance", "energy"), target=str(_opt(target, d, "target", "boundary")),
        guide_model=_opt(guide_model, d, "guide_model", "clip"), chain=_opt(chain, d, "chain", False), seed=state.seed,
        batch_size=_opt(batch_size, d, "batch_size", 4), auto_batch=auto_batch, device=state.device, precision=state.precision, profile=profile,
        clip_model=model, clip_pretrained=pretrained, source_fit=source_fit,  # None/auto: the profile's (plan_synthesis)
    )
    store = Store(state.home)
    plan = plan_synthesis(cfg, store)
    art = run_synthesis(plan, store, name=name, overwrite=overwrite, reporter=reporter)
    s = art.manifest.get("summary", {})
    if art.complete:
        err_console.print(  # by every rank: the one that completed the artifact may be any of them
            rank_prefix() + f"{art.ref}: {s.get('images')} images in {s.get('shards')} shards; {s.get('failures')} failed, "
            f"{s.get('nonfinite_gradients')} non-finite gradients; preview {esc(art.file('preview.png'))}"
        )
    else:
        err_console.print(rank_prefix() + f"{art.ref}: partial, not complete yet (this process's classes are done; the other ranks' are not)")
