"""Decode checks of image bytes, light enough for worker processes (no torch import).

Every image is fully decoded once at ingest, so a truncated or hostile file fails
validation, never a training run hours later.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from contextlib import contextmanager
from io import BytesIO

from PIL import Image

# Modes PIL decodes but that need care when made RGB (16/32-bit, CMYK, palettes, alpha).
SPECIAL_MODES = {"I;16", "I;16B", "I;16L", "I", "F", "CMYK", "P", "PA", "RGBA", "LA", "1"}


# Field order of an inspection; ``transferops.data.TABLE_COLUMNS`` continues it.
FIELDS = ("decodes", "error", "width", "height", "mode", "bytes", "sha256")


def inspect_bytes(raw: bytes, max_pixels: int) -> dict[str, object]:
    """sha256, size, mode and decode status of one image's bytes."""
    with _bomb_guard(max_pixels):
        return dict(zip(FIELDS, _inspect(raw, max_pixels)))


def inspect_files(paths: list[str], max_pixels: int) -> list[tuple]:
    """``FIELDS`` tuples of many files; unreadable files become a row with the reason.

    One call per chunk of files, as worker processes run it: the warning filter and
    PIL's pixel limit are set once per chunk, and tuples pickle at a third of the cost of
    dicts, which matters at tens of thousands of images.
    """
    out = []
    with _bomb_guard(max_pixels):
        for path in paths:
            try:
                raw = read_file(path)
            except OSError as exc:
                out.append((False, f"unreadable: {exc.strerror}", 0, 0, "", 0, ""))
                continue
            out.append(_inspect(raw, max_pixels))
    return out


def read_file(path: str) -> bytes:
    """A whole file's bytes; plain ``os`` calls cost half of ``open().read()`` for small files."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = [os.read(fd, size + 1)]  # +1: a file that grew since fstat is still read to its end
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextmanager
def _bomb_guard(max_pixels: int):
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _inspect(raw: bytes, max_pixels: int) -> tuple:
    sha = hashlib.sha256(raw).hexdigest()
    if not raw:
        return (False, "empty file", 0, 0, "", 0, sha)
    width = height = 0
    mode = ""
    try:
        with Image.open(BytesIO(raw)) as im:
            width, height, mode = im.width, im.height, im.mode
            if width * height > max_pixels:
                raise Image.DecompressionBombError(f"{width}x{height}")
            im.load()  # full decode: truncated files fail here, not at training time
        return (True, "", width, height, mode, len(raw), sha)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        error = f"decompression bomb: over {max_pixels} pixels"
    except Exception as exc:  # PIL raises many types for bad files; all mean "does not decode"
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): noise in a report
        text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
        error = f"{exc.__class__.__name__}: {text}"[:200]
    return (False, error, width, height, mode, len(raw), sha)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decodable mode as 8-bit RGB: 16/32-bit rescaled (not clipped), alpha over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if hi > 255 and im.mode.startswith("I;16") else max(hi, 1.0))
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype("uint8"), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")
