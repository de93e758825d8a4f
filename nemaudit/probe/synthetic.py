"""The embedded "concept world": a procedural probing dataset for Network Dissection.

Why it looks the way it does
----------------------------
Network Dissection labels a unit with the concept whose pixel labels best overlap (IoU) the
unit's top-η activation mask. At η = 0.005 a unit's masks cover about 0.5% of all probe
pixels, so a concept that covers a share ``f`` of all probe pixels can reach an IoU of at
most about ``0.005 / f``: a concept covering 20% of the pixels can never yield a detector at
IoU ≥ 0.04, however well the model has learnt it. Broden works because it has ~1,200 mostly
rare concepts. This world therefore has *many rare concepts* (158): most cover ≤ 2–3% of
the label-map pixels and appear in ≤ 10% of the images, like Broden's long tail.

The world, in Broden's six categories
-------------------------------------
- **scene** (image-level, 28 kinds): a scene image is a background layout of pixel-level
  *regions* (sky, sea, sand, road, floor, wall, ...) whose boundaries (horizon height,
  mountain peaks, skylines, dunes, treetops) vary per image. Regions are labelled in the
  *object* category, as in Broden (ADE20K's "sky", "floor" are objects). The big regions
  are split finely (clear, hazy, cloudy, sunset and night skies, drawn per image as the
  weather varies; sea and lake water; wild grass and mown lawn; plain wall and wallpaper),
  so that no single region concept covers more than ~9% of the probe's pixels.
- **object** (25 regions + 25 foreground things): 1–3 objects per scene image (house, car,
  tree, boat, person, bicycle, sofa, lamp, ...), 15–45% of the image side, placed in their
  zone (on the ground, in the sky, on the water, on the wall), drawn far-to-near.
- **part**: objects are drawn as parts with distinct shapes and colours (a car is a
  car-body, a windshield, a headlight and wheels; a house is a facade, a roof, a door,
  windows and maybe a chimney). Part names may be shared by objects (a bicycle and a car
  both have wheels; lamp-posts, umbrellas and signposts have poles).
- **material** (12): labelled where meaningful, each drawn with a recognisable local
  pattern (brick = offset rows with mortar lines, wood = grain and plank seams, tile =
  square grid with grout, fabric = fine weave, metal = sheen band, glass = tint and
  diagonal reflections, foliage = leafy dapples, ...).
- **color** (11): labelled only on objects and parts, whose colours are drawn from the
  palette (with jitter); regions carry no colour label. So each colour covers < 1% of the
  pixels, although the common ones (brown trunks, green crowns) appear in many images.
- **texture** (image-level, 12 kinds): ~18% of the images are full-frame texture images
  (striped, dotted, honeycombed, ...; random colours, scales and orientations), as Broden's
  DTD images: no scene, no pixel labels, the texture as the image-level label.

Label maps are a fixed stack of four layers ``[object, part, material, color]`` (see
``LAYERS``); each pixel carries at most one label per layer, 0 where none. Everything is
drawn at image resolution with vectorised numpy, and the label maps are subsampled at the
centre of each segmentation cell, so labels stay aligned with the pixels.

Every item is a pure function of ``(seed, index)`` (``np.random.default_rng([seed, i])``),
generated lazily in ``__getitem__``: any subset can be generated in any order, in any
process, with bounded memory. ``target`` is a class index for a classification head: the
scene kind for scene images, ``len(SCENES) + texture kind`` for texture images
(``class_names`` lists both).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem, check_concepts

__all__ = [
    "COLORS",
    "LAYERS",
    "MATERIALS",
    "OBJECTS",
    "PARTS",
    "REGIONS",
    "SCENES",
    "TEXTURES",
    "SyntheticProbe",
    "concept_stats",
]

#: Bumped whenever the drawing changes, so that cached baselines keyed on the probe's
#: fingerprint are invalidated.
WORLD_VERSION = 2

#: The label-map stack: one layer per pixel-level category.
LAYERS: tuple[str, ...] = ("object", "part", "material", "color")

#: Share of the images that are full-frame texture images (Broden's DTD part).
TEXTURE_FRACTION = 0.18

_F = np.float32

# ----------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.98, 0.55, 0.10),
    "yellow": (0.97, 0.88, 0.15),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.28, 0.85),
    "purple": (0.50, 0.20, 0.70),
    "pink": (0.98, 0.58, 0.75),
    "brown": (0.50, 0.30, 0.12),
    "black": (0.08, 0.08, 0.09),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.52, 0.52, 0.54),
}

#: Background regions (scored in the "object" category, as in Broden), with base colours.
_REGION_RGB: dict[str, tuple[float, float, float]] = {
    "sky": (0.42, 0.62, 0.95),
    "night-sky": (0.04, 0.06, 0.20),
    "sunset-sky": (0.55, 0.25, 0.50),
    "cloudy-sky": (0.68, 0.70, 0.74),
    "hazy-sky": (0.76, 0.80, 0.84),
    "sea": (0.08, 0.25, 0.55),
    "water": (0.22, 0.52, 0.58),
    "sand": (0.90, 0.80, 0.55),
    "snow": (0.94, 0.96, 1.00),
    "grass": (0.38, 0.58, 0.16),
    "lawn": (0.22, 0.66, 0.22),
    "field": (0.86, 0.70, 0.25),
    "ground": (0.50, 0.37, 0.24),
    "mountain": (0.42, 0.42, 0.52),
    "cliff": (0.72, 0.40, 0.24),
    "road": (0.28, 0.28, 0.30),
    "sidewalk": (0.70, 0.69, 0.66),
    "building": (0.62, 0.56, 0.50),
    "treeline": (0.12, 0.34, 0.14),
    "dock": (0.55, 0.38, 0.20),
    "wall": (0.85, 0.80, 0.68),
    "wallpaper": (0.85, 0.80, 0.68),
    "floor": (0.55, 0.40, 0.25),
    "ceiling": (0.92, 0.92, 0.89),
    "carpet": (0.60, 0.15, 0.15),
}
REGIONS: tuple[str, ...] = tuple(_REGION_RGB)

MATERIALS: tuple[str, ...] = ("wood", "metal", "glass", "brick", "fabric", "stone",
                              "plastic", "foliage", "rubber", "skin", "tile", "ceramic")

TEXTURES: tuple[str, ...] = ("striped", "banded", "dotted", "checkered", "zigzagged", "grid",
                             "cracked", "honeycombed", "spiralled", "wavy", "veined", "bubbly")

# ----------------------------------------------------------------------------------------
# Pixels, canvas and materials
# ----------------------------------------------------------------------------------------


class _Px(NamedTuple):
    """The pixels being painted: normalised image coordinates and per-pixel noise."""

    y: np.ndarray  # (k,) in [0, 1], down
    x: np.ndarray  # (k,) in [0, 1], right
    nz: np.ndarray  # (k,) uniform [0, 1) per-pixel noise, fixed for the image


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A cheap deterministic hash of two integer-valued arrays into [0, 1)."""
    return _frac(np.sin(a * 12.9898 + b * 78.233) * 43758.547)


def _shade(base: np.ndarray, m: np.ndarray) -> np.ndarray:
    return base[None, :] * m[:, None]


def _mix(a: np.ndarray, b: np.ndarray | Sequence[float], t: np.ndarray) -> np.ndarray:
    """Per-pixel blend from colour ``a`` (3,) to colour ``b`` (3,) by ``t`` (k,)."""
    a = np.asarray(a, _F)
    b = np.asarray(b, _F)
    return a[None, :] + (b - a)[None, :] * t[:, None]


_TWO_PI = _F(2 * math.pi)


