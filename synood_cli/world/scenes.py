"""Drawing: the world's contexts (backgrounds), colours, fill textures and full-frame patterns.

Every function takes a numpy Generator and returns float32 arrays in [0, 1] of shape (64, 64, 3)
(or (64, 64) masks); all work is whole-array numpy, no per-pixel Python.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SIZE = 64
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.97, 0.87, 0.1),
    "green": (0.12, 0.62, 0.18),
    "blue": (0.12, 0.28, 0.92),
    "purple": (0.55, 0.18, 0.72),
    "pink": (1.0, 0.52, 0.72),
    "brown": (0.5, 0.3, 0.12),
    "black": (0.07, 0.07, 0.07),
    "white": (0.97, 0.97, 0.97),
    "grey": (0.55, 0.55, 0.55),
}


def _noise(rng, amp, shape=(SIZE, SIZE, 1)):
    return (rng.random(shape, dtype=np.float32) - 0.5) * (2 * amp)


def _fill(rgb):
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32), (SIZE, SIZE, 3))


# ---- contexts ---------------------------------------------------------------------------------


def paper(rng):
    return _fill((0.93, 0.92, 0.87)) + _noise(rng, 0.025)


def table(rng):
    ph = rng.uniform(0, 2 * math.pi)
    grain = 0.82 + 0.18 * np.sin(_Y * 0.9 + 2.5 * np.sin(_X * 0.09 + ph))
    return _fill((0.62, 0.41, 0.22)) * grain[..., None] + _noise(rng, 0.03)


def grass(rng):
    streaks = np.repeat(rng.random((SIZE // 4, SIZE), dtype=np.float32), 4, axis=0)
    return _fill((0.22, 0.52, 0.17)) + (streaks[..., None] - 0.5) * np.float32(0.22) * _fill((0.6, 1.0, 0.5)) + _noise(rng, 0.05)


def sky(rng):
    t = (_Y / SIZE)[..., None]
    img = _fill((0.4, 0.66, 0.95)) * (1 - t) + _fill((0.72, 0.86, 1.0)) * t
    for _ in range(2):
        cx, cy = rng.uniform(0, SIZE), rng.choice([rng.uniform(2, 14), rng.uniform(50, 62)])
        m = ((_X - cx) / 11) ** 2 + ((_Y - cy) / 5) ** 2 <= 1
        img = np.where(m[..., None], np.float32(0.97), img)
    return img + _noise(rng, 0.015)


@functools.lru_cache(maxsize=None)
def _brick_base(variant: int) -> np.ndarray:
    """A 64x64 brick texture, periodic on the canvas (bricks 16x8), so a roll moves it."""
    rng = np.random.default_rng([7, variant])
    row = (_Y // 8).astype(int)
    off = np.where(row % 2 == 0, 0.0, 8.0)
    col = ((_X + off) // 16).astype(int) % 4
    mortar = ((_Y % 8) < 1.2) | (((_X + off) % 16) < 1.2)
    shade = rng.uniform(-0.08, 0.08, size=(SIZE // 8, 4)).astype(np.float32)[row, col][..., None]
    return np.where(mortar[..., None], _fill((0.78, 0.76, 0.72)), _fill((0.66, 0.26, 0.18)) + shade)


def brick_wall(rng):
    v, dy, dx = rng.integers(0, 4), rng.integers(0, 8), rng.integers(0, 16)
    return np.roll(_brick_base(int(v)), (int(dy), int(dx)), axis=(0, 1)) + _noise(rng, 0.025)


def sand(rng):
    ph = rng.uniform(0, 2 * math.pi)
    rip = 0.04 * np.sin(_Y * 0.6 + 0.8 * np.sin(_X * 0.15 + ph))
    return _fill((0.88, 0.77, 0.55)) + rip[..., None] + _noise(rng, 0.06)


def water(rng):
    ph = rng.uniform(0, 2 * math.pi)
    wave = 0.09 * np.sin(_Y * 0.7 + 1.2 * np.sin(_X * 0.25 + ph))
    return _fill((0.1, 0.38, 0.68)) + wave[..., None] * _fill((1.0, 1.0, 0.8)) + _noise(rng, 0.02)


@functools.lru_cache(maxsize=None)
def _tiles_base() -> np.ndarray:
    cx, cy = (_X // 16).astype(int), (_Y // 16).astype(int)
    grout = ((_X % 16) < 1.5) | ((_Y % 16) < 1.5)
    base = np.where(((cx + cy) % 2 == 0)[..., None], _fill((0.9, 0.9, 0.88)), _fill((0.62, 0.75, 0.86)))
    return np.where(grout[..., None], _fill((0.45, 0.45, 0.45)), base)


def tiles(rng):
    dy, dx = rng.integers(0, 32, size=2)
    return np.roll(_tiles_base(), (int(dy), int(dx)), axis=(0, 1)) + _noise(rng, 0.015)


def night(rng):
    stars = rng.random((SIZE, SIZE), dtype=np.float32) < 0.02
    t = (_Y / SIZE)[..., None]
    img = _fill((0.02, 0.03, 0.12)) * (1 - t) + _fill((0.06, 0.08, 0.25)) * t
    return np.where(stars[..., None], np.float32(0.95), img)


def snow(rng):
    ph = rng.uniform(0, 2 * math.pi)
    shade = 0.05 * np.sin(_X * 0.08 + _Y * 0.05 + ph)
    return _fill((0.92, 0.94, 0.98)) + shade[..., None] * _fill((1.0, 1.0, 0.4)) + _noise(rng, 0.03)


def road(rng):
    img = _fill((0.3, 0.3, 0.32)) + _noise(rng, 0.05)
    y0, ox = rng.uniform(26, 34), rng.uniform(0, 14)
    dash = (np.abs(_Y - y0) < 1.6) & (((_X + ox) % 14) < 8)
    return np.where(dash[..., None], _fill((0.95, 0.8, 0.1)), img)


def carpet(rng):
    ph = rng.uniform(0, 8)
    d = (np.sin((_X + _Y + ph) * 0.45) * np.sin((_X - _Y + ph) * 0.45)) > 0
    base = np.where(d[..., None], _fill((0.55, 0.12, 0.2)), _fill((0.42, 0.1, 0.35)))
    return base + _noise(rng, 0.05)


# name -> (drawer, phrase after an object, what an empty one is called)
CONTEXTS = {
    "paper": (paper, "on a sheet of paper", "an empty sheet of paper"),
    "table": (table, "on a wooden table", "an empty wooden table"),
    "grass": (grass, "on the grass", "an empty lawn of grass"),
    "sky": (sky, "in the sky", "an empty sky"),
    "brick_wall": (brick_wall, "on a brick wall", "an empty brick wall"),
    "sand": (sand, "on the sand", "an empty sandy beach"),
    "water": (water, "on the water", "empty water"),
    "tiles": (tiles, "on a tiled floor", "an empty tiled floor"),
    "night": (night, "in the night sky", "an empty night sky"),
    "snow": (snow, "in the snow", "empty snow"),
    "road": (road, "on a road", "an empty road"),
    "carpet": (carpet, "on a carpet", "an empty carpet"),
}


# ---- fills and full-frame patterns ------------------------------------------------------------


def second_colour(rgb) -> np.ndarray:
    """The other colour of a striped/dotted/checkered object: a shade of the same colour."""
    c = np.asarray(rgb, dtype=np.float32)
    return c * 0.5 if c.mean() > 0.3 else c * 0.4 + 0.35


def fill_pattern(name: str, u, v, freq: float = 2.6):
    """Where the second colour goes, on coordinates u, v (a bool array); 'solid' has none."""
    if name == "solid":
        return np.zeros(u.shape, dtype=bool)
    if name == "striped":
        return ((u * freq) % 1.0) < 0.5
    if name == "dotted":
        return (((u * freq) % 1.0) - 0.5) ** 2 + (((v * freq) % 1.0) - 0.5) ** 2 < 0.09
    if name == "checkered":
        return (np.floor(u * freq) + np.floor(v * freq)) % 2 == 0
    if name == "zigzag":
        return (((v * freq) + np.abs(((u * freq) % 1.0) - 0.5)) % 1.0) < 0.5
    if name == "wavy":
        return (((v * freq) + 0.25 * np.sin(u * freq * 2 * math.pi)) % 1.0) < 0.5
    if name == "grid":
        return (((u * freq) % 1.0) < 0.2) | (((v * freq) % 1.0) < 0.2)
    raise KeyError(name)


OBJECT_FILLS = ("solid", "striped", "dotted", "checkered")
PATTERNS = ("striped", "dotted", "checkered", "zigzag", "wavy", "grid")
