"""The prompt stage's context describer for the world: retrieval with a CLIP over context descriptions.

SynOOD asks an MLLM for "the context without the subject" of each ID image (docs/method.md,
section 2). In the world that answer comes from the world's own CLIP, not from the generator's
metadata: each context description (the 12 contexts, named as the world's captions name them) gets
one text feature, the mean over captions of every kind and colour on that context and of the
context empty; an image's answer is the description whose feature is nearest to the image's.
The answer ("brick wall") is what `clean_answer` receives, so the prompt is
"A photo only remain brick wall.".

    python -m synood_cli.world.describer CLIP_WEIGHTS.safetensors [--n 240]   # measure on held-out images

Registered as the MLLM backend `world` (`--mllm world`, the `world` profile's prompting), which
builds it from the world CLIP loaded by `load_clip` (hash-checked): synood_cli/models/mllm.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from synood_cli.world import inpaint_model as im


def context_texts() -> dict[str, list[str]]:
    """Per context: captions of every kind and colour on it, and its empty caption (the retrieval keys)."""
    from synood_cli.world import scenes, spec

    out = {}
    for ctx, (_, on_phrase, empty) in scenes.CONTEXTS.items():
        out[ctx] = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {k} {on_phrase}" for k in spec.KIND_NAMES for c in spec.COLOUR_NAMES]
        out[ctx].append(empty)
    return out


class WorldContextDescriber:
    """An Answerer (synood_cli.models.mllm): answers each image with the nearest context description.

    The question is not read: the only question the prompt stage asks is the context one.
    """

    def __init__(self, model, tokenizer, preprocess, device=None, label: str = "world:synood-world-clip-retrieval"):
        self.model, self.preprocess, self.label = model.eval(), preprocess, label
        self.device = device or torch.device("cpu")
        self.names = list(context_texts())
        self.answers = [im.context_phrases()[n][0] for n in self.names]
        with torch.no_grad():
            feats = []
            for texts in context_texts().values():
                f = torch.nn.functional.normalize(model.encode_text(tokenizer(texts).to(self.device)).float(), dim=-1).mean(0)
                feats.append(torch.nn.functional.normalize(f, dim=0))
        self.text = torch.stack(feats)

    @torch.no_grad()
    def contexts(self, images: list) -> list[str]:
        """The context name retrieved for each PIL image."""
        x = torch.stack([self.preprocess(im_) for im_ in images]).to(self.device)
        f = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
        return [self.names[int(i)] for i in (f @ self.text.T).argmax(1)]

    def answer(self, images: list, questions: list[str]) -> list[str]:
        return [self.answers[self.names.index(c)] for c in self.contexts(images)]


def load_world_clip(weights: Path):
    """(model, tokenizer, preprocess) of the world CLIP from a safetensors file, through open_clip."""
    import open_clip

    from synood_cli.models.clip import _quiet_root_logger, _register_tiny_configs

    _register_tiny_configs()
    with _quiet_root_logger():
        model, _, preprocess = open_clip.create_model_and_transforms("synood-world-clip", pretrained=str(weights))
    return model, open_clip.get_tokenizer("synood-world-clip"), preprocess


def measure(describer: WorldContextDescriber, n: int = 240, seed: int = 0) -> dict:
    """Context retrieval accuracy on held-out ID validation images (metadata used only to score)."""
    from PIL import Image

    from synood_cli.world import spec

    imgs, truth = [], []
    for i in range(n):
        img, _, attrs = spec.set_image(seed, "id_val", i % len(spec.ID_NAMES), 1000 + i // len(spec.ID_NAMES))
        imgs.append(Image.fromarray(img))
        truth.append(attrs["context"])
    got = describer.contexts(imgs)
    per = {c: round(sum(g == t for g, t in zip(got, truth) if t == c) / max(1, truth.count(c)), 3) for c in describer.names}
    return {"n": n, "accuracy": round(sum(g == t for g, t in zip(got, truth)) / n, 4), "per_context": per,
            "example_answers": describer.answer(imgs[:3], [""] * 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--n", type=int, default=240)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(measure(WorldContextDescriber(*load_world_clip(a.weights)), a.n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
