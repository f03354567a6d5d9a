"""CSP (Chen et al., NeurIPS 2024; docs/method.md, "Score"): NegLabel's score over CSP's conjugated pool.

The score itself is NegLabel's grouped softmax share, `scores.neglabel.grouped_score`; what differs is
what it is given: negatives mined from the conjugated pool and the ID texts as CSP's 8-template
ensemble (`scoring.prepare_scoring` hands both over; synood_cli/pools.py builds them). CSP's
"group-1 fix" (with one group the full softmax over ID + negatives, where NegLabel's code skipped
the softmax) is what `grouped_score` computes for every group count.
"""

from __future__ import annotations

import torch

from synood_cli.scores.base import ScoreInputs, register_score
from synood_cli.scores.neglabel import group_negatives, grouped_score


def _prepare(inputs: ScoreInputs) -> None:
    inputs.prepared["grouped"] = group_negatives(inputs.neg_text.float(), inputs.groups, inputs.seed)


@register_score("csp", "CSP: NegLabel over CSP's conjugated pool (\"ADJ SUPERCLASS\" negatives, template-ensembled texts)", True, _prepare)
def csp(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    return grouped_score(f, inputs.id_text, inputs.prepared["grouped"], inputs.tau)