def _mat_wood(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    vertical = rng.random() < 0.3
    t, n = (p.x, p.y) if vertical else (p.y, p.x)
    ph = _F(rng.random())
    grain = np.sin(_TWO_PI * (t * 30 + 0.7 * np.sin(_TWO_PI * (n * 2.5 + ph))))
    m = 0.86 + 0.12 * grain + 0.06 * (p.nz - 0.5)
    seam = _frac(t * 9 + ph) < 0.07
    m = np.where(seam, m * 0.55, m)
    return _shade(base, m)


def _mat_metal(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0.0, math.pi)
    n = p.x * _F(math.cos(a)) + p.y * _F(math.sin(a))
    d = (_frac(n * 3.0 + _F(rng.random())) - 0.5) / 0.13
    peak = np.exp(-d * d)
    return _shade(base, 0.72 + 0.35 * peak) + (0.22 * peak)[:, None]


def _mat_glass(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    streak = _frac((p.x + p.y) * 7.0 + _F(rng.random())) < 0.14
    tint = base * 0.85 + np.array([0.03, 0.06, 0.10], _F)
    out = np.broadcast_to(tint, (p.y.size, 3)).copy()
    out[streak] = out[streak] * 0.55 + 0.45
    return out


def _mat_brick(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    h = _F(0.05)
    rows = p.y / h
    row = np.floor(rows)
    off = (row % 2) * 0.5
    cols = p.x / (2 * h) + off
    col = np.floor(cols)
    mortar = (_frac(rows) < 0.2) | (_frac(cols) < 0.1)
    m = 0.82 + 0.2 * _hash2(row, col) + 0.05 * (p.nz - 0.5)
    out = _shade(base, m)
    out[mortar] = np.array([0.80, 0.78, 0.74], _F)
    return out


def _mat_tile(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    q = _F(rng.uniform(0.06, 0.09))
    gx, gy = p.x / q, p.y / q
    grout = (_frac(gx) < 0.09) | (_frac(gy) < 0.09)
    alt = (np.floor(gx) + np.floor(gy)) % 2
    out = _shade(base, 0.95 + 0.07 * alt)
    lum = float(base.mean())
    out[grout] = 0.3 if lum > 0.55 else 0.9
    return out


def _mat_fabric(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    k = _TWO_PI / _F(0.03)
    weave = np.sign(np.sin(p.x * k) * np.sin(p.y * k))
    fold = np.sin(_TWO_PI * (p.x * 3 + p.y * 1.5 + _F(rng.random())))
    return _shade(base, 0.88 + 0.09 * weave + 0.06 * fold)


def _mat_stone(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    f = rng.uniform(6, 14, 3).astype(_F)
    ph = rng.random(3).astype(_F)
    blot = (np.sin(_TWO_PI * (p.x * f[0] + p.y * f[1] * 0.5 + ph[0]))
            + np.sin(_TWO_PI * (p.y * f[1] - p.x * f[2] * 0.5 + ph[1]))
            + np.sin(_TWO_PI * ((p.x + p.y) * f[2] + ph[2])))
    return _shade(base, 0.85 + 0.07 * blot + 0.22 * (p.nz - 0.5))


def _mat_plastic(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    g = 0.95 + 0.05 * np.sin(_TWO_PI * ((p.x + p.y) * 2 + _F(rng.random())))
    return _shade(base, g)


def _mat_foliage(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    ph = rng.random(2).astype(_F)
    a = 0.5 + 0.5 * np.sin(_TWO_PI * (p.x * 28 + 0.35 * np.sin(_TWO_PI * (p.y * 9 + ph[0]))))
    b = 0.5 + 0.5 * np.sin(_TWO_PI * (p.y * 28 + 0.35 * np.sin(_TWO_PI * (p.x * 9 + ph[1]))))
    return _shade(base, 0.6 + 0.5 * a * b + 0.15 * (p.nz - 0.5))


def _mat_rubber(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    return _shade(base, 0.95 + 0.1 * (p.nz - 0.5))


def _mat_skin(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    return _shade(base, 1.0 - 0.06 * p.y + 0.02 * (p.nz - 0.5))


def _mat_ceramic(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    spec = _frac((p.x - p.y * 0.5) * 5 + _F(rng.random())) < 0.08
    out = _shade(base, 1.0 - 0.04 * (p.nz - 0.5))
    out[spec] = out[spec] * 0.4 + 0.6
    return out


def _mat_none(base: np.ndarray, p: _Px, rng: np.random.Generator) -> np.ndarray:
    return _shade(base, 1.0 + 0.04 * (p.nz - 0.5))


_MaterialFn = Callable[[np.ndarray, _Px, np.random.Generator], np.ndarray]
_MATERIAL_FNS: dict[str | None, _MaterialFn] = {
    "wood": _mat_wood, "metal": _mat_metal, "glass": _mat_glass, "brick": _mat_brick,
    "fabric": _mat_fabric, "stone": _mat_stone, "plastic": _mat_plastic,
    "foliage": _mat_foliage, "rubber": _mat_rubber, "skin": _mat_skin, "tile": _mat_tile,
    "ceramic": _mat_ceramic, None: _mat_none,
}
assert set(_MATERIAL_FNS) - {None} == set(MATERIALS)

_SKIN = [(0.96, 0.80, 0.66), (0.84, 0.63, 0.47), (0.60, 0.41, 0.27), (0.38, 0.26, 0.17)]
_GLASS_BLUE = (0.62, 0.80, 0.93)
_PASTELS = [(0.88, 0.83, 0.70), (0.75, 0.85, 0.92), (0.80, 0.88, 0.75), (0.92, 0.80, 0.78),
            (0.86, 0.86, 0.84), (0.93, 0.88, 0.62)]


class _Canvas:
    """An image being drawn: RGB at image resolution plus the four label layers."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.coord = ((np.arange(size, dtype=_F) + _F(0.5)) / _F(size)).astype(_F)
        self.img = np.zeros((size, size, 3), _F)
        self.lab = np.zeros((size, size, len(LAYERS)), np.int64)
        self.noise = rng.random((size, size), dtype=_F)

    def colour(self, name: str) -> np.ndarray:
        jitter = self.rng.uniform(-0.05, 0.05, 3)
        return np.clip(np.asarray(COLORS[name]) + jitter, 0.0, 1.0).astype(_F)

    def jitter(self, rgb: Sequence[float], amount: float = 0.06) -> np.ndarray:
        j = self.rng.uniform(-amount, amount, 3)
        return np.clip(np.asarray(rgb) + j, 0.0, 1.0).astype(_F)

    def paint(self, y0: int, x0: int, mask: np.ndarray,
              colour_fn: Callable[[_Px], np.ndarray], labels: tuple[int, int, int, int]) -> None:
        ii, jj = np.nonzero(mask)
        if ii.size == 0:
            return
        if y0:
            ii += y0
        if x0:
            jj += x0
        px = _Px(self.coord[ii], self.coord[jj], self.noise[ii, jj])
        self.img[ii, jj] = colour_fn(px)
        self.lab[ii, jj] = labels

    def paint_material(self, y0: int, x0: int, mask: np.ndarray, base: np.ndarray,
                       material: str | None, labels: tuple[int, int, int, int]) -> None:
        fn = _MATERIAL_FNS[material]
        self.paint(y0, x0, mask, lambda px: fn(base, px, self.rng), labels)


# ----------------------------------------------------------------------------------------
# Objects and parts
# ----------------------------------------------------------------------------------------


class _Obj:
    """Drawing context of one object: local coordinates ``u`` (right, flipped at random)
    and ``v`` (up from the object's base), both in units of the object's size."""

    def __init__(self, cv: _Canvas, oid: int, cx: float, base: float, s: float, flip: int,
                 crop: tuple[int, int, int, int]) -> None:
        self.cv = cv
        self.rng = cv.rng
        self.oid = oid
        self.y0, y1, self.x0, x1 = crop
        self.u = ((cv.coord[self.x0:x1] - _F(cx)) * _F(flip / s))[None, :]
        self.v = ((_F(base) - cv.coord[self.y0:y1]) * _F(1.0 / s))[:, None]

    # -- shapes (boolean masks over the crop) --
    def rect(self, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        return ((self.u >= u0) & (self.u <= u1)) & ((self.v >= v0) & (self.v <= v1))

    def ell(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0

    def poly(self, pts: Sequence[tuple[float, float]]) -> np.ndarray:
        """Convex polygon, vertices in either winding order."""
        pos = neg = None
        n = len(pts)
        for k in range(n):
            (a, b), (c, d) = pts[k], pts[(k + 1) % n]
            cross = (c - a) * (self.v - b) - (d - b) * (self.u - a)
            p, q = cross >= 0, cross <= 0
            pos = p if pos is None else pos & p
            neg = q if neg is None else neg & q
        return pos | neg  # type: ignore[operator]

    def seg(self, u0: float, v0: float, u1: float, v1: float, width: float) -> np.ndarray:
        du, dv = u1 - u0, v1 - v0
        t = np.clip(((self.u - u0) * du + (self.v - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
        eu = self.u - u0 - t * du
        ev = self.v - v0 - t * dv
        return eu * eu + ev * ev <= (width / 2) ** 2

    def polar(self, cu: float, cv: float) -> tuple[np.ndarray, np.ndarray]:
        du, dv = self.u - cu, self.v - cv
        return np.sqrt(du * du + dv * dv), np.arctan2(dv, du)

    # -- painting --
    def paint(self, mask: np.ndarray, part: str | None = None, colour: str | None = None,
              material: str | None = None, rgb: Sequence[float] | np.ndarray | None = None
              ) -> None:
        """Paint ``mask`` with a palette ``colour`` (labelled) or a raw ``rgb`` (unlabelled),
        rendered with ``material``'s pattern."""
        if rgb is not None:
            base = np.asarray(rgb, _F)
        elif colour is not None:
            base = self.cv.colour(colour)
        else:  # pragma: no cover - programming error
            raise ValueError("paint needs a colour or an rgb")
        labels = (self.oid, _ID[part] if part else 0, _ID[material] if material else 0,
                  _ID[colour] if colour else 0)
        self.cv.paint_material(self.y0, self.x0, mask, base, material, labels)

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]


_ANY = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
        "white", "grey")


def _house(o: _Obj) -> None:
    facade = o.pick(("white", "yellow", "pink", "grey", "red", "brown", "blue"))
    fmat = "brick" if facade in ("red", "brown") and o.rng.random() < 0.7 else (
        "wood" if o.rng.random() < 0.3 else None)
    if o.rng.random() < 0.6:
        o.paint(o.rect(0.18, 0.3, 0.55, 0.98), "chimney", o.pick(("red", "brown", "grey")),
                "brick")
    o.paint(o.rect(-0.42, 0.42, 0.0, 0.58), "facade", facade, fmat)
    roof = o.pick(("red", "brown", "black", "grey", "blue", "orange"))
    rmat = "tile" if o.rng.random() < 0.4 else None
    if o.rng.random() < 0.5:
        o.paint(o.poly([(-0.5, 0.56), (0.5, 0.56), (0.0, 0.95)]), "roof", roof, rmat)
    else:
        o.paint(o.poly([(-0.5, 0.56), (0.5, 0.56), (0.32, 0.86), (-0.32, 0.86)]), "roof",
                roof, rmat)
    door = o.pick(("brown", "red", "blue", "green", "black", "white"))
    dc = float(o.rng.uniform(-0.04, 0.04))
    o.paint(o.rect(dc - 0.08, dc + 0.08, 0.0, 0.3), "door", door, "wood")
    win = o.rect(-0.35, -0.16, 0.26, 0.44) | o.rect(0.16, 0.35, 0.26, 0.44)
    o.paint(win, "window", material="glass", rgb=o.cv.jitter(_GLASS_BLUE, 0.05))
    bars = win & ((np.abs(np.abs(o.u) - 0.255) < 0.012) | (np.abs(o.v - 0.35) < 0.012))
    o.paint(bars, "window", rgb=(0.95, 0.95, 0.93))


def _car(o: _Obj) -> None:
    body_col = o.pick(("red", "blue", "white", "black", "yellow", "grey", "green", "orange",
                       "purple"))
    body = (o.rect(-0.47, 0.47, 0.07, 0.27) | o.ell(0.47, 0.17, 0.04, 0.1)
            | o.ell(-0.47, 0.17, 0.04, 0.1)
            | o.poly([(-0.32, 0.26), (0.3, 0.26), (0.16, 0.46), (-0.23, 0.46)]))
    o.paint(body, "car-body", body_col, "metal")
    win = o.poly([(-0.27, 0.29), (0.25, 0.29), (0.14, 0.43), (-0.2, 0.43)]) & (
        np.abs(o.u + 0.01) > 0.025)
    o.paint(win, "windshield", material="glass", rgb=o.cv.jitter((0.55, 0.68, 0.78), 0.04))
    o.paint(o.ell(0.45, 0.2, 0.035, 0.035), "headlight", o.pick(("yellow", "white")))
    for cu in (-0.29, 0.29):
        o.paint(o.ell(cu, 0.1, 0.1, 0.1), "wheel", "black", "rubber")
        o.paint(o.ell(cu, 0.1, 0.045, 0.045), "wheel", "grey", "metal")


def _tree(o: _Obj) -> None:
    crown = "green" if o.rng.random() < 0.75 else o.pick(("orange", "yellow", "red"))
    if o.rng.random() < 0.6:
        o.paint(o.rect(-0.05, 0.05, 0.0, 0.45), "trunk", "brown", "wood")
        shape = (o.ell(0.0, 0.68, 0.3, 0.27) | o.ell(-0.17, 0.55, 0.17, 0.15)
                 | o.ell(0.17, 0.55, 0.17, 0.15))
    else:
        crown = "green"
        o.paint(o.rect(-0.04, 0.04, 0.0, 0.25), "trunk", "brown", "wood")
        shape = (o.poly([(-0.3, 0.2), (0.3, 0.2), (0.0, 0.65)])
                 | o.poly([(-0.24, 0.45), (0.24, 0.45), (0.0, 0.97)]))
    o.paint(shape, "crown", crown, "foliage")


def _boat(o: _Obj) -> None:
    hull_mat = "wood" if o.rng.random() < 0.5 else "metal"
    hull = o.pick(("brown", "red", "white", "blue", "black")) if hull_mat == "wood" else \
        o.pick(("red", "white", "blue", "grey", "yellow", "black"))
    o.paint(o.poly([(-0.5, 0.22), (0.5, 0.22), (0.38, 0.0), (-0.4, 0.0)]), "hull", hull,
            hull_mat)
    o.paint(o.rect(-0.016, 0.016, 0.22, 0.95), "mast", "brown", "wood")
    sail = o.pick(("white", "red", "yellow", "orange", "blue", "white"))
    o.paint(o.poly([(0.035, 0.28), (0.035, 0.92), (0.42, 0.3)]), "sail", sail, "fabric")
    if o.rng.random() < 0.5:
        o.paint(o.poly([(-0.035, 0.3), (-0.035, 0.82), (-0.3, 0.3)]), "sail", sail, "fabric")


def _flower(o: _Obj) -> None:
    o.paint(o.rect(-0.025, 0.025, 0.0, 0.66), "stem", "green")
    o.paint(o.seg(0.02, 0.28, 0.16, 0.38, 0.07), "leaf", "green", "foliage")
    r, th = o.polar(0.0, 0.72)
    k = int(o.rng.integers(5, 8))
    petal = r < 0.26 * (0.5 + 0.5 * np.abs(np.cos(k * th / 2)))
    colour = o.pick(("red", "yellow", "pink", "purple", "white", "orange", "blue"))
    o.paint(petal, "petal", colour)
    centre = "brown" if colour in ("yellow", "orange") else o.pick(("yellow", "orange"))
    o.paint(r < 0.075, "flower-center", centre)


def _lamp_post(o: _Obj) -> None:
    o.paint(o.rect(-0.025, 0.025, 0.0, 0.86) | o.rect(-0.06, 0.06, 0.0, 0.05), "pole",
            o.pick(("black", "grey", "green")), "metal")
    head = o.poly([(-0.09, 0.84), (0.09, 0.84), (0.05, 0.98), (-0.05, 0.98)])
    o.paint(head, "lamp-head", o.pick(("yellow", "white")))


def _person(o: _Obj) -> None:
    skin = o.cv.jitter(_SKIN[int(o.rng.integers(len(_SKIN)))], 0.03)
    stride = float(o.rng.uniform(0.0, 0.06))
    legs = (o.poly([(-0.09, 0.45), (-0.015, 0.45), (-0.02 - stride, 0.0), (-0.095 - stride, 0.0)])
            | o.poly([(0.015, 0.45), (0.09, 0.45), (0.095 + stride, 0.0), (0.02 + stride, 0.0)]))
    o.paint(legs, "leg", o.pick(("blue", "black", "brown", "grey")), "fabric")
    arms = o.rect(-0.18, -0.12, 0.42, 0.75) | o.rect(0.12, 0.18, 0.42, 0.75)
    o.paint(arms, "arm", material="skin", rgb=skin)
    torso = o.rect(-0.12, 0.12, 0.43, 0.76) | o.ell(0.0, 0.74, 0.12, 0.05)
    o.paint(torso, "torso", o.pick(_ANY), "fabric")
    o.paint(o.ell(0.0, 0.88, 0.085, 0.1), "head", material="skin", rgb=skin)


def _bicycle(o: _Obj) -> None:
    for cu in (-0.3, 0.3):
        r, _ = o.polar(cu, 0.19)
        o.paint((r <= 0.19) & (r >= 0.15), "wheel", "black", "rubber")
        o.paint(r <= 0.03, "wheel", "grey", "metal")
    rr, bb, ss, hh, ff = (-0.3, 0.19), (0.0, 0.19), (-0.08, 0.48), (0.22, 0.48), (0.3, 0.19)
    w = 0.035
    frame = (o.seg(*rr, *ss, w) | o.seg(*rr, *bb, w) | o.seg(*bb, *ss, w) | o.seg(*ss, *hh, w)
             | o.seg(*bb, *hh, w) | o.seg(*hh, *ff, w) | o.seg(0.22, 0.48, 0.19, 0.57, w)
             | o.seg(0.19, 0.57, 0.12, 0.58, w))
    o.paint(frame, "bike-frame", o.pick(("red", "blue", "black", "green", "yellow", "white",
                                         "orange", "purple")), "metal")
    o.paint(o.ell(-0.1, 0.52, 0.07, 0.025), "saddle", o.pick(("black", "brown")), "plastic")


def _umbrella(o: _Obj) -> None:
    o.paint(o.rect(-0.015, 0.015, 0.0, 0.8), "pole", o.pick(("white", "grey")), "metal")
    r, th = o.polar(0.0, 0.68)
    dome = o.ell(0.0, 0.68, 0.5, 0.28) & (o.v >= 0.68)
    n = int(o.rng.integers(4, 8))
    stripe = (np.floor(th / math.pi * n) % 2) == 0
    a, b = o.rng.choice(["red", "blue", "yellow", "white", "green", "orange", "pink"], 2,
                        replace=False)
    o.paint(dome & stripe, "canopy", str(a), "fabric")
    o.paint(dome & ~stripe, "canopy", str(b), "fabric")


def _bench(o: _Obj) -> None:
    o.paint(o.rect(-0.45, -0.39, 0.0, 0.26) | o.rect(0.39, 0.45, 0.0, 0.26), "furniture-leg",
            o.pick(("black", "grey")), "metal")
    colour = o.pick(("brown", "green", "red", "brown"))
    o.paint(o.rect(-0.5, 0.5, 0.22, 0.3), "seat", colour, "wood")
    back = (o.rect(-0.5, 0.5, 0.38, 0.46) | o.rect(-0.5, 0.5, 0.52, 0.6)
            | o.rect(-0.44, -0.4, 0.3, 0.6) | o.rect(0.4, 0.44, 0.3, 0.6))
    o.paint(back, "backrest", colour, "wood")


def _signpost(o: _Obj) -> None:
    o.paint(o.rect(-0.02, 0.02, 0.0, 0.72), "pole", "grey", "metal")
    shape = int(o.rng.integers(4))
    if shape == 0:
        outer, inner = o.ell(0.0, 0.82, 0.16, 0.16), o.ell(0.0, 0.82, 0.1, 0.1)
    elif shape == 1:
        outer, inner = o.rect(-0.16, 0.16, 0.66, 0.98), o.rect(-0.1, 0.1, 0.72, 0.92)
    elif shape == 2:
        outer = o.poly([(0.0, 0.64), (0.18, 0.82), (0.0, 1.0), (-0.18, 0.82)])
        inner = o.poly([(0.0, 0.7), (0.12, 0.82), (0.0, 0.94), (-0.12, 0.82)])
    else:
        outer = o.poly([(-0.19, 0.66), (0.19, 0.66), (0.0, 0.99)])
        inner = o.poly([(-0.11, 0.7), (0.11, 0.7), (0.0, 0.89)])
    colour = o.pick(("red", "blue", "green", "yellow"))
    o.paint(outer, "signboard", colour, "metal")
    o.paint(inner, "signboard", "white", "metal")


def _fence(o: _Obj) -> None:
    colour = o.pick(("white", "brown", "white", "grey"))
    n = int(o.rng.integers(5, 9))
    f = _frac((o.u + 0.5) * n)
    inside = np.abs(o.u) <= 0.5
    tip = 0.08 * (1.0 - np.abs(f - 0.2) / 0.2)
    posts = inside & (f < 0.4) & (o.v >= 0) & (o.v <= 0.36 + tip)
    rails = inside & (((o.v >= 0.1) & (o.v <= 0.15)) | ((o.v >= 0.26) & (o.v <= 0.31)))
    o.paint(rails, "rail", colour, "wood")
    o.paint(posts, "post", colour, "wood")


def _sun(o: _Obj) -> None:
    o.paint(o.ell(0.0, 0.5, 0.5, 0.5), None, o.pick(("yellow", "orange", "yellow")))


def _moon(o: _Obj) -> None:
    disc = o.ell(0.0, 0.5, 0.5, 0.5)
    if o.rng.random() < 0.6:
        disc &= ~o.ell(0.25, 0.6, 0.45, 0.45)
    o.paint(disc, None, o.pick(("white", "yellow")))


def _cloud(o: _Obj) -> None:
    shape = (o.ell(0.0, 0.22, 0.5, 0.17) | o.ell(-0.17, 0.38, 0.2, 0.2)
             | o.ell(0.12, 0.44, 0.26, 0.26))
    o.paint(shape, None, o.pick(("white", "white", "grey")))


def _ball(o: _Obj) -> None:
    a, b = o.rng.choice(["red", "blue", "yellow", "white", "green", "orange", "purple",
                         "pink"], 2, replace=False)
    disc = o.ell(0.0, 0.5, 0.5, 0.5)
    band = disc & (np.abs(o.u * 0.6 + (o.v - 0.5) * 0.8) < 0.12)
    o.paint(disc & ~band, None, str(a), "plastic")
    o.paint(band, None, str(b), "plastic")


def _rock(o: _Obj) -> None:
    r, th = o.polar(0.0, 0.32)
    ph = o.rng.uniform(0, 2 * math.pi, 2)
    rad = 0.42 * (0.8 + 0.12 * np.sin(3 * th + ph[0]) + 0.08 * np.sin(5 * th + ph[1]))
    o.paint((r < rad) & (o.v >= 0), None, o.pick(("grey", "brown", "grey")), "stone")


def _table(o: _Obj) -> None:
    mat = "wood" if o.rng.random() < 0.6 else o.pick(("plastic", "metal"))
    colour = "brown" if mat == "wood" else o.pick(("white", "black", "grey", "red", "blue"))
    o.paint(o.rect(-0.3, -0.25, 0.08, 0.52) | o.rect(0.25, 0.3, 0.08, 0.52), "furniture-leg",
            colour, mat)
    o.paint(o.rect(-0.44, -0.38, 0.0, 0.52) | o.rect(0.38, 0.44, 0.0, 0.52), "furniture-leg",
            colour, mat)
    o.paint(o.poly([(-0.5, 0.5), (0.5, 0.5), (0.42, 0.6), (-0.42, 0.6)]), "tabletop", colour,
            mat)


def _chair(o: _Obj) -> None:
    mat = o.pick(("wood", "plastic", "metal"))
    colour = "brown" if mat == "wood" else o.pick(("red", "blue", "green", "white", "black",
                                                   "yellow", "grey", "orange"))
    o.paint(o.rect(-0.3, -0.24, 0.0, 0.42) | o.rect(0.24, 0.3, 0.0, 0.42), "furniture-leg",
            colour, mat)
    o.paint(o.rect(-0.33, 0.33, 0.4, 0.48), "seat", colour, mat)
    back = (o.rect(-0.3, 0.3, 0.66, 0.95) | o.rect(-0.33, -0.26, 0.48, 0.95)
            | o.rect(0.26, 0.33, 0.48, 0.95))
    o.paint(back, "backrest", colour, mat)


def _sofa(o: _Obj) -> None:
    colour = o.pick(("red", "blue", "green", "grey", "brown", "purple", "orange", "black"))
    o.paint(o.rect(-0.46, -0.4, 0.0, 0.08) | o.rect(0.4, 0.46, 0.0, 0.08), "furniture-leg",
            "brown", "wood")
    o.paint(o.rect(-0.46, 0.46, 0.3, 0.6) | o.ell(0.0, 0.6, 0.46, 0.05), "backrest", colour,
            "fabric")
    seat = o.rect(-0.42, 0.42, 0.06, 0.3)
    o.paint(seat, "seat", colour, "fabric")
    o.paint(seat & (np.abs(o.u) < 0.012), "seat", rgb=COLORS["black"])
    arms = (o.rect(-0.5, -0.38, 0.06, 0.4) | o.ell(-0.44, 0.4, 0.06, 0.05)
            | o.rect(0.38, 0.5, 0.06, 0.4) | o.ell(0.44, 0.4, 0.06, 0.05))
    o.paint(arms, "armrest", colour, "fabric")


def _bed(o: _Obj) -> None:
    wood = o.pick(("brown", "brown", "white", "black"))
    o.paint(o.rect(-0.42, 0.5, 0.0, 0.17), None, wood, "wood")  # bed frame: object only
    o.paint(o.rect(-0.5, -0.42, 0.0, 0.62) | o.ell(-0.46, 0.62, 0.04, 0.05), "headboard", wood,
            "wood")
    o.paint(o.rect(-0.42, 0.5, 0.16, 0.32), "blanket", o.pick(_ANY[:8] + ("white",)), "fabric")
    o.paint(o.ell(-0.29, 0.37, 0.11, 0.06), "pillow", o.pick(("white", "white", "yellow",
                                                              "pink")), "fabric")


def _lamp(o: _Obj) -> None:
    o.paint(o.rect(-0.02, 0.02, 0.0, 0.7) | o.ell(0.0, 0.02, 0.12, 0.03), "lamp-base",
            o.pick(("grey", "black", "white")), "metal")
    shade = o.poly([(-0.17, 0.68), (0.17, 0.68), (0.1, 0.93), (-0.1, 0.93)])
    o.paint(shade, "lampshade", o.pick(("white", "yellow", "red", "orange", "green", "blue",
                                        "pink")), "fabric")


def _television(o: _Obj) -> None:
    o.paint(o.rect(-0.5, 0.5, 0.0, 0.6), "tv-frame", o.pick(("black", "grey", "white")),
            "plastic")
    o.paint(o.rect(-0.44, 0.44, 0.06, 0.54), "screen", o.pick(("black", "blue")), "glass")


def _painting(o: _Obj) -> None:
    o.paint(o.rect(-0.5, 0.5, 0.0, 0.72), "picture-frame",
            o.pick(("brown", "yellow", "black", "white")), "wood")
    canvas = o.rect(-0.41, 0.41, 0.09, 0.63)
    o.paint(canvas, "canvas", rgb=o.cv.jitter((0.7, 0.82, 0.95), 0.2))
    h = float(o.rng.uniform(0.25, 0.45))
    o.paint(canvas & (o.v < h), "canvas", rgb=o.cv.jitter((0.3, 0.55, 0.3), 0.25))
    cu, cv = o.rng.uniform(-0.25, 0.25), o.rng.uniform(0.4, 0.55)
    o.paint(canvas & o.ell(cu, cv, 0.08, 0.08), "canvas", rgb=o.cv.jitter((0.9, 0.7, 0.3), 0.2))


def _potted_plant(o: _Obj) -> None:
    o.paint(o.poly([(-0.22, 0.35), (0.22, 0.35), (0.15, 0.0), (-0.15, 0.0)]), "pot",
            o.pick(("orange", "brown", "white", "red", "blue", "grey")), "ceramic")
    leaves = None
    for a in o.rng.uniform(0.25 * math.pi, 0.75 * math.pi, int(o.rng.integers(4, 7))):
        ln = float(o.rng.uniform(0.35, 0.6))
        m = o.seg(0.0, 0.36, ln * math.cos(a) * 0.9, 0.36 + ln * math.sin(a), 0.13)
        leaves = m if leaves is None else leaves | m
    o.paint(leaves, "leaf", "green", "foliage")  # type: ignore[arg-type]


@dataclass(frozen=True)
class _ObjSpec:
    draw: Callable[[_Obj], None]
    zone: str  # "ground", "sky", "water" or "wall"
    size: tuple[float, float]  # of the image side
    extent: tuple[float, float]  # (half width, height) in units of the object's size
    parts: tuple[str, ...] = ()


_OBJECT_SPECS: dict[str, _ObjSpec] = {
    "house": _ObjSpec(_house, "ground", (0.3, 0.45), (0.5, 1.0),
                      ("facade", "roof", "chimney", "door", "window")),
    "car": _ObjSpec(_car, "ground", (0.25, 0.45), (0.5, 0.5),
                    ("car-body", "windshield", "headlight", "wheel")),
    "tree": _ObjSpec(_tree, "ground", (0.28, 0.48), (0.35, 1.0), ("trunk", "crown")),
    "boat": _ObjSpec(_boat, "water", (0.2, 0.4), (0.5, 1.0), ("hull", "mast", "sail")),
    "flower": _ObjSpec(_flower, "ground", (0.14, 0.26), (0.3, 1.0),
                       ("stem", "leaf", "petal", "flower-center")),
    "lamp-post": _ObjSpec(_lamp_post, "ground", (0.35, 0.55), (0.1, 1.0),
                          ("pole", "lamp-head")),
    "person": _ObjSpec(_person, "ground", (0.25, 0.45), (0.2, 1.0),
                       ("head", "torso", "arm", "leg")),
    "bicycle": _ObjSpec(_bicycle, "ground", (0.25, 0.4), (0.5, 0.6),
                        ("wheel", "bike-frame", "saddle")),
    "umbrella": _ObjSpec(_umbrella, "ground", (0.28, 0.42), (0.5, 1.0),
                         ("pole", "canopy")),
    "bench": _ObjSpec(_bench, "ground", (0.3, 0.45), (0.5, 0.6),
                      ("seat", "backrest", "furniture-leg")),
    "signpost": _ObjSpec(_signpost, "ground", (0.3, 0.45), (0.2, 1.0),
                         ("pole", "signboard")),
    "fence": _ObjSpec(_fence, "ground", (0.4, 0.6), (0.5, 0.5), ("post", "rail")),
    "sun": _ObjSpec(_sun, "sky", (0.1, 0.2), (0.5, 1.0)),
    "moon": _ObjSpec(_moon, "sky", (0.08, 0.15), (0.5, 1.0)),
    "cloud": _ObjSpec(_cloud, "sky", (0.2, 0.4), (0.5, 0.75)),
    "ball": _ObjSpec(_ball, "ground", (0.07, 0.14), (0.5, 1.0)),
    "rock": _ObjSpec(_rock, "ground", (0.12, 0.3), (0.5, 0.8)),
    "table": _ObjSpec(_table, "ground", (0.3, 0.45), (0.5, 0.6),
                      ("tabletop", "furniture-leg")),
    "chair": _ObjSpec(_chair, "ground", (0.22, 0.35), (0.35, 1.0),
                      ("seat", "backrest", "furniture-leg")),
    "sofa": _ObjSpec(_sofa, "ground", (0.35, 0.5), (0.5, 0.66),
                     ("seat", "backrest", "armrest", "furniture-leg")),
    "bed": _ObjSpec(_bed, "ground", (0.4, 0.5), (0.5, 0.7),
                    ("headboard", "blanket", "pillow")),
    "lamp": _ObjSpec(_lamp, "ground", (0.25, 0.4), (0.2, 0.95), ("lamp-base", "lampshade")),
    "television": _ObjSpec(_television, "wall", (0.25, 0.4), (0.5, 0.6),
                           ("tv-frame", "screen")),
    "painting": _ObjSpec(_painting, "wall", (0.15, 0.3), (0.5, 0.72),
                         ("picture-frame", "canvas")),
    "potted-plant": _ObjSpec(_potted_plant, "ground", (0.15, 0.3), (0.6, 1.0),
                             ("pot", "leaf")),
}
OBJECTS: tuple[str, ...] = tuple(_OBJECT_SPECS)
PARTS: tuple[str, ...] = tuple(dict.fromkeys(p for s in _OBJECT_SPECS.values() for p in s.parts))


# ----------------------------------------------------------------------------------------
# Scenes: background regions in bands, plus per-scene overlays
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Band:
    options: str  # "region[/material]" choices separated by "|", drawn uniformly
    zone: str | None = None  # objects of this zone stand in this band
    lo: float = 0.0  # range of the band's top edge (the first band starts at 0)
    hi: float = 0.0
    edge: str = "flat"  # flat | wave | dunes | peaks | skyline | bumpy | slope

    def choices(self) -> list[tuple[str, str | None]]:
        out = []
        for opt in self.options.split("|"):
            region, _, mat = opt.partition("/")
            out.append((region, mat or None))
        return out


@dataclass(frozen=True)
class _Scene:
    bands: tuple[_Band, ...]
    objects: dict[str, float]
    overlay: str | None = None
    night: bool = False
    zones: dict[str, tuple[float, float]] = field(default_factory=dict)  # overrides


_B = _Band
#: Day skies vary with the weather, so that no single sky concept dominates the probe.
_DAY = "sky|sky|cloudy-sky|hazy-sky"
_SCENES: dict[str, _Scene] = {
    "beach": _Scene((_B(_DAY + "|sunset-sky", "sky"), _B("sea", "water", 0.3, 0.42),
                     _B("sand", "ground", 0.55, 0.68, "wave")),
                    {"umbrella": 3, "ball": 2, "person": 2, "boat": 1, "sun": 1, "cloud": 1}),
    "coast": _Scene((_B("sunset-sky", "sky"), _B("sea", "water", 0.4, 0.52),
                     _B("cliff/stone|cliff", "ground", 0.68, 0.78, "wave")),
                    {"sun": 2, "boat": 3, "person": 1, "rock": 2, "lamp-post": 1}),
    "harbor": _Scene((_B(_DAY, "sky"), _B("building", None, 0.25, 0.35, "skyline"),
                      _B("water", "water", 0.4, 0.48), _B("dock/wood", "ground", 0.78, 0.86)),
                     {"boat": 5, "lamp-post": 1, "person": 1, "cloud": 1}),
    "lake": _Scene((_B(_DAY + "|sunset-sky", "sky"), _B("mountain", None, 0.3, 0.42, "peaks"),
                    _B("water", "water", 0.46, 0.55), _B("grass", "ground", 0.78, 0.86, "wave")),
                   {"boat": 3, "tree": 1, "cloud": 1, "person": 1}),
    "river": _Scene((_B(_DAY, "sky"), _B("treeline/foliage", None, 0.3, 0.4, "bumpy"),
                     _B("grass", "ground", 0.45, 0.52)),
                    {"tree": 2, "flower": 1, "person": 1, "rock": 1}, overlay="river"),
    "forest": _Scene((_B(_DAY, "sky"), _B("treeline/foliage", None, 0.2, 0.3, "bumpy"),
                      _B("ground", "ground", 0.64, 0.74, "wave")),
                     {"tree": 4, "person": 1, "rock": 1, "flower": 1}),
    "meadow": _Scene((_B(_DAY, "sky"), _B("grass", "ground", 0.4, 0.55, "wave")),
                     {"flower": 4, "tree": 1, "sun": 1, "cloud": 2, "fence": 1, "ball": 1}),
    "farm": _Scene((_B(_DAY, "sky"), _B("field", "ground", 0.35, 0.5)),
                   {"house": 2, "fence": 2, "tree": 1, "person": 1, "cloud": 1, "sun": 1}),
    "desert": _Scene((_B("sky|hazy-sky|sunset-sky", "sky"),
                      _B("sand", "ground", 0.45, 0.6, "dunes")),
                     {"sun": 2, "rock": 3, "person": 1, "cloud": 1}),
    "canyon": _Scene((_B("sky|hazy-sky", "sky"), _B("cliff/stone|cliff", None, 0.3, 0.4, "peaks"),
                      _B("ground", "ground", 0.68, 0.78, "wave")),
                     {"rock": 3, "person": 1, "sun": 1, "bicycle": 1}),
    "snowfield": _Scene((_B("cloudy-sky|hazy-sky", "sky"),
                         _B("snow", "ground", 0.4, 0.55, "wave")),
                        {"tree": 2, "person": 2, "house": 1, "rock": 1}),
    "ski-slope": _Scene((_B("sky|cloudy-sky", "sky"), _B("mountain", None, 0.25, 0.35, "peaks"),
                         _B("snow", "ground", 0.5, 0.6, "slope")),
                        {"person": 3, "tree": 2, "sun": 1, "signpost": 1}),
    "valley": _Scene((_B(_DAY, "sky"), _B("mountain", None, 0.28, 0.42, "peaks"),
                      _B("grass", "ground", 0.55, 0.65, "wave")),
                     {"house": 2, "tree": 2, "fence": 1, "cloud": 1, "person": 1, "flower": 1}),
    "street": _Scene((_B(_DAY, "sky"), _B("building", None, 0.3, 0.45, "skyline"),
                      _B("sidewalk", "ground", 0.6, 0.68), _B("road", None, 0.76, 0.84)),
                     {"car": 3, "lamp-post": 2, "person": 2, "signpost": 2, "bicycle": 1},
                     zones={"ground": (0.62, 1.0)}),
    "highway": _Scene((_B(_DAY + "|sunset-sky", "sky"), _B("grass", "ground", 0.4, 0.5)),
                      {"car": 4, "signpost": 2, "lamp-post": 1, "tree": 1}, overlay="highway"),
    "parking-lot": _Scene((_B(_DAY, "sky"), _B("building", None, 0.25, 0.35, "skyline"),
                           _B("road", "ground", 0.5, 0.58)),
                          {"car": 5, "lamp-post": 1, "person": 1, "signpost": 1},
                          overlay="parking"),
    "suburb": _Scene((_B(_DAY, "sky"), _B("lawn", "ground", 0.42, 0.52),
                      _B("sidewalk", None, 0.7, 0.74), _B("road", None, 0.8, 0.86)),
                     {"house": 4, "tree": 1, "car": 2, "fence": 1, "bicycle": 1},
                     zones={"ground": (0.5, 1.0)}),
    "park": _Scene((_B(_DAY, "sky"), _B("treeline/foliage", None, 0.3, 0.4, "bumpy"),
                    _B("lawn", "ground", 0.48, 0.55)),
                   {"bench": 3, "tree": 1, "person": 1, "lamp-post": 1, "ball": 1,
                    "bicycle": 1}, overlay="path"),
    "playground": _Scene((_B(_DAY, "sky"), _B("lawn", "ground", 0.42, 0.55)),
                         {"ball": 3, "person": 2, "bench": 1, "tree": 1, "bicycle": 1},
                         overlay="sandpit"),
    "night-city": _Scene((_B("night-sky", "sky"), _B("building", None, 0.15, 0.3, "skyline"),
                          _B("road", "ground", 0.65, 0.75)),
                         {"car": 3, "lamp-post": 3, "moon": 2, "person": 1}, night=True),
    "campsite": _Scene((_B("night-sky", "sky"), _B("treeline/foliage", None, 0.3, 0.45, "bumpy"),
                        _B("grass", "ground", 0.55, 0.65, "wave")),
                       {"moon": 2, "tree": 2, "person": 1, "rock": 1}, night=True),
    "garden": _Scene((_B(_DAY, "sky"), _B("lawn", "ground", 0.35, 0.45)),
                     {"flower": 5, "potted-plant": 2, "fence": 1, "bench": 1},
                     overlay="flowerbed"),
    "kitchen": _Scene((_B("wall/tile", "wall"), _B("floor/tile|floor/stone", "ground", 0.6, 0.7)),
                      {"table": 3, "chair": 3, "potted-plant": 1, "lamp": 1, "painting": 1}),
    "living-room": _Scene((_B("wall|wallpaper", "wall"), _B("floor/wood", "ground", 0.55, 0.65)),
                          {"sofa": 3, "television": 2, "lamp": 2, "painting": 2,
                           "potted-plant": 1, "table": 1}, overlay="carpet"),
    "bedroom": _Scene((_B("wallpaper|wall/brick", "wall"),
                       _B("floor/wood|floor/fabric", "ground", 0.6, 0.7)),
                      {"bed": 4, "lamp": 2, "painting": 2, "chair": 1}),
    "office": _Scene((_B("ceiling"), _B("wall", "wall", 0.12, 0.2),
                      _B("floor/fabric|floor/tile", "ground", 0.6, 0.7)),
                     {"table": 3, "chair": 3, "television": 2, "potted-plant": 1, "lamp": 1}),
    "corridor": _Scene((_B("wall", "wall"),),
                       {"painting": 2, "potted-plant": 2, "person": 1, "lamp": 1},
                       overlay="corridor"),
    "dining-room": _Scene((_B("wallpaper|wall/brick", "wall"),
                           _B("floor/wood|floor/stone", "ground", 0.58, 0.68)),
                          {"table": 4, "chair": 4, "lamp": 1, "painting": 2}),
}
SCENES: tuple[str, ...] = tuple(_SCENES)


def _edge(kind: str, lo: float, hi: float, x: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, float]:
    """The top edge y(x) of a band, and its base height."""
    b = float(rng.uniform(lo, hi))
    if kind == "flat":
        y = b + float(rng.uniform(-0.03, 0.03)) * (x - 0.5)
    elif kind in ("wave", "dunes"):
        a = rng.uniform(0.01, 0.035) if kind == "wave" else rng.uniform(0.03, 0.07)
        y = b + a * np.sin(_TWO_PI * (x * rng.uniform(0.5, 2.0) + rng.random()))
    elif kind == "peaks":
        k = int(rng.integers(2, 5))
        c = rng.uniform(0, 1, k)[:, None]
        h = rng.uniform(0.05, 0.22, k)[:, None]
        w = rng.uniform(0.15, 0.4, k)[:, None]
        y = b - (h * np.maximum(0.0, 1.0 - np.abs(x[None, :] - c) / w)).max(0)
    elif kind == "skyline":
        nb = int(rng.integers(4, 9))
        hts = rng.uniform(0.0, 0.2, nb)
        idx = np.floor((x + rng.random()) * nb).astype(np.int64) % nb
        y = b - hts[idx]
    elif kind == "bumpy":
        a = rng.uniform(0.03, 0.07)
        y = b - a * np.abs(np.sin(math.pi * (x * rng.uniform(5, 10) + rng.random())))
    elif kind == "slope":
        t = rng.uniform(0.2, 0.4) * (1 if rng.random() < 0.5 else -1)
        y = b + t * (x - 0.5)
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    return np.asarray(y, _F), b


def _region_rgb(name: str, base: np.ndarray, p: _Px, rng: np.random.Generator,
                top: float, material: str | None, night: bool) -> np.ndarray:
    """Colours of a background region's pixels (regions with a material use its pattern)."""
    if material is not None:
        return _MATERIAL_FNS[material](base, p, rng)
    y, x, nz = p.y, p.x, p.nz
    if name == "sky":
        return _mix(base, (0.85, 0.92, 1.0), np.clip(y * 1.4, 0, 1) * 0.7)
    if name == "night-sky":
        out = _shade(base, 1.0 + 0.4 * y)
        out[nz > 0.985] = 0.95
        return out
    if name == "sunset-sky":
        return _mix(base, (1.0, 0.62, 0.25), np.clip(y * 2.0, 0, 1))
    if name == "cloudy-sky":
        ph = rng.random(2).astype(_F)
        blot = np.sin(_TWO_PI * (x * 2.5 + ph[0])) * np.sin(_TWO_PI * (y * 4 + ph[1]))
        return _shade(base, 1.0 + 0.1 * blot + 0.03 * (nz - 0.5))
    if name == "hazy-sky":
        return _mix(base, (0.97, 0.93, 0.84), np.clip(y * 1.6, 0, 1)) + (0.02 * (nz - 0.5))[:, None]
    if name == "sea":
        w = np.sin(_TWO_PI * (y * 45 + 0.25 * np.sin(_TWO_PI * (x * 6 + float(rng.random())))))
        out = _shade(base, 0.9 + 0.15 * w)
        out[w > 0.93] = (0.85, 0.9, 0.95)
        return out
    if name == "water":
        w = np.sin(_TWO_PI * (y * 70 + 0.5 * np.sin(_TWO_PI * x * 3)))
        return _shade(base, 0.95 + 0.1 * w + 0.1 * (y - top))
    if name == "sand":
        return _shade(base, 0.92 + 0.18 * (nz - 0.5) + 0.04 * np.sin(_TWO_PI * (x * 4 + y * 18)))
    if name == "snow":
        shade = 0.5 + 0.5 * np.sin(_TWO_PI * (x * 2 + y * 3 + float(rng.random())))
        return _mix(base, (0.78, 0.84, 0.95), shade * 0.5 + 0.08 * nz)
    if name == "grass":
        blade = np.sin(_TWO_PI * x * 55 + 3.0 * nz)
        return _shade(base, 0.82 + 0.12 * blade + 0.25 * (y - top))
    if name == "lawn":
        stripe = np.where(_frac(x * 5 + y * 2) < 0.5, 0.9, 1.06)
        return _shade(base, stripe + 0.05 * np.sin(_TWO_PI * x * 80 + 2.0 * nz))
    if name == "wallpaper":
        motif = (np.abs(_frac(x * 12) - 0.5) < 0.12) | (
            np.abs(_frac(x * 12 + 0.5) - 0.5) + np.abs(_frac(y * 12) - 0.5) < 0.15)
        return _shade(base, np.where(motif, 0.8, 1.0) + 0.03 * (nz - 0.5))
    if name == "field":
        rows = np.sin(_TWO_PI * ((x - 0.5) * 10 / (y - top + 0.15)))
        return _shade(base, 0.88 + 0.12 * rows + 0.05 * (nz - 0.5))
    if name == "ground":
        return _shade(base, 0.85 + 0.3 * (nz - 0.5) + 0.05 * np.sin(_TWO_PI * x * 7))
    if name == "mountain":
        ridge = np.sin(_TWO_PI * (x * 9 + 0.3 * y * 9))
        out = _shade(base, 0.8 + 0.35 * (1.0 - (y - top + 0.2)) + 0.06 * ridge)
        return out
    if name == "cliff":
        return _shade(base, 0.82 + 0.15 * np.sin(_TWO_PI * (y * 22 + 0.4 * np.sin(_TWO_PI * x * 3)))
                      + 0.08 * (nz - 0.5))
    if name == "road":
        return _shade(base, 0.95 + 0.18 * (nz - 0.5))
    if name == "sidewalk":
        grout = (_frac(x * 12) < 0.06) | (_frac(y * 22) < 0.1)
        return _shade(base, np.where(grout, 0.75, 1.0) + 0.06 * (nz - 0.5))
    if name == "building":
        nb = 7
        seg = np.floor(x * nb + 0.37)
        out = _shade(base, 0.75 + 0.4 * _hash2(seg, seg * 0.0 + 1.0))
        win = (np.abs(_frac(x * nb * 3) - 0.5) < 0.2) & (np.abs(_frac(y * 16) - 0.5) < 0.22)
        if night:
            out *= 0.35
            lit = win & (_hash2(np.floor(x * nb * 3), np.floor(y * 16)) > 0.45)
            out[lit] = (0.98, 0.85, 0.4)
            out[win & ~lit] = (0.08, 0.08, 0.12)
        else:
            out[win] = (0.35, 0.45, 0.6)
        return out
    if name == "ceiling":
        panel = (np.abs(_frac(x * 4) - 0.5) < 0.2) & (np.abs(_frac(y * 8) - 0.5) < 0.2)
        return _shade(base, np.where(panel, 1.08, 0.95))
    if name == "carpet":
        border = np.abs(_frac(x * 10 + y * 10) - 0.5) < 0.08
        out = _mat_fabric(base, p, rng)
        out[border] = out[border] * 0.6 + 0.3
        return out
    return _shade(base, 0.97 + 0.05 * (1.0 - y) + 0.04 * (nz - 0.5))


# ----------------------------------------------------------------------------------------
# Textures (image-level, full frame)
# ----------------------------------------------------------------------------------------


def _random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with a clear brightness contrast."""
    a = rng.uniform(0.0, 1.0, 3).astype(_F)
    b = rng.uniform(0.0, 1.0, 3).astype(_F)
    if abs(float(a.mean() - b.mean())) < 0.3:
        b = np.clip(1.0 - a + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(_F)
    return a, b


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    c = ((np.arange(size, dtype=_F) + 0.5) / size)
    y, x = c[:, None], c[None, :]
    th = rng.uniform(0, math.pi)
    ct, st = _F(math.cos(th)), _F(math.sin(th))
    a = (x - 0.5) * ct + (y - 0.5) * st
    b = -(x - 0.5) * st + (y - 0.5) * ct
    p = _F(rng.uniform(0.06, 0.14))
    c1, c2 = _random_pair(rng)
    if kind == "striped":
        m = _frac(a / p) < rng.uniform(0.35, 0.6)
    elif kind == "banded":
        pb = _F(rng.uniform(0.15, 0.3))
        c3 = rng.uniform(0, 1, 3).astype(_F)
        k = (np.floor(a / pb) % 3).astype(np.int64)
        return np.stack([c1, c2, c3])[k]
    elif kind == "dotted":
        m = (_frac(a / p) - 0.5) ** 2 + (_frac(b / p) - 0.5) ** 2 < rng.uniform(0.03, 0.08)
    elif kind == "checkered":
        m = ((np.floor(a / p) + np.floor(b / p)) % 2) == 0
    elif kind == "zigzagged":
        q = _F(rng.uniform(0.08, 0.16))
        tri = np.abs(_frac(b / q) - 0.5) * 2
        m = _frac((a + tri * q * 0.8) / p) < 0.5
    elif kind == "grid":
        w = rng.uniform(0.1, 0.2)
        m = (_frac(a / p) < w) | (_frac(b / p) < w)
    elif kind == "cracked":
        k = 24
        pts = rng.uniform(-0.1, 1.1, (k, 2)).astype(_F)
        d = (y[None] - pts[:, 0, None, None]) ** 2 + (x[None] - pts[:, 1, None, None]) ** 2
        d = np.sqrt(np.partition(d, 1, axis=0)[:2])
        m = (d[1] - d[0]) < 0.012
    elif kind == "honeycombed":
        s = _F(rng.uniform(0.07, 0.12))
        r = np.array([1.0, 1.7320508], _F) * s
        pa, pb_ = a, b
        au, av = _frac(pa / r[0]) * r[0] - r[0] / 2, _frac(pb_ / r[1]) * r[1] - r[1] / 2
        bu = _frac((pa - r[0] / 2) / r[0]) * r[0] - r[0] / 2
        bv = _frac((pb_ - r[1] / 2) / r[1]) * r[1] - r[1] / 2
        use_a = au * au + av * av < bu * bu + bv * bv
        gu, gv = np.abs(np.where(use_a, au, bu)), np.abs(np.where(use_a, av, bv))
        hexd = np.maximum(gu * 0.5 + gv * 0.8660254, gu)
        m = hexd > s * (0.5 - rng.uniform(0.06, 0.12))
    elif kind == "spiralled":
        cy, cx = rng.uniform(0.3, 0.7, 2)
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        ang = np.arctan2(y - cy, x - cx) / _TWO_PI
        m = _frac(r / p + ang * int(rng.integers(1, 4))) < 0.5
    elif kind == "wavy":
        q = _F(rng.uniform(0.15, 0.35))
        m = _frac((a + 0.35 * q * np.sin(_TWO_PI * b / q)) / p) < 0.5
    elif kind == "veined":
        ph = rng.random(2).astype(_F)
        turb = np.sin(_TWO_PI * (b * 2.5 + ph[0])) + 0.5 * np.sin(_TWO_PI * ((a + b) * 5 + ph[1]))
        m = np.abs(np.sin(_TWO_PI * (a / (p * 2) + 0.6 * turb))) < 0.15
    elif kind == "bubbly":
        k = 18
        cen = rng.uniform(0, 1, (k, 2)).astype(_F)
        rad = rng.uniform(0.03, 0.1, k).astype(_F)
        d = np.sqrt((y[None] - cen[:, 0, None, None]) ** 2 + (x[None] - cen[:, 1, None, None]) ** 2)
        m = (np.abs(d - rad[:, None, None]) < 0.012).any(0)  # type: ignore[assignment]
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    m = np.broadcast_to(m, (size, size))
    return np.where(m[..., None], c2, c1).astype(_F)


# ----------------------------------------------------------------------------------------
# The concept table
# ----------------------------------------------------------------------------------------


def _build_table() -> list[Concept]:
    table = [Concept(0, "-", "-")]
    for cat, names in (("color", tuple(COLORS)), ("object", REGIONS + OBJECTS),
                       ("part", PARTS), ("material", MATERIALS), ("scene", SCENES),
                       ("texture", TEXTURES)):
        for name in names:
            table.append(Concept(len(table), name, cat))
    names = [c.name for c in table]  # type: ignore[assignment]
    dup = {n for n in names if names.count(n) > 1}
    if dup:  # pragma: no cover - a vocabulary error is a programming error
        raise RuntimeError(f"concept names must be unique, duplicated: {sorted(dup)}")
    return table


_CONCEPTS = _build_table()
_ID: dict[str, int] = {c.name: c.id for c in _CONCEPTS[1:]}
check_concepts(_CONCEPTS)


# ----------------------------------------------------------------------------------------
# Drawing one image
# ----------------------------------------------------------------------------------------


def _draw_scene(cv: _Canvas, name: str) -> None:
    rng, n, coord = cv.rng, cv.size, cv.coord
    sc = _SCENES[name]
    edges, bases = [], []
    for k, band in enumerate(sc.bands):
        if k == 0:
            edges.append(np.zeros(n, _F))
            bases.append(0.0)
        else:
            e, b = _edge(band.edge, band.lo, band.hi, coord, rng)
            edges.append(e)
            bases.append(b)
    # a band ends where any later band starts
    below = np.full(n, 2.0, _F)
    bottoms = [below] * len(edges)
    for k in range(len(edges) - 1, -1, -1):
        bottoms[k] = below
        below = np.minimum(below, edges[k])
    ycol = coord[:, None]
    zones: dict[str, tuple[float, float]] = {}
    for k, band in enumerate(sc.bands):
        mask = (ycol >= edges[k][None, :]) & (ycol < bottoms[k][None, :])
        choices = band.choices()
        region, mat = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]
        base = cv.jitter(_REGION_RGB[region], 0.06)
        if region in ("wall", "wallpaper"):
            base = cv.jitter(_PASTELS[int(rng.integers(len(_PASTELS)))], 0.04)
        if mat == "brick":
            base = cv.jitter((0.62, 0.3, 0.22), 0.06)
        elif mat == "wood":
            base = cv.jitter((0.55, 0.36, 0.18), 0.06)
        top = bases[k]
        cv.paint(0, 0, mask,
                 lambda px, r=region, b=base, t=top, m=mat: _region_rgb(  # type: ignore[misc]
                     r, b, px, rng, t, m, sc.night),
                 (_ID[region], 0, _ID[mat] if mat else 0, 0))
        if band.zone:
            end = bases[k + 1] if k + 1 < len(bases) else 1.0
            zones[band.zone] = (top, end)
        if region == "road":
            _lane_marks(cv, mask, top, bottoms[k])
    zones.update(sc.zones)
    if sc.overlay:
        _OVERLAYS[sc.overlay](cv, bases, zones)
    _draw_objects(cv, sc, zones)


def _lane_marks(cv: _Canvas, road: np.ndarray, top: float, bottom: np.ndarray) -> None:
    bot = float(np.clip(bottom.min(), 0.0, 1.0))
    mid = (top + bot) / 2 if bot > top else (top + 1.0) / 2
    y, x = cv.coord[:, None], cv.coord[None, :]
    dash = road & (np.abs(y - mid) < 0.012) & (_frac(x * 5 + 0.1) < 0.5)
    rgb = cv.colour("white") if cv.rng.random() < 0.6 else cv.colour("yellow")
    cv.paint(0, 0, dash, lambda px: _shade(rgb, 1.0 + 0.05 * (px.nz - 0.5)),
             (_ID["road"], 0, 0, 0))


def _overlay_highway(cv: _Canvas, bases: list[float], zones: dict) -> None:
    hz = bases[-1]
    vx = float(cv.rng.uniform(0.35, 0.65))
    wb = float(cv.rng.uniform(0.35, 0.55))
    y, x = cv.coord[:, None], cv.coord[None, :]
    t = np.clip((y - hz) / (1.0 - hz), 0, None)
    road = (y >= hz) & (np.abs(x - vx) <= t * wb + 0.004)
    base = cv.jitter(_REGION_RGB["road"])
    cv.paint(0, 0, road, lambda px: _region_rgb("road", base, px, cv.rng, hz, None, False),
             (_ID["road"], 0, 0, 0))
    lane = road & (np.abs(x - vx) <= t * 0.02) & (_frac(np.sqrt(t) * 8) < 0.5)
    cv.paint(0, 0, lane, lambda px: np.full((px.y.size, 3), 0.95, _F), (_ID["road"], 0, 0, 0))


def _overlay_curve(cv: _Canvas, top: float, region: str, w0: float, spread: float,
                   material: str | None = None) -> None:
    rng = cv.rng
    y, x = cv.coord[:, None], cv.coord[None, :]
    c0, amp, f, ph = rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.15), rng.uniform(1, 2), rng.random()
    xc = c0 + amp * np.sin(_TWO_PI * (y * f + ph)) + rng.uniform(-0.3, 0.3) * (y - top)
    mask = (y >= top) & (np.abs(x - xc) <= w0 + (y - top) * spread)
    base = cv.jitter(_REGION_RGB[region])
    cv.paint(0, 0, mask, lambda px: _region_rgb(region, base, px, rng, top, material, False),
             (_ID[region], 0, _ID[material] if material else 0, 0))


def _overlay_river(cv: _Canvas, bases: list[float], zones: dict) -> None:
    _overlay_curve(cv, bases[-1], "water", 0.02, 0.35)


def _overlay_path(cv: _Canvas, bases: list[float], zones: dict) -> None:
    _overlay_curve(cv, bases[-1], "ground", 0.01, 0.25)


def _overlay_patch(cv: _Canvas, top: float, region: str, material: str | None,
                   rgb: Sequence[float] | None = None) -> None:
    rng = cv.rng
    y, x = cv.coord[:, None], cv.coord[None, :]
    cy = rng.uniform(top + 0.12, 0.85)
    cx, rx, ry = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.35), rng.uniform(0.06, 0.13)
    mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    base = cv.jitter(rgb if rgb is not None else _REGION_RGB[region])
    cv.paint(0, 0, mask, lambda px: _region_rgb(region, base, px, rng, top, material, False),
             (_ID[region], 0, _ID[material] if material else 0, 0))


def _overlay_sandpit(cv: _Canvas, bases: list[float], zones: dict) -> None:
    _overlay_patch(cv, bases[-1], "sand", None)


def _overlay_flowerbed(cv: _Canvas, bases: list[float], zones: dict) -> None:
    _overlay_patch(cv, bases[-1], "ground", None)


def _overlay_carpet(cv: _Canvas, bases: list[float], zones: dict) -> None:
    rng = cv.rng
    top = bases[-1]
    y, x = cv.coord[:, None], cv.coord[None, :]
    y0 = rng.uniform(top + 0.08, top + 0.2)
    y1 = min(1.0, y0 + rng.uniform(0.12, 0.3))
    cx, hw = rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35)
    mask = (y >= y0) & (y <= y1) & (np.abs(x - cx) <= hw + (y - y0) * 0.3)
    colour = cv.jitter([(0.6, 0.15, 0.15), (0.15, 0.25, 0.55), (0.2, 0.45, 0.3),
                        (0.7, 0.55, 0.3)][int(rng.integers(4))])
    cv.paint(0, 0, mask, lambda px: _region_rgb("carpet", colour, px, rng, y0, None, False),
             (_ID["carpet"], 0, _ID["fabric"], 0))


def _overlay_parking(cv: _Canvas, bases: list[float], zones: dict) -> None:
    top = bases[-1]
    y, x = cv.coord[:, None], cv.coord[None, :]
    lines = (y >= top + 0.06) & (y <= top + 0.3) & (
        np.abs(_frac(x * 5 + (y - top) * 1.5) - 0.5) < 0.04)
    cv.paint(0, 0, lines, lambda px: np.full((px.y.size, 3), 0.92, _F), (_ID["road"], 0, 0, 0))


def _overlay_corridor(cv: _Canvas, bases: list[float], zones: dict) -> None:
    rng = cv.rng
    y, x = cv.coord[:, None], cv.coord[None, :]
    vx, vy, e = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.5), rng.uniform(0.12, 0.2)
    dx, dy = x - vx, y - vy
    outside = (np.abs(dx) > e) | (np.abs(dy) > e)
    vertical = np.abs(dy) >= np.abs(dx)
    ceil_base = cv.jitter(_REGION_RGB["ceiling"], 0.03)
    cv.paint(0, 0, outside & vertical & (dy < 0),
             lambda px: _region_rgb("ceiling", ceil_base, px, rng, 0.0, None, False),
             (_ID["ceiling"], 0, 0, 0))
    mat = ("wood", "tile", "stone")[int(rng.integers(3))]
    fbase = cv.jitter((0.55, 0.36, 0.18) if mat == "wood" else (0.7, 0.68, 0.62), 0.06)
    cv.paint(0, 0, outside & vertical & (dy > 0),
             lambda px: _region_rgb("floor", fbase, px, rng, vy, mat, False),
             (_ID["floor"], 0, _ID[mat], 0))
    zones["ground"] = (float(vy + e), 1.0)
    zones["wall"] = (float(vy - e - 0.1), float(vy + e))


_OVERLAYS: dict[str, Callable[[_Canvas, list[float], dict], None]] = {
    "highway": _overlay_highway, "river": _overlay_river, "path": _overlay_path,
    "sandpit": _overlay_sandpit, "flowerbed": _overlay_flowerbed, "carpet": _overlay_carpet,
    "parking": _overlay_parking, "corridor": _overlay_corridor,
}


def _draw_objects(cv: _Canvas, sc: _Scene, zones: dict[str, tuple[float, float]]) -> None:
    rng = cv.rng
    names = [o for o in sc.objects if _OBJECT_SPECS[o].zone in zones]
    if not names:  # pragma: no cover - every scene has placeable objects
        return
    w = np.array([sc.objects[o] for o in names], float)
    picks = rng.choice(len(names), size=int(rng.integers(1, 4)), p=w / w.sum())
    placed = []  # type: ignore[var-annotated]
    order = {"sky": 0, "wall": 1, "water": 2, "ground": 3}
    for k in picks:
        name = names[int(k)]
        if name in ("sun", "moon") and any(t[2] == name for t in placed):
            continue  # one sun, one moon
        spec = _OBJECT_SPECS[name]
        lo, hi = zones[spec.zone]
        s = float(rng.uniform(*spec.size))
        h = spec.extent[1]
        if spec.zone == "sky":
            cy = rng.uniform(0.05 + s * h / 2, max(0.06 + s * h / 2, hi - s * h / 2))
            base = cy + s * h / 2
        elif spec.zone == "wall":
            cy = rng.uniform(lo + s * h / 2, max(lo + s * h / 2 + 0.01, hi - s * h / 2))
            base = cy + s * h / 2
        else:
            top = lo + (0.05 if spec.zone == "water" else 0.04)
            # nearer (lower, larger) positions are more likely, so fewer objects are tiny
            base = top + (max(top + 0.01, hi) - top) * float(rng.random()) ** 0.6
            s *= 0.75 + 0.45 * float(np.clip((base - lo) / max(1.0 - lo, 0.05), 0, 1))
        cx = float(rng.uniform(0.08, 0.92))
        flip = 1 if rng.random() < 0.5 else -1
        placed.append((order[spec.zone], float(base), name, cx, s, flip))
    placed.sort(key=lambda t: (t[0], t[1]))
    n = cv.size
    for _, base, name, cx, s, flip in placed:
        spec = _OBJECT_SPECS[name]
        hw, h = spec.extent
        x0 = max(0, int(math.floor((cx - s * hw * 1.05) * n)))
        x1 = min(n, int(math.ceil((cx + s * hw * 1.05) * n)) + 1)
        y0 = max(0, int(math.floor((base - s * h * 1.03) * n)))
        y1 = min(n, int(math.ceil(base * n)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        spec.draw(_Obj(cv, _ID[name], cx, base, s, flip, (y0, y1, x0, x1)))


# ----------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------


class SyntheticProbe(ProbeDataset):
    """The concept world: ``n`` procedurally drawn probe images (see the module docstring).

    Item ``i`` is a pure function of ``(seed, i)``; nothing is cached, so memory stays
    bounded and any subset can be drawn in any order or process.
    """

    name = "synthetic"

    def __init__(self, n: int = 2000, seed: int = 0, image_size: int = 112,
                 seg_size: int = 56) -> None:
        for key, val in (("n", n), ("seed", seed), ("image_size", image_size),
                         ("seg_size", seg_size)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise ValueError(f"SyntheticProbe: {key} must be an integer, got {val!r}")
        if n < 1:
            raise ValueError(f"SyntheticProbe: n must be >= 1, got {n}")
        if seed < 0:
            raise ValueError(f"SyntheticProbe: seed must be >= 0, got {seed}")
        if image_size < 8:
            raise ValueError(f"SyntheticProbe: image_size must be >= 8, got {image_size}")
        if seg_size < 1:
            raise ValueError(f"SyntheticProbe: seg_size must be >= 1, got {seg_size}")
        if seg_size > image_size or image_size % seg_size:
            raise ValueError(f"SyntheticProbe: image_size ({image_size}) must be a multiple "
                             f"of seg_size ({seg_size})")
        self.n = int(n)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.seg_size = (int(seg_size), int(seg_size))
        self.concepts = list(_CONCEPTS)
        self.layers = LAYERS
        self.class_names = list(SCENES) + list(TEXTURES)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"SyntheticProbe(n={self.n}, seed={self.seed}, image_size={self.image_size}, "
                f"seg_size={self.seg_size[0]})")

    def fingerprint(self, samples: int = 32) -> str:
        h = hashlib.sha256(super().fingerprint(samples=0).encode())
        h.update(repr((WORLD_VERSION, self.seed, self.image_size)).encode())
        return h.hexdigest()[:16]

    def _index(self, i: int) -> int:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"SyntheticProbe indices must be integers, got {type(i).__name__}"
                            ) from None
        if not 0 <= i < self.n:
            raise IndexError(f"SyntheticProbe index {i} out of range [0, {self.n})")
        return i

    def kind(self, i: int) -> tuple[str, str]:
        """``("scene", name)`` or ``("texture", name)`` of item ``i``, without drawing it."""
        rng = np.random.default_rng([self.seed, self._index(i)])
        if rng.random() < TEXTURE_FRACTION:
            return "texture", TEXTURES[int(rng.integers(len(TEXTURES)))]
        return "scene", SCENES[int(rng.integers(len(SCENES)))]

    def __getitem__(self, i: int) -> ProbeItem:
        i = self._index(i)
        rng = np.random.default_rng([self.seed, i])
        size, seg = self.image_size, self.seg_size[0]
        if rng.random() < TEXTURE_FRACTION:
            t = int(rng.integers(len(TEXTURES)))
            img = _texture(TEXTURES[t], size, rng)
            labels = np.zeros((len(LAYERS), seg, seg), np.int64)
            image_labels = [_ID[TEXTURES[t]]]
            target = len(SCENES) + t
        else:
            s = int(rng.integers(len(SCENES)))
            cv = _Canvas(size, rng)
            _draw_scene(cv, SCENES[s])
            img = cv.img
            f = size // seg
            labels = np.ascontiguousarray(cv.lab[f // 2::f, f // 2::f].transpose(2, 0, 1))
            image_labels = [_ID[SCENES[s]]]
            target = s
        # photometric jitter and sensor noise, so nothing is perfectly flat
        gain, bias = rng.uniform(0.88, 1.1), rng.uniform(-0.04, 0.04)
        img = img * _F(gain) + _F(bias)
        img += rng.standard_normal(img.shape, dtype=_F) * _F(0.02)
        np.clip(img, 0.0, 1.0, out=img)
        # 8-bit like a decoded photo: exact PNG round trips and compact in-memory copies
        img = np.round(img * _F(255)) / _F(255)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return ProbeItem(image=image, pixel_labels=torch.from_numpy(labels),
                         image_labels=torch.tensor(image_labels, dtype=torch.int64),
                         index=i, target=target)


def concept_stats(probe: ProbeDataset, n: int | None = None) -> dict[str, tuple[float, float]]:
    """Per concept name: ``(pixel_share, image_share)`` over the first ``n`` items.

    ``pixel_share`` is the concept's share of all label-map pixels (a pixel counts once per
    concept it carries; an image-level label covers its whole image); ``image_share`` is the
    share of images in which the concept appears. Concepts that never appear get (0, 0).
    """
    total = len(probe) if n is None else min(int(n), len(probe))
    if total < 1:
        raise ValueError(f"concept_stats needs at least one image, got n={n!r}")
    k = probe.num_concepts
    pix = np.zeros(k, np.int64)
    imgs = np.zeros(k, np.int64)
    h, w = probe.seg_size
    for i in range(total):
        item = probe[i]
        lab = item.pixel_labels.numpy().ravel()
        counts = np.bincount(lab, minlength=k)[:k]
        scal = item.image_labels.numpy()
        scal = scal[scal > 0]
        counts[scal] += h * w
        counts[0] = 0
        pix += counts
        imgs += counts > 0
    area = float(total * h * w)
    return {c.name: (pix[c.id] / area, imgs[c.id] / total) for c in probe.concepts[1:]}
