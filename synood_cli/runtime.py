"""Process-wide settings resolved once: home folder, device, precision, offline mode, seed.

Torch is imported lazily here: the CLI resolves flags before any heavy import.
"""

from __future__ import annotations

import os
from pathlib import Path

from synood_cli.errors import ResourceMissing, UsageError, first_line

PRECISIONS = {
    "auto": "auto",
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home, else SYNOOD_HOME, else $XDG_CACHE_HOME/synood, else ~/.cache/synood."""
    if home:
        return Path(home).expanduser()
    if os.environ.get("SYNOOD_HOME"):
        return Path(os.environ["SYNOOD_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "synood"
    return Path("~/.cache/synood").expanduser()


def rank_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun/accelerate or srun variables.

    SLURM: the step's task count (SLURM_STEP_NUM_TASKS, set by srun), not the job's
    SLURM_NTASKS: a batch script or an salloc shell is one process even in a 4-task job, and
    must not wait for three ranks that were never started.
    """
    env = os.environ
    if "WORLD_SIZE" in env:
        rank = int(env.get("RANK", "0"))
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", str(rank)))
        return rank, world, local
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def normalize_precision(precision: str) -> str:
    key = precision.lower()
    if key not in PRECISIONS:
        raise UsageError(
            f"unknown precision {precision!r}",
            hint="use one of auto, fp32, bf16, fp16 (float32, bfloat16, float16 also work)",
        )
    return PRECISIONS[key]


def validate_device(device: str) -> str:
    d = device.lower()
    if d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise UsageError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")


def resolve_device(device: str = "auto"):
    """auto and cuda -> cuda:$LOCAL_RANK when CUDA is there (auto: else cpu); cuda without CUDA -> exit 3."""
    import torch

    d = validate_device(device)
    if d == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if d == "auto":
        if not has_cuda:
            return torch.device("cpu")
        return torch.device("cuda", rank_info()[2] % torch.cuda.device_count())
    if not has_cuda:
        raise ResourceMissing(
            f"--device {device} was asked for but CUDA is not available on this machine",
            hint="use --device cpu (or auto), or check the NVIDIA driver and the CUDA build of torch",
        )
    # plain `cuda` is this rank's GPU under torchrun/srun (cuda:$LOCAL_RANK), not every rank's cuda:0
    dev = torch.device("cuda", rank_info()[2] % torch.cuda.device_count()) if d == "cuda" else torch.device(d)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ResourceMissing(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
            hint="pick an index below the device count",
        )
    return dev


def resolve_decode_device(decode: str, device: str = "auto") -> str | None:
    """--decode-device cpu|cuda|auto: where JPEGs are decoded (auto: where the encoder runs).

    Returns None for CPU decoding, else the CUDA device string; cuda without CUDA exits 3.
    """
    d = decode.lower()
    if d not in ("auto", "cpu", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit()):
        raise UsageError(f"unknown decode device {decode!r}", hint="use cpu, cuda, cuda:N or auto")
    if d == "cpu":
        return None
    if d == "auto":
        enc = resolve_device(device)
        return str(enc) if enc.type == "cuda" else None
    return str(resolve_device(d))


def resolve_dtype(precision: str, device):
    """auto: bf16 on CUDA when supported, fp32 on CPU. Applies to encoder/UNet forwards only."""
    import torch

    p = normalize_precision(precision)
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def set_offline(offline: bool) -> None:
    """HF libraries read HF_HUB_OFFLINE at import: set it before the first HF import."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> Path:
    """Where the HF hub cache lives (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


def hf_load_failed(what: str, model: str, exc: BaseException) -> ResourceMissing:
    """The one message for a from_pretrained that failed (uncached id, damaged folder, no network)."""
    return ResourceMissing(
        f"could not load {what} {model}: {first_line(exc)}",
        hint=f"check the id or folder; cached models live in {hf_cache_dir()}",
    )


def hf_repo_cached(repo_id: str) -> bool:
    """Whether the HF hub cache holds anything of this model repo (a cheap check, before loading)."""
    return (hf_cache_dir() / f"models--{repo_id.replace('/', '--')}").is_dir()
