"""Saving built models so that any process can build a store cache, whatever its rank.

Under an initialised torch.distributed, transformers' `save_pretrained` writes config and
weights on rank 0 only; the store's lock may pick another rank to build a cache (the tiny
profile's models), which then held a folder without its weights.
"""

from __future__ import annotations

from pathlib import Path


def save_model_on_any_rank(model, folder: Path) -> None:
    """What transformers' `save_pretrained` writes for a model (config, generation config, safetensors weights)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
