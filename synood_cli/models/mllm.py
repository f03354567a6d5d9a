"""Image-text models that describe an image's context (docs/method.md, section 2): four backends, one contract.

- `transformers`: any AutoModelForImageTextToText + AutoProcessor id or local folder, batched
  greedy generation through the processor's chat template, left padding.
- `openai`: an OpenAI-compatible /chat/completions endpoint (vLLM, TGI, ...), the image sent as a
  base64 data URL, a bounded number of requests in flight, retries with backoff.
- `tiny`: a small random LLaVA built from configs with a `tokenizers` word vocabulary, saved in the
  store with save_pretrained and loaded back through the `transformers` backend's own path.
- `world`: the generated world's context describer (synood_cli/world/describer.py), retrieval with
  the world's shipped CLIP (loaded through `load_clip`, hash-checked) over context descriptions.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from synood_cli.errors import ResourceMissing, SynoodError, UsageError
from synood_cli.registry import Registry
from synood_cli.runtime import hf_cache_dir, hf_load_failed, hf_repo_cached, is_offline

BACKENDS: Registry[str] = Registry("MLLM backend", option="--mllm")
for _name in ("transformers", "openai", "tiny", "world"):
    BACKENDS.add(_name, _name)


@dataclass(frozen=True)
class MllmSpec:
    """Which image-text model answers, and how to reach it."""

    backend: str
    model: str
    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 5
    trust_remote_code: bool = False
    seed: int = 0
    image_fit: str = "auto"  # transformers models: pad (LLaVA-1.5's own), processor, or auto (decided per model type)

    def label(self) -> str:
        return f"{self.backend}:{self.model}"


def mllm_spec(mllm: str, api_base: str | None = None, api_model: str | None = None, **kw) -> MllmSpec:
    """`--mllm tiny|world|openai|ID-or-folder` -> a spec; `openai` takes the model name from --api-model."""
    if mllm == "tiny":
        return MllmSpec("tiny", "synood-tiny-llava", **kw)
    if mllm == "world":
        return MllmSpec("world", "synood-world-clip-retrieval", **kw)
    if mllm == "openai":
        if not api_base:
            raise UsageError("--mllm openai needs --api-base URL", hint="e.g. --api-base http://localhost:8000/v1")
        if not api_model:
            raise UsageError("--mllm openai needs --api-model NAME", hint="the model name the server serves, e.g. Qwen/Qwen2-VL-7B-Instruct")
        return MllmSpec("openai", api_model, api_base=api_base.rstrip("/"), **kw)
    if mllm in ("transformers",):
        raise UsageError("--mllm transformers needs the model id itself", hint="pass --mllm llava-hf/llava-1.5-7b-hf or a local folder")
    return MllmSpec("transformers", mllm, **kw)


class Answerer(Protocol):
    label: str

    def answer(self, images: list, questions: list[str]) -> list[str]: ...


# -- validation before any work -----------------------------------------------------------------


IMAGE_FITS = ("auto", "pad", "processor")
PAD_MODEL_TYPES = ("llava",)  # LLaVA-1.5: trained and evaluated with image_aspect_ratio=pad


def resolve_image_fit(spec: MllmSpec) -> str | None:
    """How images reach a transformers model: `pad` or `processor`; None for backends without images of ours.

    LLaVA-1.5 was fine-tuned and evaluated on images padded to a square with the image-mean colour
    (its code's `expand2square`, `image_aspect_ratio=pad`); llava-hf's processor resizes and
    centre-crops instead, which cuts the borders of a non-square image off, and the borders are
    the context the prompt stage asks about (docs/method.md, "Context prompts"). `auto` pads for
    the LLaVA-1.5 model type (config.json's `model_type`) and leaves other models to their processor.
    """
    if spec.image_fit not in IMAGE_FITS:
        raise UsageError(f"--image-fit must be one of {', '.join(IMAGE_FITS)}, got {spec.image_fit!r}")
    if spec.backend not in ("transformers", "tiny"):
        if spec.image_fit != "auto":
            raise UsageError(f"--image-fit applies to transformers models, not --mllm {spec.backend}", hint="leave it out")
        return None
    if spec.image_fit != "auto":
        return spec.image_fit
    return "pad" if _model_type(spec) in PAD_MODEL_TYPES else "processor"


def _model_type(spec: MllmSpec) -> str | None:
    if spec.backend == "tiny":
        return "llava"  # ensure_tiny_mllm builds a LlavaForConditionalGeneration
    import json

    p = Path(spec.model).expanduser()
    if (p / "config.json").is_file():
        config = p / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            config = Path(hf_hub_download(spec.model, "config.json", local_files_only=is_offline()))
        except Exception as e:  # noqa: BLE001 - the same failure loading would give, said now
            raise hf_load_failed("MLLM", spec.model, e) from None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def expand_to_square(image, background: tuple[int, int, int]):
    """LLaVA-1.5's `expand2square`: the image centred on a square of `background`, nothing cut off."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def validate_mllm(spec: MllmSpec) -> None:
    """Exit 2/3 before any image is read: unknown local folder, uncached id offline, dead endpoint."""
    BACKENDS.get(spec.backend)
    if spec.backend == "transformers":
        p = Path(spec.model).expanduser()
        looks_local = spec.model.startswith((".", "/", "~")) or p.exists()
        if looks_local:
            if not (p / "config.json").is_file():
                raise UsageError(f"--mllm {spec.model}: no config.json in that folder", hint="point it at a folder saved with save_pretrained")
        elif is_offline() and not hf_repo_cached(spec.model):
            raise ResourceMissing(
                f"MLLM {spec.model} is not in the local cache {hf_cache_dir()} and offline mode (HF_HUB_OFFLINE=1) is on",
                hint="download it once with network access, pass a local folder, or use --mllm tiny / --mllm openai",
            )
    elif spec.backend == "openai":
        _check_endpoint(spec)
    elif spec.backend == "world":
        from synood_cli.models.clip import world_weights

        world_weights()  # exit 3 on missing or damaged shipped weights


def _check_endpoint(spec: MllmSpec) -> None:
    """GET {api_base}/models: any HTTP answer means the server is there."""
    req = urllib.request.Request(f"{spec.api_base}/models", headers=_auth_headers(spec))
    try:
        with urllib.request.urlopen(req, timeout=min(spec.timeout, 10)):
            pass
    except urllib.error.HTTPError:
        return  # it answered, even if /models is not implemented
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise ResourceMissing(
            f"the endpoint {spec.api_base} does not answer ({reason})",
            hint="start the server (e.g. vllm serve MODEL) or fix --api-base",
        ) from None


def _auth_headers(spec: MllmSpec) -> dict:
    key = os.environ.get(spec.api_key_env, "")
    return {"Authorization": f"Bearer {key}"} if key else {}


# -- transformers ------------------------------------------------------------------------------


class TransformersAnswerer:
    """Batched greedy generation with the processor's chat template (left padding)."""

    def __init__(self, model_id: str, device, dtype, trust_remote_code: bool = False, max_new_tokens: int = 64, label: str | None = None,
                 pad_square: bool = False):
        import torch
        import transformers
        from transformers import AutoModelForImageTextToText, AutoProcessor

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        local = is_offline() or Path(model_id).expanduser().exists()
        try:
            self.processor = AutoProcessor.from_pretrained(model_id, local_files_only=local, trust_remote_code=trust_remote_code)
            model_dtype = dtype if device.type == "cuda" else torch.float32
            self.model = AutoModelForImageTextToText.from_pretrained(
                model_id, dtype=model_dtype, local_files_only=local, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise hf_load_failed("MLLM", model_id, e) from None
        self.processor.tokenizer.padding_side = "left"
        self.model.to(device).eval()
        self.device, self.dtype = device, self.model.dtype
        self.max_new_tokens = max_new_tokens
        self.label = label or f"transformers:{model_id}"
        self.pad_square = pad_square
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.background = tuple(int(x * 255) for x in mean)  # as LLaVA's code: the mean colour, truncated

    def model_images(self, images: list) -> list:
        """The images the processor receives: padded to squares (LLaVA-1.5's own geometry) or as they are."""
        return [expand_to_square(im, self.background) for im in images] if self.pad_square else list(images)

    def answer(self, images: list, questions: list[str]) -> list[str]:
        import torch

        images = self.model_images(images)
        chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True) for c in chats]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# -- the tiny profile's model ------------------------------------------------------------------

TINY_LLAVA = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 32},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "vocab_words": 400,
}
_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}{% endfor %}ASSISTANT:"
)


