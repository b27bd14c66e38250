"""Procedural ShapesWorld renders: numpy only, fast, deterministic per seed.

A :class:`Scene` names what an image shows (its ground-truth labels); :func:`render` draws it on a
``32×32`` RGB canvas. The seed only drives a small jitter of position (±1 px) and size, so a given
``(scene, seed)`` always gives the same pixels while the model still sees some variation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from diffloc.errors import ConfigError, close_matches, one_of
from diffloc.world import vocab

SIZE = 32
#: Nominal shape radius in pixels (the shape spans about 2·RADIUS).
RADIUS = 11.0
KINDS = ("plain", "style", "object", "fact")


def check_value(attribute: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``.

    Raises:
        ConfigError: naming the attribute, the bad value and the valid choices.
    """
    if value not in choices:
        raise ConfigError(
            f"unknown {attribute} {value!r}; valid: {one_of(choices)}{close_matches(str(value), choices)}"
        )


@dataclass(frozen=True, kw_only=True)
class Scene:
    """What one ShapesWorld image shows; the labels the detectors must read back.

    Attributes:
        kind: ``plain``, ``style``, ``object`` or ``fact``.
        shape, colour, texture, background: base attributes (ignored for ``fact`` scenes).
        style: a key of :data:`vocab.STYLE_LOOKS` (``plain`` unless a named style is drawn).
        fact: a country of :data:`vocab.FACTS`, :data:`vocab.FACT_ANCHOR`, or ``none``.
    """

    kind: str = "plain"
    shape: str = "circle"
    colour: str = "red"
    texture: str = vocab.DEFAULT_TEXTURE
    background: str = vocab.DEFAULT_BACKGROUND
    style: str = "plain"
    fact: str = "none"

    def __post_init__(self) -> None:
        check_value("scene kind", self.kind, KINDS)
        check_value("shape", self.shape, vocab.SHAPES)
        check_value("colour", self.colour, tuple(vocab.COLOURS))
        check_value("texture", self.texture, vocab.TEXTURES)
        check_value("background", self.background, tuple(vocab.BACKGROUNDS))
        check_value("style", self.style, tuple(vocab.STYLE_LOOKS))
        check_value("fact", self.fact, vocab.ATTRIBUTES["fact"])
        if (self.kind == "fact") != (self.fact != "none"):
            raise ConfigError(f"scene kind {self.kind!r} does not match fact {self.fact!r}")

    def labels(self) -> dict[str, str | None]:
        """Ground-truth label per detector attribute; ``None`` where the attribute does not apply.

        A styled image's texture (checkered) and background (style palette) are not base values, so
        they are ``None`` when the style overrides them.
        """
        if self.kind == "fact":
            return {"shape": None, "colour": None, "texture": None, "background": None,
                    "style": None, "fact": self.fact}  # fmt: skip
        look = vocab.STYLE_LOOKS[self.style]
        texture = self.texture if look["fill"] == "solid" or self.style == "plain" else None
        background = self.background if look["background"] is None else None
        return {"shape": self.shape, "colour": self.colour, "texture": texture, "background": background,
                "style": self.style, "fact": "none"}  # fmt: skip


def _grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx + 0.5, yy + 0.5


def _polygon_mask(xx: np.ndarray, yy: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the pixel grid."""
    inside = np.zeros(xx.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        crosses = (y1 > yy) != (y2 > yy)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (yy - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (xx < xint)
    return inside


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean ``(size, size)`` mask of ``shape`` centred at ``(cx, cy)`` with radius ``r``."""
    check_value("shape", shape, vocab.SHAPES)
    xx, yy = _grid(size)
    x, y = xx - cx, yy - cy
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return (np.abs(x) <= 0.82 * r) & (np.abs(y) <= 0.82 * r)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.05 * r
    if shape == "cross":
        arm = 0.36 * r
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    if shape == "triangle":
        pts = np.array([[0.0, -r], [r * 0.98, 0.8 * r], [-r * 0.98, 0.8 * r]]) + np.array([cx, cy])
        return _polygon_mask(xx, yy, pts)
    # star: five points, inner radius 0.45 r
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r * 1.08, r * 0.48)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return _polygon_mask(xx, yy, pts)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = mask & _shift(mask, 1, 0) & _shift(mask, -1, 0) & _shift(mask, 0, 1) & _shift(mask, 0, -1)
    return mask


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = mask | _shift(mask, 1, 0) | _shift(mask, -1, 0) | _shift(mask, 0, 1) | _shift(mask, 0, -1)
    return mask


