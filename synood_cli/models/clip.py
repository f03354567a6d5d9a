"""The CLIP backend: one loader for real weights and the tiny profile's local random weights.

Model sources (CONVENTIONS.md): an open_clip name with `--pretrained TAG|FILE.safetensors`,
`hf:ORG/REPO` (open_clip's hf-hub), `local:DIR` (a folder with open_clip_config.json and
safetensors weights), or the tiny architecture, whose weights are built from a JSON config and a
seed, saved in the store as safetensors and then loaded back through the very same
`open_clip.create_model_and_transforms(name, pretrained=FILE)` call a user's file takes.
The world's CLIP (`--model world`, docs/world.md) is trained by the project on its generated
world and shipped in the package (synood_cli/world/weights/) with its sha256; it loads through the
same `create_model_and_transforms(name, pretrained=FILE)` call as a user's safetensors file.
Nothing a user hands us is unpickled: local weights must be safetensors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from synood_cli.errors import ResourceMissing, UsageError, first_line
from synood_cli.profiles import profile_dir
from synood_cli.runtime import hf_cache_dir, hf_repo_cached, is_offline
from synood_cli.store import Store, sha256_file

TINY_ARCHS = ("synood-tiny-clip",)
TINY_TAG = "tiny"
WORLD_ARCH = "synood-world-clip"
WORLD_TAG = "world"
_registered_tiny = False


# transformers (~1 s) and timm (~0.3 s) are optional imports of open_clip, needed only by models
# with a Hugging Face text tower or a timm vision tower; open_clip imports both at `import
# open_clip` (hf_model.py, coca_model.py, timm_model.py). For every other model we hide them
# during that import, which is most of `synood score one.jpg`'s start-up on the tiny profile.
_OPTIONAL_DEPS = ("transformers", "timm")


def _needs_optional_deps(source: "ClipSource | None") -> bool:
    """Whether this model's config names an HF text tower or a timm vision tower (unknown: True)."""
    import json
    import importlib.util

    if source is None or os.environ.get("SYNOOD_LEAN_IMPORTS", "1") == "0":
        return True
    m = source.model
    if source.is_tiny or source.is_world:
        path = profile_dir() / "models" / f"{m}.json"
    elif m.startswith("local:"):
        path = Path(m[6:]).expanduser() / "open_clip_config.json"
    elif m.startswith("hf:"):
        return True
    else:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return True
        path = Path(list(spec.submodule_search_locations)[0]) / "model_configs" / f"{m}.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    cfg = cfg.get("model_cfg", cfg)
    return bool(cfg.get("text_cfg", {}).get("hf_model_name") or cfg.get("vision_cfg", {}).get("timm_model_name"))


def _open_clip(source: "ClipSource | None" = None):
    """`import open_clip`, without transformers and timm when `source` does not need them.

    If open_clip was imported lean and a later model needs them (one long-lived process), the
    three open_clip modules that bind them at import are re-executed with the real packages.
    """
    import importlib
    import sys

    needs = _needs_optional_deps(source)
    oc = sys.modules.get("open_clip")
    if oc is not None:
        if needs and getattr(oc, "_synood_lean", False):
            for dep in _OPTIONAL_DEPS:
                with contextlib.suppress(ImportError):
                    importlib.import_module(dep)
            for mod in ("hf_model", "timm_model", "coca_model"):
                importlib.reload(sys.modules[f"open_clip.{mod}"])
            oc.model.HFTextEncoder = oc.hf_model.HFTextEncoder
            oc.model.TimmModel = oc.timm_model.TimmModel
            oc._synood_lean = False
        return oc
    hidden = [] if needs else [d for d in _OPTIONAL_DEPS if d not in sys.modules]
    for dep in hidden:
        sys.modules[dep] = None  # makes `import dep` raise ImportError: open_clip's fallback
    try:
        import open_clip
    finally:
        for dep in hidden:
            if dep in sys.modules and sys.modules[dep] is None:
                del sys.modules[dep]
    open_clip._synood_lean = bool(hidden)
    return open_clip


@dataclass(frozen=True)
class ClipSource:
    """Which CLIP to load: `model` in the source grammar, `pretrained` a tag or file."""

    model: str
    pretrained: str | None = None
    seed: int = 0

    @property
    def is_tiny(self) -> bool:
        return self.model in TINY_ARCHS

    @property
    def is_world(self) -> bool:
        return self.model == WORLD_ARCH and self.pretrained in (None, WORLD_TAG)

    def describe(self) -> str:
        if self.is_tiny:
            return f"{self.model} (random weights, seed {self.seed})"
        if self.is_world:
            return f"{self.model} (trained on the generated world, shipped weights)"
        return f"{self.model}" + (f" / {self.pretrained}" if self.pretrained else "")


