"""What the world holds: its splits, how an image's attributes are drawn, its captions, its words.

Every image is a pure function of (world seed, stream, label, index): its own numpy Generator is
seeded with that tuple, so an image never depends on batch size, order or which other images are
made. An image is described by a small dict of attributes (`attrs`); `render` draws it and
`caption` says it in words, from the attributes alone.

Sets (docs/world.md): ID = the 20 ID kinds on the 12 contexts; near-OOD = 12 kinds, each one small
detail away from an ID kind (shapes.NEAR_OF); far-OOD = 14 other kinds, full-frame textures, and
contexts without any object. Objects sit near the centre and leave the context visible around
them, so an inpainting model can keep the context while it replaces the object.
"""

from __future__ import annotations

import math

import numpy as np

from synood_cli.world import scenes, shapes

STREAMS = {"clip_train": 1, "id_train": 2, "id_val": 3, "near": 4, "far": 5, "textures": 6, "empty": 7, "clip_eval": 8}
SIZES = {"small": 12.5, "medium": 17.5, "large": 22.5}  # half-extent in pixels
POSES = ("upright", "tilted", "upside-down")
POSE_P = (0.6, 0.3, 0.1)
KIND_NAMES = tuple(shapes.ALL_KINDS)
ID_NAMES = tuple(shapes.ID_KINDS)
NEAR_NAMES = tuple(shapes.NEAR_KINDS)
FAR_NAMES = tuple(shapes.FAR_KINDS)
CONTEXT_NAMES = tuple(scenes.CONTEXTS)
COLOUR_NAMES = tuple(scenes.COLOURS)


def image_rng(seed: int, stream: str, label: int, index: int) -> np.random.Generator:
    """The one Generator an image is drawn from (per-image: no dependence on batches)."""
    return np.random.default_rng([int(seed), STREAMS[stream], int(label), int(index)])


def _pick(rng, options, value=None):
    return value if value is not None else options[int(rng.integers(len(options)))]


def object_attrs(rng, kind, colour=None, context=None, size=None, fill=None, pose=None) -> dict:
    """Attributes of one object image; any not given are drawn from `rng`."""
    colour = _pick(rng, COLOUR_NAMES, colour)
    context = _pick(rng, CONTEXT_NAMES, context)
    size = _pick(rng, tuple(SIZES), size)
    fill = _pick(rng, scenes.OBJECT_FILLS, fill)
    pose = pose if pose is not None else POSES[int(rng.choice(3, p=POSE_P))]
    jitter = float(rng.uniform(-12, 12))
    if pose == "tilted":
        angle = float(rng.choice([-1, 1])) * float(rng.uniform(25, 50))
    else:
        angle = jitter + (180.0 if pose == "upside-down" else 0.0)
    scale = SIZES[size] * float(rng.uniform(0.93, 1.07))
    room = max(0.0, min(6.0, 30.5 - 1.2 * scale))
    cx, cy = (32 + float(x) for x in rng.uniform(-room, room, size=2))
    return {"type": "object", "kind": kind, "colour": colour, "context": context, "size": size, "fill": fill,
            "pose": pose, "angle": angle, "scale": scale, "cx": cx, "cy": cy}


def pattern_attrs(rng, pattern=None, colour=None) -> dict:
    return {"type": "pattern", "pattern": _pick(rng, scenes.PATTERNS, pattern), "colour": _pick(rng, COLOUR_NAMES, colour),
            "angle": float(rng.uniform(0, 180)), "freq": float(rng.uniform(3.0, 6.0)), "dark": bool(rng.random() < 0.5)}


def empty_attrs(rng, context=None) -> dict:
    return {"type": "empty", "context": _pick(rng, CONTEXT_NAMES, context)}


def _erode(m):
    return m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)


