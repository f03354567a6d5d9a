"""The world CLIP's training script (not run in CI): its checkpoints resume exactly, its schedule."""

from __future__ import annotations

import json

import pytest
import torch

from synood_cli.world import train_clip
from synood_cli.world.batches import train_batch


def test_schedule_only_its_last_fifth_depends_on_the_length():
    lr = train_clip._lr
    assert lr(0, 1000, 1e-3, 100) == pytest.approx(1e-5)
    assert lr(500, 1000, 1e-3, 100) == lr(500, 3000, 1e-3, 100) == 1e-3
    assert lr(999, 1000, 1e-3, 100) < 0.05e-3 and lr(900, 1000, 1e-3, 100) < 1e-3


def _step(model, tok, opt, step):
    images, captions = train_batch(0, step)
    img, txt, scale = model(train_clip.to_pixels(images[:16]), tok(captions[:16]))
    logits = scale * img @ txt.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(16))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.slow
def test_checkpoint_restores_model_and_optimizer_exactly(tmp_path):
    torch.set_num_threads(1)
    model, tok = train_clip.build_model(0)
    opt = train_clip.make_optimizer(model, 1e-3, 0.1)
    _step(model, tok, opt, 0)
    train_clip._save(tmp_path, model, opt, {"step": 1, "steps": 10, "recipe": {}, "wall_s": 1.0, "log": []})
    again, _ = train_clip.build_model(1)  # other random weights: everything must come from the file
    opt2 = train_clip.make_optimizer(again, 1e-3, 0.1)
    assert json.loads((tmp_path / "state.json").read_text())["step"] == train_clip._load(tmp_path, again, opt2)["step"] == 1
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    # the next step from the restored state equals the next step of the uninterrupted run
    _step(model, tok, opt, 1)
    _step(again, tok, opt2, 1)
    for (n, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
