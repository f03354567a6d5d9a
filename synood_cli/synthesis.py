"""`synood synthesize`: boundary-guided iterative inpainting (docs/method.md) into per-class shards.

Per batch of source images x with context prompts p:
  z = vae_scale * VAE.encode(x); eps ~ N(0, I) from a per-image seed
  for each iteration: z_t0 = add_noise(z, eps, t0); z0 = sampler(z_t0; p, mask, cfg) without grad;
      u = z0 / vae_scale; x_hat = decode(u) with grad on u; s = S(x_hat); L = sum_i (s_i - target)^2;
      eps <- eps - lr * dL/du   (no backpropagation through the sampler; skipped after the last iteration)
  keep x_hat of the last iteration and its score s.

The gradient is taken at the unscaled latent u, as in the research code. Deviations from the
research code, on purpose (docs/method.md lists them all with the flags that restore them): the loss
is summed per image, not averaged over the batch, so an image's result does not depend on its
batch (the research code's mean over a batch of 2 halved the step: its lr 10 is `--lr 5` here);
the last iteration's backward is skipped; the start noise comes from a seed derived from the run
seed and the image path, so outputs do not depend on batch size, order, rank count or resumption.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synood_cli.data.ranges import format_class_spec, parse_class_spec, shard_for_rank
from synood_cli.data.refs import image_key
from synood_cli.data.shards import shard_name, write_shard
from synood_cli.errors import PartialArtifact, StoreBusy, UsageError
from synood_cli.guidance import GUIDANCE, GuideModel, boundary_target, higher_means_id
from synood_cli.negatives import ID_TEMPLATE
from synood_cli.reporting import NullReporter, Reporter
from synood_cli.runtime import rank_info
from synood_cli.store import Artifact, Store

SCHEMA = 3  # 2: start-noise seeds from dataset-relative paths; 3: gradient at u = z0 / vae_scale
MASKS = ("full",)
SOURCE_FITS = ("crop", "squash")


@dataclass
class SynthConfig:
    prompts: str
    diffusion: str
    classes: str | None = None
    size: int = 512
    strength: float = 0.6
    steps: int = 20
    cfg: float = 8.0
    iterations: int = 3
    lr: float = 10.0
    mask: str = "full"
    guidance: str = "energy"
    target: str = "boundary"
    guide_model: str = "clip"
    chain: bool = False
    seed: int = 0
    batch_size: int = 4
    auto_batch: bool = False  # --batch-size auto: on CUDA measured once the models are loaded; batch_size is the CPU value
    device: str = "auto"
    precision: str = "auto"
    profile: str = "default"
    clip_model: str | None = None
    clip_pretrained: str | None = None
    source_fit: str | None = None  # crop | squash; None: the profile's (docs/method.md, "Source geometry")


@dataclass
class SynthPlan:
    config: SynthConfig
    prompts: Artifact
    rows_by_class: dict[int, list[dict]]
    classes: list[int]
    my_classes: list[int]
    rank: int
    world: int
    artifact_config: dict = field(default_factory=dict)


def image_seed(run_seed: int, image_key: str) -> int:
    """A 60-bit seed from the run seed and the image's path relative to the dataset root.

    Independent of batch, order and rank, and of where the dataset lives on disk.
    """
    return int(hashlib.sha256(f"{run_seed}:{image_key}".encode()).hexdigest()[:15], 16)


def start_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Per-image N(0, I) from CPU generators: the same numbers on every device."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def with_profile_defaults(cfg: SynthConfig) -> SynthConfig:
    """`source_fit` None and `precision` auto take the profile's values (paper: squash, fp32).

    The research pipeline squashes each source to 512x512 and runs in fp32 (docs/method.md,
    "Differences"); the default profile crops and runs bf16 on CUDA. An explicit value wins.
    """
    from dataclasses import replace

    from synood_cli.profiles import load_profile
    from synood_cli.runtime import normalize_precision

    d = load_profile(cfg.profile).get("synthesize", {})
    fit = cfg.source_fit if cfg.source_fit is not None else d.get("source_fit", "crop")
    if fit not in SOURCE_FITS:
        raise UsageError(f"--source-fit {fit!r} is not one of {', '.join(SOURCE_FITS)}")
    precision = normalize_precision(cfg.precision)
    if precision == "auto":
        precision = normalize_precision(d.get("precision", "auto"))
    return replace(cfg, source_fit=fit, precision=precision)


def plan_synthesis(cfg: SynthConfig, store: Store) -> SynthPlan:
    """Validate everything cheap before any model loads (exit 2/3)."""
    from synood_cli.models.diffusion import validate_diffusion
    from synood_cli.prompting import read_prompts

    cfg = with_profile_defaults(cfg)
    GUIDANCE.get(cfg.guidance)
    if cfg.mask not in MASKS:
        raise UsageError(f"--mask {cfg.mask!r} is not supported", hint="use --mask full (the paper's setting)")
    if cfg.size % 8 or cfg.size < 32:
        raise UsageError(f"--size must be a multiple of 8 and at least 32, got {cfg.size}")
    if not 0 < cfg.strength <= 1:
        raise UsageError(f"--strength must be in (0, 1], got {cfg.strength}")
    if cfg.steps < 1 or cfg.iterations < 1 or cfg.batch_size < 1:
        raise UsageError("--steps, --iterations and --batch-size must be at least 1")
    if int(cfg.steps * cfg.strength) < 1:
        raise UsageError(f"--steps {cfg.steps} with --strength {cfg.strength} runs no denoising step", hint="raise --steps or --strength")
    if cfg.target != "boundary":
        try:
            float(cfg.target)
        except ValueError:
            raise UsageError(f"--target must be 'boundary' or a number, got {cfg.target!r}") from None
    if not (cfg.guide_model == "clip" or cfg.guide_model.startswith("torchvision:")):
        raise UsageError(f"unknown --guide-model {cfg.guide_model!r}", hint="use clip or torchvision:NAME (e.g. torchvision:resnet50)")
    prompts = store.find(cfg.prompts, kind="prompts").check()
    from synood_cli.data.refs import use_prompts_image_column

    use_prompts_image_column(prompts.manifest.get("config", {}))
    if not prompts.complete:
        raise UsageError(
            f"the prompts artifact {prompts.ref} is incomplete ({prompts.status})",
            hint="rerun the `synood prompt` command that made it; it resumes where it stopped",
        )
    rows = read_prompts(prompts)
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(int(r["class_index"]), []).append(r)
    available = sorted(by_class)
    if cfg.classes is None:
        classes = available
    else:
        n = max(available) + 1 if available else 0
        wanted = parse_class_spec(cfg.classes, max(n, _max_index(cfg.classes) + 1))
        missing = [c for c in wanted if c not in by_class]
        if missing:
            raise UsageError(
                f"--classes {cfg.classes}: {len(missing)} class(es) have no prompts in {prompts.ref} (e.g. {missing[:5]})",
                hint=f"the prompts cover classes {format_class_spec(available)}",
            )
        classes = wanted
    if not classes:
        raise UsageError(f"the prompts artifact {prompts.ref} has no rows")
    validate_diffusion(cfg.diffusion)
    rank, world, _ = rank_info()
    mine = shard_for_rank(classes, rank, world)
    art_cfg = {
        "schema": SCHEMA,
        "prompts": prompts.id,
        "classes": format_class_spec(classes),
        "diffusion": cfg.diffusion,
        "size": cfg.size,
        "strength": cfg.strength,
        "steps": cfg.steps,
        "cfg": cfg.cfg,
        "iterations": cfg.iterations,
        "lr": cfg.lr,
        "mask": cfg.mask,
        "guidance": cfg.guidance,
        "target": cfg.target,
        "guide_model": cfg.guide_model,
        # the CLIP guide's classifier is the ID names in the ID template: a new template is a new guide
        "clip": _clip_guide_key(cfg) if cfg.guide_model == "clip" else None,
        "chain": cfg.chain,
        "seed": cfg.seed,
        "precision": cfg.precision,
        "source_fit": cfg.source_fit,
    }
    return SynthPlan(cfg, prompts, by_class, classes, mine, rank, world, art_cfg)


def _clip_guide_key(cfg: SynthConfig) -> list:
    """The CLIP guide's identity in the artifact config; a tag built with QuickGELU adds it, so sets
    guided by the GELU build synood made before (docs/method.md, "CLIP") are not resumed into."""
    from synood_cli.models.clip import clip_source, pretrained_build
    from synood_cli.profiles import load_profile

    key = [cfg.clip_model, cfg.clip_pretrained, cfg.profile, ID_TEMPLATE]
    if pretrained_build(clip_source(load_profile(cfg.profile), cfg.clip_model, cfg.clip_pretrained)).get("force_quick_gelu"):
        key.append("quick_gelu")
    return key


def _max_index(spec: str) -> int:
    nums = [int(x) for x in spec.replace(":", ",").split(",") if x.strip().lstrip("-").isdigit()]
    return max(nums) if nums else 0


# -- images ----------------------------------------------------------------------------------


def load_source(path: str, size: int, fit: str = "crop") -> torch.Tensor:
    """The source as [3, size, size] in [-1, 1]: `crop` resizes the shorter side to `size` and
    centre-crops (what CLIP's eval transform sees of it); `squash` resizes the whole picture to
    size x size, as the research code's `resize((512, 512))` (bicubic, Pillow's default)."""
    from PIL import Image

    from synood_cli.data.refs import open_image

    im = open_image(path).convert("RGB")
    if fit == "squash":
        im = im.resize((size, size), Image.BICUBIC)
    else:
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
    return t.float() / 127.5 - 1.0


def to_pil(x01: torch.Tensor):
    from PIL import Image

    arr = (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(arr)


# -- the loop ----------------------------------------------------------------------------------


class Synthesizer:
    """The models of one run and the boundary-guided loop over a batch."""

    def __init__(self, cfg: SynthConfig, inpainter, guide: GuideModel | None, target: float | None, device, skip_last_backward: bool = True):
        self.cfg, self.inp, self.guide, self.target, self.device = cfg, inpainter, guide, target, device
        # the research code ran a backward pass in the last iteration too (benchmarks measure that)
        self.skip_last_backward = skip_last_backward
        self.latent_size = cfg.size // inpainter.vae_scale_factor
        sched = inpainter.new_scheduler()
        sched.set_timesteps(cfg.steps)
        init = min(int(cfg.steps * cfg.strength), cfg.steps)
        self.t_start = cfg.steps - init
        self.timesteps = sched.timesteps[self.t_start * sched.order :].to(device)
        with torch.no_grad():
            self.uncond = self.encode_text([""])
            # mask = whole image: the masked image is all gray, so its latent is one constant
            gray = torch.zeros(1, 3, cfg.size, cfg.size, device=device)
            self.masked_latent = inpainter.vae.encode(gray).latent_dist.mode() * inpainter.latent_scale
        self.unet_dtype = next(inpainter.unet.parameters()).dtype
        self.on_step = None  # called with the batch size after each denoising step: progress that moves

    def steps_per_image(self) -> int:
        """Denoising steps one image goes through in `run` (all iterations)."""
        guided = self.cfg.guidance != "none"
        return (self.cfg.iterations if (guided or self.cfg.chain) else 1) * len(self.timesteps)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.inp.tokenizer(prompts, padding="max_length", max_length=self.inp.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        return self.inp.text_encoder(tok.input_ids.to(self.device))[0]

    @torch.no_grad()
    def sample(self, z_t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Denoise from the first kept timestep to a clean latent (classifier-free guidance)."""
        sched = self.inp.new_scheduler()
        sched.set_timesteps(self.cfg.steps)
        b = z_t.shape[0]
        mask = torch.ones(2 * b, 1, self.latent_size, self.latent_size, device=self.device)
        masked = self.masked_latent.expand(2 * b, -1, -1, -1)
        z = z_t
        for t in self.timesteps:
            inp = sched.scale_model_input(torch.cat([z, z]), t)
            inp = torch.cat([inp, mask, masked], dim=1).to(self.unet_dtype)
            eps = self.inp.unet(inp, t, encoder_hidden_states=emb.to(self.unet_dtype)).sample.float()
            uncond, cond = eps.chunk(2)
            z = sched.step(uncond + self.cfg.cfg * (cond - uncond), t, z).prev_sample
            if self.on_step is not None:
                self.on_step(b)
        return z

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.decode_unscaled(z0 / self.inp.latent_scale)

    def decode_unscaled(self, u: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from the unscaled latent u = z0 / vae_scale (what the VAE decoder receives)."""
        x = self.inp.vae.decode(u).sample
        return (x / 2 + 0.5).clamp(0, 1)

    def guidance_step(self, eps: torch.Tensor, z0: torch.Tensor):
        """One noise update: eps - lr * dL/du with L = sum_i (S(decode(u_i)) - target)^2, u = z0 / vae_scale.

        The gradient is taken at the unscaled latent u, as the research code does (docs/method.md,
        "Boundary-guided inpainting"): at the scaled z0 it would be 1/vae_scale = 5.49 times larger.
        Returns (new eps, decoded images, rows whose gradient was finite).
        """
        u = (z0.detach().float() / self.inp.latent_scale).requires_grad_(True)
        x = self.decode_unscaled(u)
        s = self.guide.score(x, self.cfg.guidance)
        loss = ((s - self.target) ** 2).sum()  # per image: independent of the batch
        (grad,) = torch.autograd.grad(loss, u)
        ok = torch.isfinite(grad).flatten(1).all(dim=1)
        step = torch.where(ok[:, None, None, None], grad, torch.zeros_like(grad))
        return eps - self.cfg.lr * step, x.detach(), ok

    @torch.no_grad()
    def encode(self, x_pm1: torch.Tensor) -> torch.Tensor:
        return self.inp.vae.encode(x_pm1).latent_dist.mode() * self.inp.latent_scale

    def run(self, sources: torch.Tensor, prompts: list[str], seeds: list[int]):
        """Return (images in [0,1], final guidance scores, rows whose gradient was not finite)."""
        cfg = self.cfg
        b = sources.shape[0]
        sources = sources.to(self.device)
        z_start = self.encode(sources)
        eps = start_noise(seeds, tuple(z_start.shape[1:])).to(self.device)
        emb = torch.cat([self.uncond.expand(b, -1, -1), self.encode_text(prompts)])
        t0 = self.timesteps[:1].repeat(b)
        guided = cfg.guidance != "none"
        nonfinite = torch.zeros(b, dtype=torch.bool, device=self.device)
        # without guidance or chaining every iteration repeats the same work: run only the last
        iterations = cfg.iterations if (guided or cfg.chain) else 1
        add_noise = self.inp.new_scheduler()
        add_noise.set_timesteps(cfg.steps)
        for it in range(iterations):
            z_t = add_noise.add_noise(z_start, eps, t0)
            z0 = self.sample(z_t, emb)
            last = it == iterations - 1
            if guided and not (last and self.skip_last_backward):
                eps, x, ok = self.guidance_step(eps, z0)
                nonfinite |= ~ok
            else:
                with torch.no_grad():
                    x = self.decode(z0)
            if cfg.chain and not last:
                z_start = self.encode(x * 2 - 1)
        with torch.no_grad():
            scores = self.guide.score(x, cfg.guidance) if (guided and self.guide is not None) else torch.full((b,), float("nan"))
        return x.float().cpu(), scores.float().cpu(), nonfinite.cpu()


def run_with_backoff(synth: Synthesizer, sources, prompts, seeds, reporter: Reporter):
    """Halve the batch on CUDA out-of-memory and go on (batching.split_on_oom); one image that does not fit is exit 3.

    Every image's noise comes from its own seed, so the halves give the images the whole batch would.
    """
    from synood_cli.batching import split_on_oom

    def split(b: int, half: int) -> None:
        reporter.warn(f"CUDA out of memory at batch {b}; going on with {half}")

    return split_on_oom(lambda lo, hi: synth.run(sources[lo:hi], prompts[lo:hi], seeds[lo:hi]), len(prompts),
                        lambda a, c: tuple(torch.cat([u, v]) for u, v in zip(a, c)), split, hint="lower --size, or use --precision bf16")


def auto_synth_batch(synth: Synthesizer, cfg: SynthConfig, device, cap: int, reporter: Reporter) -> int:
    """--batch-size auto: the batch that fits in free GPU memory, from a probe of 1 and 2 blank images."""
    from synood_cli.batching import choose_batch_size

    return choose_batch_size(device, synth_probe(synth, cfg, device), cap, cfg.batch_size, "synthesize", reporter)


def synth_probe(synth: Synthesizer, cfg: SynthConfig, device):
    """`probe(k)`: the real models on k blank sources, with 2 iterations (one guided backward pass, the
    memory peak) and one denoising step: the memory of a step does not depend on how many there are."""
    from dataclasses import replace

    steps = max(1, math.ceil(1 / cfg.strength))
    while int(steps * cfg.strength) < 1:
        steps += 1
    probe_synth = Synthesizer(replace(cfg, steps=steps, iterations=min(cfg.iterations, 2)), synth.inp, synth.guide, synth.target, device)

    def probe(k: int) -> None:
        probe_synth.run(torch.zeros(k, 3, cfg.size, cfg.size), ["a photo"] * k, list(range(k)))

    return probe


# -- the run ------------------------------------------------------------------------------------


def build_guide(cfg: SynthConfig, store: Store, class_names: list[str], device, dtype) -> GuideModel | None:
    if cfg.guidance == "none":
        return None
    if cfg.guide_model.startswith("torchvision:"):
        from synood_cli.guidance import torchvision_guide

        return torchvision_guide(cfg.guide_model.split(":", 1)[1], device)
    from synood_cli.guidance import clip_guide
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.negatives import ID_TEMPLATE, text_features
    from synood_cli.profiles import load_profile

    clip = load_clip(clip_source(load_profile(cfg.profile), cfg.clip_model, cfg.clip_pretrained), store, device, dtype)
    return clip_guide(clip, text_features(clip, store, class_names, ID_TEMPLATE))


def compute_target(plan: SynthPlan, store: Store, guide: GuideModel | None, reporter: Reporter) -> float | None:
    """The boundary target, computed once per run from all source images of the class range (cached)."""
    cfg = plan.config
    if guide is None:
        return None
    if cfg.target != "boundary":
        return float(cfg.target)
    rows = [r for c in plan.classes for r in plan.rows_by_class[c]]

    def build(folder: Path) -> dict:
        scores = []
        with reporter.task("boundary target: scoring source images", total=len(rows)) as task:
            for start in range(0, len(rows), 16):
                batch = []
                for r in rows[start : start + 16]:
                    try:
                        batch.append(load_source(r["image_path"], cfg.size, cfg.source_fit))
                    except Exception:  # noqa: BLE001 - unreadable sources are skipped here and reported later
                        pass
                if batch:
                    with torch.no_grad():
                        scores.append(guide.score((torch.stack(batch) + 1) / 2, cfg.guidance).float().cpu())
                task.advance(len(rows[start : start + 16]))
        s = torch.cat(scores)
        return {"target": boundary_target(s, up), "images": len(s), "mean_score": float(s.mean()), "higher_means_id": up}

    up = higher_means_id(cfg.guidance)
    key = {k: plan.artifact_config[k] for k in ("prompts", "classes", "size", "guidance", "guide_model", "clip", "source_fit")}
    key["tail"] = "low" if up else "high"  # the OOD-side tail of the ID scores (an old cache took the low one always)
    art = store.build("boundary", key, build)
    return float(art.manifest["summary"]["target"])


def run_synthesis(plan: SynthPlan, store: Store, name: str | None = None, overwrite: bool = False, reporter: Reporter = NullReporter()) -> Artifact:
    """Synthesize this rank's classes into shards; the artifact is complete when every shard is.

    A complete artifact with a missing or truncated file is reopened and only what is missing is
    redone. A process that had to skip classes another process was writing raises
    PartialArtifact (exit 3) once its own classes are done, instead of reporting success.
    """
    art = store.artifact("synth", plan.artifact_config)
    if overwrite and art.path.exists() and plan.rank == 0:
        with art.lock():
            import shutil

            shutil.rmtree(art.path)
    if name:
        store.set_name(name, art)
    # shared: the ranks write side by side; `store rm`/`gc` (exclusive) refuse while any of them runs
    with art.lock(shared=True):
        if art.complete:
            damaged = art.reopen()
            if not damaged:
                reporter.info(f"{art.ref} is complete; nothing to do (--overwrite to start over)")
                return art
            reporter.warn(f"{art.ref} is damaged ({damaged[0]}); redoing what is missing")
        busy = _synthesize_mine(art, plan, store, reporter)
        if not finish_if_complete(art, plan, reporter) and busy:
            raise PartialArtifact(
                f"{art.ref} is partial: class(es) {format_class_spec(busy)} are being written by another process; "
                "this process's other classes are done",
                hint="rerun the same command once that process has finished: it then completes the artifact",
            )
    return art


def _synthesize_mine(art: Artifact, plan: SynthPlan, store: Store, reporter: Reporter) -> list[int]:
    """This rank's classes that have no shard yet; returns the classes another process held."""
    from synood_cli.models.diffusion import load_inpainter
    from synood_cli.runtime import resolve_device, resolve_dtype

    cfg = plan.config
    busy: list[int] = []
    art.begin(plan.artifact_config, inputs={"prompts": plan.prompts.ref})
    todo = [c for c in plan.my_classes if not art.file(shard_name(c)).exists()]
    if plan.world > 1:
        reporter.info(f"rank {plan.rank}/{plan.world}: classes {format_class_spec(plan.my_classes)}")
    skipped = len(plan.my_classes) - len(todo)
    if skipped:
        reporter.info(f"resuming {art.ref}: {skipped} class shard(s) already complete")
    if todo:
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.precision, device)
        names = _class_names(plan)
        reporter.info(f"loading {cfg.diffusion} and the guide ({cfg.guide_model}) on {device}")
        inp = load_inpainter(cfg.diffusion, store, device, dtype, seed=0)
        guide = build_guide(cfg, store, [names[c] for c in sorted(names)], device, dtype)
        target = compute_target(plan, store, guide, reporter)
        if target is not None:
            reporter.info(f"guidance {cfg.guidance}, target {target:.4f}" + (" (boundary at 95% TPR)" if cfg.target == "boundary" else ""))
        synth = Synthesizer(cfg, inp, guide, target, device)
        total = sum(len(plan.rows_by_class[c]) for c in todo)
        batch_size = cfg.batch_size
        if cfg.auto_batch:  # a class is the most a batch holds (batches never span classes)
            batch_size = auto_synth_batch(synth, cfg, device, max(len(plan.rows_by_class[c]) for c in todo), reporter)
        started, done_images = time.monotonic(), 0
        with reporter.task("synthesizing", total=total) as task:
            for c in todo:
                try:
                    with art.lock(part=f"class-{c}"):
                        if art.file(shard_name(c)).exists():
                            continue
                        done_images += _synthesize_class(art, synth, plan, c, target, reporter, task, batch_size)
                except StoreBusy:
                    reporter.info(f"class {c} is being synthesized by another process; skipping it")
                    busy.append(c)
                    task.advance(len(plan.rows_by_class[c]))
        elapsed = time.monotonic() - started
        if done_images:
            reporter.info(f"{done_images} images in {elapsed:.1f} s ({60 * done_images / elapsed:.1f} images/min on {device})")
        art.update_summary(**{f"throughput_rank{plan.rank}": {"images": done_images, "seconds": round(elapsed, 2), "device": str(device)}, "target": target})
    return busy


