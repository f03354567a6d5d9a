"""`synood env --profile NAME`: which weights a profile's stages load, where they are looked for, what is missing.

There is no network here, and the first run with real weights happens on a user's machine: this
says before any work which files each stage will read, whether the local cache holds them, and
how much is left to download. Files are looked for where the loaders look: the HF hub cache in
its own layout (`models--ORG--NAME/refs/main` -> `snapshots/REV/...`, at `runtime.hf_cache_dir()`,
which honours HF_HUB_CACHE and HF_HOME), torch hub's checkpoint folder for torchvision guides, a
local folder given as the model, the store for the tiny profile's built weights, and the package
for the world's shipped, hash-checked weights. Nothing is loaded and nothing is downloaded.

A snapshot counts as present only when every file the loader reads is there: a snapshot holding
the configs but not the weights (an interrupted download, or a `hf download --include '*.json'`)
is `partial`, and a dangling blob link counts as missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PRESENT, PARTIAL, MISSING, DAMAGED, BUILT_ON_USE = "present", "partial", "missing", "damaged", "built on first use"
OK_STATUSES = (PRESENT, BUILT_ON_USE)

KB, MB, GB = 10**3, 10**6, 10**9
# Download sizes of the files each known id's loader reads, as the hub lists them on the repo's "Files and
# versions" page (decimal units, the three figures the hub shows). Fetched once by hand: no network here.
_SD2 = "https://huggingface.co/stabilityai/stable-diffusion-2-inpainting"
KNOWN_SIZES: dict[str, tuple[dict[str, int], str]] = {
    "timm/vit_base_patch16_clip_224.openai": (
        {"open_clip_model.safetensors": 599 * MB, "open_clip_pytorch_model.bin": 599 * MB},
        "hub listing of the repo's fp32 ViT-B/16 weights, 599 MB (huggingface.co/timm/vit_base_patch16_clip_224.openai, "
        "tree da6e9e1); 149.6 M parameters x 4 bytes = 598.5 MB in either file",
    ),
    "stabilityai/stable-diffusion-2-inpainting": (
        {
            "unet/diffusion_pytorch_model.safetensors": 3460 * MB,  # fp32, the file loaded without a variant
            "vae/diffusion_pytorch_model.safetensors": 335 * MB,
            "text_encoder/model.safetensors": 1360 * MB,
            "tokenizer/vocab.json": 1060 * KB,
            "tokenizer/merges.txt": 525 * KB,
            "tokenizer/special_tokens_map.json": 460,
            "tokenizer/tokenizer_config.json": 829,
        },
        f"hub listing of the fp32 files loaded without a variant: unet 3.46 GB ({_SD2}, unet), vae 335 MB and "
        "text_encoder 1.36 GB (the same files in a hub copy, huggingface.co/nlightcho/stable-diffusion-2-inpainting), "
        "tokenizer 1.59 MB; the fp16 variant (not loaded) is half of that",
    ),
    "llava-hf/llava-1.5-7b-hf": (
        {
            "model-00001-of-00003.safetensors": 4990 * MB,
            "model-00002-of-00003.safetensors": 4960 * MB,
            "model-00003-of-00003.safetensors": 4180 * MB,
            "model.safetensors.index.json": 70100,
            "config.json": 950,
            "generation_config.json": 141,
            "preprocessor_config.json": 505,
            "processor_config.json": 173,
            "chat_template.json": 700,
            "special_tokens_map.json": 552,
            "added_tokens.json": 41,
            "tokenizer.json": 1840 * KB,
            "tokenizer.model": 500 * KB,
        },
        "hub listing (huggingface.co/llava-hf/llava-1.5-7b-hf, tree 95f2cf3): three safetensors shards of 4.99, 4.96 "
        "and 4.18 GB (14.1 GB in bf16/fp16 as stored), tokenizer.json 1.84 MB, tokenizer.model 500 kB",
    ),
}


@dataclass
class WeightCheck:
    """One set of files a stage loads: what it is, where it is looked for, and whether it is there."""

    what: str
    stages: list[str]
    id: str
    where: str
    status: str
    missing: list[str] = field(default_factory=list)
    download_bytes: int | None = 0  # of what is missing; None: not known
    size_source: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Need:
    """One file a loader reads; any of `names` will do (safetensors or its pickle twin), the first is what a download fetches."""

    names: tuple[str, ...]
    part: str = "weights"

    def found_in(self, folder: Path) -> bool:
        # is_file follows links: a snapshot link whose blob is gone is missing
        return any((folder / n).is_file() for n in self.names)


# -- the HF hub cache -----------------------------------------------------------------------------


def repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    """`models--ORG--NAME` in the hub cache the loaders use (runtime.hf_cache_dir: HF_HUB_CACHE, else HF_HOME/hub)."""
    from synood_cli.runtime import hf_cache_dir

    return (cache or hf_cache_dir()) / f"models--{repo_id.replace('/', '--')}"


def snapshot_of(repo_id: str, cache: Path | None = None, revision: str = "main") -> Path | None:
    """The snapshot `revision` resolves to (refs/REVISION holds the commit), or None when the cache has none."""
    repo = repo_folder(repo_id, cache)
    ref = repo / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    snap = repo / "snapshots" / commit
    if not commit or "/" in commit or commit in (".", "..") or not snap.is_dir():
        return None
    return snap


def _incomplete_blobs(repo_id: str, cache: Path | None = None) -> int:
    """Bytes already fetched by interrupted downloads (`blobs/*.incomplete`)."""
    blobs = repo_folder(repo_id, cache) / "blobs"
    try:
        return sum(p.stat().st_size for p in blobs.glob("*.incomplete") if p.is_file())
    except OSError:
        return 0


def _weights_needs(folder: Path, stem: str, pickle_name: str, part: str, known: dict[str, int]) -> list[Need]:
    """The weight files of one model folder: the shards its index names, else one file (safetensors or pickle)."""
    for index_name in (f"{stem}.safetensors.index.json", f"{pickle_name}.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return [Need((f"{index_name} (unreadable: its shards are not known)",), part)]
            prefix = Path(index_name).parent
            return [Need((str(prefix / s),), part) for s in shards if isinstance(s, str) and "/" not in s and ".." not in s]
    shards = sorted(k for k in known if Path(k).parent == Path(stem).parent and "-of-" in k and k.endswith(".safetensors"))
    if shards:  # a known sharded repo whose index has not arrived: its shards are what is missing
        return [Need((f"{Path(stem).stem}.safetensors.index.json",), part)] + [Need((s,), part) for s in shards]
    return [Need((f"{stem}.safetensors", pickle_name), part)]


def transformers_needs(folder: Path, known: dict[str, int] | None = None) -> list[Need]:
    """AutoModelForImageTextToText + AutoProcessor: config, weights, image processor and tokenizer files."""
    known = known or {}
    return [
        Need(("config.json",)),
        *_weights_needs(folder, "model", "pytorch_model.bin", "weights", known),
        Need(("preprocessor_config.json",), "processor"),
        Need(("tokenizer_config.json",), "processor"),
        Need(("tokenizer.json", "tokenizer.model"), "processor"),
    ]


def diffusers_needs(folder: Path, known: dict[str, int] | None = None) -> list[Need]:
    """StableDiffusionInpaintPipeline.from_pretrained (safety checker off): model_index.json and each component's files."""
    known = known or {}
    needs = [Need(("model_index.json",))]
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = None
    if not isinstance(index, dict):  # no index yet: the known repo's files, else nothing more can be said
        return needs + [Need((k,), "tokenizer" if k.startswith("tokenizer/") else "weights") for k in known]
    for name, spec in sorted(index.items()):
        if name.startswith("_") or name == "safety_checker" or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        if "/" in name or name in (".", ".."):
            continue
        cls = str(spec[1])
        if "Tokenizer" in cls:
            needs += [Need((f"{name}/vocab.json", f"{name}/tokenizer.json"), "tokenizer"), Need((f"{name}/merges.txt", f"{name}/tokenizer.json"), "tokenizer")]
        elif "Scheduler" in cls:
            needs.append(Need((f"{name}/scheduler_config.json",)))
        elif "Processor" in cls or "FeatureExtractor" in cls:
            needs.append(Need((f"{name}/preprocessor_config.json",), "tokenizer"))
        else:
            stem, pickle_name = ("model", "pytorch_model.bin") if spec[0] == "transformers" else ("diffusion_pytorch_model", "diffusion_pytorch_model.bin")
            needs.append(Need((f"{name}/config.json",)))
            needs += _weights_needs(folder, f"{name}/{stem}", f"{name}/{pickle_name}", "weights", known)
    return needs


