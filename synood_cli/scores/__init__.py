"""OOD scores over CLIP features (docs/method.md, "Score"); higher always means more in-distribution.

Each method registers itself in `SCORES` where it is defined; importing this package loads the
built-ins. Adding a method is one small module with one `@register_score` function.
"""

from synood_cli.scores.base import SCORES, ScoreInputs, ScoreMethod, Scorer, register_score
from synood_cli.scores import softmax as _softmax  # noqa: F401  (registers msp, energy, mcm)
from synood_cli.scores.neglabel import group_negatives, neglabel
from synood_cli.scores import synood as _synood  # noqa: F401  (registers synood)
from synood_cli.scores import csp as _csp  # noqa: F401  (registers csp)
from synood_cli.scores import adaneg as _adaneg  # noqa: F401  (registers adaneg)

__all__ = ["SCORES", "ScoreInputs", "ScoreMethod", "Scorer", "register_score", "neglabel", "group_negatives"]
