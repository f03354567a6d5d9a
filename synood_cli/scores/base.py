"""The score contract: a function of L2-normalised image features and the text features.

`Scorer` takes the raw CLIP image output g and hands each method f = g / |g|, or g itself when the
method asks for it (`raw=True`: the SynOOD adapter takes g, docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from synood_cli.registry import Registry


@dataclass
class ScoreInputs:
    """Everything a score may use besides the image features (all fp32, L2-normalised rows).

    `prepared` holds per-method precomputations (e.g. NegLabel's grouped negatives), filled once
    by `Scorer` so every batch reuses them.
    """

    id_text: torch.Tensor
    neg_text: torch.Tensor | None = None
    tau: float = 0.01
    groups: int = 100
    seed: int = 0
    temperature: float = 1.0
    adapter: torch.nn.Module | None = None
    prepared: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreMethod:
    name: str
    fn: Callable[[torch.Tensor, ScoreInputs], torch.Tensor]
    needs_negatives: bool
    summary: str
    prepare: Callable[[ScoreInputs], None] | None = None
    raw: bool = False
    # a transductive score depends on the images scored before it (AdaNeg): no batch invariance
    transductive: bool = False


SCORES: Registry[ScoreMethod] = Registry("score method", option="--method")


def register_score(name: str, summary: str, needs_negatives: bool = False, prepare=None, raw: bool = False, transductive: bool = False):
    """Decorator: `@register_score("msp", "max softmax probability")` on `fn(features, inputs)`.

    `raw=True`: `fn` gets the unnormalised CLIP image output g instead of f = g / |g|.
    """

    def decorate(fn):
        SCORES.add(name, ScoreMethod(name, fn, needs_negatives, summary, prepare, raw, transductive))
        return fn

    return decorate


class Scorer:
    """A score method bound to its text features, with precomputation done once.

    Scores and predictions are computed in fp32 whatever precision the encoders ran in:
    exp(cos/0.01) overflows fp16 once cos > 0.111.
    """

    def __init__(self, method: str, inputs: ScoreInputs):
        self.method = SCORES.get(method)
        if self.method.needs_negatives and (inputs.neg_text is None or len(inputs.neg_text) == 0):
            from synood_cli.errors import UsageError

            raise UsageError(f"score method {method!r} needs negative labels and none were given")
        self.inputs = inputs
        self.reset()

    def reset(self) -> None:
        """Redo the method's precomputation: a transductive score (AdaNeg) starts again from an empty memory."""
        if self.method.prepare is not None:
            self.method.prepare(self.inputs)

    @torch.no_grad()
    def __call__(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores [N], predicted ID class [N]) for raw CLIP image features g [N, d].

        Normalised features work too for every method but a `raw` one (normalising is idempotent).
        """
        g = image_features.float()
        f = torch.nn.functional.normalize(g, dim=-1)
        scores = self.method.fn(g if self.method.raw else f, self.inputs)
        pred = (f @ self.inputs.id_text.T).argmax(dim=1)
        return scores, pred
