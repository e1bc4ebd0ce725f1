"""The built-in procedural dataset: ten shape classes drawn on textured backgrounds, offline.

It is the embedded default that lets every command run on a fresh machine with no download.
Each image is a pure function of ``(seed, split, index)``: the scene (class shape, colours, pose,
scale, position, background texture, fill pattern, outline) is drawn from a numpy ``Generator``
seeded by a hash of that triple, so an item is the same whatever the order, process or batch.

The scene is then rendered *directly* at the requested resolution with analytic anti-aliasing, so
the same scene looks the same at 32 px and at 256 px:

- shape edges use signed distance functions (after Inigo Quilez's 2-D distance catalogue,
  https://iquilezles.org/articles/distfunctions2d/): a pixel's coverage is
  ``clip(0.5 - d / pixel, 0, 1)``, the box filter of a straight edge;
- stripes and checkers use the closed-form box filter of a square wave (the difference of its
  triangle-wave integral over the pixel footprint), so fine patterns fade to their mean instead
  of aliasing when they get close to the pixel size;
- smooth value noise and gradients are band-limited already and are sampled at pixel centres.

Textured backgrounds, striped object fills and thin outlines give the images the high-frequency
detail that a reconstruction can lose measurably; object/background luminance contrast is
enforced so that the class stays readable.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np

from repackctl.errors import ConfigError

__all__ = ["BuiltinSource", "CLASS_NAMES", "GENERATOR_VERSION", "render_scene"]

#: Changes whenever a pixel of any image changes; stored in the cache attributes.
GENERATOR_VERSION = "builtin-shapes-v1"

CLASS_NAMES: list[str] = [
    "disc",
    "ring",
    "square",
    "triangle",
    "star",
    "cross",
    "crescent",
    "heart",
    "arrow",
    "two-dots",
]

_DEFAULT_NUM = {"train": 2000}
_DEFAULT_NUM_OTHER = 500  # val, test and any other held-out split
_MIN_RES, _MAX_RES, _RES_MULTIPLE = 32, 256, 8
_SPLIT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights, for the contrast rule

_BACKGROUNDS = ("gradient", "noise", "stripes", "checker")
_FILLS = ("solid", "stripes", "gradient")


# ---------------------------------------------------------------------------------------------
# Scene sampling: everything random is drawn here, independent of the output resolution.
# ---------------------------------------------------------------------------------------------


def _split_code(split: str) -> int:
    """A stable 64-bit integer for a split name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The per-item generator: a pure function of (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _split_code(split), index]))