def clip_source(profile: dict, model: str | None = None, pretrained: str | None = None) -> ClipSource:
    """Explicit flags win over the profile; an explicit --model drops the profile's tag."""
    prof = profile.get("clip", {})
    if model is None:
        return ClipSource(prof["model"], pretrained or prof.get("pretrained"), int(prof.get("seed", 0)))
    if model == "tiny":
        return ClipSource(TINY_ARCHS[0], TINY_TAG, int(prof.get("seed", 0)))
    if model == "world":
        return ClipSource(WORLD_ARCH, WORLD_TAG)
    return ClipSource(model, pretrained)


def _register_tiny_configs() -> None:
    global _registered_tiny
    if not _registered_tiny:
        open_clip = _open_clip(ClipSource(TINY_ARCHS[0], TINY_TAG))

        open_clip.add_model_config(Path(str(profile_dir() / "models")))
        _registered_tiny = True


def _open_clip_name(model: str) -> str:
    if model.startswith("hf:"):
        return "hf-hub:" + model[3:]
    if model.startswith("local:"):
        return "local-dir:" + model[6:]
    return model


def validate_clip_source(source: ClipSource) -> None:
    """Cheap checks before any data is read or weights loaded (exit 2 on a bad name or file)."""
    open_clip = _open_clip(source)

    _register_tiny_configs()
    m = source.model
    if m.startswith("hf:"):
        return
    if m.startswith("local:"):
        local_weights(source)
        return
    if m not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(m, open_clip.list_models(), n=3)
        raise UsageError(
            f"unknown CLIP model {m!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + "see open_clip.list_models(), or use hf:ORG/REPO, local:DIR, tiny or world",
        )
    if source.is_tiny:
        return
    if source.is_world:
        world_weights()
        return
    p = source.pretrained
    if p is None:
        tags = open_clip.list_pretrained_tags_by_model(m)
        raise UsageError(
            f"--model {m} needs --pretrained (a tag or a .safetensors file)",
            hint=f"tags for {m}: {', '.join(tags) if tags else 'none known; pass a file'}",
        )
    path = Path(p).expanduser()
    if path.exists():
        if path.suffix != ".safetensors":
            raise UsageError(
                f"--pretrained {p}: only .safetensors weights are accepted; synood never unpickles a file it is handed",
                hint="convert it once where you trust it: safetensors.torch.save_file(torch.load(f)['state_dict'], 'model.safetensors')",
            )
        return
    tags = open_clip.list_pretrained_tags_by_model(m)
    if p not in tags and m.endswith(QUICK_GELU_SUFFIX) and p in open_clip.list_pretrained_tags_by_model(m[: -len(QUICK_GELU_SUFFIX)]):
        base = m[: -len(QUICK_GELU_SUFFIX)]
        raise UsageError(
            f"--model {m} builds QuickGELU (quick_gelu), but --pretrained {p} was trained with plain GELU: its features would be wrong",
            hint=f"use --model {base} --pretrained {p}; synood builds each tag with the activation it was trained with",
        )
    if p not in tags:
        raise UsageError(
            f"--pretrained {p!r} is neither a file nor a known tag for {m}",
            hint=f"tags for {m}: {', '.join(tags) if tags else 'none'}",
        )
    pretrained_build(source)  # a model config that contradicts the tag: exit 2, naming the field
    if is_offline():
        _check_cached_offline(source, open_clip.get_pretrained_cfg(m, p))


def source_label(source: ClipSource) -> str:
    """`describe()`, plus "with QuickGELU" where the tag makes synood build it: what score files and
    thresholds record, so ones made with the GELU build of such a tag are refused, not reused."""
    return source.describe() + (" with QuickGELU" if pretrained_build(source).get("force_quick_gelu") else "")


QUICK_GELU_SUFFIX = "-quickgelu"
# a tag's preprocessing fields (open_clip's pretrained table) -> create_model_and_transforms' overrides
_TAG_PREPROCESS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}