def ensure_tiny_mllm(store, seed: int = 0) -> Path:
    """Build the tiny random LLaVA once per seed; a folder that from_pretrained loads like any other."""

    def build(folder: Path) -> dict:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
            PreTrainedTokenizerFast,
        )

        from synood_cli.lexicons import load_basic
        from synood_cli.models.saving import save_model_on_any_rank

        lex = load_basic()
        words = sorted({w for w in lex.nouns[: TINY_LLAVA["vocab_words"]] + lex.adjectives[:60] if " " not in w})
        specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", ","]
        vocab = {w: i for i, w in enumerate(specials + words)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=512
        )
        # registered as special so the processor's expanded image tokens stay separate tokens
        fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
        fast.padding_side = "left"
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(**TINY_LLAVA["vision"]),
            text_config=LlamaConfig(vocab_size=len(vocab), pad_token_id=0, bos_token_id=2, eos_token_id=3, **TINY_LLAVA["text"]),
            image_token_index=vocab["<image>"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
        size = TINY_LLAVA["vision"]["image_size"]
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            tokenizer=fast,
            patch_size=TINY_LLAVA["vision"]["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLS token of a CLIP vision tower
            chat_template=_CHAT_TEMPLATE,
        )
        save_model_on_any_rank(model, folder)
        processor.save_pretrained(folder)
        return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(vocab)}

    import transformers

    transformers.utils.logging.disable_progress_bar()
    art = store.build("weights", {"family": "transformers-llava", "arch": TINY_LLAVA, "seed": seed}, build)
    return art.path


