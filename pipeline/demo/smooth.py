"""Distinct smooth images, the kind a blur dataset is full of and a near-duplicate finder must
keep apart: random 8×8 colour fields upscaled, low-frequency colour fields on gradients, skies
with soft clouds, grey fog over a faint horizon. Seeded; used by the real-photo dedup benchmark
(``benchmarks/realphotos.py``) and the dedup tests.

Their low-frequency parts are bicubic upscalings of a few random values, so features sit on a
lattice (cell centres and knots) that is the same for every field of one size and cell count:
two distinct fields line up there, which is what makes them hard.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image


def _upscaled_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator,
                    channels: int = 3) -> np.ndarray:
    """(H, W, C) float32 in ~[-1, 1]: a random cells-sized field upscaled bicubically."""
    small = rng.uniform(-1, 1, size=(cells[1], cells[0], channels)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).reshape(
        shape[0], shape[1], channels)


def field8(rng: np.random.Generator) -> Image.Image:
    """A random 8×8 colour field upscaled to 96×72."""
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
    return small.resize((96, 72), Image.Resampling.BICUBIC)


def lowfreq(rng: np.random.Generator) -> Image.Image:
    """A low-frequency colour field on a two-colour gradient, 160-400 px a side."""
    w, h = (int(v) for v in rng.integers(160, 401, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    field = a * (1 - ramp[..., None]) + b * ramp[..., None]
    cells = tuple(int(v) for v in rng.integers(2, 6, size=2))
    field += float(rng.uniform(15, 50)) * _upscaled_noise((h, w), cells, rng)
    return Image.fromarray(np.clip(np.rint(field), 0, 255).astype(np.uint8), "RGB")


def sky(rng: np.random.Generator) -> Image.Image:
    """Blue sky from zenith to horizon with soft clouds, 300-480 px wide."""
    w = int(rng.integers(300, 481))
    h = round(w / float(rng.uniform(1.2, 1.8)))
    t = (np.arange(h, dtype=np.float32) / h) ** float(rng.uniform(0.6, 1.6))
    top = np.array([40, 90, 190], np.float32) + rng.uniform(-25, 25, 3).astype(np.float32)
    bottom = np.array([190, 215, 240], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    field = np.broadcast_to((top * (1 - t[:, None]) + bottom * t[:, None])[:, None, :],
                            (h, w, 3)).copy()
    clouds = _upscaled_noise((h, w), tuple(int(v) for v in rng.integers(3, 8, size=2)), rng, 1)
    clouds = np.clip(clouds[..., 0] - float(rng.uniform(-0.2, 0.4)), 0, None) ** 1.5
    cover = float(rng.uniform(60, 160))
    field += cover * clouds[..., None] * (np.array([250, 250, 252], np.float32) - field) / 255
    return Image.fromarray(np.clip(np.rint(field), 0, 255).astype(np.uint8), "RGB")


def fog(rng: np.random.Generator) -> Image.Image:
    """Grey fog: low-contrast drifting banks over a faint dark horizon, 300-480 px wide."""
    w = int(rng.integers(300, 481))
    h = round(w / float(rng.uniform(1.2, 1.8)))
    base = float(rng.uniform(150, 225))
    banks = _upscaled_noise((h, w), tuple(int(v) for v in rng.integers(3, 7, size=2)), rng, 1)
    field = base + float(rng.uniform(12, 30)) * banks[..., 0]
    horizon = float(rng.uniform(0.4, 0.8)) * h
    yy = np.arange(h, dtype=np.float32)[:, None]
    profile = _upscaled_noise((1, w), (int(rng.integers(4, 10)), 1), rng, 1)[0, :, 0]
    ground = 1 / (1 + np.exp(-(yy - horizon - 0.08 * h * profile[None, :]) / (0.03 * h)))
    field -= float(rng.uniform(20, 60)) * ground
    tint = rng.uniform(-6, 6, 3).astype(np.float32)
    rgb = field[..., None] + tint
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


SMOOTH_MAKERS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "field8": field8, "lowfreq": lowfreq, "sky": sky, "fog": fog,
}
