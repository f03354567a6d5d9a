"""Full-size rehearsal of the paper profile on a CPU (issue 26): real architectures, random weights.

No GPU and no weight download here, yet everything but the weight values can be checked: this
builds every model the paper profile names from its published configuration values, with random
weights, in the HF hub cache layout under the real ids (a temporary HF_HOME), and runs the stages
offline through the real CLI, each in its own process, measuring peak memory and time:

- `ViT-B-16` / `openai` (open_clip, QuickGELU): the repo open_clip's table names
  (timm/vit_base_patch16_clip_224.openai), open_clip_model.safetensors.
- stabilityai/stable-diffusion-2-inpainting: UNet (9 input channels), VAE, OpenCLIP-H text encoder
  (a 23-layer transformers CLIPTextModel), PNDM scheduler, CLIP BPE tokenizer (49,408 tokens, built
  from the vocabulary open_clip ships), with the repo's config files.
- llava-hf/llava-1.5-7b-hf: LlavaForConditionalGeneration with the published config (CLIP ViT-L/14
  at 336 px, Vicuna-7B widths) but `--llama-layers` LLaMA layers (default 2 of 32: the full
  7B in bf16 is 13.5 GiB, more than this machine's share), its processor (CLIPImageProcessor,
  LlavaProcessor, chat template) and a LLaMA tokenizer (byte-fallback BPE, 32,000 tokens trained on
  WordNet's glosses, <unk> <s> </s>, <image> = 32000, <pad> = 32001).
- torchvision resnet50 (IMAGENET1K_V2), the paper profile's guide, in TORCH_HOME.

    python benchmarks/rehearse_paper.py [--root DIR] [build] [run] [measure]

Settings lowered from the paper profile (printed in the JSON line): 2 classes x 2 images
(per_class 50), 1 guidance iteration (3), a lexicon of --lexicon-words NegLabel words (about
70,000), and the finetune/score batch sizes kept (they do not change results). Every stage runs
under `nice -n 19` with torch on one thread. Not in CI: it takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REVISION = "5" * 40
CLIP_REPO = "timm/vit_base_patch16_clip_224.openai"
SD_REPO = "stabilityai/stable-diffusion-2-inpainting"
LLAVA_REPO = "llava-hf/llava-1.5-7b-hf"
REPO_ROOT = Path(__file__).resolve().parents[1]

# -- published configurations (stabilityai/stable-diffusion-2-inpainting, llava-hf/llava-1.5-7b-hf) --

SD_MODEL_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.10.0.dev0",
    "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
SD_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0.dev0", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 9,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
SD_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.8.0.dev0", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD_TEXT = {  # OpenCLIP ViT-H/14's text tower without its last layer, as transformers' CLIPTextModel
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
    "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4096,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 16,
    "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512, "torch_dtype": "float32", "vocab_size": 49408,
}
SD_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD_TOKENIZER_CONFIG = {  # OpenCLIP's tokenizer pads with "!" (id 0), not with <|endoftext|>
    "add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True, "eos_token": "<|endoftext|>",
    "errors": "replace", "model_max_length": 77, "pad_token": "!", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
}
SD_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}

LLAVA_CONFIG = {  # the repo's config.json: LLaMA widths are LlamaConfig's defaults (4096, 11008, 32 heads)
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
    "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}
LLAVA_PREPROCESSOR = {
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaProcessor", "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336},
}
LLAVA_PROCESSOR = {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14, "processor_class": "LlavaProcessor",
                   "vision_feature_select_strategy": "default"}
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_SPECIAL = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
LLAVA_TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False,
    "added_tokens_decoder": {str(i): {"content": t, **_SPECIAL} for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<image>"), (32001, "<pad>"))},
    "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
    "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left", "processor_class": "LlavaProcessor",
    "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False,
}
LLAVA_GENERATION = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}
LLAMA_VOCAB = 32000
RESNET50_FILE = "resnet50-11ad3fa6.pth"  # torchvision ResNet50_Weights.IMAGENET1K_V2 (the DEFAULT)

CLASSES = ("tench", "goldfish")  # ImageNet-1k classes 0 and 1 as folder names


# -- helpers --------------------------------------------------------------------------------------


def snapshot(hub: Path, repo: str) -> Path:
    """models--ORG--NAME/snapshots/REV/ with refs/main, as huggingface_hub writes it (files, not blob links)."""
    base = hub / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(REVISION)
    snap = base / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def vm_status() -> dict:
    """VmRSS and VmHWM of this process, GiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 2**20
    return out


