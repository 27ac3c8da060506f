"""Unlabelled images: flat or nested folders and path-only manifests, scanned with labels="none"/"auto"."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from transferops.data import BATCH, SPLITS, UNLABELLED, DatasetError, ImageRecord, scan_dataset
from transferops.errors import InputError
from transferops.samples import write_shapes


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, value, value)).save(path)
    return path


@pytest.fixture
def flat(tmp_path) -> Path:
    for i in range(5):
        _image(tmp_path / "flat" / f"img_{i}.png", i)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    return tmp_path / "flat"


@pytest.fixture
def nested(tmp_path) -> Path:
    root = tmp_path / "nested"
    for day in ("2026-11-01", "2026-11-02"):
        for cam in ("cam1", "cam2"):
            _image(root / day / cam / "x.png")
    _image(root / "2026-11-02" / "y.jpg")
    return root


def _unlabelled(images, n: int) -> None:
    assert len(images.records) == n and images.classes == [] and not images.labelled
    assert {(r.label, r.split) for r in images.records} == {(UNLABELLED, BATCH)}
    assert all(images.split(s) == [] for s in SPLITS)
    assert images.counts() == {"train": {}, "val": {}, "test": {}, BATCH: {UNLABELLED: n}}


@pytest.mark.parametrize("labels", ["none", "auto"])
def test_flat_folder(flat, labels):
    _unlabelled(scan_dataset(flat, labels=labels), 5)


def test_nested_folders_that_are_not_classes(nested):
    images = scan_dataset(nested, labels="none")
    _unlabelled(images, 5)
    rel = sorted(Path(r.path).relative_to(nested).as_posix() for r in images.records)
    assert rel == ["2026-11-01/cam1/x.png", "2026-11-01/cam2/x.png", "2026-11-02/cam1/x.png",
                   "2026-11-02/cam2/x.png", "2026-11-02/y.jpg"]
    # "auto" reads a folder of sub-folders as class folders: "none" is how to say they are not
    auto = scan_dataset(nested, labels="auto")
    assert auto.labelled and auto.classes == ["2026-11-01", "2026-11-02"]


def test_required_still_refuses_a_folder_without_class_folders(flat, tmp_path):
    with pytest.raises(DatasetError, match="no class folders, only images at its top"):
        scan_dataset(flat)
    with pytest.raises(DatasetError, match="no class folders"):
        scan_dataset(flat, labels="required")


def test_labelled_folders_are_unchanged_by_auto(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=10, classes=2)
    required, auto = scan_dataset(root), scan_dataset(root, labels="auto")
    assert required.labelled and required == auto
    none = scan_dataset(root, labels="none")
    assert len(none.records) == 20 and not none.labelled


def test_path_only_manifest(tmp_path, flat):
    (flat / "batch.csv").write_text("path\nimg_0.png\nimg_3.png\n")
    for labels in ("none", "auto"):
        images = scan_dataset(flat / "batch.csv", labels=labels)
        _unlabelled(images, 2)
        assert [Path(r.path).name for r in images.records] == ["img_0.png", "img_3.png"]
    with pytest.raises(DatasetError, match=r"lacks column\(s\) label"):
        scan_dataset(flat / "batch.csv")
    # labels="none" ignores a label column (and the classes.txt check that comes with it)
    (flat / "labelled.csv").write_text("path,label,split\nimg_0.png,zebra,train\n")
    (flat / "classes.txt").write_text("horse\n")
    _unlabelled(scan_dataset(flat / "labelled.csv", labels="none"), 1)
    with pytest.raises(DatasetError, match="'zebra' is not in"):
        scan_dataset(flat / "labelled.csv", labels="auto")


@pytest.mark.parametrize("content,match", [
    ("file\na.png\n", r"lacks column\(s\) path; it needs a path column"),
    ("path\n../../etc/passwd\n", "line 2: path ../../etc/passwd escapes"),
    ("path\na.png\na.png\n", "lists a.png more than once"),
])
def test_bad_unlabelled_manifests(tmp_path, content, match):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        scan_dataset(tmp_path / "m.csv", labels="none")


def test_symlink_and_name_checks_apply(tmp_path, nested):
    outside = _image(tmp_path / "secret.png")
    os.symlink(outside, nested / "2026-11-01" / "link.png")
    with pytest.raises(DatasetError, match="link.png links to .*outside"):
        scan_dataset(nested, labels="none")
    os.remove(nested / "2026-11-01" / "link.png")
    bad = os.path.join(os.fsencode(nested / "2026-11-02"), b"caf\xe9.png")
    shutil.copy(nested / "2026-11-02" / "y.jpg", bad)
    with pytest.raises(DatasetError, match=r"caf\\xe9.png is not valid UTF-8"):
        scan_dataset(nested, labels="none")


def test_empty_folder_fails_with_one_line(tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    _image(tmp_path / "empty" / ".hidden" / "skipped.png")  # dot-folders are skipped, as in class scans
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="holds no image files") as exc:
        scan_dataset(tmp_path / "empty", labels="none")
    assert len(str(exc.value).splitlines()) == 1
    with pytest.raises(DatasetError, match="no class folders"):
        scan_dataset(tmp_path / "empty", labels="auto")
    with pytest.raises(InputError, match="labels='maybe' is not one of required, auto, none"):
        scan_dataset(tmp_path / "empty", labels="maybe")


def test_store_scanned_without_labels(tmp_path):
    from transferops.data import image_table, read_bytes
    from transferops.store import ingest

    labelled = scan_dataset(write_shapes(tmp_path / "src", per_class=3, classes=2))
    rows = image_table(labelled)[["path", "label", "split", "sha256", "width", "height", "mode"]]
    ingest(tmp_path / "store", rows, lambda i: read_bytes(labelled.records[i]))
    assert scan_dataset(tmp_path / "store").labelled
    images = scan_dataset(tmp_path / "store", labels="none")
    _unlabelled(images, 6)
    assert read_bytes(images.records[0]) == read_bytes(scan_dataset(tmp_path / "store").records[0])


def test_loader_yields_minus_one_for_unlabelled_and_refuses_unknown_labels(flat, nested):
    from torchvision.transforms import ToTensor

    from transferops.loading import ImageDataset, make_loader

    images = scan_dataset(flat, labels="none")
    x, y = next(iter(make_loader(images.records, {}, ToTensor(), batch_size=5, shuffle=False)))
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [-1] * 5
    labelled = ImageDataset([ImageRecord(images.records[0].path, "cat", "train")], {"cat": 0}, ToTensor())
    assert labelled[0][1] == 0
    with pytest.raises(KeyError):
        ImageDataset([ImageRecord(images.records[0].path, "dog", "train")], {"cat": 0}, ToTensor())[0]