def open_clip_needs(filename: str | None) -> list[Need]:
    """open_clip's hub download: the safetensors twin first, then the named file (pretrained.download_pretrained_from_hf)."""
    if not filename or filename == "open_clip_pytorch_model.bin":
        return [Need(("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))]
    stem, dot, ext = filename.rpartition(".")
    return [Need((f"{stem}.safetensors", filename) if dot and ext in ("bin", "pth") else (filename,))]


def _missing_size(repo_id: str, missing: list[Need]) -> tuple[int | None, str]:
    """Bytes to fetch for `missing`: from the table; a config file it does not list counts as nothing (a few kB)."""
    known, source = KNOWN_SIZES.get(repo_id, ({}, ""))
    sizes = [next((known[n] for n in need.names if n in known), 0 if need.names[0].endswith(".json") else None) for need in missing]
    if any(s is None for s in sizes):
        return None, f"unknown: {repo_id} is not in synood's table of download sizes" if not source else source
    return sum(sizes), source


def check_hub_repo(what: str, stages: list[str], repo_id: str, kind: str, filename: str | None = None) -> list[WeightCheck]:
    """One row per part (weights, tokenizer/processor) of a hub repo, as the loader's offline lookup would find it."""
    from synood_cli.runtime import hf_cache_dir

    cache = hf_cache_dir()
    known = KNOWN_SIZES.get(repo_id, ({}, ""))[0]
    snap = snapshot_of(repo_id, cache)
    folder = snap if snap is not None else repo_folder(repo_id, cache) / "snapshots" / "(none)"
    if kind == "diffusers":
        needs = diffusers_needs(folder, known)
    elif kind == "transformers":
        needs = transformers_needs(folder, known)
    else:  # an hf: model also reads its open_clip_config.json; a tag's config ships with open_clip
        needs = open_clip_needs(filename) + ([Need(("open_clip_config.json",))] if kind == "open_clip_hf" else [])
    partial_bytes = _incomplete_blobs(repo_id, cache)
    rows = []
    for part in dict.fromkeys(n.part for n in needs):
        mine = [n for n in needs if n.part == part]
        missing = mine if snap is None else [n for n in mine if not n.found_in(snap)]
        # a snapshot that lacks files is partial: the loader would fail offline, or fetch only the rest online
        status = MISSING if snap is None else (PARTIAL if missing else PRESENT)
        size, source = _missing_size(repo_id, missing) if missing else (0, KNOWN_SIZES.get(repo_id, ({}, ""))[1])
        if snap is None and repo_id not in KNOWN_SIZES:  # without a snapshot or the table, not even the file list is known
            size, source = None, f"unknown: {repo_id} is not in synood's table of download sizes"
        detail = "" if snap is not None else f"no snapshot: {repo_folder(repo_id, cache) / 'refs' / 'main'} is absent"
        if missing and partial_bytes:
            detail = (detail + "; " if detail else "") + f"an interrupted download left {human_bytes(partial_bytes)} in blobs/*.incomplete"
        label = what if part == "weights" else f"{what} {part}"
        rows.append(WeightCheck(label, list(stages), repo_id, str(snap or repo_folder(repo_id, cache)), status,
                                [n.names[0] for n in missing], size, source, detail))
    return rows


def check_local_folder(what: str, stages: list[str], folder: Path, kind: str) -> list[WeightCheck]:
    """A model given as a folder (diffusers pipeline or transformers save_pretrained): every file it needs."""
    needs = diffusers_needs(folder) if kind == "diffusers" else transformers_needs(folder)
    rows = []
    for part in dict.fromkeys(n.part for n in needs):
        mine = [n for n in needs if n.part == part]
        if not folder.is_dir():
            missing, status = mine, MISSING
        else:
            missing = [n for n in mine if not n.found_in(folder)]
            status = PRESENT if not missing else PARTIAL
        rows.append(WeightCheck(what if part == "weights" else f"{what} {part}", list(stages), str(folder), str(folder), status,
                                [n.names[0] for n in missing], None if missing else 0, "a local folder: nothing to download"))
    return rows


# -- one row per kind of model --------------------------------------------------------------------


def _store_row(what: str, stages: list[str], ident: str, store, config: dict) -> WeightCheck:
    art = store.artifact("weights", config)
    status = PRESENT if art.complete else BUILT_ON_USE
    return WeightCheck(what, stages, ident, str(art.path), status, [], 0, "built locally from a config and a seed: nothing to download",
                       "" if art.complete else "built into the store the first time a stage needs it (seconds, offline)")


def _shipped_row(what: str, stages: list[str], ident: str, where: Path, check) -> WeightCheck:
    from synood_cli.errors import ResourceMissing

    try:
        check()
        status, detail = PRESENT, "sha256 checked against the recorded hashes"
    except ResourceMissing as e:
        status, detail = (MISSING if "missing" in e.message or "cannot be read" in e.message else DAMAGED), e.message
    return WeightCheck(what, stages, ident, str(where), status, [], 0 if status == PRESENT else None,
                       "shipped inside the synood package: reinstall to restore", detail)


def clip_rows(source, stages: list[str], store) -> list[WeightCheck]:
    """The CLIP of --model/--pretrained: tiny (store), world (package), a file, local:DIR, hf:REPO or a tag."""
    import json as _json

    from synood_cli.profiles import profile_dir

    what = f"CLIP {source.describe()}"
    m, p = source.model, source.pretrained
    if source.is_tiny:
        arch_config = _json.loads((profile_dir() / "models" / f"{m}.json").read_text())
        return [_store_row(what, stages, f"{m} (seed {source.seed})", store, {"family": "open_clip", "arch": m, "arch_config": arch_config, "seed": source.seed})]
    if source.is_world:
        from importlib import resources

        from synood_cli.models.clip import WORLD_ARCH, world_weights

        return [_shipped_row(what, stages, m, Path(str(resources.files("synood_cli") / "world" / "weights")) / f"{WORLD_ARCH}.safetensors", world_weights)]
    if m.startswith("hf:"):
        return check_hub_repo(what, stages, m[3:], "open_clip_hf", "open_clip_pytorch_model.bin")
    if m.startswith("local:"):
        folder = Path(m[6:]).expanduser()
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        ok = (folder / "open_clip_config.json").is_file() and bool(files)
        missing = [] if ok else [n for n, there in (("open_clip_config.json", (folder / "open_clip_config.json").is_file()), ("*.safetensors", bool(files))) if not there]
        return [WeightCheck(what, stages, m, str(folder), PRESENT if ok else (PARTIAL if folder.is_dir() and len(missing) == 1 else MISSING),
                            missing, 0 if ok else None, "a local folder: nothing to download")]
    if p and Path(p).expanduser().exists():
        return [WeightCheck(what, stages, p, str(Path(p).expanduser()), PRESENT, [], 0, "a local file: nothing to download")]
    from synood_cli.models.clip import _open_clip

    open_clip = _open_clip(source)
    cfg = open_clip.get_pretrained_cfg(m, p) if p else {}
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        parts = hub.split("/")
        repo, filename = "/".join(parts[:2]), ("/".join(parts[2:]) or None)
        return check_hub_repo(what, stages, repo, "open_clip", filename)
    if cfg.get("url"):
        from synood_cli.runtime import hf_cache_dir

        target = hf_cache_dir() / Path(cfg["url"]).name  # _create hands open_clip the hub cache as its download folder
        there = target.is_file()
        return [WeightCheck(what, stages, cfg["url"], str(target), PRESENT if there else MISSING, [] if there else [target.name],
                            0 if there else None, "" if there else f"unknown: {m}/{p} is not in synood's table of download sizes")]
    return [WeightCheck(what, stages, f"{m}/{p}", "-", MISSING, [], None, "", f"{m} has no pretrained tag {p!r}; pass --pretrained FILE")]


def clip_tokenizer_row(stages: list[str]) -> WeightCheck:
    """open_clip's BPE vocabulary ships in its wheel: every CLIP here tokenizes with it."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    folder = Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else Path("-")
    bpe = folder / "bpe_simple_vocab_16e6.txt.gz"
    there = bpe.is_file()
    return WeightCheck("CLIP tokenizer (BPE vocabulary)", stages, "open_clip bpe_simple_vocab_16e6", str(bpe), PRESENT if there else DAMAGED,
                       [] if there else [bpe.name], 0 if there else None, "shipped in the open_clip_torch wheel: reinstall it to restore")


def diffusion_rows(model: str, stages: list[str], store) -> list[WeightCheck]:
    from synood_cli.models.diffusion import TINY_DIFFUSION, TINY_SD, WORLD_DIFFUSION

    what = f"diffusion {model}"
    if model == TINY_DIFFUSION:
        return [_store_row(what, stages, model, store, {"family": "diffusers-inpaint", "arch": TINY_SD, "seed": 0})]
    if model == WORLD_DIFFUSION:
        from synood_cli.world.inpaint_model import SHIPPED, world_inpaint_dir

        return [_shipped_row(what, stages, model, SHIPPED, world_inpaint_dir)]
    p = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or p.exists():
        return check_local_folder(what, stages, p, "diffusers")
    return check_hub_repo(what, stages, model, "diffusers")


def mllm_rows(mllm: str, stages: list[str], store) -> list[WeightCheck]:
    if mllm == "tiny":
        from synood_cli.models.mllm import TINY_LLAVA

        return [_store_row("MLLM tiny LLaVA (weights and processor)", stages, "synood-tiny-llava", store,
                           {"family": "transformers-llava", "arch": TINY_LLAVA, "seed": 0})]
    if mllm == "world":
        # the world's describer retrieves with the world CLIP: the same shipped, hash-checked file
        from synood_cli.models.clip import WORLD_ARCH, WORLD_TAG, ClipSource

        rows = clip_rows(ClipSource(WORLD_ARCH, WORLD_TAG), stages, store)
        for r in rows:
            r.what = "MLLM world describer (CLIP retrieval over the world CLIP)"
        return rows
    p = Path(mllm).expanduser()
    if mllm.startswith((".", "/", "~")) or p.exists():
        return check_local_folder(f"MLLM {mllm}", stages, p, "transformers")
    return check_hub_repo(f"MLLM {mllm}", stages, mllm, "transformers")


def torchvision_row(name: str, stages: list[str]) -> WeightCheck:
    """A torchvision guide's default weights, where torch hub keeps them (TORCH_HOME/hub/checkpoints)."""
    import torch.hub
    import torchvision

    what = f"guide torchvision:{name}"
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return WeightCheck(what, stages, name, "-", MISSING, [], None, "", f"torchvision has no model {name!r}")
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    there = target.is_file()
    size = weights.meta.get("_file_size")
    download = 0 if there else (round(float(size) * 2**20) if size else None)
    return WeightCheck(what, stages, f"{weights}", str(target), PRESENT if there else MISSING, [] if there else [target.name], download,
                       f"torchvision's weights table ({weights}.meta['_file_size'] = {size} MiB)" if size else "")


# -- the profile --------------------------------------------------------------------------------


def profile_weights(name: str, store) -> list[WeightCheck]:
    """Every set of files `name`'s stages load, one row each, in stage order; a model two stages share is one row."""
    from synood_cli.models.clip import clip_source
    from synood_cli.profiles import load_profile

    prof = load_profile(name)
    pr, sy = prof.get("prompt", {}), prof.get("synthesize", {})
    clip_stages = ["negatives", "finetune", "score", "evaluate"]
    guide = sy.get("guide_model", "clip")
    if guide == "clip" and sy.get("guidance", "energy") != "none":
        clip_stages.insert(0, "synthesize (guide)")
    rows: list[WeightCheck] = []
    if pr.get("mllm"):
        rows += mllm_rows(pr["mllm"], ["prompt"], store)
    if sy.get("diffusion"):
        rows += diffusion_rows(sy["diffusion"], ["synthesize"], store)
    if guide.startswith("torchvision:") and sy.get("guidance", "energy") != "none":
        rows.append(torchvision_row(guide.split(":", 1)[1], ["synthesize (guide)"]))
    rows += clip_rows(clip_source(prof), clip_stages, store)
    rows.append(clip_tokenizer_row(clip_stages + ["prompt (token count)"]))
    merged: dict[tuple[str, str, str], WeightCheck] = {}
    for r in rows:  # the world's describer and CLIP are one file: one row, both stages
        key = (r.id, r.where, r.what.split(" ")[-1] if r.what.endswith(("tokenizer", "processor")) else "")
        if key in merged:
            merged[key].stages += [s for s in r.stages if s not in merged[key].stages]
            merged[key].what += f" = {r.what}"
        else:
            merged[key] = r
    return list(merged.values())


def missing_bytes(rows: list[WeightCheck]) -> int | None:
    """What is left to download, or None when a missing file's size is not known."""
    sizes = [r.download_bytes for r in rows if not r.ok]
    return None if any(s is None for s in sizes) else sum(sizes)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GB", GB), ("MB", MB), ("kB", KB)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
