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
    """The memory of every text (K ID + M negatives): up to `memory_length - 1` image features per text, with their entropies.

    Slots exist only for the texts that ever received an image (`slot_text`), in one tensor on the
    features' device; `proxies` equals `texts` row for row everywhere else, so a batch's adapted
    logits only need the products with the touched rows.
    """

    def __init__(self, texts: torch.Tensor, settings: AdaNegSettings, n_id: int = 0, n_kept: int = 0):
        self.settings = settings
        self.capacity = max(settings.memory_length - 1, 0)  # the published code never fills its last slot
        self.seq = 0  # arrival counter: earlier images win entropy ties, as the published strict `<` does
        self._place(texts, n_id, n_kept)

    def _place(self, texts: torch.Tensor, n_id: int = 0, n_kept: int = 0) -> None:
        self.texts = texts
        # which sum each text's exponential goes to: columns 0..G-1 the negative groups, column G the ID classes
        # (the M mod G dropped negatives go nowhere); `open_sums` the same without the texts whose memory holds images
        g = self.settings.groups
        self.sums_of = texts.new_zeros(texts.shape[0], g + 1)
        self.sums_of[:n_id, g] = 1
        if n_kept:
            self.sums_of[torch.arange(n_id, n_id + n_kept, device=texts.device), torch.arange(n_kept, device=texts.device) // (n_kept // g)] = 1
        self.open_sums = self.sums_of.clone()
        self.proxies = texts.clone()
        self.row_of = torch.full((texts.shape[0],), -1, dtype=torch.long, device=texts.device)
        self.slot_text = torch.empty(0, dtype=torch.long, device=texts.device)
        self.slot_feat = torch.zeros(0, self.capacity, texts.shape[1], device=texts.device)
        self.slot_ent = torch.full((0, self.capacity), float("inf"), device=texts.device)
        self.slot_seq = torch.zeros(0, self.capacity, dtype=torch.long, device=texts.device)

    def to(self, device: torch.device) -> None:
        for name in ("texts", "proxies", "row_of", "slot_text", "slot_feat", "slot_ent", "slot_seq", "sums_of", "open_sums"):
            setattr(self, name, getattr(self, name).to(device))

    @property
    def stored(self) -> dict[int, int]:
        """Text row -> number of images in its memory (for tests and reports)."""
        counts = torch.isfinite(self.slot_ent).sum(dim=1).tolist()
        return {int(t): n for t, n in zip(self.slot_text.tolist(), counts) if n}

    def _rows_for(self, texts: torch.Tensor) -> torch.Tensor:
        """Slot rows of `texts` (unique text rows), allocating rows for texts that had none (capacity doubles)."""
        new = texts[self.row_of[texts] < 0]
        if len(new):
            n0, n1 = len(self.slot_text), len(self.slot_text) + len(new)
            if n1 > self.slot_feat.shape[0]:
                grow = max(n1, 2 * self.slot_feat.shape[0], 64) - self.slot_feat.shape[0]
                d = self.texts.shape[1]
                self.slot_feat = torch.cat([self.slot_feat, self.slot_feat.new_zeros(grow, self.capacity, d)])
                self.slot_ent = torch.cat([self.slot_ent, self.slot_ent.new_full((grow, self.capacity), float("inf"))])
                self.slot_seq = torch.cat([self.slot_seq, self.slot_seq.new_zeros(grow, self.capacity)])
            self.row_of[new] = torch.arange(n0, n1, device=new.device)
            self.slot_text = torch.cat([self.slot_text, new])
            self.open_sums[new] = 0
        return self.row_of[texts]

    def admit(self, cls: torch.Tensor, entropy: torch.Tensor, feats: torch.Tensor) -> None:
        """Offer a batch's images (in stream order) to the memories of texts `cls`, all at once.

        Image by image (the published loop) a memory fills in arrival order, then a full one swaps
        its highest entropy for a strictly lower one: whatever the order, that leaves the
        `capacity` lowest entropies of all it was offered (ties to the earlier image). So each
        touched memory keeps the `capacity` lowest of its stored and offered images, in one sort.
        """
        k = self.capacity
        if k == 0 or len(cls) == 0:
            return
        texts, inv = torch.unique(cls, return_inverse=True)
        rows = self._rows_for(texts)
        n, u = len(cls), len(texts)
        # each offered image's place among its text's offers (stable: stream order)
        order = torch.argsort(inv, stable=True)
        counts = torch.bincount(inv, minlength=u)
        first = torch.cumsum(counts, 0) - counts
        place = torch.empty_like(inv)
        place[order] = torch.arange(n, device=cls.device) - first[inv[order]]
        width = k + int(counts.max())
        ent = self.slot_ent.new_full((u, width), float("inf"))
        seq = self.slot_seq.new_full((u, width), torch.iinfo(torch.long).max)
        src = torch.zeros(u, width, dtype=torch.long, device=cls.device)
        ent[:, :k], seq[:, :k] = self.slot_ent[rows], self.slot_seq[rows]
        src[:, :k] = torch.arange(k, device=cls.device)  # < k: the text's own slot; >= k: offered image src - k
        ent[inv, k + place] = entropy.to(ent.dtype)
        seq[inv, k + place] = self.seq + torch.arange(n, device=cls.device)
        src[inv, k + place] = k + torch.arange(n, device=cls.device)
        self.seq += n
        # lowest entropy first, ties to the earlier arrival: sort by arrival, then stably by entropy
        by_seq = torch.argsort(seq, dim=1, stable=True)
        keep = by_seq.gather(1, torch.argsort(ent.gather(1, by_seq), dim=1, stable=True))[:, :k]
        chosen = src.gather(1, keep)
        old = chosen < k
        kept = self.slot_feat[rows].gather(1, chosen.clamp(max=k - 1)[..., None].expand(-1, -1, feats.shape[1]))
        self.slot_feat[rows] = torch.where(old[..., None], kept, feats[(chosen - k).clamp(min=0)])
        self.slot_ent[rows], self.slot_seq[rows] = ent.gather(1, keep), seq.gather(1, keep)
        full = torch.isfinite(self.slot_ent[rows])
        # the published proxy is the mean over [text, slots] (empty slots zero), normalised: the same direction
        sums = self.texts[texts] + (self.slot_feat[rows] * full[..., None]).sum(dim=1)
        self.proxies[texts] = torch.nn.functional.normalize(sums, dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """The published entropy of probability rows, log(p + 1e-8) included."""
    return -(p * p.add(1e-8).log_()).sum(dim=1)


# A sum of exponentials shifted by the row's largest logit below this has lost fp32 precision
# (normal floats end at 1.2e-38): such rows are recomputed from the logits with logsumexp.
_TRUSTED = 1e-30


def _share_of(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped ID share from [negative group sums..., ID sum] of exponentials with one shift per row.

    sigmoid(LSE_id - LSE_g) = P / (P + N_g); also the rows whose sums can be trusted.
    """
    pos = sums[:, -1:]
    total = pos + sums[:, :-1]
    # an adapted logit far above the row's largest plain one overflows exp(): inf, or NaN once multiplied by 0
    return (pos / total).mean(dim=1), (torch.isfinite(total) & (total >= _TRUSTED)).all(dim=1)


def _exact(share: torch.Tensor, ok: torch.Tensor, logits: torch.Tensor, n_id: int, n_kept: int, groups: int) -> torch.Tensor:
    """`share` with the untrusted rows recomputed by logsumexp (`grouped_share`)."""
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten()
        rows = logits.index_select(0, bad)
        share[bad] = grouped_share(rows[:, :n_id], rows[:, n_id : n_id + n_kept], groups)
    return share


def _scaled_products(f: torch.Tensor, texts: torch.Tensor, tau: float) -> torch.Tensor:
    """f . texts / tau, the scale applied inside the matrix product (no extra pass over the result)."""
    return torch.addmm(f.new_zeros(()), f, texts.T, beta=0, alpha=1 / tau)


def adaneg_step(f: torch.Tensor, memory: AdaNegMemory, n_id: int, n_kept: int, tau: float) -> torch.Tensor:
    """Scores of one batch (f normalised, in stream order), updating `memory` first.

    The memory's texts are [ID; the negatives in grouped order; the M mod G dropped ones]: the groups
    are a reshape, and the top negative is still taken over all M, as the published code does.
    Cost: one product with every text and one exp() over it per batch (NegLabel's work). The group
    sums are products of those exponentials with a 0/1 matrix (`sums_of`), the entropies reuse them,
    and the adapted logits differ from the plain ones only in the columns of texts whose memory holds
    images: their exponentials are computed alone and the rest of the sums is `open_sums`' product.
    Rows whose sums would lose precision take logsumexp on the logits instead.
    """
    s = memory.settings
    logits = _scaled_products(f, memory.texts, tau)
    shift, top = logits.max(dim=1, keepdim=True)  # the shift, and each row's top text in the same pass
    e = (logits - shift).exp_()
    van = _exact(*_share_of(e @ memory.sums_of), logits, n_id, n_kept, s.groups)
    hi = (van > s.threshold + s.gap * (1 - s.threshold)).nonzero().flatten()
    lo = (van < s.threshold - s.gap * s.threshold).nonzero().flatten()
    top = top.flatten()
    sides = []
    for rows, cols, offset in ((hi, slice(0, n_id), 0), (lo, slice(n_id, None), n_id)):
        if len(rows):
            p = e[:, cols].index_select(0, rows)
            mass = p.sum(dim=1, keepdim=True)
            p /= mass
            best = top[rows]
            # the top text of the row is the side's top unless it lies on the other side: those rows alone look again
            other = ((best < n_id) if offset else (best >= n_id)).nonzero().flatten()
            weak = (mass.flatten() < _TRUSTED).nonzero().flatten()
            if len(other) or len(weak):
                part = logits[:, cols].index_select(0, rows)
                best[other] = part[other].argmax(dim=1) + offset
                if len(weak):
                    p[weak] = torch.softmax(part[weak], dim=1)
            sides.append((best, _entropy(p), f.index_select(0, rows)))
    if sides:  # the two sides' texts are disjoint: their order does not matter, stream order within each does
        memory.admit(*(torch.cat(x) for x in zip(*sides)))
    touched = memory.slot_text
    if len(touched) == 0:
        return van + s.lam * van  # no memory holds an image yet: the adapted logits are the plain ones
    adapted = _scaled_products(f, memory.proxies[touched], tau)
    ada, ok = _share_of(e @ memory.open_sums + (adapted - shift).exp_() @ memory.sums_of[touched])
    if not bool(ok.all()):
        logits[:, touched] = adapted  # the adapted logits, for the rows logsumexp recomputes
    return _exact(ada, ok, logits, n_id, n_kept, s.groups) + s.lam * van


def _prepare(inputs: ScoreInputs) -> None:
    settings = inputs.prepared.get("adaneg_settings", PUBLISHED)
    neg = inputs.neg_text.float()
    perm = group_permutation(neg.shape[0], settings.groups, inputs.seed).to(neg.device)
    texts = torch.cat([inputs.id_text.float(), neg[perm], neg[len(perm):]])
    inputs.prepared["adaneg"] = AdaNegMemory(texts, settings, inputs.id_text.shape[0], len(perm))
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
    if memory.texts.device != f.device:
        memory.to(f.device)
    return adaneg_step(f, memory, inputs.id_text.shape[0], inputs.prepared["adaneg_kept"], inputs.tau)
