"""Profiles: the stored reference sample a drift test compares new data against.

A *source profile* describes the source domain of a pretrained backbone (its own training
data, or for ImageNet weights a user's ImageNet sample); a *training profile* describes
the data a registered target model was trained on, for monitoring. Both are one ``.npz``:

* ``embeddings`` (n, d) float32: backbone outputs (the classifier's input);
* ``probs`` (n, C) float32: the model's softmax outputs, for label-shift tests (BBSD);
* ``labels`` (n,) int: class index of each sample in ``classes``, or -1 when unknown;
* ``meta``: JSON with ``classes``, ``backbone``, ``weights``, ``transforms``, ``data`` and
  ``created``, so a profile names the network that reproduces its embeddings.

Older profiles that hold only ``embeddings`` still load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferops.drift.base import DriftInputError, check_embeddings


@dataclass
class Profile:
    """Reference embeddings with their softmax outputs, labels and provenance."""

    embeddings: np.ndarray
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def __len__(self) -> int:
        return len(self.embeddings)

    def save(self, path: str | Path) -> Path:
        """Write the profile as one compressed ``.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"embeddings": self.embeddings.astype(np.float32), "meta": np.array(json.dumps(self.meta, default=str))}
        if self.probs is not None:
            arrays["probs"] = self.probs.astype(np.float32)
        if self.labels is not None:
            arrays["labels"] = self.labels.astype(np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)  # a reader never sees half a profile
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        """Read a profile written by :meth:`save` (or an older embeddings-only one)."""
        path = Path(path)
        if not path.is_file():
            raise DriftInputError(f"profile {path} does not exist; build one with `transferops profile`")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "embeddings" not in z:
                    raise DriftInputError(f"profile {path} has no 'embeddings' array; rebuild it with `transferops profile`")
                emb = check_embeddings(z["embeddings"], f"profile {path} embeddings")
                probs = z["probs"] if "probs" in z else None
                labels = z["labels"] if "labels" in z else None
                meta = json.loads(str(z["meta"])) if "meta" in z else {}
        except (OSError, ValueError) as exc:
            if isinstance(exc, DriftInputError):
                raise
            raise DriftInputError(f"profile {path} is unreadable ({exc.__class__.__name__}); rebuild it with `transferops profile`") from None
        for name, arr in (("probs", probs), ("labels", labels)):
            if arr is not None and len(arr) != len(emb):
                raise DriftInputError(f"profile {path}: {name} has {len(arr)} rows but embeddings has {len(emb)}; rebuild it")
        return cls(emb, probs, labels, meta)


def build_profile(model: Any, records: Sequence[Any], class_to_idx: dict[str, int], weights: Any, *,
                  size: int, batch_size: int = 64, device: Any = "cpu", meta: dict[str, Any] | None = None) -> Profile:
    """Embed up to ``size`` of ``records`` (an even, deterministic spread) with ``model``.

    Preprocessing is ``weights.transforms()``, as for training. Labels are the records'
    classes when they belong to ``class_to_idx``, else -1.
    """
    import torch

    from transferops.loading import make_loader, split_preprocessing
    from transferops.training import extract_embeddings

    if not records:
        raise DriftInputError("no images to profile; pass a folder with at least one image per class")
    step = max(1, len(records) // size)
    chosen = list(records[::step][:size])
    per_image, per_batch = split_preprocessing(weights.transforms())
    loader = make_loader(chosen, class_to_idx, per_image, batch_size=batch_size, shuffle=False)
    emb, probs = extract_embeddings(model, loader, torch.device(device), limit=size, batch_transform=per_batch)
    labels = np.array([class_to_idx.get(r.label, -1) for r in chosen], dtype=np.int64)
    info = {"classes": list(class_to_idx), "n": int(len(emb)), "dim": int(emb.shape[1]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} | (meta or {})
    return Profile(emb.astype(np.float32), probs.astype(np.float32), labels, info)