def render(attrs: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image [64, 64, 3], bool object mask [64, 64]) for `attrs`, noise drawn from `rng`."""
    t = attrs["type"]
    size = scenes.SIZE
    if t == "pattern":
        a = math.radians(attrs["angle"])
        u = (math.cos(a) * scenes._X + math.sin(a) * scenes._Y) / size
        v = (-math.sin(a) * scenes._X + math.cos(a) * scenes._Y) / size
        p = scenes.fill_pattern(attrs["pattern"], u, v, attrs["freq"])
        c = np.asarray(scenes.COLOURS[attrs["colour"]], np.float32)
        other = np.float32(0.08) if attrs["dark"] else np.float32(0.95)
        img = np.where(p[..., None], c, other)
        mask = np.zeros((size, size), dtype=bool)
    else:
        img = scenes.CONTEXTS[attrs["context"]][0](rng)
        mask = np.zeros((size, size), dtype=bool)
        if t == "object":
            a = math.radians(attrs["angle"])
            dx, dy = scenes._X - attrs["cx"], scenes._Y - attrs["cy"]
            s = attrs["scale"]
            u = (math.cos(a) * dx + math.sin(a) * dy) / s
            v = (-math.sin(a) * dx + math.cos(a) * dy) / s
            mask = shapes.ALL_KINDS[attrs["kind"]](u, v)
            c = np.clip(np.asarray(scenes.COLOURS[attrs["colour"]], np.float32) + rng.normal(0, 0.03, 3).astype(np.float32), 0, 1)
            c2 = scenes.second_colour(c)
            body = np.where(scenes.fill_pattern(attrs["fill"], u, v)[..., None], c2, c)
            body = np.where((mask & ~_erode(mask))[..., None], c * np.float32(0.35), body)
            img = np.where(mask[..., None], body, img)
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, mask


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: dict) -> str:
    """The caption of an image, made from its attributes only."""
    t = attrs["type"]
    if t == "empty":
        return scenes.CONTEXTS[attrs["context"]][2]
    if t == "pattern":
        return f"{_article(attrs['colour'])} {attrs['colour']} {attrs['pattern']} pattern"
    words = []
    if attrs["size"] != "medium":
        words.append(attrs["size"])
    if attrs["pose"] != "upright":
        words.append(attrs["pose"])
    words.append(attrs["colour"])
    if attrs["fill"] != "solid":
        words.append(attrs["fill"])
    words.append(attrs["kind"])
    return f"{_article(words[0])} {' '.join(words)} {scenes.CONTEXTS[attrs['context']][1]}"


def draw(seed: int, stream: str, label: int, index: int, make_attrs) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image of a stream: `make_attrs(rng)` gives its attributes, then it is rendered."""
    rng = image_rng(seed, stream, label, index)
    attrs = make_attrs(rng)
    img, mask = render(attrs, rng)
    return img, mask, attrs


def set_image(seed: int, set_name: str, label: int, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image `index` of label `label` in one of the world's sets (id_train, id_val, near, far, textures, empty)."""
    if set_name in ("id_train", "id_val"):
        return draw(seed, set_name, label, index, lambda r: object_attrs(r, ID_NAMES[label]))
    if set_name == "near":
        return draw(seed, set_name, label, index, lambda r: object_attrs(r, NEAR_NAMES[label]))
    if set_name == "far":
        return draw(seed, set_name, label, index, lambda r: object_attrs(r, FAR_NAMES[label]))
    if set_name == "textures":
        return draw(seed, set_name, label, index, lambda r: pattern_attrs(r, scenes.PATTERNS[label]))
    if set_name == "empty":
        return draw(seed, set_name, label, index, lambda r: empty_attrs(r, CONTEXT_NAMES[label]))
    raise KeyError(set_name)


SET_LABELS = {
    "id_train": ID_NAMES, "id_val": ID_NAMES, "near": NEAR_NAMES, "far": FAR_NAMES,
    "textures": scenes.PATTERNS, "empty": CONTEXT_NAMES,
}

# Words of the lexicon that name nothing in the world (the CLIP never saw them in a caption).
UNSEEN_NOUNS = (
    "elephant", "violin", "piano", "guitar", "tiger", "giraffe", "penguin", "bicycle", "airplane", "train",
    "castle", "volcano", "river", "mountain", "forest", "desert", "island", "bridge", "tower", "window",
    "keyboard", "camera", "telephone", "clock", "lamp", "pillow", "blanket", "sock", "shoe", "hat",
    "banana", "apple", "bread", "cheese", "pizza", "carrot", "tomato", "onion", "lemon", "grape",
    "horse", "rabbit", "turtle", "snake", "frog", "owl", "eagle", "whale", "shark", "octopus",
    "doctor", "teacher", "soldier", "child", "king", "robot", "ghost", "dragon", "angel", "wizard",
)
UNSEEN_ADJECTIVES = (
    "happy", "sad", "ancient", "modern", "quiet", "loud", "wet", "dry", "soft", "hard", "hot", "cold",
    "rich", "poor", "young", "old", "fast", "slow", "heavy", "light", "fresh", "rotten", "sweet", "bitter",
    "wooden", "metal", "glass", "plastic", "hairy", "shiny", "rusty", "dusty", "furry", "noisy",
)


def lexicon_lines() -> list[str]:
    """The world's words in the `--lexicon FILE` format (word TAB noun|adj)."""
    nouns = [k for k in KIND_NAMES] + ["paper", "table", "grass", "lawn", "sky", "brick wall", "sand", "beach",
                                      "water", "tiled floor", "night sky", "snow", "road", "carpet", "pattern"]
    adjs = list(COLOUR_NAMES) + ["small", "large", "tilted", "upside-down", "solid"] + list(scenes.PATTERNS) + ["empty", "wooden"]
    lines = ["# synood generated world: kind names, contexts, attributes, and words that name nothing in it",
             "# format: word<TAB>noun|adj"]
    seen = set()
    for pos, words in (("noun", nouns + list(UNSEEN_NOUNS)), ("adj", adjs + list(UNSEEN_ADJECTIVES))):
        for w in words:
            if (w, pos) not in seen:
                seen.add((w, pos))
                lines.append(f"{w}\t{pos}")
    return lines
