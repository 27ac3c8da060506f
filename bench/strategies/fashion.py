"""Fashion-MNIST for the strategy benchmark: the IDX reader, image shifts and an ImageFolder writer.

The data comes from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``),
so the benchmark runs offline. A *tree* is ``root/{train,val,test}/<class>/<index>.png``: train and val
are disjoint seeded draws from the Fashion-MNIST train set, test comes from the t10k set, and one
shift is applied to every split. File names are the image's index in its Fashion-MNIST set, so any
PNG can be traced back (and overlaps checked).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

FMNIST = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
# label -> filesystem-safe class folder name (the same names as bench/data_ingest.py)
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

Seed = int | Sequence[int]


class MissingData(FileNotFoundError):
    """The Debian Fashion-MNIST files are not installed; the message says how to get them."""


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array of its declared dtype and shape.

    The header is two zero bytes, a dtype code, the number of dimensions, then one
    big-endian uint32 per dimension (LeCun's MNIST format).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    # native byte order, so callers never meet big-endian arrays
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_split(split: str, root: Path = FMNIST) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of ``split`` ``"train"`` (60k) or ``"test"`` (t10k)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.is_file():
            raise MissingData(f"Fashion-MNIST file {f} is missing; {INSTALL_HINT}")
    x, y = read_idx(images), read_idx(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x, y


# --------------------------------------------------------------------------- shifts
# Each takes uint8 images (H, W) or a stack (N, H, W) and a seed, and returns new uint8 images of the
# same shape; only ``noise`` reads the seed, the others are deterministic anyway.
def clean(x: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """The images unchanged (a copy)."""
    return np.array(x, dtype=np.uint8, copy=True)


def invert(x: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """Photographic negative, 255 - x: same shapes, every intensity flipped."""
    return (255 - np.asarray(x, dtype=np.uint8)).astype(np.uint8)


def rotate(x: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """Rotated 90 degrees counter-clockwise (square images keep their shape)."""
    return np.ascontiguousarray(np.rot90(np.asarray(x, dtype=np.uint8), k=1, axes=(-2, -1)))


NOISE_SIGMA = 60.0


def noise(x: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """Additive Gaussian noise, sigma 60 grey levels, clipped to [0, 255]; the same seed gives the same noise."""
    x = np.asarray(x, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, NOISE_SIGMA, x.shape), 0, 255).round().astype(np.uint8)


BLUR_RADIUS = 1.5


def blur(x: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """PIL's Gaussian blur of radius 1.5 pixels, image by image."""
    x = np.asarray(x, dtype=np.uint8)
    flat = x.reshape(-1, *x.shape[-2:])
    out = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(BLUR_RADIUS))) for im in flat]
    return np.stack(out).reshape(x.shape).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray, Seed], np.ndarray]] = {
    "clean": clean, "invert": invert, "rotate": rotate, "noise": noise, "blur": blur}


# --------------------------------------------------------------------------- trees
@dataclass(frozen=True)
class TreeSpec:
    """What a tree holds: which labels, how many images per class and split, which shift, which draw."""

    classes: tuple[int, ...]
    n_train: int
    n_val: int
    n_test: int | None = None  # None: every test image of each class (1,000 in Fashion-MNIST)
    shift: str = "clean"
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self) | {"classes": list(self.classes)}


def select(labels: np.ndarray, spec: TreeSpec) -> dict[str, dict[int, np.ndarray]]:
    """Indices per split and label: train and val from ``labels`` of the train set, disjoint.

    Each class draws from its own generator (seed, label), so the draw of one class does not
    depend on which other classes a tree has; trees that differ only in their shift hold the
    same images.
    """
    out: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}}
    for c in spec.classes:
        idx = np.flatnonzero(labels == c)
        need = spec.n_train + spec.n_val
        if len(idx) < need:
            raise ValueError(f"class {c} has {len(idx)} train-set images, fewer than {need} (train + val)")
        idx = np.random.default_rng([spec.seed, c]).permutation(idx)
        out["train"][c], out["val"][c] = np.sort(idx[:spec.n_train]), np.sort(idx[spec.n_train:need])
    return out


def select_test(labels: np.ndarray, spec: TreeSpec) -> dict[int, np.ndarray]:
    """Test-set indices per label: all of them, or a seeded draw of ``n_test``."""
    out = {}
    for c in spec.classes:
        idx = np.flatnonzero(labels == c)
        if spec.n_test is not None and spec.n_test < len(idx):
            idx = np.sort(np.random.default_rng([spec.seed, c, 1]).choice(idx, spec.n_test, replace=False))
        out[c] = idx
    return out


def write_tree(root: str | Path, spec: TreeSpec, train: tuple[np.ndarray, np.ndarray] | Callable[[], tuple],
               test: tuple[np.ndarray, np.ndarray] | Callable[[], tuple],
               names: Sequence[str] = CLASSES) -> Path:
    """Make (or reuse) the ImageFolder tree ``root`` of ``spec``; returns ``root``.

    ``train`` and ``test`` are (images, labels) or callables returning them, so an existing tree
    never loads the data. The tree is written to a temporary sibling folder and renamed into
    place, so an interrupted run leaves no half tree; ``root/tree.json`` records the spec, and a
    tree with another spec is refused rather than silently reused or deleted.
    """
    root = Path(root)
    marker = root / "tree.json"
    if root.exists():
        if marker.is_file() and json.loads(marker.read_text()) == spec.as_dict():
            return root
        raise FileExistsError(f"{root} exists but is not a tree of {spec}; remove it or choose another folder")
    if spec.shift not in SHIFTS:
        raise ValueError(f"unknown shift {spec.shift!r}; choose one of {', '.join(SHIFTS)}")
    shift = SHIFTS[spec.shift]
    xtr, ytr = train() if callable(train) else train
    xte, yte = test() if callable(test) else test
    picks = select(ytr, spec)
    picks["test"] = select_test(yte, spec)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split_no, (split, per_class) in enumerate(picks.items()):
            x = xte if split == "test" else xtr
            for c, idx in per_class.items():
                folder = tmp / split / names[c]
                folder.mkdir(parents=True)
                # the seed names the split and class: noise differs between images, not between reruns
                for i, img in zip(idx, shift(x[idx], [spec.seed, split_no, c]), strict=True):
                    Image.fromarray(img).save(folder / f"{i:05d}.png")
        (tmp / "tree.json").write_text(json.dumps(spec.as_dict(), indent=1))
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def tree_counts(root: str | Path) -> dict[str, dict[str, int]]:
    """PNG files per split and class folder of a tree: ``{split: {class: n}}``."""
    root = Path(root)
    return {s.name: {c.name: len(list(c.glob("*.png"))) for c in sorted(s.iterdir()) if c.is_dir()}
            for s in sorted(root.iterdir()) if s.is_dir()}