def reset_peak() -> None:
    """VmHWM back to the current RSS (Linux >= 4.0: `5` in clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


# -- building the cache ---------------------------------------------------------------------------


def clip_bpe() -> tuple[dict, list[str]]:
    """The OpenAI CLIP BPE as vocab.json / merges.txt hold it (49,408 tokens), from open_clip's file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def build_clip(hub: Path) -> None:
    """Random ViT-B-16 weights where open_clip's `openai` tag looks (fp16, as the repo's file)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    snap = snapshot(hub, CLIP_REPO)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    write_json(snap / "open_clip_config.json", {"model_cfg": open_clip.get_model_config("ViT-B-16") | {"quick_gelu": True}})


def build_sd(hub: Path) -> None:
    """SD-2-inpainting's five components from their config files, random weights, the repo's layout."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    snap = snapshot(hub, SD_REPO)
    write_json(snap / "model_index.json", SD_MODEL_INDEX)
    write_json(snap / "scheduler" / "scheduler_config.json", SD_SCHEDULER)
    vocab, merges = clip_bpe()
    (snap / "tokenizer").mkdir(exist_ok=True)
    write_json(snap / "tokenizer" / "vocab.json", vocab)
    (snap / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    write_json(snap / "tokenizer" / "tokenizer_config.json", SD_TOKENIZER_CONFIG)
    write_json(snap / "tokenizer" / "special_tokens_map.json", SD_SPECIAL_TOKENS)
    torch.manual_seed(0)
    for sub, cls, cfg in (("unet", UNet2DConditionModel, SD_UNET), ("vae", AutoencoderKL, SD_VAE)):
        model = cls.from_config({k: v for k, v in cfg.items()})
        model.save_pretrained(snap / sub, safe_serialization=True)
        write_json(snap / sub / "config.json", cfg)  # the published file, not diffusers' re-serialisation
        del model
    text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in SD_TEXT.items() if k not in ("architectures", "model_type", "torch_dtype")}))
    text.save_pretrained(snap / "text_encoder", safe_serialization=True)
    write_json(snap / "text_encoder" / "config.json", SD_TEXT)


