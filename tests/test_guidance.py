"""Guidance scores and the boundary target (docs/method.md, section 3): values against hand computations,
gradients that are finite and nonzero, through bare logits and through the tiny CLIP guide."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from synood_cli.errors import UsageError
from synood_cli.guidance import GUIDANCE, GuideModel, boundary_target, clip_guide

SCORES = ("energy", "msp", "mean-log-softmax")

LOGITS = [
    [2.0, -1.0, 0.5, 3.0],
    [0.0, 0.0, 0.0, 1e-3],
    [-50.0, 10.0, 9.5, -3.0],
    [100.0, 99.0, 80.0, 0.0],  # large, CLIP-sized logits (cos / 0.01): naive exp would overflow fp16
]


def _lse(row: list[float]) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def _by_hand(name: str, row: list[float]) -> float:
    lse = _lse(row)
    if name == "energy":
        return lse
    if name == "msp":
        return max(math.exp(v - lse) for v in row)
    return sum(v - lse for v in row) / len(row)


@pytest.mark.parametrize("name", SCORES)
def test_score_values_match_hand_computation(name):
    fn = GUIDANCE.get(name)
    got = fn(torch.tensor(LOGITS, dtype=torch.float64))
    assert got.shape == (len(LOGITS),)
    for g, row in zip(got.tolist(), LOGITS):
        assert g == pytest.approx(_by_hand(name, row), rel=1e-12, abs=1e-12)


def test_scores_are_per_row_and_float32_safe():
    x = torch.tensor(LOGITS, dtype=torch.float32)
    for name in SCORES:
        fn = GUIDANCE.get(name)
        whole = fn(x)
        assert torch.isfinite(whole).all(), name
        for i in range(len(LOGITS)):
            torch.testing.assert_close(fn(x[i : i + 1])[0], whole[i])


def _analytic_grad(name: str, row: list[float]) -> list[float]:
    """d S / d logits, derived by hand from the softmax p."""
    lse = _lse(row)
    p = [math.exp(v - lse) for v in row]
    if name == "energy":  # d logsumexp = softmax
        return p
    if name == "msp":  # d p_k = p_k (delta_kj - p_j), k = argmax
        k = max(range(len(row)), key=lambda i: row[i])
        return [p[k] * ((j == k) - p[j]) for j in range(len(row))]
    return [1 / len(row) - pj for pj in p]  # d mean_i (x_i - lse) = 1/K - p_j


@pytest.mark.parametrize("name", SCORES)
def test_gradient_wrt_logits_is_finite_nonzero_and_correct(name):
    row = LOGITS[0]
    x = torch.tensor([row], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(GUIDANCE.get(name)(x).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().max() > 1e-3
    for g, want in zip(grad[0].tolist(), _analytic_grad(name, row)):
        assert g == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_msp_gradient_is_nonzero():
    """The research code's MSP-style KL term had zero gradient; ours moves the logits.

    With p = softmax(x) and k = argmax, d msp / d x_k = p_k (1 - p_k) > 0 and d msp / d x_j = -p_k p_j < 0,
    so both raising the top class and lowering the others raise the score.
    """
    x = torch.tensor([[1.0, 0.2, -0.5]], requires_grad=True)
    (grad,) = torch.autograd.grad(GUIDANCE.get("msp")(x).sum(), x)
    p = torch.softmax(x.detach(), dim=1)[0]
    assert grad[0, 0] > 0 and (grad[0, 1:] < 0).all()
    assert grad[0, 0].item() == pytest.approx((p[0] * (1 - p[0])).item(), rel=1e-6)
    assert grad.abs().sum() > 0.3


def test_none_has_no_score_and_unknown_names_are_refused():
    assert GUIDANCE.get("none") is None
    assert set(GUIDANCE.names()) == {"energy", "msp", "mean-log-softmax", "none"}
    guide = GuideModel(lambda x: x.flatten(1)[:, :3], "toy")
    with pytest.raises(UsageError, match="--guidance none has no score"):
        guide.score(torch.rand(1, 3, 2, 2), "none")
    with pytest.raises(UsageError) as e:
        GUIDANCE.get("enrgy")
    assert "unknown guidance 'enrgy'" in e.value.message and e.value.hint == "did you mean --guidance energy?"


@pytest.mark.parametrize("n", [1, 2, 3, 19, 20, 21, 37, 100, 101])
def test_boundary_target_is_the_ceil_95_percent_largest_score(n):
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(0, max(2, n // 3), (n,), generator=g).float() / 4  # many ties
    k = math.ceil(Fraction(95, 100) * n)  # exact, no float rounding
    want = sorted(scores.tolist(), reverse=True)[k - 1]
    got = boundary_target(scores)
    assert got == want
    assert sum(s >= got for s in scores.tolist()) >= 0.95 * n  # at least 95% of ID at or above it
    assert boundary_target(scores.view(1, -1)) == got  # any shape


def test_boundary_target_distinct_scores_keeps_exactly_k():
    scores = torch.arange(40, dtype=torch.float32)  # 0..39, distinct
    got = boundary_target(scores[torch.randperm(40, generator=torch.Generator().manual_seed(0))])
    assert got == 2.0  # ceil(0.95 * 40) = 38 scores kept: 39 down to 2
    assert boundary_target(torch.tensor([5.0])) == 5.0


# -- through the tiny CLIP guide ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_guide(tmp_path_factory):
    from synood_cli.models.clip import clip_source, load_clip
    from synood_cli.profiles import load_profile
    from synood_cli.store import Store

    store = Store(tmp_path_factory.mktemp("guidance-home"))
    clip = load_clip(clip_source(load_profile("tiny")), store, torch.device("cpu"), torch.float32)
    text = clip.encode_texts([f"a nice {c}." for c in ("cat", "dog", "fish")])
    return clip_guide(clip, text)


def test_clip_guide_logits(tiny_guide):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = tiny_guide.forward(x)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.abs().max() <= 100 + 1e-3  # cosine / 0.01
    assert tiny_guide.label.startswith("clip:synood-tiny-clip")


@pytest.mark.parametrize("name", SCORES)
def test_gradient_through_clip_guide_wrt_images(tiny_guide, name):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    s = tiny_guide.score(x, name)
    assert s.shape == (2,) and torch.isfinite(s).all()
    torch.testing.assert_close(s, GUIDANCE.get(name)(tiny_guide.forward(x.detach())))
    (grad,) = torch.autograd.grad(s.sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(dim=1) > 0).all()  # every image gets a push
    # one image's score does not depend on the other images of the batch
    (g0,) = torch.autograd.grad(tiny_guide.score(x, name)[0], x)
    assert g0[1].abs().max() == 0 and g0[0].abs().max() > 0


def test_energy_step_against_the_gradient_lowers_the_energy(tiny_guide):
    """The synthesis update in miniature: a small step on the loss (s - target)^2 moves s to the target."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    s = tiny_guide.score(x, "energy")
    target = s.detach() - 1.0
    loss = ((s - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        s2 = tiny_guide.score(x - 1e-3 / grad.norm() * grad, "energy")
    assert ((s2 - target) ** 2).sum() < loss.detach()