def _colour_with_luma(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random RGB colour in [0, 1] whose luma lies in [lo, hi] (shifted, then clipped)."""
    target = rng.uniform(lo, hi)
    c = rng.uniform(0.0, 1.0, 3)
    for _ in range(4):  # clipping moves the luma: a few shifts converge to the band
        c = np.clip(c + (target - float(c @ _LUMA)), 0.0, 1.0)
    return c


def _sample_scene(seed: int, split: str, index: int, label: int) -> dict:
    """Draw every parameter of one image. The order of draws is part of the generator version."""
    rng = _item_rng(seed, split, index)
    bright_object = bool(rng.random() < 0.5)
    # Object and background live in opposite luma bands: the shape stays visible on any texture.
    obj_band, bg_band = (
        ((0.62, 0.95), (0.05, 0.38)) if bright_object else ((0.05, 0.36), (0.6, 0.95))
    )
    scene: dict = {
        "label": label,
        "bg_kind": _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))],
        "bg_a": _colour_with_luma(rng, *bg_band),
        "bg_b": _colour_with_luma(rng, *bg_band),
        "bg_angle": rng.uniform(0.0, np.pi),
        "bg_freq": rng.uniform(2.0, 10.0),  # cycles per image width
        "bg_noise": rng.uniform(0.0, 1.0, (9, 9)),  # value-noise lattice (a corner is used)
        "bg_cells": int(rng.integers(2, 8)),
        "obj_a": _colour_with_luma(rng, *obj_band),
        "obj_b": _colour_with_luma(rng, *obj_band),
        "fill_kind": _FILLS[int(rng.choice(3, p=[0.4, 0.35, 0.25]))],
        "fill_angle": rng.uniform(0.0, np.pi),
        "fill_freq": rng.uniform(2.5, 6.0),  # stripe cycles across the object diameter
        "cx": rng.uniform(-0.22, 0.22),
        "cy": rng.uniform(-0.22, 0.22),
        "scale": rng.uniform(0.42, 0.66),  # object radius in image half-widths
        "angle": rng.uniform(0.0, 2.0 * np.pi),
        "shape_p": rng.uniform(0.0, 1.0),  # one per-class shape variation in [0, 1]
        "outline": bool(rng.random() < 0.3),
        "outline_w": rng.uniform(0.025, 0.05),  # in image half-widths
    }
    # The outline is a darker (bright object) or lighter (dark object) shade of the object colour,
    # so it never reads as a ring of background colour around a disc.
    a = scene["obj_a"]
    scene["outline_c"] = a * 0.45 if bright_object else a + 0.55 * (1.0 - a)
    return scene


# ---------------------------------------------------------------------------------------------
# Signed distances in object-local units (object radius ~1), negative inside.
# ---------------------------------------------------------------------------------------------


def _sd_box(u: np.ndarray, v: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(u) - bx, np.abs(v) - by
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_star(u: np.ndarray, v: np.ndarray, r: float, n: int, m: float) -> np.ndarray:
    """Quilez's n-pointed star; ``m = 2`` gives the regular n-gon, larger ``m`` sharper points."""
    an, en = np.pi / n, np.pi / m
    acx, acy = np.cos(an), np.sin(an)
    ecx, ecy = np.cos(en), np.sin(en)
    bn = np.mod(np.arctan2(u, v), 2.0 * an) - an  # fold into one sector
    rad = np.hypot(u, v)
    px, py = rad * np.cos(bn) - r * acx, rad * np.abs(np.sin(bn)) - r * acy
    h = np.clip(-(px * ecx + py * ecy), 0.0, r * acy / ecy)
    px, py = px + ecx * h, py + ecy * h
    return np.hypot(px, py) * np.sign(px)


def _sd_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Quilez's heart, recentred and scaled to radius ~1, pointing down (+v)."""
    x, y = np.abs(u) / 1.25, (0.6 - v) / 1.25
    upper = np.hypot(x - 0.25, y - 0.75) - np.sqrt(2.0) / 4.0
    t = 0.5 * np.maximum(x + y, 0.0)
    lower = np.sqrt(np.minimum(x**2 + (y - 1.0) ** 2, (x - t) ** 2 + (y - t) ** 2)) * np.sign(x - y)
    return np.where(x + y > 1.0, upper, lower) * 1.25


def _sd_shape(label: int, u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    """Distance to class ``label``'s shape; ``p`` in [0, 1] varies its proportions a little."""
    rad = np.hypot(u, v)
    if label == 0:  # disc
        return rad - 1.0
    if label == 1:  # ring
        return np.abs(rad - 0.78) - (0.17 + 0.08 * p)
    if label == 2:  # square
        return _sd_box(u, v, 0.78, 0.78)
    if label == 3:  # triangle
        return _sd_star(u, v, 1.1, 3, 2.0)
    if label == 4:  # five-pointed star
        return _sd_star(u, v, 1.1, 5, 3.0 + 0.6 * p)
    if label == 5:  # cross
        arm = 0.24 + 0.08 * p
        return np.minimum(_sd_box(u, v, 0.95, arm), _sd_box(u, v, arm, 0.95))
    if label == 6:  # crescent: a disc minus an offset disc
        off = 0.45 + 0.15 * p
        return np.maximum(rad - 1.0, 0.9 - np.hypot(u - off, v))
    if label == 7:  # heart
        return _sd_heart(u, v)
    if label == 8:  # arrow: a shaft and a triangular head, pointing to +u
        shaft = _sd_box(u + 0.3, v, 0.6, 0.14 + 0.05 * p)
        # head: base at u = 0.2 (half-width 0.55), tip at u = 1.0; edges as half-planes
        head = np.maximum(0.2 - u, (0.8 * np.abs(v) + 0.55 * u - 0.55) / np.hypot(0.8, 0.55))
        return np.minimum(shaft, head)
    if label == 9:  # two dots
        r = 0.34 + 0.08 * p
        return np.minimum(np.hypot(u - 0.55, v) - r, np.hypot(u + 0.55, v) - r)
    raise ValueError(f"no shape for label {label}")


# ---------------------------------------------------------------------------------------------
# Band-limited textures
# ---------------------------------------------------------------------------------------------


def _tri(x: np.ndarray) -> np.ndarray:
    """Integral of the period-2 square wave (+1 on (0, 1), -1 on (1, 2)): a triangle wave."""
    return 1.0 - np.abs(np.mod(x, 2.0) - 1.0)


def _filtered_square(x: np.ndarray, w: float) -> np.ndarray:
    """Square wave of period 2 in ``x`` averaged over a box of width ``w``: values in [-1, 1]."""
    return (_tri(x + 0.5 * w) - _tri(x - 0.5 * w)) / w


def _value_noise(x: np.ndarray, y: np.ndarray, lattice: np.ndarray, cells: int) -> np.ndarray:
    """Smooth value noise on a ``cells``-per-side lattice over [-1, 1]²; values in [0, 1]."""
    gx, gy = (x + 1.0) * 0.5 * cells, (y + 1.0) * 0.5 * cells
    ix = np.clip(np.floor(gx).astype(np.int64), 0, cells - 1)
    iy = np.clip(np.floor(gy).astype(np.int64), 0, cells - 1)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy)  # smoothstep: C1 joins
    top = lattice[iy, ix] * (1.0 - fx) + lattice[iy, ix + 1] * fx
    bottom = lattice[iy + 1, ix] * (1.0 - fx) + lattice[iy + 1, ix + 1] * fx
    return top * (1.0 - fy) + bottom * fy


@lru_cache(maxsize=16)
def _pixel_centres(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]; x grows to the right, y downwards."""
    c = ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution) * 2.0 - 1.0
    x, y = np.meshgrid(c, c)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def render_scene(scene: dict, resolution: int) -> np.ndarray:
    """Rasterise one scene at ``resolution`` → uint8 (R, R, 3)."""
    x, y = _pixel_centres(resolution)
    px = 2.0 / resolution  # pixel width in image units

    # Background: a scalar field t in [0, 1] mixing two colours.
    kind = scene["bg_kind"]
    ca, sa = np.cos(scene["bg_angle"]), np.sin(scene["bg_angle"])
    if kind == "gradient":
        t = np.clip(0.5 + 0.5 * (x * ca + y * sa), 0.0, 1.0)
    elif kind == "noise":
        t = _value_noise(x, y, scene["bg_noise"], scene["bg_cells"])
    else:
        f = scene["bg_freq"]  # half-periods per image unit: period 2 in s ↔ 2/f image units
        s_u = (x * ca + y * sa) * f
        wave = _filtered_square(s_u, px * f)
        if kind == "checker":
            wave = wave * _filtered_square((-x * sa + y * ca) * f, px * f)
        t = 0.5 + 0.5 * wave
    t = t.astype(np.float32)
    bg_a, bg_b = scene["bg_a"].astype(np.float32), scene["bg_b"].astype(np.float32)
    img = bg_a + (bg_b - bg_a) * t[..., None]  # (R, R, 3)

    # Object in local units: translate, rotate, scale.
    s = scene["scale"]
    co, so = np.cos(scene["angle"]), np.sin(scene["angle"])
    dx, dy = x - scene["cx"], y - scene["cy"]
    u, v = (dx * co + dy * so) / s, (-dx * so + dy * co) / s
    d = _sd_shape(scene["label"], u, v, scene["shape_p"]) * s  # back to image units
    alpha = np.clip(0.5 - d / px, 0.0, 1.0).astype(np.float32)

    fill_kind = scene["fill_kind"]
    if fill_kind == "solid":
        f_t = None
    else:
        cf, sf = np.cos(scene["fill_angle"]), np.sin(scene["fill_angle"])
        along = u * cf + v * sf
        if fill_kind == "stripes":
            ff = scene["fill_freq"]
            f_t = 0.5 + 0.5 * _filtered_square(along * ff, px / s * ff)
        else:
            f_t = np.clip(0.5 + 0.5 * along, 0.0, 1.0)
    obj_a, obj_b = scene["obj_a"].astype(np.float32), scene["obj_b"].astype(np.float32)
    fill = obj_a if f_t is None else obj_a + (obj_b - obj_a) * f_t.astype(np.float32)[..., None]
    img += (fill - img) * alpha[..., None]

    if scene["outline"]:
        band = np.abs(d) - scene["outline_w"] * 0.5
        a_out = np.clip(0.5 - band / px, 0.0, 1.0).astype(np.float32)
        img += (scene["outline_c"].astype(np.float32) - img) * a_out[..., None]

    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def check_resolution(resolution: int) -> int:
    """Validate a resolution for the built-in dataset; raise ``ConfigError`` with a hint."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or not (_MIN_RES <= int(resolution) <= _MAX_RES)
        or int(resolution) % _RES_MULTIPLE
    ):
        raise ConfigError(
            f"the built-in dataset renders resolutions {_MIN_RES}..{_MAX_RES} in steps of "
            f"{_RES_MULTIPLE}, got {resolution!r}",
            hint="pass e.g. --resolution 64 (any multiple of 8 from 32 to 256)",
        )
    return int(resolution)


