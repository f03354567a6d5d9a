"""The world's inpainting model: SD-2 inpainting's components, small, in the diffusers folder layout.

A `UNet2DConditionModel` with the 9-channel inpainting input (4 noisy latent + 1 mask + 4 latent
of the masked image), an `AutoencoderKL` (64 px -> 16x16x4 latents), a transformers
`CLIPTextModel` with a `CLIPTokenizer` whose BPE merges make every word of the world one token,
and the DDIM scheduler the tiny profile uses. `save_pipeline` writes the folder
`StableDiffusionInpaintPipeline.from_pretrained` reads, so the shipped weights load through
`synood_cli.models.diffusion.load_inpainter`, the path real SD-2 inpainting weights take.

The shipped folder is `synood_cli/world/weights/inpaint/`; `synood-world-inpaint.json` next to it
holds each file's sha256 and the training record. `world_inpaint_dir` checks those hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from synood_cli.errors import ResourceMissing

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = WEIGHTS_DIR / "inpaint"
RECORD = WEIGHTS_DIR / "synood-world-inpaint.json"
NAME = "synood-world-inpaint"

VAE = {
    "block_out_channels": [16, 32, 64], "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1, "norm_num_groups": 16, "sample_size": 64,
    # no attention in the mid block: the VAE trains on 32 px crops (4x cheaper) and runs on 64 px images
    "mid_block_add_attention": False,
}
UNET = {
    "sample_size": 16, "in_channels": 9, "out_channels": 4, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64, "attention_head_dim": 8, "norm_num_groups": 32,
}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77}

CONTEXT_TEMPLATE = "A photo only remain {context}."  # synood_cli.prompting.PROMPT_TEMPLATE
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()&/"
_EXTRA_WORDS = (
    "a an the of on in at and with without only remain photo picture drawing image this is nice empty there some "
    "background scene object thing shape pattern no"
)


def context_phrases() -> dict[str, list[str]]:
    """Ways to name each context without an object ('brick wall', 'a brick wall'), from its empty caption."""
    from synood_cli.world import scenes

    out = {}
    for name, (_, on_phrase, empty) in scenes.CONTEXTS.items():
        bare = re.sub(r"^(an |a )?empty ", "", empty)
        on = re.sub(r"^(on|in) ", "", on_phrase)
        out[name] = list(dict.fromkeys([bare, on, re.sub(r"^(a|an|the) ", "", on)]))
    return out


def corpus_words() -> list[str]:
    """Every word the world's captions and context prompts use, plus the lexicon's, in a fixed order."""
    from synood_cli.world import spec

    text = " ".join(spec.lexicon_lines()[2:]) + " " + _EXTRA_WORDS + " " + CONTEXT_TEMPLATE.format(context="")
    for phrases in context_phrases().values():
        text += " " + " ".join(phrases)
    text += " " + " ".join(spec.SIZES) + " " + " ".join(spec.POSES) + " noun adj"
    return sorted(w for w in set(split_words(text)) if all(c in _CHARS for c in w))


def split_words(text: str) -> list[str]:
    """Words as CLIPTokenizer's pre-tokenizer cuts them (letters, digits one by one, punctuation runs)."""
    return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (CLIP's '</w>' end-of-word form) until every word in `words` is one symbol.

    Applying merges by rank, as CLIPTokenizer does, reproduces the learned segmentation of a
    training word, so each world word is one token; other words fall back to pieces or characters.
    Ties are broken by the pair itself, so the result does not depend on set or dict order.
    """
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    while True:
        counts = Counter()
        for s in seqs.values():
            for pair in zip(s, s[1:]):
                counts[pair] += 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)


def build_tokenizer(folder: Path):
    """The world's CLIPTokenizer: characters, then the learned merges; model_max_length 77 (DESIGN.md 4)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        for token in (c, c + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = learn_merges(corpus_words())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")


def build_components(seed: int, tok_dir: Path):
    """(unet, vae, text_encoder, tokenizer, scheduler) with random weights from `seed`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synood_cli.models.diffusion import TINY_SD

    tokenizer = build_tokenizer(tok_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    unet = UNet2DConditionModel(**UNET)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer.get_vocab()), **TEXT))
    # the scheduler synood's synthesis steps with, as the tiny profile configures it
    scheduler = DDIMScheduler(**TINY_SD["scheduler"])
    return unet, vae, text, tokenizer, scheduler


def save_pipeline(folder: Path, unet, vae, text, tokenizer, scheduler, fp16: bool = True) -> dict[str, str]:
    """Write the diffusers folder (safetensors, fp16 storage); return {relative path: sha256}."""
    import copy

    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from synood_cli.models.saving import save_model_on_any_rank

    dtype = torch.float16 if fp16 else torch.float32
    parts = [copy.deepcopy(m).to(dtype) for m in (unet, vae, text)]
    pipe = StableDiffusionInpaintPipeline(
        unet=parts[0], vae=parts[1], text_encoder=parts[2], tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    save_model_on_any_rank(parts[2], folder / "text_encoder")  # transformers skips it on a rank other than 0
    return file_hashes(folder)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def world_inpaint_dir(folder: Path = SHIPPED, record: Path = RECORD) -> Path:
    """The shipped pipeline folder, after checking every file against the recorded sha256 (exit 3 if not)."""
    hint = "reinstall synood, or retrain with python -m synood_cli.world.train_inpaint"
    try:
        expected = json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise ResourceMissing(f"{NAME}: cannot read its hash record {record}: {e}", hint=hint) from None
    if not isinstance(expected, dict):
        raise ResourceMissing(f"{NAME}: damaged hash record {record}", hint=hint)
    found = file_hashes(folder) if folder.is_dir() else {}
    for rel, digest in expected.items():
        if found.get(rel) != digest:
            what = "missing" if rel not in found else "damaged (sha256 differs)"
            raise ResourceMissing(f"{NAME}: {folder / rel} is {what}", hint=hint)
    return folder
