"""Batch sizes chosen from free GPU memory (`--batch-size auto`), and batches halved on CUDA out-of-memory.

The rule is arithmetic on three measured figures, so it is tested on a CPU with given numbers:
the free memory (`torch.cuda.mem_get_info` once the model is loaded, the allocator's cache
emptied), a fixed cost and a per-image cost, both from a probe that runs the real stage on 1 and
on 2 images and reads `torch.cuda.max_memory_allocated` above the memory allocated before it (the
model's resident weights are not counted). A batch size never changes results: the artifact ids
of prompts and synthesis and the score identities leave it out, so only the log records it.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from synood_cli.errors import ResourceMissing, UsageError

T = TypeVar("T")
MARGIN = 0.8  # use 80% of the free memory: allocator fragmentation, and activations the probe did not see
AUTO = "auto"


def parse_batch_size(value: str | int | None, option: str = "--batch-size") -> int | str | None:
    """`auto`, a positive integer, or None (the profile's); anything else is exit 2."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"{option} must be a positive integer or auto, got {value!r}", hint=f"e.g. {option} 64 or {option} auto") from None
    return n


def auto_batch_size(free_bytes: int, fixed_bytes: int, per_image_bytes: int, margin: float = MARGIN, cap: int | None = None) -> int:
    """The largest batch whose cost fits in `margin` of the free memory: floor((margin x free - fixed) / per_image).

    At least 1 (a single image that does not fit is the out-of-memory back-off's to report, exit 3)
    and at most `cap` (the number of images there are); a probe that saw no per-image growth gives `cap`.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if cap is not None and cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    budget = margin * max(free_bytes, 0) - max(fixed_bytes, 0)
    if per_image_bytes <= 0:
        n = cap if cap is not None else 1
    else:
        n = int(budget // per_image_bytes) if budget > 0 else 1
    n = max(1, n)
    return min(n, cap) if cap is not None else n


def costs_from_peaks(peaks: dict[int, int]) -> tuple[int, int]:
    """(fixed, per image) bytes from the probe's peaks above resident memory at two batch sizes.

    The slope between the two is the per-image cost and the rest of the smaller peak the fixed
    cost; a slope the allocator's rounding hid (<= 0) counts the whole larger peak as per image.
    """
    (n1, p1), (n2, p2) = sorted(peaks.items())[:2]
    slope = (p2 - p1) // (n2 - n1)
    if slope <= 0:
        return 0, max(p2 // n2, 1)
    return max(p1 - slope * n1, 0), slope


def measure_costs(run: Callable[[int], object], device, sizes: tuple[int, int] = (1, 2)) -> tuple[int, int]:
    """Run `run(n)` for each probe size on `device` and return (fixed, per image) bytes (CUDA only)."""
    import torch

    peaks = {}
    for n in sizes:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)  # the model's resident memory and whatever else is held
        torch.cuda.reset_peak_memory_stats(device)
        run(n)
        torch.cuda.synchronize(device)
        peaks[n] = torch.cuda.max_memory_allocated(device) - base
    return costs_from_peaks(peaks)


def choose_batch_size(device, probe: Callable[[int], object], cap: int | None, fallback: int, what: str, reporter, margin: float = MARGIN) -> int:
    """`--batch-size auto`: on CUDA from free memory and the probe's costs; on a CPU the profile's batch size.

    `cap`: the number of images there are (None: the caller caps it later); the choice goes to the log only.
    """
    cap = None if cap is None else max(1, cap)
    if getattr(device, "type", str(device)) != "cuda":
        n = fallback if cap is None else min(fallback, cap)
        reporter.info(f"{what}: --batch-size auto on {device} is the profile's batch size, {n}")
        return n
    import torch

    try:
        fixed, per_image = measure_costs(probe, device)
    except torch.cuda.OutOfMemoryError:
        fixed, per_image = None, None
    torch.cuda.empty_cache()
    if per_image is None:
        reporter.warn(f"{what}: --batch-size auto: two images do not fit in GPU memory; going on with 1")
        return 1
    free = torch.cuda.mem_get_info(device)[0]
    n = auto_batch_size(free, fixed, per_image, margin, cap)
    reporter.info(
        f"{what}: --batch-size auto chose {n} on {device}: {free / 2**30:.1f} GiB free, {per_image / 2**20:.0f} MiB per image "
        f"+ {fixed / 2**20:.0f} MiB fixed, {margin:.0%} of the free memory used" + (f", at most {cap} (the images there are)" if cap else "")
    )
    return n


def is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def split_on_oom(run: Callable[[int, int], T], n: int, join: Callable[[T, T], T], on_split: Callable[[int, int], None] | None = None,
                 hint: str = "use --precision bf16") -> T:
    """`run(lo, hi)` over items [0, n); on CUDA out-of-memory each half is run in turn and the results joined, in order.

    Nothing done is lost and nothing is done twice: a half that fits is kept, a half that does not
    is halved again; one item that does not fit is exit 3. The retry runs outside the `except`
    block, so the failed attempt's traceback (and the activations its frames hold) is freed first.
    """
    return _split(run, 0, n, join, on_split, hint)


def _split(run, lo: int, hi: int, join, on_split, hint: str):
    oom = False
    try:
        return run(lo, hi)
    except Exception as e:  # noqa: BLE001 - only CUDA out-of-memory is handled; anything else goes on up
        if not is_cuda_oom(e):
            raise
        oom = True
    if oom:
        import torch

        torch.cuda.empty_cache()
        if hi - lo == 1:
            raise ResourceMissing("one image does not fit in GPU memory", hint=hint)
        mid = (lo + hi) // 2
        if on_split is not None:
            on_split(hi - lo, mid - lo)
        left = _split(run, lo, mid, join, on_split, hint)
        return join(left, _split(run, mid, hi, join, on_split, hint))
