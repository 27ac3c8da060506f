"""Datasets as records: ImageFolder trees and manifests, stable splits, an image table.

Two input layouts:

* an ImageFolder tree: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``;
* a manifest (``.csv`` or ``.parquet``) with columns ``path,label[,split]``, paths
  relative to the manifest's folder.

Without explicit splits, each image's split is a hash of its class and file
name, so appending images to a dataset never moves an old image between splits
(which would leak test images into a later model's training data).

Missing split folders are carved out of ``train/`` with that same hash: with
``train/`` and ``test/`` but no ``val/`` (most public datasets), a ``train/`` image
goes to val exactly when the unsplit layout would put it in val (``hash_split`` of
``"<class>/<path under the class folder>"`` with ``data.val_fraction``); without
``test/`` it goes to test when the hash says test (``data.test_fraction``). Every
other ``train/`` image stays in train, and images of ``val/`` and ``test/`` folders are
never moved. A ``train/`` folder alone therefore splits exactly like the unsplit
layout. A manifest's ``split`` column follows the same rule: when no row names val
(or test), its ``train`` rows are carved the same way (key ``"<label>/<file name>"``),
and rows with an empty split get the plain hash. A split that ends up empty is refused
by :func:`check_splits` before anything is versioned.

Unlabelled images (``scan_dataset(..., labels="none")``): every image under a folder,
recursively, whatever its sub-folders are called (``2026-11-01/cam1/x.png``), or every
row of a manifest that has a ``path`` column (a ``label`` or ``split`` column is
ignored). Their records carry ``label == UNLABELLED`` and ``split == BATCH``: they
belong to no train/val/test split, so ``ImageSet.split("train")`` never returns them.
``labels="auto"`` reads a manifest without a ``label`` column, or a folder with image
files directly at its top, as unlabelled, and a folder of sub-folders as class folders;
``labels="none"`` is the way to say that sub-folders are not classes. Training and
evaluation scan with the default ``labels="required"``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from transferops.errors import EXIT_VALIDATION, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet")
UNLABELLED = ""  # the label of an image that has none
BATCH = "batch"  # the split of every unlabelled image: it belongs to no train/val/test split
LabelMode = Literal["required", "auto", "none"]
LABEL_MODES: tuple[str, ...] = ("required", "auto", "none")


class DatasetError(InputError):
    """The dataset's layout or manifest is unusable; the message names the file and the fix."""


class SplitError(DatasetError):
    """The dataset (the version it would become) has a train, val or test split with no image."""

    exit_code = EXIT_VALIDATION


@dataclass(frozen=True)
class ImageRecord:
    """One image: path (a file, or the image's name inside a store), label, split.

    Unlabelled images have ``label == UNLABELLED`` and ``split == BATCH``.

    Images of a store live in a pack file at ``offset`` for ``size`` bytes. Torch datasets
over records are in ``transferops.loading``; this module never imports torch.
    """

    path: str | Path  # scanners give str: 70k Path objects cost ~0.5 s at ingest
    label: str
    split: str
    pack: str | Path | None = None
    offset: int = 0
    size: int = 0


