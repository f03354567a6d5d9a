"""Candidate pools for negative mining (docs/method.md, "Negative labels"): NegLabel's and CSP's conjugated pool.

CSP (Chen et al., NeurIPS 2024, "Conjugated Semantic Pool Improves OOD Detection with Pre-trained
Vision-Language Models"; github.com/MengyuanChen21/NeurIPS2024-CSP) keeps NegLabel's mining but
changes the candidates and their embeddings:

- every adjective becomes a phrase "ADJ SUPERCLASS" ("gooey landscape"): the superclass is drawn
  for each adjective in pool order by Python's `random.choice` after `random.seed(seed)`
  (the same Mersenne Twister stream as `random.Random(seed)`), from the 14 superclass words below;
- a noun (and an ID class name) is embedded as the mean of its raw text-encoder outputs over
  CSP's 8 noun templates, an adjective phrase over CSP's 4 adjective templates, then normalised;
- a candidate whose largest similarity to an ID class exceeds 0.95 gets affinity 1 (never mined).

The word lists are data, quoted from CSP's `mmcls/models/classifiers/class_names.py`
(`preset_noun_prompt_templates`, `csp_templates`, `preset_adj_prompt_templates`); the code is ours.
"""

from __future__ import annotations

import random

import torch

POOLS = ("neglabel", "csp")

# CSP's `csp_templates`: the superclass words, in CSP's order (the seeded choice indexes into it)
CSP_SUPERCLASSES = (
    "environment", "space", "object", "scene", "place", "item", "area",
    "view", "thing", "pattern", "structure", "landscape", "vista", "creature",
)
# CSP's `preset_noun_prompt_templates` (ID classes and nouns), final periods included as CSP has them
CSP_NOUN_TEMPLATES = (
    "a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
    "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}",
)
# CSP's `preset_adj_prompt_templates` (applied to the conjugated phrase)
CSP_ADJ_TEMPLATES = ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}")
# CSP: `sim[maximum > 0.95] = 1.0`
CSP_MAX_SIMILARITY = 0.95


def conjugate(adjectives, seed: int = 0) -> list[str]:
    """Each adjective with its seeded superclass word: CSP's one `random.choice` per adjective, in order."""
    rng = random.Random(seed)
    return [f"{adj} {rng.choice(CSP_SUPERCLASSES)}" for adj in adjectives]


def ensemble(per_template: list[torch.Tensor]) -> torch.Tensor:
    """Normalised mean of raw (unnormalised) text-encoder outputs over templates, as CSP averages them."""
    return torch.nn.functional.normalize(torch.stack([t.float() for t in per_template]).mean(dim=0), dim=-1)


def cap_near_duplicates(aff: torch.Tensor, candidates: torch.Tensor, id_features: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Affinity 1 for a candidate whose largest similarity to an ID class exceeds 0.95 (CSP's filter)."""
    out = aff.clone()
    for start in range(0, candidates.shape[0], chunk):
        top = (candidates[start : start + chunk] @ id_features.T).max(dim=1).values
        out[start : start + chunk][top > CSP_MAX_SIMILARITY] = 1.0
    return out


def pool_record(pool: str, seed: int) -> dict:
    """What a pool adds to a negatives artifact's config and a score's identity."""
    if pool == "csp":
        return {
            "name": "csp", "seed": seed, "superclasses": list(CSP_SUPERCLASSES),
            "templates": {"id": list(CSP_NOUN_TEMPLATES), "noun": list(CSP_NOUN_TEMPLATES), "adj": list(CSP_ADJ_TEMPLATES)},
            "max_similarity": CSP_MAX_SIMILARITY,
        }
    return {"name": pool}
