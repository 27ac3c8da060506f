"""Datasets as records: ImageFolder trees and manifests, stable splits, an image table.

Two input layouts:

* an ImageFolder tree: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``;
* a manifest (``.csv`` or ``.parquet``) with columns ``path,label[,split]``, paths
  relative to the manifest's folder.

Without explicit splits, each image's split is a hash of its class and file
name, so appending images to a dataset never moves an old image between splits
(which would leak test images into a later model's training data).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet")


class DatasetError(ValueError):
    """The dataset's layout or manifest is unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: absolute path, class label, split."""

    path: Path
    label: str
    split: str


@dataclass
class ImageSet:
    """All records of a dataset and its sorted class list."""

    root: Path
    records: list[ImageRecord]
    classes: list[str]

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{split: {class: n}}``."""
        out: dict[str, dict[str, int]] = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for r in self.records:
            out[r.split][r.label] = out[r.split].get(r.label, 0) + 1
        return out

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of one item from its key (class/file name)."""
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def scan_dataset(source: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15) -> ImageSet:
    """Read an ImageFolder tree or a manifest into records.

    >>> ds = scan_dataset("data/")          # doctest: +SKIP
    >>> ds.classes, ds.counts()["train"]    # doctest: +SKIP
    """
    source = Path(source).expanduser().resolve()
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        return _scan_manifest(source, val_fraction, test_fraction)
    if not source.is_dir():
        raise DatasetError(f"dataset {source} does not exist; pass an ImageFolder directory or a .csv/.parquet manifest")
    for name in ("manifest.csv", "manifest.parquet"):
        if (source / name).is_file():
            return _scan_manifest(source / name, val_fraction, test_fraction)
    split_dirs = [d for d in SPLITS if (source / d).is_dir()]
    records: list[ImageRecord] = []
    classes: set[str] = set()
    if split_dirs:
        if "train" not in split_dirs:
            raise DatasetError(f"dataset {source} has {'/'.join(split_dirs)}/ folders but no train/; add train/<class>/ folders")
        for split in split_dirs:
            recs, cls = _scan_classes(source / split, lambda _c, _f, s=split: s)
            records += recs
            classes |= cls
    else:
        recs, cls = _scan_classes(source, lambda c, f: hash_split(f"{c}/{f}", val_fraction, test_fraction))
        records, classes = recs, cls
    if not classes:
        raise DatasetError(f"dataset {source} has no class folders; lay it out as {source}/<class>/<image>")
    return ImageSet(source, records, sorted(classes))


def _scan_classes(root: Path, split_of: Callable[[str, str], str]) -> tuple[list[ImageRecord], set[str]]:
    records, classes = [], set()
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes.add(class_dir.name)
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                rel = f.relative_to(class_dir).as_posix()
                records.append(ImageRecord(f, class_dir.name, split_of(class_dir.name, rel)))
    return records, classes


def _scan_manifest(manifest: Path, val_fraction: float, test_fraction: float) -> ImageSet:
    try:
        df = pd.read_csv(manifest) if manifest.suffix.lower() == ".csv" else pd.read_parquet(manifest)
    except Exception as exc:  # parser errors differ by format; all mean the same to the user
        raise DatasetError(f"manifest {manifest} cannot be read ({exc.__class__.__name__}: {exc}); fix the file") from None
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise DatasetError(f"manifest {manifest} lacks column(s) {', '.join(missing)}; it needs path,label[,split]")
    base = manifest.parent.resolve()
    records = []
    for i, row in enumerate(df.itertuples(index=False), start=2):
        path = (base / str(row.path)).resolve()
        if not path.is_relative_to(base):
            raise DatasetError(f"manifest {manifest} line {i}: path {row.path} escapes {base}; keep images under the manifest's folder")
        split = getattr(row, "split", None)
        if split is None or (isinstance(split, float) and np.isnan(split)):
            split = hash_split(f"{row.label}/{Path(str(row.path)).name}", val_fraction, test_fraction)
        if split not in SPLITS:
            raise DatasetError(f"manifest {manifest} line {i}: split '{split}' is not one of {', '.join(SPLITS)}")
        records.append(ImageRecord(path, str(row.label), str(split)))
    return ImageSet(base, records, sorted({r.label for r in records}))