def _relative(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it (a store image's name is already relative)."""
    p = os.fspath(path)
    r = os.fspath(root)
    return os.path.relpath(p, r) if os.path.isabs(p) and p.startswith(r) else p


def read_bytes(record: ImageRecord) -> bytes:
    """The image's bytes, from its file or its pack."""
    if record.pack is None:
        from transferops.imagecheck import read_file

        return read_file(os.fspath(record.path))
    with open(record.pack, "rb") as fh:
        fh.seek(record.offset)
        return fh.read(record.size)


@dataclass
class ImageSet:
    """All records of a dataset and its sorted class list."""

    root: Path
    records: list[ImageRecord]
    classes: list[str]

    def split(self, name: str) -> list[ImageRecord]:
        """The records of one split (``train``, ``val``, ``test``, or ``BATCH`` for unlabelled ones)."""
        return [r for r in self.records if r.split == name]

    def split_digest(self, name: str) -> str:
        """A 32-hex digest of which images (path within the dataset, label) form split ``name``:
        equal digests mean the same held-out images, whatever machine read the version."""
        import hashlib

        h = hashlib.sha256()
        for key in sorted(f"{_relative(r.path, self.root)}\t{r.label}" for r in self.split(name)):
            h.update(key.encode() + b"\n")
        return h.hexdigest()[:32]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{split: {class: n}}``.

        Always has train, val and test (every class, zeros included); unlabelled records
        add ``{BATCH: {UNLABELLED: n}}``.
        """
        out: dict[str, dict[str, int]] = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for r in self.records:
            per_class = out.setdefault(r.split, {})
            per_class[r.label] = per_class.get(r.label, 0) + 1
        return out

    @property
    def labelled(self) -> bool:
        """Whether every record has a class: there are classes and no ``UNLABELLED`` record."""
        return bool(self.classes) and all(r.label != UNLABELLED for r in self.records)

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


def _carve(hashed: str, missing: Sequence[str]) -> str:
    """The split of a train/ image: the hash's split when that split has no images of its own, else train."""
    return hashed if hashed in missing else "train"


def check_splits(counts: Mapping[str, int], root: str | Path, val_fraction: float, test_fraction: float) -> None:
    """Refuse a dataset whose train, val or test split holds no image, naming the fix.

    ``counts`` is images per split (other keys, such as ``BATCH``, are ignored); the
    fractions are ``data.val_fraction`` and ``data.test_fraction``, quoted in the fix.
    Raises :class:`SplitError` (exit code 3). Training would otherwise fail only after
    its first epoch, with a version already made of the unusable data.
    """
    for split in SPLITS:
        if counts.get(split, 0) > 0:
            continue
        shown = ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS)
        fix = {
            "train": "add train/<class>/ folders or more images, or lower data.val_fraction "
                     f"(now {val_fraction}) and data.test_fraction (now {test_fraction})",
            "val": "add a val/<class>/ folder (or manifest rows with split val) or more train images, "
                   f"or raise data.val_fraction (now {val_fraction})",
            "test": "add a test/<class>/ folder (or manifest rows with split test) or more train images, "
                    f"or raise data.test_fraction (now {test_fraction})",
        }[split]
        raise SplitError(f"dataset {root} has no {split} images ({shown}): {fix}")


def scan_dataset(source: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15, *,
                 labels: LabelMode = "required") -> ImageSet:
    """Read an ImageFolder tree, a manifest or a store into records.

    ``labels`` says how classes are found: ``"required"`` (training and evaluation)
    reads sub-folders as class folders (or train/val/test folders of class folders) and
    needs a manifest's ``label`` column; ``"none"`` reads every image, recursively, as
    unlabelled (``UNLABELLED`` label, ``BATCH`` split; a store's labels are dropped);
    ``"auto"`` reads a manifest without a ``label`` column, or a folder with images
    directly at its top, as unlabelled, anything else as ``"required"``. Splits follow
    the rules of the module docstring.

    >>> ds = scan_dataset("data/")          # doctest: +SKIP
    >>> ds.classes, ds.counts()["train"]    # doctest: +SKIP
    >>> scan_dataset("incoming/2026-11-01/", labels="none").labelled   # doctest: +SKIP
    False
    """
    from transferops.store import is_store

    if labels not in LABEL_MODES:
        raise InputError(f"labels={labels!r} is not one of {', '.join(LABEL_MODES)}")
    source = Path(source).expanduser().resolve()
    if is_store(source):
        images = _scan_store(source)
        return _without_labels(images) if labels == "none" else images
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        return _scan_manifest(source, val_fraction, test_fraction, labels)
    if not source.is_dir():
        raise DatasetError(f"dataset {source} does not exist; pass an ImageFolder directory or a .csv/.parquet manifest")
    for name in ("manifest.csv", "manifest.parquet"):
        if (source / name).is_file():
            return _scan_manifest(source / name, val_fraction, test_fraction, labels)
    top_images = _has_top_level_images(source)
    if labels == "none" or (labels == "auto" and top_images):
        return _scan_unlabelled(source)
    split_dirs = [d for d in SPLITS if (source / d).is_dir()]
    records: list[ImageRecord] = []
    classes: set[str] = set()
    if split_dirs:
        if "train" not in split_dirs:
            raise DatasetError(f"dataset {source} has {'/'.join(split_dirs)}/ folders but no train/; add train/<class>/ folders")
        # val/ or test/ missing: carve them out of train/ with the unsplit layout's hash (module docstring)
        missing = tuple(s for s in SPLITS if s not in split_dirs)
        for split in split_dirs:
            if split == "train" and missing:
                split_of = lambda c, f: _carve(hash_split(f"{c}/{f}", val_fraction, test_fraction), missing)  # noqa: E731
            else:
                split_of = lambda _c, _f, s=split: s  # noqa: E731
            recs, cls = _scan_classes(source / split, split_of)
            records += recs
            classes |= cls
    else:
        recs, cls = _scan_classes(source, lambda c, f: hash_split(f"{c}/{f}", val_fraction, test_fraction))
        records, classes = recs, cls
    if not classes:
        if top_images:  # labels="required": a flat folder of images cannot be trained on
            raise DatasetError(f"dataset {source} has no class folders, only images at its top; "
                               f"lay it out as {source}/<class>/<image>")
        raise DatasetError(f"dataset {source} has no class folders; lay it out as {source}/<class>/<image>")
    return ImageSet(source, records, sorted(classes))


def _check_name(f: Path | str) -> None:
    try:
        str(f).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(f).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise DatasetError(f"file name {shown} is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8)") from None


def _walk(folder: str, top: str, skip_hidden: bool = False):
    """Image files under ``folder`` in sorted order; symlinks must stay inside ``top``.

    ``skip_hidden`` skips dot-entries of ``folder`` itself (not of its sub-folders), as the
    class scan skips hidden class folders.
    """
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if skip_hidden and entry.name.startswith("."):
            continue
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not (target + os.sep).startswith(top + os.sep):
                raise DatasetError(f"{entry.path} links to {target}, outside {top}; copy the image into the dataset instead")
        if entry.is_dir():
            yield from _walk(entry.path, top)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
            yield entry.path


def _has_top_level_images(folder: Path) -> bool:
    """Whether image files lie directly in ``folder`` (not only in sub-folders)."""
    return any(e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".") and e.is_file()
               for e in os.scandir(folder))


