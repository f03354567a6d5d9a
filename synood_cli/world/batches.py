"""Training and evaluation data for the world's CLIP: caption-contrastive batches and a zero-shot set.

WORLD-NOTES.md: with random captions a small CLIP lowers its loss on colour and background and
never learns the object. So a batch is made of groups; inside a group every image shares colour,
context, size, fill and pose, and the captions differ only in the object (or its absence). Groups
in one batch have different contexts, so no two captions in a batch are the same. Batch `step` is
a pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np

from synood_cli.world import scenes, spec

EMPTY = "<empty>"
ITEMS = spec.KIND_NAMES + (EMPTY,)
# caption forms without attributes, so kind names also mean something in short prompts
BARE = ("{a} {k}", "a photo of {a} {k}", "the nice {k}", "a picture of {a} {k}", "this is {a} {k}", "a drawing of {a} {k}")


def _bare(template: str, kind: str) -> str:
    return template.format(a="an" if kind[0] in "aeiou" else "a", k=kind)


def train_batch(seed: int, step: int, groups: int = 8, per_group: int = 16, p_pattern: float = 0.1, p_bare: float = 0.3,
                p_plain: float = 0.0):
    """(uint8 images [B, 64, 64, 3], captions) of training step `step`; all captions distinct.

    With probability `p_plain` a group's objects are solid and upright (a curriculum: the small
    CNN learns kinds several times faster on those, measured with a supervised probe).
    """
    rng = np.random.default_rng([int(seed), 1000, int(step)])
    contexts = rng.choice(len(spec.CONTEXT_NAMES), size=groups, replace=False)
    bare_pool = list(rng.permutation(len(BARE)))
    images, captions = [], []
    for g in range(groups):
        slot0 = g * per_group
        if rng.random() < p_pattern:  # a group of full-frame patterns, distinct (pattern, colour) pairs
            combos = rng.choice(len(scenes.PATTERNS) * len(spec.COLOUR_NAMES), size=per_group, replace=False)
            for j, c in enumerate(combos):
                pat, col = scenes.PATTERNS[c // len(spec.COLOUR_NAMES)], spec.COLOUR_NAMES[c % len(spec.COLOUR_NAMES)]
                img, _, attrs = spec.draw(seed, "clip_train", step, slot0 + j, lambda r: spec.pattern_attrs(r, pat, col))
                images.append(img)
                captions.append(spec.caption(attrs))
            continue
        context = spec.CONTEXT_NAMES[int(contexts[g])]
        colour = spec.COLOUR_NAMES[int(rng.integers(len(spec.COLOUR_NAMES)))]
        size = tuple(spec.SIZES)[int(rng.integers(3))]
        fill = scenes.OBJECT_FILLS[int(rng.integers(len(scenes.OBJECT_FILLS)))]
        pose = spec.POSES[int(rng.choice(3, p=spec.POSE_P))]
        if rng.random() < p_plain:
            fill, pose = "solid", "upright"
        bare = BARE[bare_pool.pop()] if (bare_pool and rng.random() < p_bare) else None
        items = rng.choice(len(ITEMS), size=per_group, replace=False)
        for j, it in enumerate(items):
            item = ITEMS[int(it)]
            if item == EMPTY:
                make = lambda r: spec.empty_attrs(r, context)  # noqa: E731
            else:
                make = lambda r, item=item: spec.object_attrs(r, item, colour, context, size, fill, pose)  # noqa: E731
            img, _, attrs = spec.draw(seed, "clip_train", step, slot0 + j, make)
            images.append(img)
            if bare is not None and item != EMPTY:
                captions.append(_bare(bare, item))
            else:
                captions.append(spec.caption(attrs))
    return np.stack(images), captions


def eval_set(seed: int, per_kind: int = 10):
    """(images, kind labels) of every kind, from a stream no training batch draws from."""
    images, labels = [], []
    for k, kind in enumerate(spec.KIND_NAMES):
        for i in range(per_kind):
            img, _, _ = spec.draw(seed, "clip_eval", k, i, lambda r, kind=kind: spec.object_attrs(r, kind))
            images.append(img)
            labels.append(k)
    return np.stack(images), np.asarray(labels)


def ensemble_prompts(kind: str) -> list[str]:
    """Prompts averaged into one text feature per kind (colours x contexts, as WORLD-NOTES measured)."""
    out = []
    for colour in spec.COLOUR_NAMES:
        for ctx in spec.CONTEXT_NAMES:
            out.append(spec.caption({"type": "object", "kind": kind, "colour": colour, "context": ctx, "size": "medium",
                                     "fill": "solid", "pose": "upright"}))
    return out
