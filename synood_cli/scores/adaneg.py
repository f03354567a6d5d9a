"""AdaNeg (Zhang et al., NeurIPS 2024; docs/method.md, "Score"): test-time adaptive negative proxies. Transductive.

The settings of its ImageNet run in OpenOOD-VLM (`scripts/ood/adaneg/imagenet.sh`, postprocessor
`TTAPromptPostprocessor_noadagap`): memory length 10, threshold 0.5, gap 0.5, lambda 0.1, 5 groups,
the `combine` score, no sample-adaptive weighting. Every text (the K ID classes and the M negatives)
owns a memory slot list that starts with its text feature. Per batch, in stream order:

1. `v = f . [t; n] / tau`; `S_van` = NegLabel's grouped ID share over `v` with 5 groups;
2. images with `S_van > thres + gap (1 - thres)` (0.75) join the memory of their top ID class, those
   with `S_van < thres - gap thres` (0.25) the memory of their top negative, image by image; a full
   memory (`memory length - 1` = 9 images, as the published code counts) keeps the image only if its
   entropy (softmax over the ID, resp. negative, logits) is below the largest stored one, replacing it;
3. proxies `p_c = normalize(t_c + sum of the stored f)` (the published mean over the slot list,
   whose empty slots are zero, normalised: the same direction); `a = f . p / tau`;
4. `S = S_ada + lambda S_van`, `S_ada` the grouped ID share over `a` (same groups).

A batch's scores therefore depend on every image scored before it and on the other images of its
batch: the stream order, batch size and seed are part of the scores' identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from synood_cli.errors import UsageError
from synood_cli.scores.base import ScoreInputs, register_score


@dataclass(frozen=True)
class AdaNegSettings:
    memory_length: int = 10
    threshold: float = 0.5
    gap: float = 0.5
    lam: float = 0.1
    groups: int = 5

    def record(self) -> dict:
        return {"method": "adaneg", **asdict(self), "score": "combine", "sample_adaptive": False}


PUBLISHED = AdaNegSettings()


def group_permutation(m_total: int, groups: int, seed: int) -> torch.Tensor:
    """The kept negative columns in grouped order: the last M mod G dropped, the rest shuffled (CPU generator)."""
    if m_total < groups:
        raise UsageError(f"AdaNeg needs at least {groups} negative labels, got {m_total}")
    kept = m_total // groups * groups
    return torch.randperm(kept, generator=torch.Generator().manual_seed(seed))


def grouped_share(logits_id: torch.Tensor, logits_grouped: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean over groups of the ID softmax share (NegLabel's score), the negatives' columns already in grouped order."""
    n = logits_id.shape[0]
    pos = torch.logsumexp(logits_id, dim=1)
    neg = torch.logsumexp(logits_grouped.reshape(n, groups, -1), dim=2)
    return torch.sigmoid(pos[:, None] - neg).mean(dim=1)


class AdaNegMemory:
    """The slot memory of every text (K ID + M negatives), kept as running sums and normalised proxies."""

    def __init__(self, texts: torch.Tensor, settings: AdaNegSettings):
        self.settings = settings
        self.texts = texts
        self.sums = texts.clone()
        self.proxies = texts.clone()
        self.stored: dict[int, list[tuple[float, torch.Tensor]]] = {}

    def add(self, cls: int, entropy: float, feature: torch.Tensor, delta: list) -> None:
        """Store `feature` in `cls`'s memory (or not: a full one keeps its lower entropies); the sums' changes go to `delta`."""
        slots = self.stored.setdefault(cls, [])
        if len(slots) < self.settings.memory_length - 1:
            slots.append((entropy, feature))
            delta.append((cls, feature))
            return
        worst = max(range(len(slots)), key=lambda i: slots[i][0]) if slots else None
        if worst is None or not entropy < slots[worst][0]:
            return
        delta += [(cls, feature), (cls, -slots[worst][1])]
        slots[worst] = (entropy, feature)

    def apply(self, delta: list) -> None:
        """Add the batch's changes to the sums in one go and renormalise the proxies they touch."""
        if delta:
            idx = torch.tensor([c for c, _ in delta], device=self.sums.device)
            self.sums.index_add_(0, idx, torch.stack([v for _, v in delta]))
            rows = torch.unique(idx)
            self.proxies[rows] = torch.nn.functional.normalize(self.sums[rows], dim=1)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    return -(p * torch.log(p + 1e-8)).sum(dim=1)


def adaneg_step(f: torch.Tensor, memory: AdaNegMemory, n_id: int, n_kept: int, tau: float) -> torch.Tensor:
    """Scores of one batch (f normalised, in stream order), updating `memory` first.

    The memory's texts are [ID; the negatives in grouped order; the M mod G dropped ones]: the groups
    are a reshape, and the top negative is still taken over all M, as the published code does.
    """
    s = memory.settings
    texts_logits = f @ memory.texts.T / tau
    van = grouped_share(texts_logits[:, :n_id], texts_logits[:, n_id : n_id + n_kept], s.groups)
    hi = s.threshold + s.gap * (1 - s.threshold)
    lo = s.threshold - s.gap * s.threshold
    delta: list = []
    for mask, part, offset in ((van > hi, texts_logits[:, :n_id], 0), (van < lo, texts_logits[:, n_id:], n_id)):
        rows = mask.nonzero().flatten().tolist()
        if not rows:
            continue
        sub = part[rows]
        classes = (sub.argmax(dim=1) + offset).tolist()
        entropies = _entropy(sub).tolist()
        feats = f[rows].clone()
        for j, (c, e) in enumerate(zip(classes, entropies)):
            memory.add(c, e, feats[j], delta)
    memory.apply(delta)
    ada = f @ memory.proxies[: n_id + n_kept].T / tau
    return grouped_share(ada[:, :n_id], ada[:, n_id:], s.groups) + s.lam * van


def _prepare(inputs: ScoreInputs) -> None:
    settings = inputs.prepared.get("adaneg_settings", PUBLISHED)
    neg = inputs.neg_text.float()
    perm = group_permutation(neg.shape[0], settings.groups, inputs.seed).to(neg.device)
    texts = torch.cat([inputs.id_text.float(), neg[perm], neg[len(perm):]])
    inputs.prepared["adaneg"] = AdaNegMemory(texts, settings)
    inputs.prepared["adaneg_kept"] = len(perm)


@register_score(
    "adaneg",
    "AdaNeg: test-time adaptive negative proxies (transductive: a score depends on the images before it; opt-in)",
    True, _prepare, transductive=True,
)
def adaneg(f: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    memory = inputs.prepared["adaneg"]
    if f.shape[0] == 0:
        return torch.empty(0, device=f.device)
    if memory.sums.device != f.device:
        memory.sums, memory.proxies, memory.texts = memory.sums.to(f.device), memory.proxies.to(f.device), memory.texts.to(f.device)
    return adaneg_step(f, memory, inputs.id_text.shape[0], inputs.prepared["adaneg_kept"], inputs.tau)
