"""Synthesis throughput (images/hour) at paper settings, with peak GPU memory.

Paper settings: 512 px, strength 0.6, 20 steps, CFG 8, 3 iterations, energy guidance through a
CLIP ViT-B/16 guide, with architecture-faithful random weights (SD2-inpainting UNet/VAE/text
encoder configs): cost does not depend on weight values.
Baseline (same run): fp32 everywhere, batch 2, the research code's order of work (a backward
pass in every iteration, the last one included). Ours: `synood_cli.synthesis.Synthesizer` in the
resolved precision (bf16 UNet and text encoder on CUDA), a larger batch, no last backward.

    python benchmarks/bench_synthesize.py                    # SD2-inpainting shapes (needs a GPU to be quick)
    python benchmarks/bench_synthesize.py --tiny             # the tiny pipeline, seconds on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import device_info, emit, sync

SD2_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], in_channels=9, out_channels=4,
    layers_per_block=2, norm_num_groups=32, sample_size=64, use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0,
)
SD2_VAE = dict(
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD2_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, max_position_embeddings=77,
                hidden_act="gelu", projection_dim=1024)


def build_inpainter(tiny: bool, device, dtype, home: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synood_cli.models.diffusion import TINY_DIFFUSION, Inpainter, char_tokenizer, load_inpainter
    from synood_cli.store import Store

    if tiny:
        return load_inpainter(TINY_DIFFUSION, Store(home), device, dtype)
    tok = char_tokenizer(home / "tok")
    half = dtype if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(**SD2_UNET).to(device, half).eval().requires_grad_(False)
    vae = AutoencoderKL(**SD2_VAE).to(device).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=0, eos_token_id=1, pad_token_id=1, **SD2_TEXT))
    text = text.to(device, half).eval().requires_grad_(False)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return Inpainter(unet, vae, text, tok, dict(sched.config), DDIMScheduler, 8, 0.18215, "sd2-inpainting (random weights)")


def guide_model(tiny: bool, device, home: Path):
    from bench_score import load_model
    from synood_cli.guidance import clip_guide

    clip = load_model(tiny, device, home)
    texts = torch.nn.functional.normalize(torch.randn(1000, clip.embed_dim, generator=torch.Generator().manual_seed(0)), dim=1)
    return clip, clip_guide(clip, texts)


def run(synth, n: int, bs: int, size: int, device) -> float:
    sources = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prompts = ["a photo only remain grass, fence, sky."] * n
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, n, bs):
        synth.run(sources[s : s + bs], prompts[s : s + bs], list(range(s, min(s + bs, n))))
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from synood_cli.runtime import resolve_device, resolve_dtype
    from synood_cli.synthesis import SynthConfig, Synthesizer

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    home = Path(tempfile.mkdtemp(prefix="synood-bench-home-"))
    size = 32 if args.tiny else 512
    n = args.images or (8 if args.tiny or not cuda else 16)
    bs = args.batch_size or (8 if args.tiny else (16 if cuda else 2))
    cfg = SynthConfig(prompts="-", diffusion="-", size=size, strength=0.6, steps=10 if args.tiny else 20, cfg=8.0, iterations=3, lr=10.0, guidance="energy")
    _, guide = guide_model(args.tiny, device, home)

    fp32 = build_inpainter(args.tiny, device, torch.float32, home)
    base = Synthesizer(cfg, fp32, guide, 5.0, device, skip_last_backward=False)
    run(base, 2, 2, size, device)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base_s = run(base, n, 2, size, device)
    base_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    del base, fp32
    if cuda:
        torch.cuda.empty_cache()

    dtype = resolve_dtype("auto", device)
    fast = build_inpainter(args.tiny, device, dtype, home)
    ours = Synthesizer(cfg, fast, guide, 5.0, device)
    run(ours, min(bs, n), bs, size, device)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    ours_s = run(ours, n, bs, size, device)
    ours_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    emit({
        "benchmark": "synthesize",
        **device_info(device),
        "model": "tiny inpainting" if args.tiny else "SD2-inpainting shapes (random weights), ViT-B/16 guide",
        "settings": {"size": size, "strength": 0.6, "steps": cfg.steps, "cfg": 8.0, "iterations": 3, "guidance": "energy"},
        "images": n,
        "baseline": {"precision": "fp32", "batch": 2, "last_backward": True, "img_h": round(3600 * n / base_s, 1), "peak_gib": base_mem and round(base_mem, 2)},
        "ours": {"precision": str(dtype), "batch": bs, "last_backward": False, "img_h": round(3600 * n / ours_s, 1), "peak_gib": ours_mem and round(ours_mem, 2)},
        "ratio": round(base_s / ours_s, 2),
    })


if __name__ == "__main__":
    main()