def pretrained_build(source: ClipSource) -> dict:
    """open_clip build arguments that make a model name with a pretrained tag the model the tag trained.

    open_clip 3.x builds `ViT-B-16` with plain GELU even for the `openai` tag, whose weights were
    trained with QuickGELU, and only warns (docs/method.md, "CLIP"). So the tag's own table entry
    decides: `force_quick_gelu` where it says QuickGELU, and its mean, std, interpolation and resize
    mode for both preprocessing paths. A model config that asks for QuickGELU where the tag was
    trained without it is refused (exit 2, naming `quick_gelu`): nothing is left to a warning.
    Empty for a weights file, `hf:`, `local:` and tiny models: their own config is the truth.
    """
    m, p = source.model, source.pretrained
    if source.is_tiny or not p or m.startswith(("hf:", "local:")) or Path(p).expanduser().exists():
        return {}
    open_clip = _open_clip(source)
    tag = open_clip.get_pretrained_cfg(m, p)
    model_cfg = open_clip.get_model_config(m) or {}
    if not tag:
        return {}  # not a known tag: validate_clip_source says so
    kwargs = {arg: tag[field] for field, arg in _TAG_PREPROCESS.items() if tag.get(field) is not None}
    tag_quick, model_quick = bool(tag.get("quick_gelu", False)), bool(model_cfg.get("quick_gelu", False))
    if model_quick and not tag_quick:
        repo = (tag.get("hf_hub") or "").strip("/")
        raise UsageError(
            f"--model {m} builds QuickGELU (quick_gelu: true in its open_clip config), but open_clip's table says "
            f"--pretrained {p} was trained without it (quick_gelu: false); synood does not guess which is right",
            hint=(f"load the weights with the config their repo states: --model hf:{repo}" if repo.count("/") == 1 else "pass the weights as --model local:DIR with an open_clip_config.json"),
        )
    if tag_quick:
        kwargs["force_quick_gelu"] = True
    return kwargs


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# open_clip's own preference among safetensors names; any other single .safetensors file is taken too
SAFETENSORS_ORDER = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")


