"""Zero-shot classifier scores over the ID class text features: msp, energy, mcm."""

from __future__ import annotations

import torch

from synood_cli.scores.base import ScoreInputs, register_score


def id_logits(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    """CLIP logits f.t_i / tau (tau = 0.01 is CLIP's logit scale of 100)."""
    return f @ inputs.id_text.T / inputs.tau


@register_score("msp", "max softmax probability of the zero-shot classifier (logits f.t/tau)")
def msp(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    return torch.softmax(id_logits(f, inputs), dim=1).max(dim=1).values


@register_score("energy", "negative free energy T*logsumexp(logits/T) of the zero-shot classifier")
def energy(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    t = inputs.temperature
    return t * torch.logsumexp(id_logits(f, inputs) / t, dim=1)


@register_score("mcm", "maximum concept matching: max softmax of cosine similarities at temperature T (MCM, T=1)")
def mcm(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    # MCM (Ming et al. 2022) uses T = 1 on raw cosine similarities, not CLIP's logit scale;
    # at T = tau it would equal msp.
    return torch.softmax(f @ inputs.id_text.T / inputs.temperature, dim=1).max(dim=1).values
