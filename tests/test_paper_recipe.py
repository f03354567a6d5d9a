"""The paper profile computes the published recipe (docs/method.md): noise step in u = z0 / vae_scale,
guidance direction per score, raw CLIP feature into the adapter, NegLabel's word pool and
templates, group remainder, the checkpoint's negative set, the research negatives stage."""

from __future__ import annotations

import json
import math

import pytest
import torch

from synood_cli.errors import UsageError

SIZE = 32


# -- 1 and 2: the noise step and the guidance direction --------------------------------------


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    from synood_cli.models.diffusion import TINY_DIFFUSION, load_inpainter
    from synood_cli.store import Store

    return load_inpainter(TINY_DIFFUSION, Store(tmp_path_factory.mktemp("recipe-home")), torch.device("cpu"), torch.float32)


_W = torch.randn(3, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))


def _classifier(x):
    """A small differentiable 3-class classifier on images in [0, 1]."""
    return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ _W.T * 4


def _synth(inpainter, guidance: str, target: float, lr: float):
    from synood_cli.guidance import GuideModel
    from synood_cli.models.diffusion import TINY_DIFFUSION
    from synood_cli.synthesis import SynthConfig, Synthesizer

    cfg = SynthConfig(prompts="p", diffusion=TINY_DIFFUSION, size=SIZE, steps=10, lr=lr, guidance=guidance, target=str(target), device="cpu")
    return Synthesizer(cfg, inpainter, GuideModel(_classifier, "toy"), target, torch.device("cpu"))


def _by_hand(inpainter, guidance: str, z0, target: float):
    """The score and dL/du, L = sum_i (S(decode(u_i)) - target)^2, u = z0 / vae_scale, written out here."""
    from synood_cli.guidance import GUIDANCE

    u = (z0 / inpainter.latent_scale).clone().requires_grad_(True)
    x = (inpainter.vae.decode(u).sample / 2 + 0.5).clamp(0, 1)
    s = GUIDANCE.get(guidance)(_classifier(x))
    (g,) = torch.autograd.grad(((s - target) ** 2).sum(), u)
    return s.detach(), g


def _latents(inpainter, n=2, seed=1):
    side = SIZE // inpainter.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, side, side, generator=gen), torch.randn(n, 4, side, side, generator=gen)


@pytest.mark.parametrize("guidance", ["energy", "mean-log-softmax"])
def test_one_update_is_eps_minus_lr_times_the_gradient_in_u(inpainter, guidance):
    z0, eps = _latents(inpainter)
    s0, _ = _by_hand(inpainter, guidance, z0, 0.0)
    target = float(s0.max()) + 3.0  # above every source score
    lr = 5.0
    _, g = _by_hand(inpainter, guidance, z0, target)
    new_eps, x, ok = _synth(inpainter, guidance, target, lr).guidance_step(eps, z0)
    assert ok.all()
    want = eps - lr * g
    torch.testing.assert_close(new_eps, want, rtol=1e-5, atol=1e-7)
    # the gradient at the scaled z0 is 1/vae_scale = 5.49 times this step: it must not be what we take
    assert inpainter.latent_scale == pytest.approx(0.18215)
    assert (new_eps - eps).norm() == pytest.approx((lr * g).norm().item(), rel=1e-5)


@pytest.mark.parametrize("guidance", ["energy", "mean-log-softmax"])
@pytest.mark.parametrize("side", ["below", "above"])
def test_the_step_moves_the_score_toward_the_target(inpainter, guidance, side):
    """A small step along the update, applied where the gradient was taken, lowers |s - target|
    from either side, and by the amount the quadratic loss predicts (a linear loss would not)."""
    z0, eps = _latents(inpainter, seed=2)
    s0, _ = _by_hand(inpainter, guidance, z0, 0.0)
    target = float(s0.max()) + 1.0 if side == "below" else float(s0.min()) - 1.0
    lr = 1e-3
    new_eps, _, _ = _synth(inpainter, guidance, target, lr).guidance_step(eps, z0)
    delta_u = new_eps - eps  # -lr dL/du
    s1, _ = _by_hand(inpainter, guidance, z0 + delta_u * inpainter.latent_scale, 0.0)
    assert ((s1 - target).abs() < (s0 - target).abs()).all(), (s0, s1, target)
    # first order: ds_i = dS/du . delta_u = -lr * 2 (s_i - t) |dS/du|^2
    _, g = _by_hand(inpainter, guidance, z0, target)
    dsdu = g / (2 * (s0 - target))[:, None, None, None]
    predicted = -lr * 2 * (s0 - target) * dsdu.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(s1 - s0, predicted, rtol=0.2, atol=1e-6)


def test_mean_log_softmax_points_to_ood_and_its_boundary_is_the_high_tail():
    from synood_cli.guidance import GUIDANCE, boundary_target, higher_means_id

    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8], [0.0, 0.0, 0.0]])
    mls = GUIDANCE.get("mean-log-softmax")(logits)
    assert mls[2] == pytest.approx(-math.log(3)) and mls[2] > mls[1] > mls[0]  # uniform (OOD) is highest
    assert higher_means_id("energy") and higher_means_id("msp") and not higher_means_id("mean-log-softmax")
    scores = torch.arange(1, 41, dtype=torch.float32)  # 1..40
    # 95% TPR with higher = OOD: 38 of the 40 ID scores at or below the boundary
    assert boundary_target(scores, higher_means_id=False) == 38.0
    assert boundary_target(scores, higher_means_id=True) == 3.0
    with pytest.raises(UsageError):
        higher_means_id("none")