# -- openai-compatible endpoints ---------------------------------------------------------------

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointError(SynoodError):
    """The endpoint failed after every retry."""

    exit_code = 3


class OpenAIAnswerer:
    """Requests in parallel (bounded), retried with exponential backoff and jitter on 429/5xx/timeouts."""

    def __init__(self, spec: MllmSpec, max_new_tokens: int = 64, backoff: float = 0.5):
        self.spec = spec
        self.max_new_tokens = max_new_tokens
        self.backoff = backoff
        self.label = spec.label()
        self.retried = 0

    def _payload(self, image, question: str) -> bytes:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        body = {
            "model": self.spec.model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
            "seed": self.spec.seed,
        }
        return json.dumps(body).encode()

    def _one(self, image, question: str) -> str:
        data = self._payload(image, question)
        headers = {"Content-Type": "application/json", **_auth_headers(self.spec)}
        last = ""
        for attempt in range(self.spec.retries + 1):
            req = urllib.request.Request(f"{self.spec.api_base}/chat/completions", data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.spec.timeout) as resp:
                    reply = json.loads(resp.read())
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in RETRY_STATUS:
                    raise EndpointError(f"the endpoint refused the request: HTTP {e.code} {e.read()[:200]!r}", hint="check --api-model and the server log") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            except (KeyError, IndexError, ValueError) as e:
                raise EndpointError(f"the endpoint's answer is not an OpenAI chat completion ({type(e).__name__})") from None
            if attempt < self.spec.retries:
                self.retried += 1
                time.sleep(self.backoff * (2**attempt) * (1 + random.random() / 2))
        raise EndpointError(
            f"the endpoint {self.spec.api_base} failed {self.spec.retries + 1} times ({last})",
            hint="check the server; rerun the same command to resume where it stopped",
        )

    def answer(self, images: list, questions: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.spec.concurrency)) as pool:
            return list(pool.map(self._one, images, questions))


def load_world_answerer(store, device) -> Answerer:
    """The world's context describer over the world CLIP, loaded (and hash-checked) by `load_clip`."""
    import torch

    from synood_cli.models.clip import WORLD_ARCH, WORLD_TAG, ClipSource, load_clip
    from synood_cli.world.describer import WorldContextDescriber

    clip = load_clip(ClipSource(WORLD_ARCH, WORLD_TAG), store, device, torch.float32)
    return WorldContextDescriber(clip.model, clip.tokenizer, clip.preprocess, device=device)


def load_answerer(spec: MllmSpec, store, device, dtype, max_new_tokens: int) -> Answerer:
    if spec.backend == "world":
        return load_world_answerer(store, device)
    if spec.backend == "openai":
        return OpenAIAnswerer(spec, max_new_tokens)
    if spec.backend == "tiny":
        folder = ensure_tiny_mllm(store, spec.seed)
        return TransformersAnswerer(str(folder), device, dtype, False, max_new_tokens, label="tiny:synood-tiny-llava",
                                    pad_square=resolve_image_fit(spec) == "pad")
    return TransformersAnswerer(spec.model, device, dtype, spec.trust_remote_code, max_new_tokens, pad_square=resolve_image_fit(spec) == "pad")