def _class_names(plan: SynthPlan) -> dict[int, str]:
    return {c: plan.rows_by_class[c][0]["class_name"] for c in plan.classes}


def _synthesize_class(art: Artifact, synth: Synthesizer, plan: SynthPlan, c: int, target, reporter: Reporter, task, batch_size: int | None = None) -> int:
    cfg = plan.config
    batch_size = batch_size or cfg.batch_size
    rows = plan.rows_by_class[c]
    root = plan.prompts.manifest["config"]["folder"]  # read once per class, not per batch
    out, failures = [], []
    per_image = max(1, synth.steps_per_image())
    moved = [0.0]

    def step(b: int) -> None:  # the bar moves per denoising step, in fractions of an image
        moved[0] += b / per_image
        task.advance(b / per_image)

    synth.on_step = step
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        moved[0] = 0.0
        sources, ok = [], []
        for r in batch:
            try:
                sources.append(load_source(r["image_path"], cfg.size, cfg.source_fit))
                ok.append(r)
            except Exception as e:  # noqa: BLE001 - recorded in the manifest, never fatal
                reporter.warn(f"skipped {r['image_path']}: unreadable source image ({type(e).__name__})")
                failures.append({"image_path": r["image_path"], "reason": f"unreadable: {type(e).__name__}: {e}"})
        if ok:
            seeds = [image_seed(cfg.seed, image_key(r["image_path"], root)) for r in ok]  # data/refs.py
            images, scores, nonfinite = run_with_backoff(synth, torch.stack(sources), [r["prompt"] for r in ok], seeds, reporter)
            for r, img, s, bad, seed in zip(ok, images, scores.tolist(), nonfinite.tolist(), seeds):
                if bad:
                    reporter.warn(f"{r['image_path']}: non-finite guidance gradient; that update was dropped")
                out.append({
                    "image": to_pil(img),
                    "source_path": r["image_path"],
                    "class_index": c,
                    "class_name": r["class_name"],
                    "prompt": r["prompt"],
                    "seed": seed,
                    "guidance": cfg.guidance,
                    "target": float("nan") if target is None else float(target),
                    "final_score": float(s),
                    "nonfinite_grad": bool(bad),
                })
        rest = len(batch) - moved[0]  # whole images once the batch is done (skipped sources)
        if rest > 1e-6:
            task.advance(rest)
    synth.on_step = None
    if out:
        write_shard(art.file(shard_name(c)), out)
    if failures:
        import json

        art.write_bytes(f"failures/class-{c:05d}.json", json.dumps(failures).encode())
    return len(out)


