"""Fast checks of bench/strategies/fashion.py: the IDX reader, the shifts and the tree writer.

Everything runs on tiny arrays made here; only one test reads Debian's Fashion-MNIST files
(and is skipped when ``dataset-fashion-mnist`` is not installed).
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "strategies"))
import fashion  # noqa: E402


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An IDX file of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, the bytes."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def fake_set(n_per_class: int, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 uint8 images whose first pixel row encodes their index (so every image is unique)."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    y = np.repeat(np.arange(n_classes, dtype=np.uint8), n_per_class)
    return x, rng.permutation(y)


def test_read_idx_round_trip_gzipped_and_plain(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    assert np.array_equal(fashion.read_idx(write_idx(tmp_path / "x-idx3-ubyte.gz", images)), images)
    assert np.array_equal(fashion.read_idx(write_idx(tmp_path / "y-idx1-ubyte", labels, compress=False)), labels)
    assert fashion.read_idx(tmp_path / "x-idx3-ubyte.gz").dtype == np.uint8


def test_read_idx_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
    with pytest.raises(ValueError, match="not an IDX file"):
        fashion.read_idx(bad)


def test_load_split_names_the_debian_package_when_files_are_missing(tmp_path):
    with pytest.raises(fashion.MissingData, match="apt-get install dataset-fashion-mnist"):
        fashion.load_split("train", root=tmp_path)


def test_load_split_reads_a_folder_of_idx_files(tmp_path):
    x, y = fake_set(4)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y)
    xr, yr = fashion.load_split("test", root=tmp_path)
    assert np.array_equal(xr, x) and np.array_equal(yr, y)


@pytest.mark.skipif(not (fashion.FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_test_set():
    x, y = fashion.load_split("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


@pytest.mark.parametrize("name", [n for n in fashion.SHIFTS if n != "clean"])
def test_each_shift_changes_images_and_keeps_uint8_and_shape(name):
    x, _ = fake_set(2)
    out = fashion.SHIFTS[name](x, 0)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert (out != x).mean() > 0.3
    single = fashion.SHIFTS[name](x[0], 0)
    assert single.dtype == np.uint8 and single.shape == (28, 28)
    assert np.array_equal(fashion.SHIFTS[name](x, 0), out)  # deterministic for one seed


def test_clean_is_an_unchanged_copy_and_invert_an_involution():
    x, _ = fake_set(2)
    c = fashion.clean(x)
    assert np.array_equal(c, x) and c is not x
    assert np.array_equal(fashion.invert(fashion.invert(x)), x)
    assert np.array_equal(fashion.invert(x), 255 - x.astype(int))


def test_noise_depends_on_the_seed_and_rotate_is_a_quarter_turn():
    x, _ = fake_set(2)
    assert not np.array_equal(fashion.noise(x, 0), fashion.noise(x, 1))
    assert np.array_equal(fashion.rotate(fashion.rotate(fashion.rotate(fashion.rotate(x)))), x)
    assert np.array_equal(fashion.rotate(x[0]), np.rot90(x[0]))


def pngs(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in folder.glob("*.png")}


def test_write_tree_counts_disjoint_splits_and_shift(tmp_path):
    train, test = fake_set(10), fake_set(6, seed=1)
    spec = fashion.TreeSpec(classes=(0, 2), n_train=4, n_val=3, n_test=5, shift="invert", seed=7)
    root = fashion.write_tree(tmp_path / "tree", spec, train, test, names=("a", "b", "c"))
    assert fashion.tree_counts(root) == {"test": {"a": 5, "c": 5}, "train": {"a": 4, "c": 4}, "val": {"a": 3, "c": 3}}
    for cls, label in (("a", 0), ("c", 2)):
        tr, va = pngs(root / "train" / cls), pngs(root / "val" / cls)
        assert not set(tr) & set(va)  # file names are train-set indices: no image in both splits
        for fname, img in tr.items():
            i = int(fname.removesuffix(".png"))
            assert train[1][i] == label and np.array_equal(img, 255 - train[0][i])
    assert not list(tmp_path.glob(".tree.*"))  # the temporary folder was renamed into place


def test_write_tree_all_test_images_by_default_and_same_draw_across_shifts(tmp_path):
    train, test = fake_set(10), fake_set(6, seed=1)
    a = fashion.write_tree(tmp_path / "clean", fashion.TreeSpec((1,), 5, 2), train, test)
    b = fashion.write_tree(tmp_path / "noise", fashion.TreeSpec((1,), 5, 2, shift="noise"), train, test)
    assert fashion.tree_counts(a)["test"] == {fashion.CLASSES[1]: 6}
    for split in ("train", "val", "test"):
        assert sorted(pngs(a / split / fashion.CLASSES[1])) == sorted(pngs(b / split / fashion.CLASSES[1]))


def test_write_tree_reuses_an_existing_tree_without_loading_data(tmp_path):
    spec = fashion.TreeSpec((0,), 2, 1, 2)
    root = fashion.write_tree(tmp_path / "t", spec, fake_set(5), fake_set(3))
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}

    def never() -> tuple:
        raise AssertionError("an existing tree must not load the data")

    assert fashion.write_tree(tmp_path / "t", spec, never, never) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamp
    with pytest.raises(FileExistsError):  # another spec in the same folder is refused, not overwritten
        fashion.write_tree(tmp_path / "t", fashion.TreeSpec((0,), 3, 1, 2), never, never)


def test_write_tree_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    calls = []

    def fails_on_second_class(x: np.ndarray, seed) -> np.ndarray:
        calls.append(seed)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return x

    monkeypatch.setitem(fashion.SHIFTS, "boom", fails_on_second_class)
    with pytest.raises(KeyboardInterrupt):
        fashion.write_tree(tmp_path / "t", fashion.TreeSpec((0, 1), 2, 1, shift="boom"), fake_set(5), fake_set(3))
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # no tree, no temporary folder


def test_write_tree_refuses_too_few_images(tmp_path):
    x, y = fake_set(5)
    with pytest.raises(ValueError, match="fewer than"):  # class 0 has 5 images, not 4 + 4
        fashion.write_tree(tmp_path / "t", fashion.TreeSpec((0,), 4, 4), (x, y), (x, y))
    assert list(tmp_path.iterdir()) == []