def _scan_unlabelled(root: Path) -> ImageSet:
    """Every image under ``root``, recursively, whatever the folders are called."""
    top = os.path.realpath(root)
    records = []
    for path in _walk(str(root), top, skip_hidden=True):
        _check_name(path)
        records.append(ImageRecord(path, UNLABELLED, BATCH))
    if not records:
        raise DatasetError(f"dataset {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                           "pass the folder that holds the images")
    return ImageSet(root, records, [])


def _without_labels(images: ImageSet) -> ImageSet:
    return ImageSet(images.root, [replace(r, label=UNLABELLED, split=BATCH) for r in images.records], [])


def _scan_classes(root: Path, split_of: Callable[[str, str], str]) -> tuple[list[ImageRecord], set[str]]:
    records, classes = [], set()
    top = os.path.realpath(root)
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _check_name(class_dir)
        classes.add(class_dir.name)
        prefix = len(str(class_dir)) + 1
        for path in _walk(str(class_dir), top):
            _check_name(path)
            rel = path[prefix:].replace(os.sep, "/")
            records.append(ImageRecord(path, class_dir.name, split_of(class_dir.name, rel)))
    return records, classes


def _scan_store(root: Path) -> ImageSet:
    from transferops.store import read_index, read_version

    index = read_index(root)
    top, packs = str(root) + os.sep, str(root / "packs") + os.sep
    records = [ImageRecord(top + path, label, split, packs + pack, int(off), int(size))
               for path, label, split, pack, off, size in
               index[["path", "label", "split", "pack", "offset", "size"]].itertuples(index=False)]
    return ImageSet(root, records, list(read_version(root).get("classes") or sorted(index["label"].unique())))


def _scan_manifest(manifest: Path, val_fraction: float, test_fraction: float, labels: LabelMode = "required") -> ImageSet:
    try:
        df = pd.read_csv(manifest) if manifest.suffix.lower() == ".csv" else pd.read_parquet(manifest)
    except Exception as exc:  # parser errors differ by format; all mean the same to the user
        raise DatasetError(f"manifest {manifest} cannot be read ({exc.__class__.__name__}: {exc}); fix the file") from None
    unlabelled = labels == "none" or (labels == "auto" and "label" not in df.columns)
    missing = [c for c in (("path",) if unlabelled else ("path", "label")) if c not in df.columns]
    if missing:
        needs = "a path column" if unlabelled else "path,label[,split]"
        raise DatasetError(f"manifest {manifest} lacks column(s) {', '.join(missing)}; it needs {needs}")
    base = manifest.parent.resolve()
    dupes = df["path"][df["path"].duplicated()]
    if len(dupes):
        raise DatasetError(f"manifest {manifest} lists {dupes.iloc[0]} more than once ({len(dupes)} duplicate paths); keep one row per image")
    if unlabelled:
        records = [ImageRecord(_manifest_path(manifest, base, p, i), UNLABELLED, BATCH)
                   for i, p in enumerate(df["path"], start=2)]
        return ImageSet(base, records, [])
    known = None
    if (base / "classes.txt").is_file():
        known = [c.strip() for c in (base / "classes.txt").read_text().splitlines() if c.strip()]
    # splits no row names are carved out of the train rows (module docstring)
    named = set(df["split"].dropna().astype(str)) if "split" in df.columns else set()
    carved = tuple(s for s in SPLITS if s not in named)
    records = []
    for i, row in enumerate(df.itertuples(index=False), start=2):
        path = _manifest_path(manifest, base, row.path, i)
        if known is not None and str(row.label) not in known:
            raise DatasetError(f"manifest {manifest} line {i}: label '{row.label}' is not in {base / 'classes.txt'}; fix the label or add the class")
        split = getattr(row, "split", None)
        if split is None or (isinstance(split, float) and np.isnan(split)):
            split = hash_split(f"{row.label}/{Path(str(row.path)).name}", val_fraction, test_fraction)
        elif split == "train" and carved:
            split = _carve(hash_split(f"{row.label}/{Path(str(row.path)).name}", val_fraction, test_fraction), carved)
        if split not in SPLITS:
            raise DatasetError(f"manifest {manifest} line {i}: split '{split}' is not one of {', '.join(SPLITS)}")
        records.append(ImageRecord(path, str(row.label), str(split)))
    return ImageSet(base, records, known or sorted({r.label for r in records}))


def _manifest_path(manifest: Path, base: Path, rel: object, line: int) -> Path:
    """A manifest row's image path, which must stay under the manifest's folder."""
    path = (base / str(rel)).resolve()
    if not path.is_relative_to(base):
        raise DatasetError(f"manifest {manifest} line {line}: path {rel} escapes {base}; keep images under the manifest's folder")
    return path


# --------------------------------------------------------------------------- image table
TABLE_COLUMNS = ["path", "label", "split", "decodes", "error", "width", "height", "mode", "bytes", "sha256"]


PARALLEL_MIN = 2000  # below this, worker start-up costs more than it saves
CHUNK = 1000  # files per worker task: small enough to balance, large enough to amortise


def inspect_records(records: Sequence[ImageRecord], max_pixels: int, workers: int | None = None) -> list[tuple]:
    """Decode status and metadata of every record, as ``imagecheck.FIELDS`` tuples.

    Files are checked in chunks by worker processes when there are many; images
    already in a pack are read from it here.
    """
    from transferops.imagecheck import inspect_bytes, inspect_files

    workers = workers or os.cpu_count() or 1
    files = [os.fspath(r.path) for r in records if r.pack is None]
    results = None
    if workers > 1 and len(files) >= PARALLEL_MIN:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
        try:
            # spawn, not fork: callers (Prefect) run threads, and imagecheck is light to import
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                results = [row for part in pool.map(inspect_files, chunks, [max_pixels] * len(chunks)) for row in part]
        except BrokenProcessPool:
            # spawned workers re-import the caller's __main__; a script without an
            # `if __name__ == "__main__":` guard breaks them. Slower, but correct:
            results = None
    file_info = iter(results if results is not None else inspect_files(files, max_pixels))
    return [next(file_info) if r.pack is None else tuple(inspect_bytes(read_bytes(r), max_pixels).values())
            for r in records]


def image_table(images: ImageSet, max_pixels: int = 40_000_000) -> pd.DataFrame:
    """One row per image with decode status and metadata, for validation."""
    infos = inspect_records(images.records, max_pixels)
    root = str(images.root) + os.sep
    paths = [str(r.path) for r in images.records]
    df = pd.DataFrame.from_records(infos, columns=TABLE_COLUMNS[3:])
    df.insert(0, "path", [p[len(root):].replace(os.sep, "/") if p.startswith(root) else p for p in paths])
    df.insert(1, "label", [r.label for r in images.records])
    df.insert(2, "split", [r.split for r in images.records])
    return mark_cross_split_duplicates(df)


def mark_cross_split_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Set ``duplicate_across_splits``: the same bytes in two splits means a test image was (also) trained on."""
    splits_per_hash = df[df.sha256 != ""].groupby("sha256")["split"].nunique()
    df["duplicate_across_splits"] = df.sha256.isin(set(splits_per_hash[splits_per_hash > 1].index))
    return df


def per_class_train_size(images: ImageSet) -> float:
    """Mean number of train images per class: the size measure of the strategy rule."""
    n = Counter(r.label for r in images.split("train"))
    return sum(n.values()) / max(len(images.classes), 1)
