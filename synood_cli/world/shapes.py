"""The world's object kinds: each a mask drawn by code on object-local coordinates.

A kind is a function of (u, v), float32 arrays of pixel positions in the object's own frame
(rotated and scaled; the object fills about [-1, 1]^2, v points down), returning a bool mask.
Everything is vectorised numpy over the 64x64 grid, so one mask costs tens of microseconds.
Kinds are grouped as the world uses them (world/spec.py): ID kinds, near-OOD kinds that differ
from one ID kind by a small detail, and far-OOD kinds that resemble none.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---- primitives -------------------------------------------------------------------------------


def disk(u, v, cx, cy, r):
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def ellipse(u, v, cx, cy, a, b):
    return ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 <= 1.0


def rect(u, v, x0, y0, x1, y1):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def poly(u, v, pts):
    """Even-odd point-in-polygon over all pixels at once (a few array ops per edge)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
        xs = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < xs)
    return inside


def segment(u, v, x0, y0, x1, y1, w):
    """Thick line: distance to the segment at most w."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (u - x0 - t * dx) ** 2 + (v - y0 - t * dy) ** 2 <= w * w


def regular(n, r, phase=-math.pi / 2):
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def star_pts(n, outer, inner):
    pts = []
    for k in range(2 * n):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / n
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


# ---- ID kinds ---------------------------------------------------------------------------------


def circle(u, v):
    return disk(u, v, 0, 0, 0.9)


def square(u, v):
    return rect(u, v, -0.78, -0.78, 0.78, 0.78)


def triangle(u, v):
    return poly(u, v, [(0, -0.9), (0.92, 0.75), (-0.92, 0.75)])


_STAR = star_pts(5, 0.98, 0.42)


def star(u, v):
    return poly(u, v, _STAR)


def heart(u, v):
    return disk(u, v, -0.42, -0.32, 0.48) | disk(u, v, 0.42, -0.32, 0.48) | poly(u, v, [(-0.88, -0.18), (0.88, -0.18), (0, 0.92)])


def cross(u, v):
    return rect(u, v, -0.27, -0.9, 0.27, 0.9) | rect(u, v, -0.9, -0.27, 0.9, 0.27)


def ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 0.9**2) & (r2 >= 0.52**2)


def diamond(u, v):
    return np.abs(u) / 0.68 + np.abs(v) / 0.95 <= 1.0


_HEX = regular(6, 0.92, 0.0)


def hexagon(u, v):
    return poly(u, v, _HEX)


def crescent(u, v):
    return disk(u, v, 0, 0, 0.9) & ~disk(u, v, 0.42, -0.12, 0.74)


def arrow(u, v):
    return rect(u, v, -0.92, -0.18, 0.15, 0.18) | poly(u, v, [(0.05, -0.62), (0.95, 0.0), (0.05, 0.62)])


def _house_body(u, v):
    return (rect(u, v, -0.68, -0.12, 0.68, 0.9) | poly(u, v, [(-0.92, -0.1), (0.0, -0.82), (0.92, -0.1)])) & ~rect(u, v, -0.17, 0.38, 0.17, 0.91)


def house(u, v):
    return _house_body(u, v)


def tree(u, v):
    return disk(u, v, 0, -0.3, 0.62) | rect(u, v, -0.15, 0.2, 0.15, 0.95)


def _cap(u, v):
    return disk(u, v, 0, 0.0, 0.92) & (v <= 0.0)


def mushroom(u, v):
    return _cap(u, v) | rect(u, v, -0.26, -0.05, 0.26, 0.85)


def cup(u, v):
    r2 = (u - 0.38) ** 2 + (v - 0.1) ** 2
    handle = (r2 <= 0.4**2) & (r2 >= 0.2**2) & (u >= 0.3)
    return rect(u, v, -0.62, -0.62, 0.38, 0.82) | handle


def _polar(u, v):
    return np.sqrt(u * u + v * v), np.arctan2(v, u)


def sun(u, v):
    r, th = _polar(u, v)
    return (r <= 0.48) | ((r >= 0.6) & (r <= 0.97) & (np.cos(8 * th) >= 0.7))


def flower(u, v):
    r, th = _polar(u, v)
    return r <= 0.38 + 0.55 * np.abs(np.cos(2.5 * (th + math.pi / 2)))


_HOURGLASS = [(-0.7, -0.9), (0.7, -0.9), (0.12, 0.0), (0.7, 0.9), (-0.7, 0.9), (-0.12, 0.0)]


def hourglass(u, v):
    return poly(u, v, _HOURGLASS)


def bell(u, v):
    return disk(u, v, 0, -0.38, 0.46) | poly(u, v, [(-0.46, -0.4), (0.46, -0.4), (0.82, 0.6), (-0.82, 0.6)]) | disk(u, v, 0, 0.74, 0.17)


def fish(u, v):
    return ellipse(u, v, -0.2, 0, 0.62, 0.4) | poly(u, v, [(0.3, 0.0), (0.92, -0.5), (0.92, 0.5)])


# ---- near-OOD kinds: one small detail away from an ID kind ------------------------------------


def oval(u, v):  # circle, squashed
    return ellipse(u, v, 0, 0, 0.92, 0.62)


def trapezoid(u, v):  # triangle with its top cut off
    return poly(u, v, [(-0.32, -0.62), (0.32, -0.62), (0.92, 0.75), (-0.92, 0.75)])


def spade(u, v):  # heart upside down, with a stem
    w = -v + 0.08
    top = disk(u, w, -0.4, -0.3, 0.44) | disk(u, w, 0.4, -0.3, 0.44) | poly(u, w, [(-0.83, -0.16), (0.83, -0.16), (0, 0.95)])
    return top | poly(u, v, [(0, 0.25), (0.3, 0.95), (-0.3, 0.95)])


def horseshoe(u, v):  # ring with a gap
    return ring(u, v) & ~((v > 0.25) & (np.abs(u) < 0.36))


def kite(u, v):  # diamond with a long tail
    return poly(u, v, [(0, -0.95), (0.66, -0.38), (0, 0.95), (-0.66, -0.38)])


_OCT = regular(8, 0.93, math.pi / 8)


def octagon(u, v):  # hexagon with two more sides
    return poly(u, v, _OCT)


def chapel(u, v):  # house with a cross on the roof
    return _house_body(u, v) | rect(u, v, -0.06, -1.12, 0.06, -0.75) | rect(u, v, -0.2, -1.03, 0.2, -0.92)


def lollipop(u, v):  # tree with a stick for a trunk
    return disk(u, v, 0, -0.3, 0.62) | rect(u, v, -0.05, 0.2, 0.05, 0.95)


def umbrella(u, v):  # mushroom with a thin hooked handle
    r2 = (u + 0.16) ** 2 + (v - 0.72) ** 2
    hook = (r2 <= 0.22**2) & (r2 >= 0.11**2) & (v >= 0.72)
    return _cap(u, v) | rect(u, v, -0.055, -0.05, 0.055, 0.74) | hook


def gear(u, v):  # sun whose rays are short thick teeth, with a hole
    r, th = _polar(u, v)
    return ((r <= 0.66) | ((r <= 0.92) & (np.cos(8 * th) >= 0.25))) & (r >= 0.22)


def bowtie(u, v):  # hourglass on its side
    return poly(v, u, _HOURGLASS)


def jar(u, v):  # cup without a handle, with a lid
    return rect(u, v, -0.52, -0.5, 0.52, 0.85) | rect(u, v, -0.62, -0.78, 0.62, -0.55)


# ---- far-OOD kinds ----------------------------------------------------------------------------


def ladder(u, v):
    rails = rect(u, v, -0.58, -0.95, -0.42, 0.95) | rect(u, v, 0.42, -0.95, 0.58, 0.95)
    rungs = (np.abs(u) <= 0.5) & (np.abs(((v + 0.95) % 0.42) - 0.21) <= 0.06)
    return rails | rungs


def key(u, v):
    r2 = (u + 0.55) ** 2 + v * v
    bow = (r2 <= 0.38**2) & (r2 >= 0.17**2)
    return bow | rect(u, v, -0.2, -0.09, 0.92, 0.09) | rect(u, v, 0.55, 0.0, 0.67, 0.38) | rect(u, v, 0.77, 0.0, 0.89, 0.3)


def lightning(u, v):
    return poly(u, v, [(0.25, -0.95), (-0.5, 0.12), (-0.05, 0.12), (-0.3, 0.95), (0.55, -0.22), (0.1, -0.22), (0.45, -0.95)])


def spiral(u, v):
    r, th = _polar(u, v)
    return (((r / 0.26) - th / (2 * math.pi)) % 1.0 < 0.45) & (r <= 0.92)


def boat(u, v):
    hull = poly(u, v, [(-0.92, 0.25), (0.92, 0.25), (0.56, 0.7), (-0.56, 0.7)])
    return hull | rect(u, v, -0.04, -0.9, 0.04, 0.25) | poly(u, v, [(0.09, -0.86), (0.09, 0.14), (0.72, 0.14)])


def bottle(u, v):
    return rect(u, v, -0.4, -0.15, 0.4, 0.92) | rect(u, v, -0.14, -0.9, 0.14, -0.15) | disk(u, v, 0, -0.15, 0.4)


def candle(u, v):
    return rect(u, v, -0.24, -0.3, 0.24, 0.92) | ellipse(u, v, 0, -0.62, 0.13, 0.26)


def hammer(u, v):
    return rect(u, v, -0.09, -0.5, 0.09, 0.95) | rect(u, v, -0.62, -0.88, 0.62, -0.45)


def chair(u, v):
    return (
        rect(u, v, -0.6, 0.0, 0.6, 0.16)
        | rect(u, v, -0.6, -0.92, -0.44, 0.0)
        | rect(u, v, -0.6, 0.16, -0.47, 0.92)
        | rect(u, v, 0.47, 0.16, 0.6, 0.92)
    )


def dumbbell(u, v):
    return rect(u, v, -0.6, -0.08, 0.6, 0.08) | rect(u, v, -0.92, -0.45, -0.55, 0.45) | rect(u, v, 0.55, -0.45, 0.92, 0.45)


def checkmark(u, v):
    return segment(u, v, -0.72, 0.0, -0.22, 0.58, 0.15) | segment(u, v, -0.22, 0.58, 0.8, -0.7, 0.15)


def envelope(u, v):
    body = rect(u, v, -0.92, -0.6, 0.92, 0.6)
    flap = segment(u, v, -0.92, -0.6, 0.0, 0.12, 0.06) | segment(u, v, 0.0, 0.12, 0.92, -0.6, 0.06)
    return body & ~flap


def flag(u, v):
    return rect(u, v, -0.75, -0.95, -0.64, 0.95) | rect(u, v, -0.64, -0.9, 0.82, -0.15)


def cloud(u, v):
    return disk(u, v, -0.45, 0.15, 0.38) | disk(u, v, 0.05, -0.12, 0.5) | disk(u, v, 0.5, 0.15, 0.36) | rect(u, v, -0.45, 0.15, 0.5, 0.53)


ID_KINDS: dict[str, Mask] = {
    f.__name__: f
    for f in (circle, square, triangle, star, heart, cross, ring, diamond, hexagon, crescent,
              arrow, house, tree, mushroom, cup, sun, flower, hourglass, bell, fish)
}

# near-OOD kind -> the ID kind it differs from by a small detail
NEAR_OF: dict[str, str] = {
    "oval": "circle", "trapezoid": "triangle", "spade": "heart", "horseshoe": "ring", "kite": "diamond",
    "octagon": "hexagon", "chapel": "house", "lollipop": "tree", "umbrella": "mushroom", "gear": "sun",
    "bowtie": "hourglass", "jar": "cup",
}
NEAR_KINDS: dict[str, Mask] = {name: globals()[name] for name in NEAR_OF}

FAR_KINDS: dict[str, Mask] = {
    f.__name__: f
    for f in (ladder, key, lightning, spiral, boat, bottle, candle, hammer, chair, dumbbell, checkmark,
              envelope, flag, cloud)
}

ALL_KINDS: dict[str, Mask] = {**ID_KINDS, **NEAR_KINDS, **FAR_KINDS}