def local_weights(source: ClipSource) -> Path:
    """The one safetensors file `--model local:DIR` loads (exit 2 if the folder is unsafe or ambiguous).

    open_clip's `local-dir:` loader prefers `open_clip_pytorch_model.bin` over `model.safetensors`
    and `torch.load`s it; so a folder that also holds pickle weights is refused, and open_clip is
    handed the exact safetensors file, which is also the file the fingerprint hashes.
    """
    m = source.model
    folder = Path(m[6:]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise UsageError(
            f"--model {m}: {folder} has no open_clip_config.json",
            hint="point local: at a folder saved by open_clip (config + weights), or use a model name",
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise UsageError(
            f"--model {m}: {folder} also holds pickle weights ({', '.join(pickles[:3])}); synood never unpickles model files "
            "and will not guess which weights you meant",
            hint="move the pickle files out of the folder (keep only the .safetensors weights)",
        )
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(
            f"--model {m}: {folder} has no .safetensors weights; synood never unpickles model files",
            hint="convert the weights once with safetensors.torch.save_file(state_dict, 'open_clip_model.safetensors')",
        )
    for name in SAFETENSORS_ORDER:
        if (folder / name).is_file():
            return folder / name
    if len(files) > 1:
        raise UsageError(
            f"--model {m}: {folder} holds {len(files)} .safetensors files ({', '.join(f.name for f in files[:3])}); which one is the model is not clear",
            hint="keep one, or name it open_clip_model.safetensors",
        )
    return files[0]


def world_weights(folder: Path | None = None) -> Path:
    """The shipped world CLIP weights, checked against their recorded sha256 (exit 3 if damaged)."""
    import json

    from importlib import resources

    folder = Path(str(resources.files("synood_cli") / "world" / "weights")) if folder is None else folder
    path = folder / f"{WORLD_ARCH}.safetensors"
    hint = "reinstall synood (the world CLIP's weights ship inside the package), or use --model tiny"
    try:
        expected = json.loads((folder / f"{WORLD_ARCH}.json").read_text())["sha256"]
        actual = sha256_file(path)
    except (OSError, ValueError, KeyError) as e:
        raise ResourceMissing(f"the world CLIP's weights cannot be read from {folder} ({first_line(e)})", hint=hint) from None
    if actual != expected:
        raise ResourceMissing(f"the world CLIP's weights {path} are damaged (sha256 {actual[:16]}, expected {expected[:16]})", hint=hint)
    return path


def _missing_weights(source: ClipSource, detail: str) -> ResourceMissing:
    where = "offline mode (HF_HUB_OFFLINE=1)" if is_offline() else "the hub could not be reached"
    return ResourceMissing(
        f"CLIP weights {source.describe()} are not in the local cache {hf_cache_dir()} and {where}{detail}",
        hint="download them once with network access (or point HF_HOME at a cache that has them), "
        "pass --pretrained FILE.safetensors or --model local:DIR, or try --profile tiny",
    )


def _check_cached_offline(source: ClipSource, cfg: dict) -> None:
    """Offline, a hub tag whose repo is not in the HF cache cannot load: say so before any work."""
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo.count("/") >= 2:  # "org/repo/filename"
        repo = "/".join(repo.split("/")[:2])
    if repo and not hf_repo_cached(repo):
        raise _missing_weights(source, f" (hub repo {repo})")


def ensure_tiny_weights(store: Store, arch: str, seed: int, rebuild: bool = False) -> Path:
    """Build the tiny random CLIP once per (arch config, seed) and keep it in the store.

    With `rebuild`, a stored copy that could not be loaded (damaged on disk) is made again.
    """
    import json

    from safetensors.torch import save_file

    open_clip = _open_clip(ClipSource(arch, TINY_TAG, seed))

    _register_tiny_configs()
    arch_config = json.loads((profile_dir() / "models" / f"{arch}.json").read_text())

    def build(folder: Path) -> dict:
        torch.manual_seed(seed)
        with _quiet_root_logger():  # open_clip warns that no pretrained weights were loaded: intended
            model = open_clip.create_model(arch, pretrained=None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "open_clip_model.safetensors"))
        return {"parameters": sum(v.numel() for v in state.values())}

    config = {"family": "open_clip", "arch": arch, "arch_config": arch_config, "seed": seed}
    if rebuild:
        store.remove(store.artifact("weights", config), force=True)
    art = store.build("weights", config, build)
    return art.file("open_clip_model.safetensors")


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs download failures with logging.error on the root logger; we report them ourselves."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(old)


def _create(name: str, pretrained: str | None, device, local_file: Path | None, build: dict | None = None):
    """open_clip model, preprocessing and tokenizer; a local: folder's weights come from `local_file` only.

    `build`: `pretrained_build`'s arguments (activation and preprocessing of the tag).
    """
    import open_clip

    build = build or {}
    with _quiet_root_logger():
        if local_file is not None:
            # load_weights=False: open_clip would otherwise pick (and maybe torch.load) a file itself
            model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False, device=device, **build)
            open_clip.load_checkpoint(model, str(local_file), strict=True, weights_only=True)
        else:
            # the HF cache the offline check looked in (runtime.hf_cache_dir), read now, not at import
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, weights_only=True, cache_dir=str(hf_cache_dir()), **build
            )
        tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


def activation_of(model) -> str:
    """The activation the model's transformer blocks were built with: quick_gelu, gelu, or both names joined."""
    from open_clip.transformer import QuickGELU

    found = set()
    for mod in model.modules():
        if isinstance(mod, QuickGELU):
            found.add("quick_gelu")
        elif isinstance(mod, torch.nn.GELU):
            found.add("gelu")
    return "+".join(sorted(found)) or "none"


