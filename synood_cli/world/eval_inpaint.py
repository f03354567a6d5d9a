"""Measure what the world's inpainting model does, through synood's own loading code and sampling loop.

    python -m synood_cli.world.eval_inpaint DIR OUT [--n 48]

Held-out images only (the ID validation stream and the empty-context set; training never draws
from them). Figures: the VAE's reconstruction error; and, for SynOOD's synthesis at the tiny
profile's small-image settings (full mask, strength 0.6, 10 DDIM steps, cfg 8, prompt "A photo only
remain {context}."), whether the context survives (colour of the region around the object vs the
source, and a nearest-centroid context classifier) and whether something object-like stays in the
centre (contrast of the object's box against its surroundings, vs the source and vs an empty
context). Writes OUT/figures.json and OUT/preview.png (rows: source, VAE reconstruction, synthesis
at strength 0.6, at 0.8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from synood_cli.world import inpaint_model as im
from synood_cli.world import spec


def load(folder: Path):
    """The pipeline through `load_inpainter`, the call `synood synthesize --diffusion DIR` makes."""
    from synood_cli.models.diffusion import load_inpainter

    return load_inpainter(str(folder), None, torch.device("cpu"), torch.float32)


def synthesize(inp, sources_pm1: torch.Tensor, prompts: list[str], strength: float = 0.6, steps: int = 10, cfg: float = 8.0,
               seed: int = 0) -> torch.Tensor:
    """SynOOD's loop without score guidance (one iteration), full mask: images in [0, 1]."""
    from synood_cli.synthesis import Synthesizer, SynthConfig

    sc = SynthConfig(prompts="-", diffusion=inp.label, size=sources_pm1.shape[-1], strength=strength, steps=steps, cfg=cfg,
                     iterations=1, guidance="none", mask="full")
    synth = Synthesizer(sc, inp, None, None, torch.device("cpu"))
    x, _, _ = synth.run(sources_pm1, prompts, [seed * 100003 + i for i in range(len(prompts))])
    return x


def held_out(seed: int, n: int):
    """(uint8 ID validation images, object masks, attrs): `n` images over the 20 ID kinds."""
    out = [spec.set_image(seed, "id_val", i % len(spec.ID_NAMES), i // len(spec.ID_NAMES)) for i in range(n)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), [o[2] for o in out]


def regions(obj_mask: np.ndarray, pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(centre = the object's box grown by `pad`, context = everything else) as bool masks."""
    ys, xs = np.nonzero(obj_mask)
    centre = np.zeros_like(obj_mask)
    centre[max(0, ys.min() - pad): ys.max() + 1 + pad, max(0, xs.min() - pad): xs.max() + 1 + pad] = True
    return centre, ~centre


def context_features(img01: np.ndarray, region: np.ndarray) -> np.ndarray:
    px = img01[region]
    return np.concatenate([px.mean(0), px.std(0)])


def centre_contrast(img01: np.ndarray, centre: np.ndarray, context: np.ndarray) -> float:
    """How far the centre's pixels are from the context's mean colour, beyond the context's own spread."""
    mean = img01[context].mean(0)
    d_centre = np.linalg.norm(img01[centre] - mean, axis=1).mean()
    d_context = np.linalg.norm(img01[context] - mean, axis=1).mean()
    return float(d_centre - d_context)


@torch.no_grad()
def evaluate(folder: Path, out: Path, n: int = 48, seed: int = 0) -> dict:
    from PIL import Image

    torch.manual_seed(0)
    inp = load(folder)
    images, masks, attrs = held_out(seed, n)
    src = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    src01 = images.astype(np.float32) / 255.0

    # the VAE alone
    rec = (inp.vae.decode(inp.vae.encode(src).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
    rec01 = rec.permute(0, 2, 3, 1).numpy()
    mse = float(((rec01 - src01) ** 2).mean())
    figures = {"n": n, "vae": {"mse": round(mse, 5), "psnr_db": round(float(10 * np.log10(1 / mse)), 2),
                               "mean_abs_255": round(float(np.abs(rec01 - src01).mean() * 255), 2)}}

    # context centroids from empty contexts (the held-out empty set)
    cents = []
    for c, name in enumerate(spec.CONTEXT_NAMES):
        feats = []
        for j in range(8):
            img, _, _ = spec.set_image(seed, "empty", c, j)
            _, context = regions(masks[j % n])
            feats.append(context_features(img.astype(np.float32) / 255, context))
        cents.append(np.mean(feats, 0))
    cents = np.stack(cents)

    def classify(img01, context):
        return spec.CONTEXT_NAMES[int(np.argmin(np.linalg.norm(cents - context_features(img01, context), axis=1)))]

    prompts = [im.CONTEXT_TEMPLATE.format(context=im.context_phrases()[a["context"]][0]) for a in attrs]
    outs = {}
    for strength in (0.6, 0.8):
        outs[strength] = synthesize(inp, src, prompts, strength=strength).permute(0, 2, 3, 1).numpy()
    empty_prompt = synthesize(inp, src, [""] * n, strength=0.6).permute(0, 2, 3, 1).numpy()

    def measures(imgs):
        rows = {"border_colour_dist": [], "context_acc": [], "centre_contrast": [], "centre_change": []}
        for i in range(n):
            centre, context = regions(masks[i])
            rows["border_colour_dist"].append(float(np.linalg.norm(imgs[i][context].mean(0) - src01[i][context].mean(0))))
            rows["context_acc"].append(float(classify(imgs[i], context) == attrs[i]["context"]))
            rows["centre_contrast"].append(centre_contrast(imgs[i], centre, context))
            rows["centre_change"].append(float(np.abs(imgs[i][centre] - src01[i][centre]).mean()))
        return {k: round(float(np.mean(v)), 4) for k, v in rows.items()}

    # baselines: the same context drawn again without an object; another context
    same_ctx, other_ctx = [], []
    for i, a in enumerate(attrs):
        c = spec.CONTEXT_NAMES.index(a["context"])
        same_ctx.append(spec.set_image(seed, "empty", c, 100 + i)[0])
        other_ctx.append(spec.set_image(seed, "empty", (c + 1 + i % 11) % len(spec.CONTEXT_NAMES), 200 + i)[0])
    figures["sources"] = measures(src01)
    figures["vae_reconstruction"] = measures(rec01)
    figures["synth_strength_0.6"] = measures(outs[0.6])
    figures["synth_strength_0.8"] = measures(outs[0.8])
    figures["synth_strength_0.6_empty_prompt"] = measures(empty_prompt)
    figures["baseline_same_context_empty"] = measures(np.stack(same_ctx).astype(np.float32) / 255)
    figures["baseline_other_context_empty"] = measures(np.stack(other_ctx).astype(np.float32) / 255)
    figures["settings"] = {"mask": "full", "steps": 10, "cfg": 8.0, "prompt": im.CONTEXT_TEMPLATE, "guidance": "none",
                           "held_out": "id_val stream, empty set"}

    out.mkdir(parents=True, exist_ok=True)
    k = min(n, 10)
    rows = [src01[:k], rec01[:k], outs[0.6][:k], outs[0.8][:k]]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray((grid * 255 + 0.5).clip(0, 255).astype(np.uint8)).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out / "preview.png")
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=48)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(evaluate(a.folder, a.out, a.n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
