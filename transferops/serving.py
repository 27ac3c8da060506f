"""The served classifier: what a caller has (encoded image bytes or uint8 arrays) in, class
names and probabilities out, with the preprocessing of the model's own weights inside.

The registered MLflow model (``tasks/served_model.py``) is a thin pyfunc around
:class:`ImageClassifier`, so the code that serves is the code the tests and the monitor run.
Weights come from the bundle's state dict, read with ``torch.load(weights_only=True)``:
loading a model never executes a pickle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferops.errors import InputError
from transferops.imagecheck import to_rgb
from transferops.models import load_bundle, model_from_bundle

# The logged model's artifact holding weights.pt and meta.json (``tasks/served_model.py``).
BUNDLE_ARTIFACT = "bundle"

ImageInput = bytes | bytearray | memoryview | np.ndarray | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top class, its probability, and every class's probability."""

    label: str
    probability: float
    probabilities: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "probabilities": self.probabilities}


def decode_image(item: ImageInput, index: int = 0) -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG...), a uint8 array (H, W) or (H, W, 1|3|4),
    or a PIL image; anything else is an :class:`InputError` naming the row."""
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(item))) as im:
                return to_rgb(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"image {index}: {len(bytes(item))} bytes are not a readable image ({exc}); "
                             "send PNG or JPEG file bytes (base64 in JSON)") from None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise InputError(f"image {index}: an array of dtype {item.dtype} and shape {item.shape}; send uint8 "
                             "(H, W) or (H, W, 1|3|4) pixels")
        return to_rgb(Image.fromarray(item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item))
    raise InputError(f"image {index}: a {type(item).__name__}; send image file bytes or a uint8 array")


class ImageClassifier:
    """A trained bundle ready to answer requests on CPU or ``device``.

    >>> clf = ImageClassifier.from_bundle("bundle/")  # doctest: +SKIP
    >>> clf.predict([open("cat.png", "rb").read()])[0].label  # doctest: +SKIP
    'cat'
    """

    def __init__(self, model: torch.nn.Module, transform: Any, categories: Sequence[str], device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.transform = transform
        self.categories = list(categories)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu") -> "ImageClassifier":
        """Rebuild the bundle's model (weights read without unpickling) with its weights' transforms."""
        bundle = load_bundle(path)
        return cls(model_from_bundle(bundle), bundle.weights.transforms(), bundle.meta["categories"], device)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """Softmax outputs, one row per image in input order, columns in ``categories`` order."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x = torch.stack([self.transform(decode_image(im, start + i)) for i, im in enumerate(chunk)])
            out.append(torch.softmax(self.model(x.to(self.device)).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.categories)), dtype=np.float32)

    def predict(self, images: Sequence[ImageInput], batch_size: int = 64) -> list[Prediction]:
        """The top class and every class's probability for each image."""
        probs = self.probabilities(images, batch_size)
        return [Prediction(self.categories[int(row.argmax())], float(row.max()),
                           {c: float(p) for c, p in zip(self.categories, row, strict=True)}) for row in probs]