def finish_if_complete(art: Artifact, plan: SynthPlan, reporter: Reporter) -> bool:
    """Mark the artifact complete once every class of the range has its shard (idempotent, any rank)."""
    missing = [c for c in plan.classes if not art.file(shard_name(c)).exists() and not art.file(f"failures/class-{c:05d}.json").exists()]
    if missing:
        if plan.world > 1:  # expected under ranks: whichever rank finishes last completes the artifact
            reporter.info(f"{art.ref}: this rank's classes are done ({len(plan.classes) - len(missing)}/{len(plan.classes)} class shards "
                          "present so far); the last rank to finish completes the artifact")
        else:
            reporter.info(f"{art.ref}: {len(plan.classes) - len(missing)}/{len(plan.classes)} class shards present; rerun or run the other ranks to finish")
        return False
    summary = synth_summary(art, plan)
    write_preview(art, plan.config.size, fit=plan.config.source_fit)
    art.finish(summary)
    return True


def synth_summary(art: Artifact, plan: SynthPlan) -> dict:
    import json

    import pyarrow.parquet as pq

    images, nonfinite, deltas, scores = 0, 0, [], []
    per_class = {}
    for c in plan.classes:
        p = art.file(shard_name(c))
        if not p.exists():
            continue
        t = pq.read_table(p, columns=["final_score", "target", "nonfinite_grad"])
        n = t.num_rows
        images += n
        per_class[c] = n
        nonfinite += sum(t.column("nonfinite_grad").to_pylist())
        for s, tg in zip(t.column("final_score").to_pylist(), t.column("target").to_pylist()):
            if not math.isnan(s):
                scores.append(s)
                if not math.isnan(tg):
                    deltas.append(abs(s - tg))
    failures = []
    for f in sorted(art.path.glob("failures/*.json")):
        failures += json.loads(f.read_text())
    return {
        "images": images,
        "shards": len(per_class),
        "classes": format_class_spec(plan.classes),
        "failures": len(failures),
        "failed_images": [f"{x['image_path']}: {x['reason']}" for x in failures[:50]],
        "nonfinite_gradients": nonfinite,
        "mean_final_score": sum(scores) / len(scores) if scores else None,
        "mean_abs_distance_to_target": sum(deltas) / len(deltas) if deltas else None,
    }


