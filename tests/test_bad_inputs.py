"""Every bad input of issue 3 through the real ingest (GX + git + DVC): a clear error, nothing written."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferops.samples import write_shapes

pytestmark = pytest.mark.integration


def _add(project: Path, source: Path, **kw):
    from flows.data import DataParams, add_data_direct

    return add_data_direct(DataParams(source=str(source), project_dir=str(project), **kw))


def _nothing_written(project: Path) -> None:
    assert not (project / "data").exists() and not (project / "data.dvc").exists()
    remote = project / ".transferops" / "dvc-remote"
    assert not any(p.is_file() for p in remote.rglob("*")) if remote.exists() else True
    assert not [p for p in project.iterdir() if p.name.startswith(".data-")], "staging left behind"


def _rejected(tmp_path: Path, source: Path, match: str, **kw) -> None:
    from tasks.validation import DataValidationError
    from transferops.data import DatasetError

    project = tmp_path / "proj"
    with pytest.raises((DataValidationError, DatasetError), match=match) as exc:
        _add(project, source, **kw)
    assert len(str(exc.value).splitlines()[0]) < 400
    _nothing_written(project)


@pytest.fixture
def good(tmp_path) -> Path:
    return write_shapes(tmp_path / "src", per_class=20, classes=3)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A tiny file that declares a huge image: the start of a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))


@pytest.mark.parametrize("name,content,match", [
    ("zero.png", b"", "zero.png \\[empty file\\]"),
    ("text.jpg", b"this is not an image\n", "text.jpg \\[UnidentifiedImageError"),
    ("bomb.png", _png_header(100_000, 100_000), "bomb.png \\[decompression bomb"),
])
def test_undecodable_files(tmp_path, good, name, content, match):
    (good / "circle" / name).write_bytes(content)
    _rejected(tmp_path, good, match)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images(tmp_path, good, fmt):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    path = good / "square" / f"cut.{fmt.lower()}"
    img.save(path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _rejected(tmp_path, good, f"cut.{fmt.lower()} \\[")


def _odd_modes(folder: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16)).save(folder / "sixteen.png")
    Image.new("CMYK", (32, 32), (0, 128, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGB", (32, 32), (200, 10, 10)).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.new("RGBA", (32, 32), (10, 200, 10, 100)).save(folder / "alpha.png")


def test_odd_modes_are_converted_by_default(tmp_path, good):
    from transferops.data import scan_dataset
    from transferops.loading import ImageDataset

    _odd_modes(good / "circle")
    v = _add(tmp_path / "proj", good)
    modes = set(yaml.safe_load((tmp_path / "proj" / "data.dvc").read_text())["meta"]["classes"])
    assert v["meta"]["n_images"] == 64 and modes == {"circle", "square", "triangle"}
    ds = scan_dataset(tmp_path / "proj" / "data")
    odd = [i for i, r in enumerate(ds.records) if Path(r.path).stem in ("sixteen", "cmyk", "palette", "alpha")]
    loader = ImageDataset(ds.records, ds.class_to_idx, lambda im: np.asarray(im))
    for i in odd:
        arr = loader[i][0]
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    sixteen = next(loader[i][0] for i in odd if Path(ds.records[i].path).stem == "sixteen")
    assert sixteen.max() > 128, "16-bit values must be rescaled, not clipped to 255 or crushed"


def test_odd_modes_rejected_by_policy(tmp_path, good):
    _odd_modes(good / "circle")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "transferops.yaml").write_text("data: {allowed_modes: [L, RGB]}\n")
    _rejected(tmp_path, good, "expect_column_values_to_be_in_set on mode: 4 offending")


def test_symlink_escaping_the_dataset(tmp_path, good):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(outside)
    os.symlink(outside, good / "circle" / "link.png")
    _rejected(tmp_path, good, "link.png links to .*outside")


def test_non_utf8_name_is_refused_and_spaces_are_fine(tmp_path, good):
    from transferops.store import export

    spaced = good / "circle" / "a file with spaces.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(spaced)
    bad = os.path.join(os.fsencode(good / "square"), b"caf\xe9.png")
    with open(bad, "wb") as fh:
        fh.write((good / "square" / "square_0001.png").read_bytes())
    _rejected(tmp_path, good, r"caf\\xe9.png is not valid UTF-8")
    os.remove(bad)
    _add(tmp_path / "proj", good)
    export(tmp_path / "proj" / "data", tmp_path / "out")
    assert (tmp_path / "out" / "circle" / "a file with spaces.png").read_bytes() == spaced.read_bytes()


def test_empty_class_folder(tmp_path, good):
    (good / "hexagon").mkdir()
    _rejected(tmp_path, good, "count: 1 offending .*label=hexagon, split=train")


def test_manifest_problems(tmp_path, good):
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(good.rglob("*.png"))]
    m = good / "manifest.csv"
    m.write_text("path,label\n" + "\n".join(rows + [rows[0]]))
    _rejected(tmp_path, m, "lists circle/circle_0000.png more than once")
    m.write_text("path,label\n" + "\n".join(rows[:-1] + [rows[-1].replace(",triangle", ",trapezoid")]))
    (good / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    _rejected(tmp_path, m, "label 'trapezoid' is not in .*classes.txt")
    m.write_text("file,label\n" + "\n".join(rows))
    _rejected(tmp_path, m, "lacks column\\(s\\) path")


def test_sizes_outside_the_limits_and_mixed_sizes_within(tmp_path, good):
    from transferops.data import scan_dataset
    from transferops.loading import ImageDataset
    from torchvision.transforms import Compose, Resize, ToTensor

    Image.new("RGB", (1200, 300), (9, 9, 9)).save(good / "square" / "wide.png")
    Image.new("RGB", (9, 640), (9, 9, 9)).save(good / "square" / "tall.png")
    v = _add(tmp_path / "ok", good)
    ds = scan_dataset(tmp_path / "ok" / "data")
    tensors = ImageDataset(ds.records, ds.class_to_idx, Compose([Resize((32, 32)), ToTensor()]))
    assert {tuple(tensors[i][0].shape) for i in range(len(ds.records))} == {(3, 32, 32)}
    assert v["meta"]["n_images"] == 62
    Image.new("RGB", (4, 4)).save(good / "square" / "tiny.png")
    _rejected(tmp_path, good, "on width: 1 offending .*tiny.png")


def test_leak_across_splits_and_imbalance(tmp_path, good):
    from transferops.data import scan_dataset

    recs = scan_dataset(good).records
    train = next(r for r in recs if r.split == "train")
    test = next(r for r in recs if r.split == "test")
    Path(test.path).write_bytes(Path(train.path).read_bytes())
    _rejected(tmp_path, good, "duplicate_across_splits: 2 offending")
    Path(test.path).unlink()
    (tmp_path / "proj").mkdir(exist_ok=True)
    (tmp_path / "proj" / "transferops.yaml").write_text("data: {max_class_imbalance: 1.05}\n")
    _rejected(tmp_path, good, "share_of_largest")


def test_class_set_must_stay_unless_allowed(tmp_path, good):
    project = tmp_path / "proj"
    _add(project, good)
    head = (project / "data.dvc").read_text()
    extra = write_shapes(tmp_path / "extra", per_class=20, classes=4, seed=7)
    for d in ("circle", "square", "triangle"):
        for f in (extra / d).iterdir():
            f.unlink()
    from tasks.validation import DataValidationError

    with pytest.raises(DataValidationError, match="distinct_values_to_equal_set"):
        _add(project, extra)
    assert (project / "data.dvc").read_text() == head  # the version did not move
    v = _add(project, extra, allow_class_change=True)
    assert v["meta"]["classes"] == ["circle", "cross", "square", "triangle"]


def _train_and_test(tmp_path: Path, good: Path) -> Path:
    """good as train/, other images as test/, and no val/: the layout of most public datasets."""
    root = tmp_path / "public"
    root.mkdir()
    good.rename(root / "train")
    test = write_shapes(tmp_path / "test_src", per_class=5, classes=3, seed=11)
    for f in test.rglob("*.png"):
        f.rename(f.with_name(f"test_{f.name}"))
    test.rename(root / "test")
    return root


def test_train_and_test_without_val_get_a_val_split(tmp_path, good):
    from transferops.data import scan_dataset

    v = _add(tmp_path / "proj", _train_and_test(tmp_path, good))
    counts = v["meta"]["counts"]
    assert sum(counts["val"].values()) > 0 and counts["test"] == {"circle": 5, "square": 5, "triangle": 5}
    stored = scan_dataset(tmp_path / "proj" / "data")
    assert {r.split for r in stored.records} == {"train", "val", "test"}


def test_empty_split_is_refused_before_anything_is_written(tmp_path, good):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "transferops.yaml").write_text("data: {val_fraction: 0.0}\n")
    _rejected(tmp_path, _train_and_test(tmp_path, good),
              r"public has no val images \(train 60, val 0, test 15\): add a val/<class>/ folder .*"
              r"raise data.val_fraction \(now 0.0\)$")


def test_empty_split_is_judged_on_the_resulting_version(tmp_path, good):
    project = tmp_path / "proj"
    _add(project, good)
    head = (project / "data.dvc").read_text()
    # the new images alone have no val split; the version they are appended to has one
    (project / "transferops.yaml").write_text("data: {val_fraction: 0.0}\n")
    extra = write_shapes(tmp_path / "extra", per_class=10, classes=3, seed=21)
    for f in extra.rglob("*.png"):
        f.rename(f.with_name(f"extra_{f.name}"))
    v = _add(project, extra)
    appended = (project / "data.dvc").read_text()
    assert v["meta"]["n_images"] == 90 and appended != head
    from transferops.data import SplitError

    with pytest.raises(SplitError, match="has no val images"):  # as a whole new version, it has none
        _add(project, extra, replace=True)
    assert (project / "data.dvc").read_text() == appended
