"""OOD scores (docs/method.md, "Score") checked against direct float64 evaluations of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from synood_cli.errors import UsageError
from synood_cli.scores import SCORES, ScoreInputs, Scorer, group_negatives, neglabel


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


# --------------------------------------------------------------------------------------------
# NegLabel against the formula, written out with loops in float64


def reference_groups(m: int, groups: int, seed: int) -> list[list[int]]:
    """NegLabel's grouping rule (docs/method.md), stated independently of the library: drop the
    last M mod G rows of the mined list, then shuffle the rest with a seeded CPU generator."""
    per = m // groups
    perm = torch.randperm(per * groups, generator=torch.Generator().manual_seed(seed)).tolist()
    return [perm[g * per : (g + 1) * per] for g in range(groups)]


def direct_neglabel(f, id_t, neg_t, tau: float, groups: int, seed: int) -> np.ndarray:
    """S(x) = 1/G sum_g [ sum_i e^{f.t_i/tau} / (sum_i e^{f.t_i/tau} + sum_{j in N_g} e^{f.n_j/tau}) ].

    Float64 with explicit loops; every exponent is shifted by the row's largest logit (the ratio
    does not change) so that tau = 0.01 cannot overflow.
    """
    f = np.asarray(f, dtype=np.float64)
    id_t = np.asarray(id_t, dtype=np.float64)
    neg_t = np.asarray(neg_t, dtype=np.float64)
    grouping = reference_groups(neg_t.shape[0], groups, seed)
    out = np.empty(f.shape[0])
    for n in range(f.shape[0]):
        a = [float(f[n] @ id_t[i]) / tau for i in range(id_t.shape[0])]
        b = [float(f[n] @ neg_t[j]) / tau for j in range(neg_t.shape[0])]
        shift = max(a + b)
        pos = 0.0
        for i in range(len(a)):
            pos += math.exp(a[i] - shift)
        total = 0.0
        for members in grouping:
            neg = 0.0
            for j in members:
                neg += math.exp(b[j] - shift)
            total += pos / (pos + neg)
        out[n] = total / len(grouping)
    return out


@pytest.mark.parametrize("tau", [0.5, 0.01])
@pytest.mark.parametrize("groups", [5, 1])
@pytest.mark.parametrize("d", [8, 16])
@pytest.mark.parametrize("seed", [0, 3])
def test_neglabel_matches_direct_formula(tau, groups, d, seed):
    k, m = 5, 23
    assert m % 5 != 0  # the drop of M mod G is exercised for G = 5
    f = unit_rows(12, d, 100 + d)
    id_t = unit_rows(k, d, 200 + d)
    neg_t = unit_rows(m, d, 300 + d)
    # some images close to an ID label, some close to a negative, so the scores spread out
    f[:3] = torch.nn.functional.normalize(id_t[:3] + 0.3 * f[:3], dim=1)
    f[3:6] = torch.nn.functional.normalize(neg_t[:3] + 0.3 * f[3:6], dim=1)
    got = neglabel(f, id_t, neg_t, tau=tau, groups=groups, seed=seed)
    want = direct_neglabel(f.numpy(), id_t.numpy(), neg_t.numpy(), tau, groups, seed)
    assert got.shape == (12,)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-5)
    # the scores are not degenerate: both ends of (0, 1) are reached at tau = 0.01
    if tau == 0.01:
        assert want.max() > 0.9 and want.min() < 0.1


def test_group_negatives_follows_the_rule():
    neg = torch.arange(23, dtype=torch.float32)[:, None].repeat(1, 4)  # row i is all i
    grouped = group_negatives(neg, 5, seed=7)
    assert grouped.shape == (5, 4, 4)
    want = reference_groups(23, 5, 7)
    assert grouped[:, :, 0].long().tolist() == want
    dropped = set(range(23)) - {j for g in want for j in g}
    assert dropped == {20, 21, 22}  # the last M mod G of the mined list, whatever the seed


def test_neglabel_groups_one_is_the_softmax_mass_ratio():
    d, k, m = 16, 5, 23
    f, id_t, neg_t = unit_rows(9, d, 1), unit_rows(k, d, 2), unit_rows(m, d, 3)
    tau = 0.1
    got = neglabel(f, id_t, neg_t, tau=tau, groups=1, seed=0).double()
    logits = torch.cat([f @ id_t.T, f @ neg_t.T], dim=1).double() / tau
    ratio = torch.softmax(logits, dim=1)[:, :k].sum(dim=1)
    torch.testing.assert_close(got, ratio, rtol=0, atol=1e-6)
    # a ratio, not a raw sum of exponentials: strictly inside (0, 1)
    assert bool(((got > 0) & (got < 1)).all())
    raw = torch.exp((f @ id_t.T).double() / tau).sum(dim=1)
    assert not torch.allclose(got, raw)


def test_neglabel_batch_invariance():
    d = 16
    f, id_t, neg_t = unit_rows(40, d, 11), unit_rows(5, d, 12), unit_rows(23, d, 13)
    for tau in (0.01, 0.5):
        whole = neglabel(f, id_t, neg_t, tau=tau, groups=5, seed=0)
        rows = torch.cat([neglabel(f[i : i + 1], id_t, neg_t, tau=tau, groups=5, seed=0) for i in range(len(f))])
        torch.testing.assert_close(rows, whole, rtol=0, atol=1e-6)


def test_neglabel_seed_determines_the_grouping_on_cpu():
    d = 16
    f, id_t, neg_t = unit_rows(30, d, 21), unit_rows(5, d, 22), unit_rows(23, d, 23)
    a = neglabel(f, id_t, neg_t, tau=0.05, groups=5, seed=4)
    b = neglabel(f, id_t, neg_t, tau=0.05, groups=5, seed=4)
    c = neglabel(f, id_t, neg_t, tau=0.05, groups=5, seed=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)
    assert torch.equal(group_negatives(neg_t, 5, 4), group_negatives(neg_t, 5, 4))
    assert not torch.equal(group_negatives(neg_t, 5, 4), group_negatives(neg_t, 5, 5))


@pytest.mark.cuda
def test_neglabel_grouping_does_not_depend_on_device():
    d = 16
    f, id_t, neg_t = unit_rows(30, d, 31), unit_rows(5, d, 32), unit_rows(23, d, 33)
    cpu = neglabel(f, id_t, neg_t, tau=0.05, groups=5, seed=9)
    gpu = neglabel(f.cuda(), id_t.cuda(), neg_t.cuda(), tau=0.05, groups=5, seed=9)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
    assert torch.equal(group_negatives(neg_t.cuda(), 5, 9).cpu(), group_negatives(neg_t, 5, 9))
    inputs = ScoreInputs(id_text=id_t.cuda(), neg_text=neg_t.cuda(), tau=0.05, groups=5, seed=9)
    scores, _ = Scorer("neglabel", inputs)(f.cuda())
    torch.testing.assert_close(scores.cpu(), cpu, rtol=0, atol=1e-5)


def test_neglabel_fewer_negatives_than_groups_is_a_usage_error():
    f, id_t, neg_t = unit_rows(3, 8, 0), unit_rows(5, 8, 1), unit_rows(4, 8, 2)
    with pytest.raises(UsageError, match="at least as many negative labels as groups"):
        neglabel(f, id_t, neg_t, groups=5)
    with pytest.raises(UsageError):
        Scorer("neglabel", ScoreInputs(id_text=id_t, neg_text=neg_t, groups=5))
    with pytest.raises(UsageError):
        neglabel(f, id_t, neg_t, groups=0)
    # M == G is fine: one negative per group
    assert neglabel(f, id_t, neg_t, groups=4).shape == (3,)


def test_neglabel_without_negatives_is_a_usage_error():
    id_t = unit_rows(5, 8, 1)
    with pytest.raises(UsageError, match="needs negative labels"):
        Scorer("neglabel", ScoreInputs(id_text=id_t))
    with pytest.raises(UsageError, match="needs negative labels"):
        Scorer("neglabel", ScoreInputs(id_text=id_t, neg_text=torch.empty(0, 8)))


def test_neglabel_prefers_features_near_id_labels():
    # ID labels on the first 5 axes, negatives on the next 10: an image on an ID label is ID,
    # an image on a negative is OOD.
    d = 16
    eye = torch.eye(d)
    id_t, neg_t = eye[:5], eye[5:15]
    noise = 0.05 * unit_rows(20, d, 41)
    near_id = torch.nn.functional.normalize(eye[torch.arange(10) % 5] + noise[:10], dim=1)
    near_neg = torch.nn.functional.normalize(eye[5 + torch.arange(10)] + noise[10:], dim=1)
    s_id = neglabel(near_id, id_t, neg_t, tau=0.01, groups=5)
    s_ood = neglabel(near_neg, id_t, neg_t, tau=0.01, groups=5)
    assert s_id.min() > s_ood.max()
    assert s_id.min() > 0.79  # 4 of the 5 groups do not hold the negative axis at all
    assert s_ood.max() < 0.81
    assert s_id.mean() > 0.99 and s_ood.mean() < 0.81


# --------------------------------------------------------------------------------------------
# msp, energy, mcm against numpy


def np_logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def classifier_case():
    d, k = 16, 5
    f = unit_rows(30, d, 51)
    id_t = unit_rows(k, d, 52)
    f[:5] = torch.nn.functional.normalize(id_t + 0.2 * f[:5], dim=1)
    return f, id_t, f.double().numpy() @ id_t.double().numpy().T


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_msp_is_max_softmax_at_tau(classifier_case, tau):
    f, id_t, cos = classifier_case
    scores, pred = Scorer("msp", ScoreInputs(id_text=id_t, tau=tau, temperature=7.0))(f)
    want = np_softmax(cos / tau).max(axis=1)  # temperature plays no part in msp
    np.testing.assert_allclose(scores.double().numpy(), want, rtol=0, atol=1e-5)
    assert pred.tolist() == cos.argmax(axis=1).tolist()


@pytest.mark.parametrize("tau,temperature", [(0.01, 1.0), (0.01, 2.0), (0.1, 0.5), (1.0, 1.0)])
def test_energy_is_t_logsumexp_of_logits_over_t(classifier_case, tau, temperature):
    f, id_t, cos = classifier_case
    scores, pred = Scorer("energy", ScoreInputs(id_text=id_t, tau=tau, temperature=temperature))(f)
    # logits = f.t / tau (CLIP's logit scale), energy score = T * logsumexp(logits / T)
    want = temperature * np_logsumexp(cos / (tau * temperature))
    np.testing.assert_allclose(scores.double().numpy(), want, rtol=1e-6, atol=1e-5)
    assert pred.tolist() == cos.argmax(axis=1).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_mcm_is_max_softmax_of_cosines_at_temperature(classifier_case, temperature):
    f, id_t, cos = classifier_case
    scores, pred = Scorer("mcm", ScoreInputs(id_text=id_t, tau=0.01, temperature=temperature))(f)
    want = np_softmax(cos / temperature).max(axis=1)  # tau plays no part in mcm
    np.testing.assert_allclose(scores.double().numpy(), want, rtol=0, atol=1e-6)
    assert pred.tolist() == cos.argmax(axis=1).tolist()


def test_mcm_at_temperature_tau_equals_msp(classifier_case):
    f, id_t, _ = classifier_case
    msp, _ = Scorer("msp", ScoreInputs(id_text=id_t, tau=0.05))(f)
    mcm, _ = Scorer("mcm", ScoreInputs(id_text=id_t, tau=0.05, temperature=0.05))(f)
    torch.testing.assert_close(mcm, msp, rtol=0, atol=1e-6)


def test_scorer_predictions_are_argmax_of_cosine_for_neglabel(classifier_case):
    f, id_t, cos = classifier_case
    neg_t = unit_rows(23, 16, 53)
    scores, pred = Scorer("neglabel", ScoreInputs(id_text=id_t, neg_text=neg_t, tau=0.01, groups=5, seed=2))(f)
    assert pred.tolist() == cos.argmax(axis=1).tolist()
    np.testing.assert_allclose(
        scores.double().numpy(), direct_neglabel(f.numpy(), id_t.numpy(), neg_t.numpy(), 0.01, 5, 2), rtol=0, atol=1e-5
    )


# --------------------------------------------------------------------------------------------
# the registry


def test_registry_holds_exactly_the_builtin_scores():
    assert sorted(SCORES.names()) == ["adaneg", "csp", "energy", "mcm", "msp", "neglabel", "synood"]
    assert [n for n in SCORES.names() if SCORES.get(n).transductive] == ["adaneg"]
    assert SCORES.get("neglabel").needs_negatives
    assert not any(SCORES.get(n).needs_negatives for n in ("msp", "energy", "mcm"))


def test_unknown_score_suggests_the_close_name():
    with pytest.raises(UsageError) as exc:
        SCORES.get("neglabl")
    assert "neglabl" in exc.value.message
    assert exc.value.hint is not None and "neglabel" in exc.value.hint
    assert "did you mean" in exc.value.hint
    with pytest.raises(UsageError) as exc:
        Scorer("neglabl", ScoreInputs(id_text=unit_rows(3, 8, 0)))
    assert "neglabel" in (exc.value.hint or "")
    with pytest.raises(UsageError) as exc:
        SCORES.get("zzzzzz")
    assert exc.value.hint is None
    assert "msp" in exc.value.message  # the choices are listed


# --------------------------------------------------------------------------------------------
# the contract every registered score keeps


def contract_inputs(dtype=torch.float32):
    d = 512  # CLIP-like: random cosines are small, so no score saturates at tau = 0.01
    id_t = unit_rows(10, d, 61)
    neg_t = unit_rows(200, d, 62)
    f = unit_rows(200, d, 63)
    # pull images towards ID labels or negatives by random amounts, so the scores spread out
    g = torch.Generator().manual_seed(64)
    w = torch.rand(200, 1, generator=g) * 0.3
    towards = torch.where(torch.rand(200, 1, generator=g) < 0.5, id_t[torch.arange(200) % 10], neg_t)
    f = torch.nn.functional.normalize(f + w * towards * 3, dim=1)
    return f, id_t, neg_t


def contract_adapter(dim: int):
    """A seeded random adapter: the contract holds for any trained one (synood needs it)."""
    from synood_cli.training import Adapter

    torch.manual_seed(0)
    return Adapter(dim).eval().requires_grad_(False)


@pytest.mark.parametrize("name", SCORES.names())
def test_score_contract(name):
    f, id_t, neg_t = contract_inputs()
    adapter = contract_adapter(f.shape[1])
    inputs = ScoreInputs(id_text=id_t, neg_text=neg_t, tau=0.01, groups=10, seed=0, adapter=adapter)
    scorer = Scorer(name, inputs)
    scores, pred = scorer(f)
    assert scores.shape == (200,) and pred.shape == (200,)
    assert scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())
    assert scores.std() > 0
    if SCORES.get(name).transductive:
        # no batch invariance by design (AdaNeg adapts to what it has scored): the same stream repeats
        again = Scorer(name, ScoreInputs(id_text=id_t, neg_text=neg_t, tau=0.01, groups=10, seed=0, adapter=adapter))
        torch.testing.assert_close(again(f)[0], scores, rtol=0, atol=0)
        return
    # batch invariance: one row at a time, and in uneven chunks, equals all at once (to 1e-6;
    # relative for energy, an unbounded logsumexp of logits ~ 1/tau whose fp32 ulp exceeds 1e-6)
    rows = torch.cat([scorer(f[i : i + 1])[0] for i in range(len(f))])
    torch.testing.assert_close(rows, scores, rtol=1e-6, atol=1e-6)
    chunks = torch.cat([scorer(f[i : i + 37])[0] for i in range(0, len(f), 37)])
    torch.testing.assert_close(chunks, scores, rtol=1e-6, atol=1e-6)
    # the prepared state is reused, not corrupted, across calls
    torch.testing.assert_close(scorer(f)[0], scores, rtol=0, atol=0)

    # bf16-rounded features (what a bf16 encoder hands over) are scored in fp32 and rank the same
    f16 = f.bfloat16()
    inputs16 = ScoreInputs(id_text=id_t.bfloat16().float(), neg_text=neg_t.bfloat16().float(), tau=0.01, groups=10, seed=0, adapter=adapter)
    scores16, pred16 = Scorer(name, inputs16)(f16)
    assert scores16.dtype == torch.float32
    assert bool(torch.isfinite(scores16).all())
    rho = spearmanr(scores16.numpy(), scores.numpy()).statistic
    assert rho > 0.99, rho
    assert (pred16 == pred).float().mean() > 0.95


@pytest.mark.parametrize("name", SCORES.names())
def test_score_contract_empty_batch(name):
    f, id_t, neg_t = contract_inputs()
    scorer = Scorer(name, ScoreInputs(id_text=id_t, neg_text=neg_t, tau=0.01, groups=10, adapter=contract_adapter(f.shape[1])))
    scores, pred = scorer(f[:0])
    assert scores.shape == (0,) and pred.shape == (0,)


def test_synood_score_is_neglabel_of_the_adapted_feature():
    f, id_t, neg_t = contract_inputs()
    adapter = contract_adapter(f.shape[1])
    got, _ = Scorer("synood", ScoreInputs(id_text=id_t, neg_text=neg_t, groups=10, seed=3, adapter=adapter))(f)
    # written out: normalize(f + relu(layernorm(W f + b))), then the NegLabel function
    lin, ln = adapter.linear, adapter.norm
    h = torch.nn.functional.layer_norm(f @ lin.weight.T + lin.bias, (f.shape[1],), ln.weight, ln.bias)
    f_adapted = torch.nn.functional.normalize(f + torch.relu(h), dim=1)
    torch.testing.assert_close(got, neglabel(f_adapted, id_t, neg_t, groups=10, seed=3))


def test_synood_without_checkpoint_is_refused():
    f, id_t, neg_t = contract_inputs()
    with pytest.raises(UsageError, match="checkpoint"):
        Scorer("synood", ScoreInputs(id_text=id_t, neg_text=neg_t, groups=10))