def build_fingerprint(model) -> str:
    """`+ACT+pre:HASH`: what the weights id alone does not say (docs/method.md, "CLIP").

    The same weights built with GELU or QuickGELU, or fed other preprocessing, give other
    features: text features, negatives, feature caches and checkpoints key on this too.
    """
    import hashlib
    import json

    from open_clip import get_model_preprocess_cfg

    pre = get_model_preprocess_cfg(model)
    digest = hashlib.sha256(json.dumps(pre, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return f"+{activation_of(model)}+pre:{digest}"


class ClipModel:
    """A frozen CLIP with its preprocessing and tokenizer; features come back fp32 and L2-normalised."""

    def __init__(self, model, preprocess, tokenizer, source: ClipSource, fingerprint: str, device, dtype):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.source = source
        self.fingerprint = fingerprint
        self.device = device
        self.dtype = dtype
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") and model.text_projection is not None else None
        # input pipeline (data/pixels.py): open_clip's PIL transform only when asked, or when
        # TensorPreprocess cannot reproduce it; decode_device "cuda" decodes JPEGs with nvJPEG
        self.exact_preprocess = False
        self.jpeg_draft = True  # large JPEGs decoded at a reduced DCT scale (data/decoding.py)
        self.decode_device = None
        self._tensor_preprocess = None

    @property
    def tensor_preprocess(self):
        """open_clip's eval transform as a batched torch op (None: not reproducible, PIL only)."""
        if self._tensor_preprocess is None:
            from synood_cli.data.preprocess import TensorPreprocess

            self._tensor_preprocess = TensorPreprocess.from_transform(self.preprocess) or False
        return self._tensor_preprocess or None

    @property
    def preprocess_id(self) -> str | None:
        """Names the preprocessing when it is not open_clip's PIL path (feature caches key on it)."""
        if self.exact_preprocess or self.tensor_preprocess is None:
            return None
        # v2: large JPEGs decoded at a reduced DCT scale (data/decoding.py); v1 decoded at full size
        return "torch-batched-v2-jpeg-draft" if self.jpeg_draft else "torch-batched-v1"

    def pixels(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 RGB images [3, H, W] -> the normalised batch `encode_images` takes, as configured.

        The same preprocessing `data/pixels.py` applies to files (exact: open_clip's PIL transform).
        """
        prep = None if self.exact_preprocess else self.tensor_preprocess
        if prep is not None:
            return prep(images, self.device)
        from PIL import Image

        return torch.stack([self.preprocess(Image.fromarray(im.permute(1, 2, 0).cpu().numpy())) for im in images]).to(self.device)

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """g = encode_image(x) in fp32, not normalised: the adapter's input (docs/method.md, "Fine-tune")."""
        images = images.to(self.device, non_blocking=True)
        with self._autocast():
            feats = self.model.encode_image(images)
        return feats.float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """f = g / |g|, the feature every zero-shot score takes."""
        return torch.nn.functional.normalize(self.encode_raw(images), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 512, task=None) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size]).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1))
            if task is not None:
                task.advance(len(tokens))
        if not out:
            return torch.empty(0, self.embed_dim or 0, device=self.device)
        return torch.cat(out)


def load_clip(source: ClipSource, store: Store, device, dtype) -> ClipModel:
    """Load CLIP weights (real or tiny) through open_clip; missing weights offline exit 3 with a hint."""
    _open_clip(source)  # lean or full import of open_clip, as this model needs

    validate_clip_source(source)
    name = _open_clip_name(source.model)
    pretrained = source.pretrained
    local_file = None
    if source.is_tiny:
        weights = ensure_tiny_weights(store, source.model, source.seed)
        pretrained = str(weights)
        fingerprint = f"{source.model}@weights/{weights.parent.name}"
    elif source.is_world:
        pretrained = str(world_weights())
        fingerprint = f"{source.model}@sha256:{sha256_file(Path(pretrained))[:16]}"
    elif pretrained and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser())
        fingerprint = f"{source.model}@sha256:{sha256_file(Path(pretrained))[:16]}"
    elif source.model.startswith("local:"):
        local_file = local_weights(source)
        fingerprint = f"local@sha256:{sha256_file(local_file)[:16]}"  # the file actually loaded
    else:
        fingerprint = f"{source.model}@{pretrained}" if pretrained else source.model
    build = pretrained_build(source)
    try:
        model, preprocess, tokenizer = _create(name, pretrained, device, local_file, build)
    except Exception as e:  # open_clip raises RuntimeError/OSError/hub errors for missing weights
        first = first_line(e)
        if source.is_tiny:  # the store's tiny weights are a cache: rebuild a damaged copy once
            import warnings

            from synood_cli.errors import SynoodWarning

            warnings.warn(f"the tiny CLIP weights {weights} could not be loaded ({first}); rebuilding them", SynoodWarning, stacklevel=2)
            weights = ensure_tiny_weights(store, source.model, source.seed, rebuild=True)
            model, preprocess, tokenizer = _create(name, str(weights), device, None)
        elif local_file is not None or (pretrained and Path(pretrained).exists()):
            raise UsageError(
                f"CLIP weights {local_file or pretrained} could not be loaded: {first}",
                hint="the file is damaged or does not match the model config; download or convert it again",
            ) from None
        else:
            raise _missing_weights(source, f": {first}") from None
    model.eval().requires_grad_(False)
    return ClipModel(model, preprocess, tokenizer, source, fingerprint + build_fingerprint(model), device, dtype)