PREVIEW_THUMB = 128  # smallest side of a preview image: tiny 32 px images are upscaled to be judged
PREVIEW_GAP = 16  # white space between pairs
PREVIEW_LABEL = 18  # text line under each pair


def preview_label(row: dict) -> str:
    """What a preview pair is labelled with: its class and the guidance score it ended at."""
    return f"{row.get('class_name', '?')} · {row.get('guidance', 'score')} {float(row.get('final_score', float('nan'))):.4g}"


def preview_layout(n: int, size: int, cols: int = 4) -> tuple[int, int, int]:
    """(thumb side, grid width, grid height) for `n` pairs of `size`-pixel images."""
    thumb = max(PREVIEW_THUMB, min(size, 256))
    rows = math.ceil(n / cols)
    width = cols * 2 * thumb + (cols + 1) * PREVIEW_GAP
    height = rows * (thumb + PREVIEW_LABEL) + (rows + 1) * PREVIEW_GAP
    return thumb, width, height


def write_preview(art: Artifact, size: int, pairs: int = 16, fit: str = "crop") -> None:
    """preview.png: source | synthesized for the first `pairs` images, each pair labelled with its class and final score."""
    from PIL import Image, ImageDraw, ImageFont

    from synood_cli.data.shards import read_shard

    shards = sorted(art.path.glob("shards/*.parquet"))
    items = []
    for s in shards:
        for row in read_shard(s):
            items.append(row)
            if len(items) >= pairs:
                break
        if len(items) >= pairs:
            break
    if not items:
        return
    cols = 4  # pairs per grid row
    thumb, width, height = preview_layout(len(items), size, cols)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    resample = Image.NEAREST if size < thumb else Image.BICUBIC  # upscaled tiny images keep their pixels visible
    for i, row in enumerate(items):
        try:
            src = to_pil((load_source(row["source_path"], size, fit) + 1) / 2)
        except Exception:  # noqa: BLE001 - a vanished source shows as blank
            src = Image.new("RGB", (size, size), "white")
        x = PREVIEW_GAP + (i % cols) * (2 * thumb + PREVIEW_GAP)
        y = PREVIEW_GAP + (i // cols) * (thumb + PREVIEW_LABEL + PREVIEW_GAP)
        grid.paste(src.resize((thumb, thumb), resample), (x, y))
        grid.paste(row["image"].resize((thumb, thumb), resample), (x + thumb, y))
        draw.text((x + 2, y + thumb + 3), preview_label(row)[:48], fill="black", font=font)
    with art.writing("preview.png") as tmp:
        grid.save(tmp, format="PNG")
