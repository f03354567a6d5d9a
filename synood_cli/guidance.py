"""Guidance for boundary-guided synthesis (docs/method.md): a differentiable classifier and an OOD score.

The guide model maps images in [0, 1] to logits over the ID classes: CLIP zero-shot over the ID
class names (works for any dataset), or a torchvision ImageNet classifier (what the research code
used). The guidance score S turns logits into a number; each has a direction (`HIGHER_MEANS_ID`):
- energy: T * logsumexp(logits / T), the real energy score (default); higher = more ID
- msp: max softmax probability; its gradient is nonzero (the research code's KL term had none);
  higher = more ID
- mean-log-softmax: mean over classes of log_softmax(logits), what the research code computed; it
  is at most -log K, reached by the uniform prediction, so higher = more OOD (with target -5 it
  pushes predictions toward uniform)
- none: no guidance; the noise is never updated
The boundary target lies in the ID scores' OOD-side tail, whichever the direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from synood_cli.errors import ResourceMissing, UsageError
from synood_cli.registry import Registry

GUIDANCE: Registry[Callable[[torch.Tensor], torch.Tensor] | None] = Registry("guidance", option="--guidance")
GUIDANCE.add("energy", lambda logits: torch.logsumexp(logits, dim=1))
GUIDANCE.add("msp", lambda logits: torch.softmax(logits, dim=1).max(dim=1).values)
GUIDANCE.add("mean-log-softmax", lambda logits: torch.log_softmax(logits, dim=1).mean(dim=1))
GUIDANCE.add("none", None)

# Which way each score points: `--target boundary` takes the 95%-TPR point on the OOD side of the
# ID scores, the low tail when higher means ID and the high tail otherwise.
HIGHER_MEANS_ID = {"energy": True, "msp": True, "mean-log-softmax": False}


def higher_means_id(guidance: str) -> bool:
    GUIDANCE.get(guidance)  # unknown names raise with a did-you-mean hint
    if guidance not in HIGHER_MEANS_ID:
        raise UsageError(f"--guidance {guidance} has no score, so no boundary")
    return HIGHER_MEANS_ID[guidance]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class GuideModel:
    """logits = forward(images in [0,1], shape [B,3,H,W]); differentiable end to end."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    label: str

    def score(self, images01: torch.Tensor, guidance: str) -> torch.Tensor:
        fn = GUIDANCE.get(guidance)
        if fn is None:
            raise UsageError("--guidance none has no score")
        return fn(self.forward(images01).float())


def _resize_normalize(x: torch.Tensor, size: tuple[int, int], mean, std) -> torch.Tensor:
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def clip_guide(clip, id_text_features: torch.Tensor, tau: float = 0.01) -> GuideModel:
    """CLIP zero-shot classifier over the ID class names: logits = f . t / tau."""
    cfg = getattr(clip.model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", clip.model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)  # ModifiedResNet towers (RN50, the world's) keep an int
    mean, std = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    text = id_text_features.to(clip.device).float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = _resize_normalize(x.to(clip.device).float(), size, mean, std)
        with clip._autocast():
            f = clip.model.encode_image(x)
        f = F.normalize(f.float(), dim=-1)
        return f @ text.T / tau

    return GuideModel(forward, f"clip:{clip.fingerprint}")


def torchvision_guide(name: str, device) -> GuideModel:
    """A torchvision ImageNet classifier with its default weights (cached under TORCH_HOME)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise UsageError(f"unknown torchvision model {name!r}", hint="e.g. --guide-model torchvision:resnet50") from None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as e:  # noqa: BLE001 - download failures come in many types
        import os

        cache = os.path.join(os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch")), "hub", "checkpoints")
        raise ResourceMissing(
            f"torchvision weights for {name} are not in {cache} and could not be downloaded ({type(e).__name__})",
            hint="download them once with network access, or use --guide-model clip",
        ) from None
    model.to(device).eval().requires_grad_(False)
    # the weights' own preprocessing, as the research code (resnet50 V2: resize 232, center crop 224,
    # normalise); it works on batched tensors and is differentiable
    transform = weights.transforms()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(transform(x.to(device).float()))

    return GuideModel(forward, f"torchvision:{name}")


def boundary_target(id_scores: torch.Tensor, higher_means_id: bool = True) -> float:
    """The ID/OOD boundary: the score that keeps 95% of ID images on the ID side (95% TPR).

    Higher means ID: the ceil(0.95 n)-th largest score (95% of ID at or above it). Higher means
    OOD (mean-log-softmax): the ceil(0.95 n)-th smallest (95% of ID at or below it).
    """
    s = torch.sort(id_scores.flatten().double(), descending=higher_means_id).values
    k = (95 * len(s) + 99) // 100  # ceil(0.95 n) in integers
    return float(s[k - 1])