class BuiltinSource:
    """Ten procedural shape classes on textured backgrounds; deterministic, offline, picklable."""

    name = "builtin"
    class_names: list[str] | None = CLASS_NAMES
    #: what decides the pixels (``data.base.source_packages``): the generator is numpy code
    packages = ("repackctl", "numpy")

    def __init__(
        self,
        *,
        path: str | None = None,
        split: str = "train",
        num: int | None = None,
        seed: int = 0,
    ) -> None:
        if path is not None:
            raise ConfigError(
                f"the built-in dataset is generated and reads no files, got path {path!r}",
                hint="drop the data path, or use --data imagefolder with a folder of images",
            )
        if not isinstance(split, str) or not _SPLIT_RE.match(split):
            raise ConfigError(
                f"invalid split name {split!r} for the built-in dataset",
                hint="use a lower-case name such as 'train' or 'val'",
            )
        if num is None:
            num = _DEFAULT_NUM.get(split, _DEFAULT_NUM_OTHER)
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise ConfigError(
                f"the built-in dataset needs a positive number of images, got num={num!r}",
                hint="pass e.g. --num 2000",
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(
                f"the built-in dataset seed must be a non-negative integer, got {seed!r}",
                hint="pass e.g. --seed 0",
            )
        self.split = split
        self.num = int(num)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num

    def __repr__(self) -> str:
        return f"BuiltinSource(split={self.split!r}, num={self.num}, seed={self.seed})"

    def _check_index(self, index: int) -> int:
        if not (0 <= index < self.num):
            raise IndexError(f"index {index} out of range for {self!r}")
        return int(index)

    def key(self, index: int) -> str:
        """``builtin:<seed>:<split>:<index>``."""
        return f"builtin:{self.seed}:{self.split}:{self._check_index(index)}"

    def label(self, index: int) -> int:
        """Balanced labels: ``index % 10``."""
        return self._check_index(index) % len(CLASS_NAMES)

    def scene(self, index: int) -> dict:
        """The drawn parameters of item ``index`` (for inspection and debugging)."""
        return _sample_scene(self.seed, self.split, self._check_index(index), self.label(index))

    def load(self, index: int, resolution: int) -> np.ndarray:
        """Item ``index`` rendered at ``resolution`` → uint8 (R, R, 3)."""
        resolution = check_resolution(resolution)
        return render_scene(self.scene(index), resolution)

    def describe(self) -> dict:
        """Attributes that change the pixels."""
        return {
            "dataset": self.name,
            "split": self.split,
            "seed": self.seed,
            "num": self.num,
            "version": GENERATOR_VERSION,
            "classes": list(CLASS_NAMES),
        }
