"""Torch datasets and loaders over records: loose files or store packs.

Kept apart from ``transferops.data`` so that ingesting and validating data never
imports torch (a second of start-up on every ``transferops data add``).
"""

from __future__ import annotations

import io
import mmap
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferops.data import UNLABELLED, ImageRecord, read_bytes
from transferops.imagecheck import to_rgb


class ImageDataset(Dataset):
    """Records as a torch dataset: RGB PIL image -> ``transform`` -> (tensor, class index).

    An unlabelled record (label ``UNLABELLED``) yields class index -1, so batches of
    unlabelled images (drift checks, predictions) go through the same loaders. A label
    missing from ``class_to_idx`` still raises KeyError: that is a bug, not missing data.

    Store images are sliced out of memory-mapped packs: no open/seek/read per image,
    and every DataLoader worker maps the packs itself (maps are not pickled).
    """

    def __init__(self, records: Sequence[ImageRecord], class_to_idx: dict[str, int], transform: Callable | None):
        self.records = list(records)
        self.class_to_idx = class_to_idx
        self.transform = transform
        self._maps: dict[str, mmap.mmap] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return len(self.records)

    def _bytes(self, r: ImageRecord) -> bytes:
        key = str(r.pack)
        m = self._maps.get(key)
        if m is None:
            with open(r.pack, "rb") as fh:
                m = self._maps[key] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return m[r.offset:r.offset + r.size]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        with Image.open(io.BytesIO(self._bytes(r)) if r.pack is not None else r.path) as im:
            img = to_rgb(im)
        x = self.transform(img) if self.transform else img
        return x, -1 if r.label == UNLABELLED else self.class_to_idx[r.label]



def make_loader(records: Sequence[ImageRecord], class_to_idx: dict[str, int], transform: Callable,
                *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                device: torch.device | str | None = None, shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``seed``.

    For a CUDA ``device`` (None: CUDA when present) batches come in pinned memory, so the
    copy to the GPU can overlap compute (``non_blocking``). Worker processes stay up between
    epochs and keep four batches each in flight.

    ``shard=(rank, world)`` gives one data-parallel process its part: a shuffled loader takes
    a ``DistributedSampler`` (every rank the same number of images, reshuffled per epoch by
    ``sampler.set_epoch``), an ordered one every ``world``-th image from ``rank`` on, so that
    evaluation sums over the ranks count each image exactly once.
    """
    gen = torch.Generator().manual_seed(seed)
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    extra: dict = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    if shard is not None and shuffle:
        from torch.utils.data.distributed import DistributedSampler

        dataset = ImageDataset(records, class_to_idx, transform)
        extra["sampler"] = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, generator=gen, num_workers=num_workers, pin_memory=cuda, **extra)
    if shard is not None:
        records = list(records)[shard[0]::shard[1]]
    return DataLoader(ImageDataset(records, class_to_idx, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=gen, num_workers=num_workers, pin_memory=cuda, **extra)


def split_preprocessing(transform: Callable) -> tuple[Callable, Callable | None]:
    """``transform`` as a per-image part and a per-batch part with the same result, bit for bit.

    For torchvision's ``ImageClassification`` preset (what every backbone and bundle here
    uses), the image keeps its resize, centre crop and conversion to a uint8 tensor, and the
    float conversion and normalisation run once on the whole batch: the per-image half of the
    preset's work is call overhead on small images (10,000 images at 32 px: about 2 s on 2 CPU
    cores), and uint8 batches move a quarter of the bytes to a GPU. Any other transform is
    returned whole, with no batch part.
    """
    from torchvision.transforms import functional as F
    from torchvision.transforms._presets import ImageClassification

    if type(transform) is not ImageClassification:
        return transform, None
    t = transform

    def per_image(img: Image.Image) -> torch.Tensor:
        img = F.resize(img, t.resize_size, interpolation=t.interpolation, antialias=t.antialias)
        return F.pil_to_tensor(F.center_crop(img, t.crop_size))

    def per_batch(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.convert_image_dtype(x, torch.float), mean=t.mean, std=t.std)

    return per_image, per_batch


def random_resized_crop_batch(x: torch.Tensor, scale: tuple[float, float] = (0.75, 1.0),
                              ratio: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """:func:`train_transform`'s random crop for each image of a float NCHW batch, on its device.

    Each image gets its own crop (area a ``scale`` fraction, aspect ratio in ``ratio``, placed
    uniformly inside the image), resampled bilinearly back to the batch's size in one
    ``grid_sample``: a GPU does the whole batch in one kernel, where PIL crops image by image on
    the CPU. Random numbers come from torch's generator of the batch's device (seeded by
    ``seed_everything``).
    """
    import math

    from torch.nn import functional as nnf

    n, dev = x.shape[0], x.device
    area = torch.empty(n, device=dev).uniform_(*scale)
    aspect = torch.exp(torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    # the crop's centre in [-1, 1] coordinates, so that the crop stays inside the image
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def device_preprocessing(transform: Callable, augment: bool) -> tuple[Callable, Callable | None]:
    """:func:`split_preprocessing` for a training loader: with ``augment``, the random crop of
    :func:`train_transform` moves into the batch part too (:func:`random_resized_crop_batch`,
    after the conversion to float and before normalising). The crop is taken of the already
    resized image rather than of the original: the same distribution of shifts and scalings,
    at the model's resolution. No batch part (None) for a transform that cannot be split."""
    from torchvision.transforms import functional as F

    per_image, per_batch = split_preprocessing(transform)
    if per_batch is None or not augment:
        return per_image, per_batch
    t = transform

    def augmented(x: torch.Tensor) -> torch.Tensor:
        x = random_resized_crop_batch(F.convert_image_dtype(x, torch.float))
        return F.normalize(x, mean=t.mean, std=t.std)

    return per_image, augmented


