"""Decode checks of image bytes, light enough for worker processes (no torch import).

Every image is fully decoded once at ingest, so a truncated or hostile file fails
validation, never a training run hours later.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from io import BytesIO

from PIL import Image

# Modes PIL decodes but that need care when made RGB (16/32-bit, CMYK, palettes, alpha).
SPECIAL_MODES = {"I;16", "I;16B", "I;16L", "I", "F", "CMYK", "P", "PA", "RGBA", "LA", "1"}


def inspect_bytes(raw: bytes, max_pixels: int) -> dict[str, object]:
    """sha256, size, mode and decode status of one image's bytes."""
    info: dict[str, object] = {"decodes": False, "error": "", "width": 0, "height": 0, "mode": "",
                               "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    if not raw:
        info["error"] = "empty file"
        return info
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(raw)) as im:
                info.update(width=im.width, height=im.height, mode=im.mode)
                if im.width * im.height > max_pixels:
                    raise Image.DecompressionBombError(f"{im.width}x{im.height}")
                im.load()  # full decode: truncated files fail here, not at training time
        info["decodes"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        info["error"] = f"decompression bomb: over {max_pixels} pixels"
    except Exception as exc:  # PIL raises many types for bad files; all mean "does not decode"
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): noise in a report
        text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
        info["error"] = f"{exc.__class__.__name__}: {text}"[:200]
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return info


def inspect_file(args: tuple[str, int]) -> dict[str, object]:
    """``inspect_bytes`` of a file; unreadable files become a row with the reason."""
    path, max_pixels = args
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return {"decodes": False, "error": f"unreadable: {exc.strerror}", "width": 0, "height": 0, "mode": "",
                "bytes": 0, "sha256": ""}
    return inspect_bytes(raw, max_pixels)


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
