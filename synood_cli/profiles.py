"""Named presets (tiny, default, paper, world) read from JSON files shipped in `synood_cli/profiles/`.

A profile only supplies defaults: every explicit flag wins over it.
"""

from __future__ import annotations

import json
from importlib import resources

from synood_cli.errors import UsageError
from synood_cli.registry import Registry

PROFILE_NAMES = ("tiny", "default", "paper", "world")
_registry: Registry[str] = Registry("profile", option="--profile")
for _name in PROFILE_NAMES:
    _registry.add(_name, _name)


def profile_dir():
    return resources.files("synood_cli") / "profiles"


def load_profile(name: str) -> dict:
    _registry.get(name)  # unknown names raise with a did-you-mean hint
    data = json.loads((profile_dir() / f"{name}.json").read_text())
    data["name"] = name
    return data


def list_profiles() -> list[dict]:
    return [load_profile(n) for n in PROFILE_NAMES]


def describe_recipe(name: str) -> list[tuple[str, str]]:
    """(step, what it computes) for every stage under this profile, in the words of docs/method.md."""
    from synood_cli.negatives import ADJ_TEMPLATE, ID_TEMPLATE

    p = load_profile(name)
    clip, neg, pr, sy = p["clip"], p.get("neglabel", {}), p.get("prompt", {}), p.get("synthesize", {})
    ft = {"negatives_logits": "all", "schedule": "step", "val_fraction": 0.05, **p.get("finetune", {})}
    target = "the ID boundary at 95% TPR of the source images" if sy.get("target") == "boundary" else f"{sy.get('target')}"
    logits = "the negatives only" if ft["negatives_logits"] == "negatives" else "ID classes + negatives"
    return [
        ("profile", f"{name}: {p['description']}"),
        ("CLIP", f"{clip['model']} / {clip.get('pretrained')}, built with the activation and preprocessing its tag was trained with (QuickGELU for openai)"),
        ("prompt", f"top {pr.get('per_class')} images per class by JPEG bytes per pixel; MLLM {pr.get('mllm')}; \"A photo only remain {{context}}.\""),
        ("synthesize", f"{sy.get('diffusion')}, {sy.get('size')} px, mask full, strength {sy.get('strength')}, {sy.get('steps')} steps, "
                       f"CFG {sy.get('cfg')}, {sy.get('iterations')} iterations, " + ("chained" if sy.get("chain") else "restart from the source latent")
                       + ("; sources squashed to a square (aspect ratio lost)" if sy.get("source_fit") == "squash" else "; sources centre-cropped to a square")
                       + f"; UNet and text encoder in {sy.get('precision', 'bf16 on CUDA')}"),
        ("guidance", f"S = {sy.get('guidance')} of the {sy.get('guide_model')} guide, target {target}; "
                     f"L = sum_i (S_i - target)^2; eps <- eps - lr dL/du with u = z0 / vae_scale, lr {sy.get('lr'):g}"),
        ("negative labels", f"lexicon {p['lexicon']}; templates: ID and nouns '{ID_TEMPLATE}', adjectives '{ADJ_TEMPLATE}' (no period); "
                            f"{neg.get('neg_ratio')} of the nouns and of the adjectives with the lowest {neg.get('percentile')}-quantile affinity"),
        ("adapter", "f' = normalize(g + ReLU(LayerNorm(W g + b))), g the raw CLIP image output; cross-entropy over ID classes + assigned "
                    f"negatives, Adam 1e-3, cosine per {ft['schedule']} to 1e-5, 3 epochs, batch 128"),
        ("negative features", f"cross-entropy over {logits} on the synthesized images, SGD 2e-2 momentum 0.9, cosine per {ft['schedule']}, "
                              f"5 epochs, batch 128, held-out share {ft['val_fraction']:g}" + (" (all data)" if not ft["val_fraction"] else "")),
        ("score", f"NegLabel over {neg.get('groups')} groups (the last M mod G negatives dropped, then a seeded shuffle), tau 0.01; "
                  "SynOOD: adapter(g) and the checkpoint's negative set"),
        ("reference", "docs/method.md: every formula, default and difference from the research code"),
    ]


def tiny_model_config_path(arch: str):
    """Path of a tiny architecture JSON (open_clip model-config format)."""
    path = profile_dir() / "models" / f"{arch}.json"
    if not path.is_file():
        raise UsageError(f"no tiny model config {arch!r}")
    return path
