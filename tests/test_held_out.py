"""The checkpoint's held-out ID split and the threshold `synood finetune` stores on it.

`score --threshold fpr95` applies that threshold: computed on the training images it sits too high
(the adapter has seen them), so the rows training held out must be exactly the ID rows of the
first stage's validation split, and the threshold must be computed on those rows alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from synood_cli.finetuning import _held_out_threshold
from synood_cli.scores import ScoreInputs, Scorer
from synood_cli.training import Adapter, TrainConfig, TrainResult, train

D, K, M = 16, 3, 8


def _rows(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_every_id_row_is_held_out_when_the_split_takes_every_row():
    # 5 ID rows and 1 synthesized row, val_fraction 0.95: round(6 * 0.95) = 6 rows, so the split
    # holds out every row and the held-out ID rows are all five, in order
    id_text, neg = _rows(K, 1), _rows(2, 2)
    id_f, id_y = _rows(5, 3), torch.tensor([0, 1, 2, 0, 1])
    cfg = TrainConfig(adapter_epochs=1, negatives_epochs=1, batch_size=4, val_fraction=0.95)
    result = train(id_f, id_y, _rows(1, 4), torch.tensor([0]), id_text, neg, cfg)
    assert result.held_out_id.tolist() == [0, 1, 2, 3, 4]


def test_held_out_rows_are_id_rows_and_sorted():
    id_text, neg = _rows(K, 1), _rows(2, 2)
    id_f, id_y = _rows(12, 3), torch.arange(12) % K
    cfg = TrainConfig(adapter_epochs=1, negatives_epochs=1, batch_size=8, val_fraction=0.5)
    held = train(id_f, id_y, _rows(12, 4), torch.arange(12) % 2, id_text, neg, cfg).held_out_id.tolist()
    assert held == sorted(set(held)) and all(0 <= i < 12 for i in held)
    assert 0 < len(held) < 12


def test_threshold_is_computed_on_the_held_out_rows_only():
    torch.manual_seed(0)
    adapter = Adapter(D).eval().requires_grad_(False)
    id_text, neg = _rows(K, 1), _rows(M, 2)
    # rows 1..5 lie on their class's text vector; row 0 on a negative (far lower score); rows 1 and 3 are held out
    id_f = torch.cat([neg[:1], id_text[[0, 1, 2, 0, 1]]]) * 7.0  # raw CLIP outputs are not unit length
    result = TrainResult(adapter, neg, {}, torch.tensor([1, 3]))
    cfg = SimpleNamespace(train=TrainConfig(seed=0))
    rec = _held_out_threshold(result, id_f, id_text, neg, 2, cfg, {"tau": 0.01, "seed": 0})

    inputs = ScoreInputs(id_text=id_text, neg_text=neg, tau=0.01, groups=2, seed=0, adapter=adapter)
    s = Scorer("synood", inputs)(id_f)[0].tolist()
    assert s[0] < min(s[1:]) - 1e-3  # the construction: row 0 scores lowest
    # 95% TPR of 2 rows keeps ceil(1.9) = 2 of them: the threshold is the lower of rows 1 and 3
    assert rec["threshold"] == pytest.approx(min(s[1], s[3]), abs=1e-6)  # (another batch: bits may differ)
    assert rec["n_id"] == 2 and rec["split"] == "held-out"