# --------------------------------------------------------------------------- image table
TABLE_COLUMNS = ["path", "label", "split", "decodes", "error", "width", "height", "mode", "bytes", "sha256"]


def inspect_image(path: Path, max_pixels: int) -> dict[str, object]:
    """Decode one image fully; return its metadata, or the reason it does not decode."""
    info: dict[str, object] = {"decodes": False, "error": "", "width": 0, "height": 0, "mode": "", "bytes": 0, "sha256": ""}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        info["error"] = f"unreadable: {exc.strerror}"
        return info
    info["bytes"] = len(raw)
    info["sha256"] = hashlib.sha256(raw).hexdigest()
    if not raw:
        info["error"] = "empty file"
        return info
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                info.update(width=im.width, height=im.height, mode=im.mode)
                im.load()  # full decode: truncated files fail here, not at training time
        info["decodes"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        info["error"] = f"decompression bomb: over {max_pixels} pixels"
    except Exception as exc:  # PIL raises many types for bad files; all mean "does not decode"
        info["error"] = f"{exc.__class__.__name__}: {exc}"[:200]
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return info


def image_table(images: ImageSet, max_pixels: int = 40_000_000) -> pd.DataFrame:
    """One row per image with decode status and metadata, for validation."""
    rows = []
    for r in images.records:
        rel = r.path.relative_to(images.root).as_posix() if r.path.is_relative_to(images.root) else str(r.path)
        rows.append({"path": rel, "label": r.label, "split": r.split, **inspect_image(r.path, max_pixels)})
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    # Same bytes in two splits means a test image was (also) trained on.
    splits_per_hash = df[df.sha256 != ""].groupby("sha256")["split"].nunique()
    leaking = set(splits_per_hash[splits_per_hash > 1].index)
    df["duplicate_across_splits"] = df.sha256.isin(leaking)
    return df


def class_count_table(images: ImageSet) -> pd.DataFrame:
    """Images per (split, class), zero rows included, for count expectations."""
    counts = images.counts()
    return pd.DataFrame(
        [{"split": s, "label": c, "count": n} for s, per in counts.items() for c, n in per.items()],
        columns=["split", "label", "count"],
    )


# --------------------------------------------------------------------------- torch
class ImageDataset(Dataset):
    """Records as a torch dataset: RGB PIL image -> ``transform`` -> (tensor, class index)."""

    def __init__(self, records: Sequence[ImageRecord], class_to_idx: dict[str, int], transform: Callable | None):
        self.records = list(records)
        self.class_to_idx = class_to_idx
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        with Image.open(r.path) as im:
            img = im.convert("RGB")
        x = self.transform(img) if self.transform else img
        return x, self.class_to_idx[r.label]


def make_loader(records: Sequence[ImageRecord], class_to_idx: dict[str, int], transform: Callable,
                *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ImageDataset(records, class_to_idx, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=gen, num_workers=num_workers, pin_memory=torch.cuda.is_available())


def per_class_train_size(images: ImageSet) -> float:
    """Mean number of train images per class: the size measure of the strategy rule."""
    n = Counter(r.label for r in images.split("train"))
    return sum(n.values()) / max(len(images.classes), 1)


def compute_mean_std(records: Sequence[ImageRecord], size: int, limit: int = 2000) -> tuple[list[float], list[float]]:
    """Channel mean/std of a source dataset, for a source model's own preprocessing."""
    from torchvision.transforms import functional as F

    acc = torch.zeros(3, dtype=torch.float64)
    acc2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for r in list(records)[:limit]:
        with Image.open(r.path) as im:
            x = F.to_tensor(F.resize(im.convert("RGB"), [size, size])).double()
        acc += x.mean((1, 2))
        acc2 += (x**2).mean((1, 2))
        n += 1
    mean = acc / max(n, 1)
    std = (acc2 / max(n, 1) - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std.clamp_min(1e-3)]