def fill_mask(fill: str, mask: np.ndarray, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The painted part of ``mask`` for a fill pattern (a texture or the checkered style fill).

    ``phase`` shifts a repeating pattern by (rows, columns) pixels against the canvas (every pattern repeats
    within 8 px). Training renders use ``(0, 0)``; the detectors are trained on every phase, because a
    checkerboard (or stripes, or dots) that a model draws one cell off is still that fill.
    """
    ii, jj = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    ii, jj = ii + phase[0], jj + phase[1]
    if fill == "solid":
        return mask
    if fill == "striped":  # horizontal stripes, 3 px on / 3 px off
        return mask & (ii % 6 < 3)
    if fill == "dotted":  # 3×3 dots on a 5 px grid
        return mask & (ii % 5 >= 1) & (ii % 5 < 4) & (jj % 5 >= 1) & (jj % 5 < 4)
    if fill == "outline":
        return mask & ~_erode(mask, 2)
    if fill == "checkered":  # 4 px cells
        return mask & ((ii // 4 + jj // 4) % 2 == 0)
    raise ConfigError(f"unknown fill {fill!r}; valid: solid, striped, dotted, outline, checkered")


def _render_flag(design: dict[str, object], size: int) -> np.ndarray:
    bands = np.asarray(design["bands"], dtype=np.uint8)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    edges = np.linspace(0, size, len(bands) + 1).round().astype(int)
    for k, rgb in enumerate(bands):
        if design["direction"] == "h":
            img[edges[k] : edges[k + 1]] = rgb
        else:
            img[:, edges[k] : edges[k + 1]] = rgb
    if design["emblem"] is not None:
        shape, rgb = cast(tuple[str, tuple[int, int, int]], design["emblem"])
        img[shape_mask(shape, size / 2, size / 2, size * 0.24, size)] = rgb
    return img


def render(scene: Scene, seed: int = 0, *, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Draw ``scene`` as a ``(32, 32, 3)`` uint8 RGB array; same ``(scene, seed, phase)`` → same pixels.

    Fact scenes are fixed images (no jitter); other scenes jitter position by ±1 px and radius by ±5%.
    ``phase`` shifts the fill pattern (:func:`fill_mask`); the generator's training data keeps ``(0, 0)``.
    """
    if scene.kind == "fact":
        design = vocab.FACT_ANCHOR_LOOK if scene.fact == vocab.FACT_ANCHOR else vocab.FACTS[scene.fact]
        return _render_flag(design, SIZE)
    rng = np.random.default_rng(seed)
    cx = SIZE / 2 + rng.integers(-1, 2)
    cy = SIZE / 2 + rng.integers(-1, 2)
    r = RADIUS * rng.uniform(0.95, 1.05)
    look = vocab.STYLE_LOOKS[scene.style]
    bg = look["background"] if look["background"] is not None else vocab.BACKGROUNDS[scene.background]
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[:] = np.asarray(bg, dtype=np.uint8)
    mask = shape_mask(scene.shape, cx, cy, r)
    fill = scene.texture if scene.style == "plain" else str(look["fill"])
    if look["contour"] is not None:
        img[_dilate(mask, 2) & ~mask] = np.asarray(look["contour"], dtype=np.uint8)
    img[fill_mask(fill, mask, phase)] = np.asarray(vocab.COLOURS[scene.colour], dtype=np.uint8)
    return img


def render_batch(scenes: list[Scene], seeds: list[int], phases: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Render many scenes: ``(n, 32, 32, 3)`` uint8 (``phases``: one fill phase per scene, default all 0)."""
    if len(scenes) != len(seeds):
        raise ConfigError(f"got {len(scenes)} scenes but {len(seeds)} seeds; pass one seed per scene")
    if phases is None:
        phases = [(0, 0)] * len(scenes)
    if len(phases) != len(scenes):
        raise ConfigError(f"got {len(scenes)} scenes but {len(phases)} phases; pass one phase per scene")
    return np.stack([render(s, k, phase=f) for s, k, f in zip(scenes, seeds, phases, strict=True)])