def llama_tokenizer(folder: Path):
    """A LLaMA tokenizer in the real format: byte-fallback BPE over 32,000 tokens (<unk> <s> </s>,
    <0x00>..<0xFF>, then pieces trained here on WordNet's glosses), plus <image> and <pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    glosses = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in Path(f"/usr/share/wordnet/data.{pos}").read_text(errors="replace").splitlines():
            if "|" in line and not line.startswith(" "):
                glosses.append(line.split("|", 1)[1].strip())
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=LLAMA_VOCAB - len(byte_tokens) + 200, special_tokens=specials, show_progress=False)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bpe.train_from_iterator(glosses, trainer)
    trained = json.loads(bpe.to_str())["model"]
    ordered = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens + ordered[: LLAMA_VOCAB - len(specials) - len(byte_tokens)])}
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    merges = [m for m in pairs if "".join(m) in vocab and m[0] in vocab and m[1] in vocab]
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_prefix_space=True, add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", special=True, normalized=False)]})
    tok.add_special_tokens({"pad_token": AddedToken("<pad>", special=True, normalized=False)})
    assert tok.convert_tokens_to_ids("<image>") == 32000 and tok.pad_token_id == 32001, (tok.convert_tokens_to_ids("<image>"), tok.pad_token_id)
    tok.padding_side = "left"
    return tok


def build_llava(hub: Path, layers: int) -> dict:
    """LLaVA-1.5-7B's config with `layers` LLaMA layers at the real widths; its processor; fp16 weights as the repo's."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    snap = snapshot(hub, LLAVA_REPO)
    cfg = json.loads(json.dumps(LLAVA_CONFIG))
    cfg["text_config"]["num_hidden_layers"] = layers
    tok = llama_tokenizer(snap)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(**{k: v for k, v in LLAVA_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")}),
                               tokenizer=tok, chat_template=LLAVA_CHAT_TEMPLATE,
                               **{k: v for k, v in LLAVA_PROCESSOR.items() if k != "processor_class"})
    processor.save_pretrained(snap)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")}))
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.float16).save_pretrained(snap, safe_serialization=True, max_shard_size="1GB")  # sharded, as the repo's 3 files
    # the repo's own files, as a user's download has them (transformers 5 would write other names)
    for stale in ("processor_config.json", "chat_template.jinja", "tokenizer_config.json", "special_tokens_map.json"):
        (snap / stale).unlink(missing_ok=True)
    write_json(snap / "config.json", cfg)  # the published file (one field changed: num_hidden_layers)
    write_json(snap / "generation_config.json", LLAVA_GENERATION)
    write_json(snap / "preprocessor_config.json", LLAVA_PREPROCESSOR)
    write_json(snap / "processor_config.json", LLAVA_PROCESSOR)
    write_json(snap / "chat_template.json", {"chat_template": LLAVA_CHAT_TEMPLATE})
    write_json(snap / "tokenizer_config.json", LLAVA_TOKENIZER_CONFIG)
    write_json(snap / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    return {"parameters": params, "llama_layers": layers}


def build_resnet(torch_home: Path) -> None:
    import torch
    import torchvision

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), folder / RESNET50_FILE)


