"""Generic image corruptions: the synthetic shifts the accuracy estimate is calibrated on.

A label-free estimate has to learn how the model's outputs change when its inputs move away
from the training data, and the held-out images show only the unshifted case. So the model's
held-out images are also scored under a *panel* of generic corruptions (noise, blur, rotation,
contrast, brightness, inversion, pixelation, occlusion) at two or three strengths each: images
whose labels are known, under shifts of known harm (``transferops.estimate`` fits on them).

Strengths are relative to the image (a blur radius or an occluded square as a share of the
shorter side) so that one panel serves 28-pixel digits and 1,000-pixel photographs. Each
corruption takes a PIL image and a numpy generator and returns a new RGB image; a
``Corrupt`` object is a torchvision-style transform that applies one of them before the
model's own preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from transferops.errors import InputError


def _noise(im: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    return Image.fromarray(np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8))


def _blur(im: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(share * min(im.size)))


def _rotate(im: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    return im.rotate(degrees)


def _contrast(im: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(im).enhance(factor)


def _brightness(im: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(im).enhance(factor)


def _invert(im: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    # a share of the batch inverted, not every image: production shifts often reach part of it
    return ImageOps.invert(im) if rng.random() < share else im


def _pixelate(im: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    small = (max(1, round(im.width * share)), max(1, round(im.height * share)))
    return im.resize(small, Image.Resampling.BOX).resize(im.size, Image.Resampling.NEAREST)


def _occlude(im: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    side = max(1, round(share * min(im.size)))
    x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
    out = im.copy()
    out.paste((128, 128, 128), (x, y, x + side, y + side))
    return out


KINDS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "noise": _noise, "blur": _blur, "rotate": _rotate, "contrast": _contrast, "brightness": _brightness,
    "invert": _invert, "pixelate": _pixelate, "occlude": _occlude,
}

# (kind, strength): from mild to severe, so that the fit sees harmless and ruinous shifts alike.
PANEL: tuple[tuple[str, float], ...] = (
    ("noise", 25.0), ("noise", 50.0), ("noise", 100.0),
    ("blur", 0.03), ("blur", 0.07),
    ("rotate", 20.0), ("rotate", 45.0), ("rotate", 135.0),
    ("contrast", 0.6), ("contrast", 0.3),
    ("brightness", 0.5), ("brightness", 1.8),
    ("invert", 0.4), ("invert", 1.0),
    ("pixelate", 0.5), ("pixelate", 0.25),
    ("occlude", 0.35), ("occlude", 0.6),
)


class Corrupt:
    """A transform: ``kind`` at ``strength`` on a PIL image, returned as RGB. Deterministic for
    a given ``seed`` and call order (the loaders that use it run in the calling process)."""

    def __init__(self, kind: str, strength: float, seed: int = 0) -> None:
        if kind not in KINDS:
            raise InputError(f"unknown corruption {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind, self.strength = kind, float(strength)
        self._fn = KINDS[kind]
        self._rng = np.random.default_rng(seed)

    def __call__(self, im: Any) -> Image.Image:
        return self._fn(im.convert("RGB"), self.strength, self._rng)

    def __repr__(self) -> str:
        return f"Corrupt({self.kind!r}, {self.strength})"