def train_transform(base: Callable) -> Callable:
    """Light augmentation in front of the weights' own preprocessing ``base``.

    A random crop of 75-100 % of the image at nearly its aspect ratio, resized back: the
    object shifts and scales a little. No flips or colour changes, which would change what
    digits, text or medical images mean; no padding, whose fill colour would be a new cue.
    """
    from torchvision.transforms import v2

    size = getattr(base, "resize_size", None) or getattr(base, "crop_size", [224])
    return v2.Compose([v2.RandomResizedCrop(list(size)[:1] * 2, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
                       base])


def loader_transforms(transform: Callable, augment: bool,
                      on_device: bool) -> tuple[Callable, Callable, tuple[Callable | None, Callable | None]]:
    """The train and validation loaders' transforms, and the batch parts that finish them on the
    device (``fit``'s ``batch_transforms``; None where the loader does everything).

    ``on_device`` (a GPU, ``training.device_preprocess``): the loaders decode and resize to uint8,
    and the random crop (:func:`device_preprocessing`), the conversion and the normalisation run
    per batch on the device. Otherwise, or for a transform that cannot be split, the loaders
    apply :func:`train_transform` (with ``augment``) and ``transform`` whole.
    """
    if on_device:
        per_image, per_batch = device_preprocessing(transform, augment)
        if per_batch is not None:
            val_image, val_batch = split_preprocessing(transform)
            return per_image, val_image, (per_batch, val_batch)
    return train_transform(transform) if augment else transform, transform, (None, None)


def compute_mean_std(records: Sequence[ImageRecord], size: int, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Channel mean/std of a source dataset, for a source model's own preprocessing."""
    from torchvision.transforms import functional as F

    acc = torch.zeros(3, dtype=torch.float64)
    acc2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for r in list(records)[:limit]:
        with Image.open(io.BytesIO(read_bytes(r))) as im:
            x = F.to_tensor(F.resize(to_rgb(im), [size, size])).double()
        acc += x.mean((1, 2))
        acc2 += (x**2).mean((1, 2))
        n += 1
    mean = acc / max(n, 1)
    std = (acc2 / max(n, 1) - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std.clamp_min(1e-3)]