def build_data(data: Path, per_class: int = 2) -> None:
    """ImageNet-like JPEGs: train and val with one folder per class, an OOD folder."""
    import random

    from PIL import Image

    rng = random.Random(0)
    for split, n in (("train", per_class + 1), ("val", 2)):
        for c in CLASSES:
            (data / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = rng.choice([(500, 375), (375, 500), (500, 333), (640, 480)])
                Image.effect_noise((w, h), rng.randrange(20, 90)).convert("RGB").save(data / split / c / f"{c}_{i}.JPEG", quality=rng.randrange(70, 95))
    (data / "ood").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.effect_noise((500, 375), 60).convert("RGB").resize((500, 375)).save(data / "ood" / f"ood_{i}.jpg", quality=85)


def build_lexicon(path: Path, words: int) -> int:
    """Every k-th word of NegLabel's pool (nouns and adjectives kept apart), `words` in all."""
    from synood_cli.lexicons import load_lexicon

    lex = load_lexicon("neglabel")
    total = len(lex.nouns) + len(lex.adjectives)
    k = max(1, total // words)
    lines = [f"{w}\tnoun" for w in lex.nouns[::k]] + [f"{w}\tadj" for w in lex.adjectives[::k]]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def build(root: Path, layers: int, lexicon_words: int) -> dict:
    hub = root / "hf" / "hub"
    t = {}
    parts = os.environ.get("REHEARSE_BUILD")
    for name, fn in (("clip", lambda: build_clip(hub)), ("resnet50", lambda: build_resnet(root / "torch")),
                     ("data", lambda: build_data(root / "data")), ("sd2_inpainting", lambda: build_sd(hub)),
                     ("llava", lambda: build_llava(hub, layers))):
        if parts and name not in parts.split(","):
            continue
        start = time.perf_counter()
        fn()
        t[name] = round(time.perf_counter() - start, 1)
        print(f"built {name} in {t[name]} s", file=sys.stderr, flush=True)
    n = build_lexicon(root / "lexicon.tsv", lexicon_words)
    return {"build_seconds": t, "lexicon_words": n}



# -- running the stages ---------------------------------------------------------------------------


def stage_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TORCH_HOME=str(root / "torch"), SYNOOD_HOME=str(root / "home"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO_ROOT))
    env.pop("HF_HUB_CACHE", None)
    return env


def run_measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Run `nice -n 19 cmd`; its wall time, exit status and peak RSS (wait4's ru_maxrss: this child only)."""
    start = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(["nice", "-n", "19", *cmd], env=env, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "stdout": out.decode(errors="replace")}


def run_stages(args) -> dict:
    """prompt -> synthesize -> finetune -> evaluate through the CLI, offline, one process each."""
    root = args.root
    env = stage_env(root)
    syn = [sys.executable, "-m", "synood_cli", "--device", "cpu", "--offline"]
    data, lex = root / "data", str(root / "lexicon.tsv")
    synth_extra = ["--steps", str(args.steps_synth)] if args.steps_synth else []
    stages = [
        ("prompt", 4, ["prompt", str(data / "train"), "--profile", "paper", "--per-class", "2", "--name", "reh-prompts"]),
        ("synthesize", 4, ["synthesize", "--prompts", "reh-prompts", "--profile", "paper", "--iterations", "1", "--name", "reh-synth", *synth_extra]),
        ("finetune", 8, ["finetune", "--prompts", "reh-prompts", "--synth", "reh-synth", "--profile", "paper", "--lexicon", lex, "--name", "reh-ckpt"]),
        ("evaluate", 8, ["evaluate", "--id", str(data / "val"), "--ood", f"noise={data / 'ood'}", "--profile", "paper", "--compare", "neglabel,synood",
                         "--checkpoint", "reh-ckpt", "--lexicon", lex, "--format", "json"]),
    ]
    only = os.environ.get("REHEARSE_STAGES")
    out = {}
    for name, images, cmd in stages:
        if only and name not in only.split(","):
            continue
        print(f"stage {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        r = run_measured(syn + cmd, env, root / f"{name}.log")
        (root / f"{name}.stdout").write_text(r.pop("stdout"))
        r["images"] = images
        r["s_per_image"] = round(r["wall_s"] / images, 1)
        out[name] = r
        print(f"stage {name}: rc {r['rc']}, {r['wall_s']} s, peak {r['peak_rss_gib']} GiB", file=sys.stderr, flush=True)
        if r["rc"] != 0:
            print((root / f"{name}.log").read_text()[-3000:], file=sys.stderr)
            break
    return out



# -- per-component memory: parameters, activations per image --------------------------------------


def param_bytes(*models) -> dict:
    n = sum(p.numel() for m in models for p in m.parameters())
    return {"parameters": n, "fp32_gib": round(4 * n / 2**30, 3), "bf16_gib": round(2 * n / 2**30, 3)}


def touch(*models) -> None:
    """Read every weight page once: safetensors weights are mapped lazily, and the first forward
    would otherwise count the weights paging in as activations."""
    import torch

    with torch.no_grad():
        for m in models:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.numel():
                    float(t.reshape(-1)[:: 512].float().sum())


def peak_during(fn) -> tuple[float, float, object]:
    """(peak RSS above the RSS before, seconds, result) of fn(): VmHWM reset first."""
    import gc

    gc.collect()
    reset_peak()
    before = vm_status()["VmRSS"]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return round(vm_status()["VmHWM"] - before, 3), round(seconds, 1), result


def live_tensor_peak(fn, *modules) -> tuple[float, float, object]:
    """(GiB, seconds, result): the most bytes of tensors fn() had alive at once, weights not counted.

    Every ATen op's outputs are tracked by storage until their last tensor dies (a dispatch mode),
    so the figure does not depend on what the CPU allocator kept from earlier work, which an RSS
    difference does; storages of the modules' weights and buffers are left out. Tensors kept for
    the backward pass stay alive until it has run, so a pass with gradients counts them.
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    external = {t.untyped_storage().data_ptr() for m in modules for t in list(m.parameters()) + list(m.buffers())}

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.now, self.peak = {}, 0, 0

        def release(self, key):
            entry = self.live.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    self.now -= entry[0]
                    del self.live[key]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if key in external or st.nbytes() == 0:
                        continue
                    if key in self.live:
                        self.live[key][1] += 1
                    else:
                        self.live[key] = [st.nbytes(), 1]
                        self.now += st.nbytes()
                        self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self.release, key)
            return out

    mode = Live()
    start = time.perf_counter()
    with mode:
        result = fn()
    return round(mode.peak / 2**30, 3), round(time.perf_counter() - start, 1), result


def saved_for_backward(fn) -> tuple[float, object]:
    """GiB of the tensors autograd keeps for the backward pass of fn() (each storage once)."""
    import torch

    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return round(total[0] / 2**30, 3), result


def component(name: str, root: Path) -> dict:
    """One model's figures, in this (fresh) process: parameters, activation peak per image, time."""
    import torch

    from synood_cli.store import Store

    torch.set_num_threads(1)
    store, cpu = Store(root / "home"), torch.device("cpu")
    out: dict = {"component": name, "rss_start_gib": round(vm_status()["VmRSS"], 3)}
    if name == "sd2":
        from synood_cli.guidance import torchvision_guide
        from synood_cli.models.diffusion import load_inpainter
        from synood_cli.synthesis import SynthConfig, Synthesizer

        inp = load_inpainter(SD_REPO, store, cpu, torch.float32)
        guide = torchvision_guide("resnet50", cpu)
        out["params"] = {"unet": param_bytes(inp.unet), "text_encoder": param_bytes(inp.text_encoder), "vae": param_bytes(inp.vae)}
        touch(inp.unet, inp.text_encoder, inp.vae)
        out["rss_loaded_gib"] = round(vm_status()["VmRSS"], 3)
        cfg = SynthConfig(prompts="-", diffusion=SD_REPO, size=512, iterations=1, guidance="mean-log-softmax", target="-5", lr=5.0)
        synth = Synthesizer(cfg, inp, guide, -5.0, cpu)
        z = torch.randn(1, 4, 64, 64)
        emb = torch.cat([synth.uncond, synth.encode_text(["A photo only remain bamboo, tourists, railings."])])
        t = synth.timesteps[0]
        x9 = torch.cat([torch.cat([z, z]), torch.ones(2, 1, 64, 64), synth.masked_latent.expand(2, -1, -1, -1)], dim=1)
        with torch.no_grad():
            out["unet_step_1_image_cfg"] = dict(zip(("peak_gib", "seconds"), live_tensor_peak(lambda: inp.unet(x9, t, encoder_hidden_states=emb).sample, inp.unet)[:2]))
            out["vae_encode_1"] = dict(zip(("peak_gib", "seconds"), live_tensor_peak(lambda: synth.encode(torch.rand(1, 3, 512, 512) * 2 - 1), inp.vae)[:2]))
            out["vae_decode_1"] = dict(zip(("peak_gib", "seconds"), live_tensor_peak(lambda: synth.decode(z), inp.vae)[:2]))
        out["denoising_steps_per_iteration"] = len(synth.timesteps)
        out["scheduler"] = type(synth.inp.new_scheduler()).__name__
    elif name == "guidance":
        # the guidance step alone (VAE decoder with gradients + resnet50 at 512 px): without the UNet
        # and text encoder in memory, so its activations are measured on their own
        from types import SimpleNamespace

        from diffusers import AutoencoderKL

        from synood_cli.guidance import torchvision_guide
        from synood_cli.runtime import hf_cache_dir
        from synood_cli.synthesis import SynthConfig, Synthesizer

        vae = AutoencoderKL.from_pretrained(SD_REPO, subfolder="vae", local_files_only=True, cache_dir=str(hf_cache_dir())).eval().requires_grad_(False)
        guide = torchvision_guide("resnet50", cpu)
        synth = Synthesizer.__new__(Synthesizer)
        synth.cfg = SynthConfig(prompts="-", diffusion=SD_REPO, guidance="mean-log-softmax", target="-5", lr=5.0)
        synth.inp, synth.guide, synth.target, synth.device = SimpleNamespace(vae=vae, latent_scale=float(vae.config.scaling_factor)), guide, -5.0, cpu
        import torchvision

        out["params"] = {"vae": param_bytes(vae), "resnet50": param_bytes(torchvision.models.resnet50())}
        touch(vae)
        z, eps = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
        cells = dict(zip(guide.forward.__code__.co_freevars, (c.cell_contents for c in guide.forward.__closure__)))
        guide_net = cells["model"]  # torchvision_guide's classifier, for its weights to be left out
        rss, _, _ = peak_during(lambda: synth.guidance_step(eps, z))
        peak, sec, _ = live_tensor_peak(lambda: synth.guidance_step(eps, z), vae, guide_net)
        saved, _ = saved_for_backward(lambda: guide.score(synth.decode_unscaled(z.clone().requires_grad_(True)), "mean-log-softmax"))
        out["guidance_step_1"] = {"peak_gib": peak, "seconds": sec, "saved_for_backward_gib": saved, "rss_peak_gib": rss}
    elif name == "llava":
        from synood_cli.models.mllm import TransformersAnswerer
        from PIL import Image

        ans = TransformersAnswerer(LLAVA_REPO, cpu, torch.float32, max_new_tokens=64)
        cfg = ans.model.config
        out["params"] = {"total": param_bytes(ans.model), "llama_layers": cfg.text_config.num_hidden_layers,
                         "llama_layer": param_bytes(ans.model.model.language_model.layers[0])}
        touch(ans.model)
        out["rss_loaded_gib"] = round(vm_status()["VmRSS"], 3)
        img = Image.open(next((root / "data" / "train" / CLASSES[0]).glob("*.JPEG"))).convert("RGB")
        q = "List the objects and scenery in this image other than the tench, as a short comma-separated list."
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        seq = ans.processor(images=[img], text=[ans.processor.apply_chat_template(chat, add_generation_prompt=True)], return_tensors="pt")["input_ids"].shape[1]
        peak, sec, answer = live_tensor_peak(lambda: ans.answer([img], [q]), ans.model)
        out["answer_1_image"] = {"peak_gib": peak, "seconds": sec, "prompt_tokens": seq, "answer": answer[0][:120]}
        # per image, the KV cache at the full depth (bf16): 2 (K, V) x 32 layers x 4096 x tokens x 2 bytes
        out["kv_cache_full_depth_bf16_gib_per_image"] = round(2 * 32 * cfg.text_config.hidden_size * (seq + 64) * 2 / 2**30, 3)
    elif name == "clip":
        from synood_cli.models.clip import ClipSource, load_clip

        clip = load_clip(ClipSource("ViT-B-16", "openai"), store, cpu, torch.float32)
        out["params"] = {"total": param_bytes(clip.model), "visual": param_bytes(clip.model.visual)}
        touch(clip.model)
        out["rss_loaded_gib"] = round(vm_status()["VmRSS"], 3)
        x = torch.randn(16, 3, 224, 224)
        peak, sec, _ = live_tensor_peak(lambda: clip.encode_images(x), clip.model)
        out["encode_16_images"] = {"peak_gib": peak, "seconds": sec}
    elif name == "bf16":
        # the CUDA dtype flow on the CPU: UNet and text encoder in bf16 as load_inpainter puts them on
        # CUDA (VAE and guide fp32), the whole guided loop for one image (2 iterations: one guidance
        # step), and LLaVA in bf16 answering through the answerer's own casts
        from synood_cli.guidance import torchvision_guide
        from synood_cli.models.diffusion import load_inpainter
        from synood_cli.models.mllm import TransformersAnswerer
        from synood_cli.synthesis import SynthConfig, Synthesizer, load_source
        from PIL import Image

        img_path = next((root / "data" / "train" / CLASSES[0]).glob("*.JPEG"))
        ans = TransformersAnswerer(LLAVA_REPO, cpu, torch.bfloat16, max_new_tokens=8)
        ans.model.to(torch.bfloat16)
        ans.dtype = torch.bfloat16
        start = time.perf_counter()
        answer = ans.answer([Image.open(img_path).convert("RGB")], ["List the objects in this image other than the tench."])
        out["llava_bf16"] = {"answer": answer[0][:80], "seconds": round(time.perf_counter() - start, 1)}
        del ans
        inp = load_inpainter(SD_REPO, store, cpu, torch.float32)
        inp.unet.to(torch.bfloat16)
        inp.text_encoder.to(torch.bfloat16)
        cfg = SynthConfig(prompts="-", diffusion=SD_REPO, size=512, steps=5, iterations=2, guidance="mean-log-softmax", target="-5", lr=5.0)
        synth = Synthesizer(cfg, inp, torchvision_guide("resnet50", cpu), -5.0, cpu)
        start = time.perf_counter()
        x, score, nonfinite = synth.run(load_source(str(img_path), 512, "squash")[None], ["A photo only remain bamboo, tourists."], [0])
        out["synthesize_bf16"] = {"shape": list(x.shape), "dtype": str(x.dtype), "finite": bool(torch.isfinite(x).all()), "score": float(score[0]),
                                  "nonfinite_grad": bool(nonfinite[0]), "denoising_steps": len(synth.timesteps), "seconds": round(time.perf_counter() - start, 1)}
    out["rss_end_gib"] = round(vm_status()["VmRSS"], 3)
    out["peak_rss_gib"] = round(vm_status()["VmHWM"], 3)
    return out


def measure_components(args) -> dict:
    env = stage_env(args.root)
    out = {}
    for name in os.environ.get("REHEARSE_COMPONENTS", "clip,sd2,guidance,llava,bf16").split(","):
        r = run_measured([sys.executable, __file__, "--root", str(args.root), "--component", name], env, args.root / f"component-{name}.log")
        if r["rc"] != 0:
            out[name] = {"rc": r["rc"], "log": (args.root / f"component-{name}.log").read_text()[-2000:]}
            continue
        out[name] = json.loads(r["stdout"].strip().splitlines()[-1])
        print(f"component {name}: {out[name]}", file=sys.stderr, flush=True)
    return out



# -- what the paper's batch sizes need on a GPU ----------------------------------------------------

PAPER_BATCH = {"prompt": 8, "synthesize": 4, "score": 256}  # synood_cli/profiles/paper.json
RESNET50_PARAMS = 25_557_032
GIB = 2**30


def gpu_estimates(c: dict, profile: dict) -> dict:
    """Parameters + batch x activations per image, in fp32 and bf16, for each stage at the paper's batch.

    Activations per image are the most bytes of tensors alive at once during one image's pass on
    the CPU in fp32 (`live_tensor_peak`, weights left out; with gradients, what is kept for the
    backward pass included), which halve in bf16 where the stage runs its model in bf16 (the VAE
    decode and the guidance step stay fp32 in synood). LLaVA is scaled to its 32 layers: the per-layer parameters measured, and the KV cache of
    32 layers computed (2 x 32 x 4096 x tokens); its prefill transients do not grow with depth.
    No CUDA context (about 0.5 GiB) or allocator slack is included.
    """
    out = {}
    b = {"prompt": profile["prompt"]["batch_size"], "synthesize": profile["synthesize"]["batch_size"], "score": profile["batch_size"]}
    if "llava" in c and "params" in c["llava"]:
        l = c["llava"]
        n_full = l["params"]["total"]["parameters"] + (32 - l["params"]["llama_layers"]) * l["params"]["llama_layer"]["parameters"]
        kv_n_fp32 = 2 * l["params"]["llama_layers"] * 4096 * (l["answer_1_image"]["prompt_tokens"] + 64) * 4 / GIB
        transient = max(0.0, l["answer_1_image"]["peak_gib"] - kv_n_fp32)
        kv32_bf16 = l["kv_cache_full_depth_bf16_gib_per_image"]
        out["prompt"] = {"batch": b["prompt"], "params_full_depth": n_full,
                         "fp32_gib": round(4 * n_full / GIB + b["prompt"] * (transient + 2 * kv32_bf16), 1),
                         "bf16_gib": round(2 * n_full / GIB + b["prompt"] * (transient / 2 + kv32_bf16), 1)}
    if "sd2" in c and "guidance" in c:
        p = c["sd2"]["params"]
        half = (p["unet"]["parameters"] + p["text_encoder"]["parameters"])
        full = p["vae"]["parameters"] + RESNET50_PARAMS  # fp32 in synood whatever --precision
        unet = c["sd2"]["unet_step_1_image_cfg"]["peak_gib"]  # one image = 2 UNet rows (CFG)
        guide = c["guidance"]["guidance_step_1"]["peak_gib"]
        dec = c["sd2"]["vae_decode_1"]["peak_gib"]
        bs = b["synthesize"]
        out["synthesize"] = {"batch": bs, "unet_text_params": half, "fp32_params": full,
                             "fp32_gib": round((4 * (half + full)) / GIB + bs * max(unet, guide, dec), 1),
                             "bf16_gib": round((2 * half + 4 * full) / GIB + bs * max(unet / 2, guide, dec), 1),
                             "largest": "guidance step (VAE decode + resnet50 backward)" if guide >= max(unet, dec) else "UNet step"}
    if "clip" in c and "params" in c["clip"]:
        n = c["clip"]["params"]["total"]["parameters"]
        per = c["clip"]["encode_16_images"]["peak_gib"] / 16
        out["score"] = {"batch": b["score"], "fp32_gib": round(4 * n / GIB + b["score"] * per, 1), "bf16_gib": round(2 * n / GIB + b["score"] * per / 2, 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("steps", nargs="*", default=None, choices=["build", "run", "measure", []])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "synood-rehearsal")
    ap.add_argument("--llama-layers", type=int, default=2, help="LLaMA layers at the real widths (32 in LLaVA-1.5-7B)")
    ap.add_argument("--lexicon-words", type=int, default=1200, help="NegLabel pool words kept (about 70,000 in the pool)")
    ap.add_argument("--steps-synth", type=int, default=None, help="scheduler steps for synthesize [default: the profile's 20]")
    ap.add_argument("--component", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or ["build", "run", "measure"]
    if args.component:
        print(json.dumps(component(args.component, args.root)))
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    import platform

    import torch

    result = {"benchmark": "rehearse-paper", "device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
              "cpu": platform.machine(), "cores": os.cpu_count(), "threads": 1, "nice": 19,
              "lowered": {"classes": "2 (1000)", "per_class": "2 (50)", "iterations": "1 (3; the guidance step is measured on its own)",
                          "lexicon_words": f"{args.lexicon_words} (NegLabel pool, about 70,000)",
                          "llama_layers": f"{args.llama_layers} (32)", "steps": f"{args.steps_synth or 20} (20)"}}
    if "build" in args.steps:
        result["build"] = build(args.root, args.llama_layers, args.lexicon_words)
    if "run" in args.steps:
        result["stages"] = run_stages(args)
    if "measure" in args.steps:
        result["components"] = measure_components(args)
    # parts run separately (build, then run, then measure) add up to one record and one JSON line
    record = args.root / "rehearsal.json"
    merged = json.loads(record.read_text()) if record.exists() else {}
    merged = {**{k: v for k, v in result.items() if k not in ("build", "stages", "components")}, **merged}  # device first
    for key, value in result.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) and key != "lowered" else value
    if "components" in merged:
        profile = json.loads((REPO_ROOT / "synood_cli" / "profiles" / "paper.json").read_text())
        merged["gpu_estimates"] = gpu_estimates(merged["components"], profile)
    record.write_text(json.dumps(merged))
    print(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
