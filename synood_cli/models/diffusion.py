"""Stable Diffusion inpainting components (UNet, VAE, text encoder, tokenizer, scheduler).

`synood synthesize` runs its own denoising loop over these components (it needs the start noise,
the clean latent and the gradient step in hand), so only the loading lives here: a diffusers id
or local folder through `StableDiffusionInpaintPipeline.from_pretrained`, or the tiny profile's
random pipeline, built from configs, saved with `save_pretrained` into the store and loaded back
through that same call, or `synood-world-inpaint`, the world's trained pipeline shipped in the
package (docs/world-inpaint.md), its files hash-checked before that same call loads the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synood_cli.errors import ResourceMissing, UsageError
from synood_cli.runtime import hf_cache_dir, hf_load_failed, hf_repo_cached, is_offline

TINY_DIFFUSION = "synood-tiny-inpaint"
WORLD_DIFFUSION = "synood-world-inpaint"  # synood_cli.world.inpaint_model.NAME
TINY_SD = {
    "unet": {
        "block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 16, "in_channels": 9, "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 16,
    },
    "vae": {
        "block_out_channels": [16, 32], "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 16, "layers_per_block": 1,
    },
    "text": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77},
    "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1},
}
_TOKENIZER_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


@dataclass
class Inpainter:
    """The loaded components, each on its device; `latent_scale` is the VAE scaling factor."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    scheduler_class: type
    vae_scale_factor: int
    latent_scale: float
    label: str

    def new_scheduler(self):
        """A fresh scheduler per sampling pass: multistep schedulers keep state between steps."""
        return self.scheduler_class.from_config(self.scheduler_config)


def ensure_tiny_diffusion(store, seed: int = 0) -> Path:
    """Build the tiny random inpainting pipeline once per seed (a folder from_pretrained can load)."""

    def build(folder: Path) -> dict:
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        tok_dir = folder / "_tok"
        tokenizer = char_tokenizer(tok_dir)
        vocab = tokenizer.get_vocab()
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_SD["unet"])
        vae = AutoencoderKL(**TINY_SD["vae"])
        text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(vocab), **TINY_SD["text"]))
        pipe = StableDiffusionInpaintPipeline(
            unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=DDIMScheduler(**TINY_SD["scheduler"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        from synood_cli.models.saving import save_model_on_any_rank

        save_model_on_any_rank(text, folder / "text_encoder")  # transformers skips it on a rank other than 0
        import shutil

        shutil.rmtree(tok_dir)
        return {"unet_parameters": sum(p.numel() for p in unet.parameters())}

    _quiet_hf()
    return store.build("weights", {"family": "diffusers-inpaint", "arch": TINY_SD, "seed": seed}, build).path


def char_tokenizer(folder: Path):
    """A character-level CLIPTokenizer (vocab.json + empty merges) for random text encoders."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in _TOKENIZER_CHARS:
            vocab[c + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # model_max_length=77 or batched tokenization overflows (the diffusion tokenizer's 77 tokens, docs/method.md section 2)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")


def _quiet_hf() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _world_dir() -> Path:
    """The shipped world pipeline folder, every file checked against its recorded sha256."""
    from synood_cli.world.inpaint_model import world_inpaint_dir

    return world_inpaint_dir()


def validate_diffusion(model: str) -> None:
    """Exit 2/3 before any work: a missing local folder, or an id not cached while offline."""
    if model == TINY_DIFFUSION:
        return
    if model == WORLD_DIFFUSION:
        _world_dir()  # exit 3 on a missing or damaged file
        return
    p = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or p.exists():
        if not (p / "model_index.json").is_file():
            raise UsageError(f"--diffusion {model}: no model_index.json in that folder", hint="point it at a diffusers pipeline folder")
    elif is_offline() and not hf_repo_cached(model):
        raise ResourceMissing(
            f"diffusion model {model} is not in the local cache {hf_cache_dir()} and offline mode (HF_HUB_OFFLINE=1) is on",
            hint="download it once with network access, pass a local folder, or use --profile tiny",
        )


def load_inpainter(model: str, store, device, dtype, seed: int = 0) -> Inpainter:
    """Load the components; UNet and text encoder in `dtype`, the VAE in fp32 (its decode is differentiated)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    _quiet_hf()
    validate_diffusion(model)
    if model == TINY_DIFFUSION:
        source = str(ensure_tiny_diffusion(store, seed))
    elif model == WORLD_DIFFUSION:
        source = str(_world_dir())
    else:
        source = model
    local = is_offline() or Path(source).exists()
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            source, local_files_only=local, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as e:
        raise hf_load_failed("diffusion model", model, e) from None
    if pipe.unet.config.in_channels != 9:
        raise UsageError(
            f"{model} is not an inpainting model (its UNet takes {pipe.unet.config.in_channels} channels, inpainting needs 9)",
            hint="use an inpainting checkpoint such as stabilityai/stable-diffusion-2-inpainting",
        )
    half = dtype if device.type == "cuda" else torch.float32
    pipe.unet.to(device, dtype=half).eval().requires_grad_(False)
    pipe.text_encoder.to(device, dtype=half).eval().requires_grad_(False)
    pipe.vae.to(device, dtype=torch.float32).eval().requires_grad_(False)
    return Inpainter(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        scheduler_class=type(pipe.scheduler),
        vae_scale_factor=2 ** (len(pipe.vae.config.block_out_channels) - 1),
        latent_scale=float(pipe.vae.config.scaling_factor),
        label=model,
    )
