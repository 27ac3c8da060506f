"""Embeddings computed once and cached: the head input and every backbone block's pooled output.

Feature extraction, LP-FT's probe and the ``auto`` rule's transferability measures all
read what a frozen network makes of the same images. Running the backbone once and
keeping the result (per image set, weights and preprocessing) turns their epochs into
matrix products on a few megabytes. The cache key names the records (path, pack slice,
label, split), the weights file's content hash and the transforms, so a new data
version or new weights never read a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import Weights

    from transferops.data import ImageRecord

HEAD = "head"  # the input of the final classifier layer


@dataclass
class FeatureSet:
    """Features of one image list: ``layers[name]`` is (n, dim); ``labels`` are class indices (-1: none)."""

    layers: dict[str, np.ndarray]
    labels: np.ndarray
    cached: bool = False  # read from the cache rather than computed

    @property
    def head(self) -> np.ndarray:
        return self.layers[HEAD]


def records_key(records: Sequence["ImageRecord"]) -> str:
    """A digest of what the records are: store images by pack slice, loose files by size and time."""
    h = hashlib.sha1()
    for r in records:
        if r.pack is not None:
            ident = f"{r.pack}:{r.offset}:{r.size}"
        else:
            st = os.stat(r.path)
            ident = f"{r.path}:{st.st_size}:{st.st_mtime_ns}"
        h.update(f"{ident}|{r.label}|{r.split}\n".encode())
    return h.hexdigest()


def weights_key(weights: "Weights") -> str:
    """The weights' identity: a local file by its content, a torchvision enum by its URL (the
    file name carries its own hash prefix)."""
    url = weights.url
    if url.startswith(("http://", "https://")) or not Path(url).is_file():
        return url
    h = hashlib.sha256()
    with open(url, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pool(out: Any) -> torch.Tensor:
    """A block's output as one vector per image: global average over space or tokens."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = out.float()
    if out.dim() == 4:
        return out.mean((2, 3))
    if out.dim() == 3:
        return out.mean(1)
    return out.flatten(1)


@torch.inference_mode()
def extract_features(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
                     blocks: Sequence[tuple[str, nn.Module]] = (), *, amp: bool = False,
                     channels_last: bool = False, batch_transform: Callable | None = None) -> FeatureSet:
    """One forward pass of ``model`` (eval mode) over ``loader``: the head layer's input and the
    pooled output of each of ``blocks``, as float32. ``amp`` (bf16 autocast) and ``channels_last``
    apply on CUDA only, as in training; ``batch_transform`` finishes preprocessing on the device
    (:func:`transferops.loading.split_preprocessing`)."""
    from transferops.models import head_layer
    from transferops.training import _autocast, _to_device

    captured: dict[str, list[torch.Tensor]] = {HEAD: []}
    hooks = [head_layer(model)[2].register_forward_hook(lambda _m, inp, _o: captured[HEAD].append(inp[0].flatten(1).float()))]
    for name, block in blocks:
        captured[name] = []
        hooks.append(block.register_forward_hook(lambda _m, _i, out, n=name: captured[n].append(_pool(out))))
    labels: list[torch.Tensor] = []
    model.eval().to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    try:
        for images, targets in loader:
            with _autocast(device, amp):
                model(_to_device(images, device, channels_last, batch_transform))
            labels.append(torch.as_tensor(targets))
    finally:
        for h in hooks:
            h.remove()
    # kept on the device until here: one copy to the host, not one per batch
    layers = {k: torch.cat(v).cpu().numpy() for k, v in captured.items() if v}
    return FeatureSet(layers, torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64))


def cached_features(cache_dir: Path | None, model: nn.Module, weights: "Weights", records: Sequence["ImageRecord"],
                    class_to_idx: dict[str, int], *, batch_size: int, device: torch.device,
                    blocks: Sequence[tuple[str, nn.Module]] = (), extra_key: Any = None) -> FeatureSet:
    """:func:`extract_features` of ``records`` preprocessed by ``weights.transforms()``, read from
    ``cache_dir`` when the same records, weights, transforms and layers were embedded before.

    ``extra_key`` must name anything else the features depend on (the backbone name).
    """
    from transferops.loading import make_loader, split_preprocessing
    from transferops.models import transforms_spec

    names = [n for n, _ in blocks]
    key = hashlib.sha1(json.dumps([records_key(records), weights_key(weights), transforms_spec(weights), names,
                                   sorted(class_to_idx.items()), extra_key, "v1"], default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return FeatureSet({k[2:]: z[k] for k in z.files if k.startswith("l_")}, z["labels"], cached=True)
    per_image, per_batch = weights.transforms(), None
    if device.type == "cuda":  # decode on the CPU, normalise on the GPU: the same tensors, bit for bit
        per_image, per_batch = split_preprocessing(per_image)
    loader = make_loader(records, class_to_idx, per_image, batch_size=batch_size, shuffle=False, device=device)
    fs = extract_features(model, loader, device, blocks, batch_transform=per_batch)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, labels=fs.labels, **{f"l_{k}": v for k, v in fs.layers.items()})
        os.replace(tmp, path)  # a reader never sees half a file
    return fs
