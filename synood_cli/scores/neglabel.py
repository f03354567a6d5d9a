"""NegLabel (Jiang et al., ICLR 2024; docs/method.md, "Score"): the ID share of softmax mass against groups of negatives.

S(x) = 1/G * sum_g [ sum_i e^{f.t_i/tau} / (sum_i e^{f.t_i/tau} + sum_{j in N_g} e^{f.n_j/tau}) ]
computed as the mean over groups of sigmoid(LSE_id - LSE_g): one matmul over all negatives and
one logsumexp per group, no Python loop over groups, no overflow.
"""

from __future__ import annotations

import torch

from synood_cli.errors import UsageError
from synood_cli.scores.base import ScoreInputs, register_score


def group_negatives(neg_text: torch.Tensor, groups: int, seed: int = 0) -> torch.Tensor:
    """Drop the last M mod G negatives, shuffle the rest with a seeded CPU generator, split into [G, M//G, d].

    As NegLabel's code: the rows come in mined order (nouns, then adjectives, each by ascending
    affinity), so the dropped ones are the least negative adjectives, the same in every run. The
    permutation comes from a CPU generator so CPU and CUDA runs group the same labels (NegLabel
    drew it on CUDA, which no CPU run can reproduce: docs/method.md).
    """
    m_total = int(neg_text.shape[0])
    if groups < 1:
        raise UsageError(f"--groups must be at least 1, got {groups}")
    if m_total < groups:
        raise UsageError(
            f"NegLabel needs at least as many negative labels as groups: {m_total} negatives, {groups} groups",
            hint="lower --groups, or mine more negatives (a larger --lexicon or --neg-ratio)",
        )
    per_group = m_total // groups
    kept = per_group * groups  # rows kept[:] survive: the last M mod G are dropped before shuffling
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(seed)).to(neg_text.device)
    return neg_text[:kept][perm].reshape(groups, per_group, neg_text.shape[1])


def grouped_score(f: torch.Tensor, id_text: torch.Tensor, grouped: torch.Tensor, tau: float) -> torch.Tensor:
    n = f.shape[0]
    g, m, d = grouped.shape
    pos = torch.logsumexp(f @ id_text.T / tau, dim=1)  # [N]
    neg = (f @ grouped.reshape(g * m, d).T / tau).reshape(n, g, m)
    neg = torch.logsumexp(neg, dim=2)  # [N, G]
    return torch.sigmoid(pos[:, None] - neg).mean(dim=1)


def neglabel(
    image_features: torch.Tensor,
    id_text_features: torch.Tensor,
    neg_text_features: torch.Tensor,
    tau: float = 0.01,
    groups: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """NegLabel score per image (higher = more ID); all inputs L2-normalised by the caller.

    With groups=1 this is still the softmax-mass ratio (the NegLabel code skipped the softmax in
    that case); the last M mod G negatives are dropped.
    """
    f = image_features.float()
    grouped = group_negatives(neg_text_features.float().to(f.device), groups, seed)
    return grouped_score(f, id_text_features.float().to(f.device), grouped, tau)


def _prepare(inputs: ScoreInputs) -> None:
    inputs.prepared["grouped"] = group_negatives(inputs.neg_text.float(), inputs.groups, inputs.seed)


@register_score("neglabel", "NegLabel: ID softmax share against groups of mined negative labels", True, _prepare)
def _neglabel_method(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    return grouped_score(f, inputs.id_text, inputs.prepared["grouped"], inputs.tau)
