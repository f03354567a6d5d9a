"""The SynOOD score (docs/method.md, "Score"): NegLabel with the adapted image feature
f' = adapter(g), g the raw CLIP image output, and the negative set recorded in the checkpoint (the
fine-tuned features plus the mined negatives that were not fine-tuned, in mined order). Needs a checkpoint."""

from __future__ import annotations

import torch

from synood_cli.errors import UsageError
from synood_cli.scores.base import ScoreInputs, register_score
from synood_cli.scores.neglabel import group_negatives, grouped_score


def _prepare(inputs: ScoreInputs) -> None:
    if inputs.adapter is None:
        raise UsageError("score method 'synood' needs a fine-tuned checkpoint", hint="pass --checkpoint NAME (made by `synood finetune`)")
    inputs.prepared["grouped"] = group_negatives(inputs.neg_text.float(), inputs.groups, inputs.seed)


@register_score("synood", "SynOOD: NegLabel over the adapted feature and fine-tuned negatives (needs --checkpoint)", True, _prepare, raw=True)
def synood(g: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    adapter = inputs.adapter.to(g.device)
    return grouped_score(adapter(g), inputs.id_text, inputs.prepared["grouped"], inputs.tau)
