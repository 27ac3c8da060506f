"""Sample datasets made offline, for the demo and the tests.

* ``write_font_digits``: a *source* domain with plenty of data: digits 0-9 typeset
  in the TrueType fonts that matplotlib ships, jittered in size, position and angle.
* ``write_handwritten_digits``: a small *target* domain of real images: the 1,797
  handwritten digits (UCI optical recognition set) that scikit-learn ships, optionally noised
  (``flatten_labelled`` turns such a tree into an unlabelled production batch and its labels).
* ``write_shapes``: tiny coloured shapes for fast tests, with a ``style`` knob
  that shifts the distribution.

All are deterministic for a seed, so a rerun rewrites the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transferops.errors import InputError

DIGITS = [str(d) for d in range(10)]
_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
          "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
          "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf"]


def _font_paths() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / f for f in _FONTS if (folder / f).is_file()]
    if not paths:
        raise FileNotFoundError(f"no TrueType fonts found in {folder}; reinstall matplotlib")
    return paths


def write_font_digits(root: str | Path, per_class: int = 300, size: int = 32, seed: int = 0) -> Path:
    """Typeset digits as white-on-black PNGs in ``root/<digit>/``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    fonts = _font_paths()
    for digit in DIGITS:
        (root / digit).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(size * 5 // 8, size * 7 // 8)))
            canvas = Image.new("L", (size * 2, size * 2), 0)
            draw = ImageDraw.Draw(canvas)
            box = draw.textbbox((0, 0), digit, font=font)
            w, h = box[2] - box[0], box[3] - box[1]
            x = (size * 2 - w) / 2 - box[0] + rng.normal(0, size / 16)
            y = (size * 2 - h) / 2 - box[1] + rng.normal(0, size / 16)
            draw.text((x, y), digit, fill=int(rng.integers(190, 256)), font=font)
            canvas = canvas.rotate(float(rng.normal(0, 8)), resample=Image.BILINEAR)
            img = canvas.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
            arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / digit / f"font_{i:05d}.png")
    return root


def write_handwritten_digits(root: str | Path, size: int = 32, limit: int | None = None, start: int = 0,
                             noise: float = 0.0, seed: int = 0, prefix: str = "hand") -> Path:
    """Write scikit-learn's real 8x8 handwritten digits ``start`` .. ``start + limit``, upscaled,
    as PNGs ``root/<digit>/<prefix>_<index>.png``; ``noise`` adds Gaussian noise of that many grey
    levels (a visible corruption, for a production batch that drifts)."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    stop = len(digits.images) if limit is None else min(start + limit, len(digits.images))
    rng = np.random.default_rng(seed)
    for i in range(start, stop):
        label = str(int(digits.target[i]))
        (root / label).mkdir(parents=True, exist_ok=True)
        arr = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        img = Image.fromarray(arr, "L").resize((size, size), Image.BILINEAR)
        if noise:
            noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (size, size))
            img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        img.save(root / label / f"{prefix}_{i:04d}.png")
    return root


def flatten_labelled(tree: str | Path, dest: str | Path) -> Path:
    """Move the images of an ImageFolder ``tree`` into one flat folder ``dest`` (an unlabelled
    production batch) and write their labels to ``dest``'s sibling ``<dest>-labels.csv``
    (``path,label``, paths relative to ``dest``: labels that arrive later). Returns the CSV."""
    tree, dest = Path(tree), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for f in sorted(tree.glob("*/*.png")):
        f.rename(dest / f.name)
        rows.append(f"{f.name},{f.parent.name}")
    labels = dest.with_name(f"{dest.name}-labels.csv")
    labels.write_text("\n".join(rows) + "\n")
    return labels


_SHAPES = ("circle", "square", "triangle", "cross")


def write_shapes(root: str | Path, per_class: int = 20, classes: int = 3, size: int = 32, seed: int = 0,
                 style: str = "plain") -> Path:
    """Coloured shapes on a background; ``style="shifted"`` changes colours and adds noise."""
    if not 1 <= classes <= len(_SHAPES):
        raise InputError(f"classes={classes} must be between 1 and {len(_SHAPES)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for shape in _SHAPES[:classes]:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = (20, 20, 30) if style == "plain" else (200, 190, 60)
            img = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(img)
            r = rng.uniform(size * 0.2, size * 0.4)
            cx, cy = rng.uniform(r, size - r, 2)
            colour = tuple(int(v) for v in rng.integers(120, 256, 3)) if style == "plain" else (30, 30, int(rng.integers(0, 90)))
            if shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
            elif shape == "square":
                draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            else:
                draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=3)
                draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=3)
            if style != "plain":
                arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 25, (size, size, 3))
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            img.save(root / shape / f"{shape}_{i:04d}.png")
    return root
