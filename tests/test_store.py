"""The content-addressed store, with no orchestration."""

import hashlib

import pytest
import torch

from transferops.data import image_table, read_bytes, scan_dataset
from transferops.loading import ImageDataset
from transferops.samples import write_shapes
from transferops.store import StoreError, export, ingest, read_index, read_version, verify


def _ingest(store, folder, **kw):
    images = scan_dataset(folder)
    table = image_table(images)
    rows = table[["path", "label", "split", "sha256", "width", "height", "mode"]]
    return ingest(store, rows, lambda i: read_bytes(images.records[i]), **kw), images


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_roundtrip_is_byte_for_byte(tmp_path):
    src = write_shapes(tmp_path / "src", per_class=10)
    summary, _ = _ingest(tmp_path / "store", src)
    assert summary.n_images == summary.added == 30 and summary.packs_written == 1
    meta = verify(tmp_path / "store")
    assert meta["n_images"] == 30 and sorted(meta["classes"]) == ["circle", "square", "triangle"]
    assert export(tmp_path / "store", tmp_path / "out") == 30
    assert _files(tmp_path / "out") == _files(src)


def test_append_adds_only_new_files_and_dedups(tmp_path):
    src = write_shapes(tmp_path / "a", per_class=10)
    _ingest(tmp_path / "store", src)
    before = _files(tmp_path / "store")
    extra = write_shapes(tmp_path / "b", per_class=3, seed=5)
    for f in extra.rglob("*.png"):
        f.rename(f.with_name("new_" + f.name))
    (extra / "circle" / "copy_of_old.png").write_bytes((src / "circle" / "circle_0000.png").read_bytes())
    summary, _ = _ingest(tmp_path / "store", extra)
    after = _files(tmp_path / "store")
    added = set(after) - set(before)
    assert {f.split("/")[0] for f in added} == {"index", "packs"} and len(added) == 2  # one pack, one part
    assert all(after[f] == before[f] for f in before if f != "VERSION.json"), "old packs/parts were rewritten"
    assert summary.reused == 1 and summary.added == 10 and summary.n_images == 40
    # the copy points at the bytes already stored
    idx = read_index(tmp_path / "store").set_index("path")
    assert idx.loc["circle/copy_of_old.png", "pack"] == idx.loc["circle/circle_0000.png", "pack"]
    # adding the same again changes nothing
    again, _ = _ingest(tmp_path / "store", extra)
    assert again.added == 0 and _files(tmp_path / "store") == after


def test_same_content_gives_the_same_files(tmp_path):
    src = write_shapes(tmp_path / "src", per_class=5)
    _ingest(tmp_path / "s1", src)
    _ingest(tmp_path / "s2", src)
    assert _files(tmp_path / "s1") == _files(tmp_path / "s2")


def test_relabel_and_replace(tmp_path):
    src = write_shapes(tmp_path / "src", per_class=5)
    _ingest(tmp_path / "store", src)
    moved = tmp_path / "moved" / "square"
    moved.mkdir(parents=True)
    (moved / "circle_0000.png").write_bytes((src / "circle" / "circle_0000.png").read_bytes())
    summary, _ = _ingest(tmp_path / "store", tmp_path / "moved", replace=True)
    idx = read_index(tmp_path / "store")
    assert len(idx) == 1 and idx.label.tolist() == ["square"]
    assert len(list((tmp_path / "store" / "packs").iterdir())) == 1  # unreferenced packs dropped
    assert len(read_version(tmp_path / "store")["parts"]) == 1


def test_failed_ingest_leaves_the_old_version(tmp_path):
    src = write_shapes(tmp_path / "src", per_class=5)
    _ingest(tmp_path / "store", src)
    before = _files(tmp_path / "store")
    extra = write_shapes(tmp_path / "extra", per_class=5, seed=3)
    images = scan_dataset(extra)
    rows = image_table(images)[["path", "label", "split", "sha256", "width", "height", "mode"]]
    rows["path"] = "new/" + rows["path"]

    def failing(i):
        if i == 7:
            raise OSError("disk full")
        return read_bytes(images.records[i])

    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path / "store", rows, failing)
    assert _files(tmp_path / "store") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "src", "store"], "staging left behind"


def test_verify_finds_a_flipped_byte(tmp_path):
    _ingest(tmp_path / "store", write_shapes(tmp_path / "src", per_class=5))
    pack = next((tmp_path / "store" / "packs").iterdir())
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not match its name"):
        verify(tmp_path / "store")


def test_training_reads_the_same_tensors_from_packs(tmp_path):
    from torchvision.transforms import ToTensor

    src = write_shapes(tmp_path / "src", per_class=4)
    _ingest(tmp_path / "store", src)
    loose, packed = scan_dataset(src), scan_dataset(tmp_path / "store")
    assert [r.split for r in loose.records] == [r.split for r in packed.records]  # splits travel with the data
    a = ImageDataset(loose.records, loose.class_to_idx, ToTensor())
    b = ImageDataset(packed.records, packed.class_to_idx, ToTensor())
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert all(r.pack is not None for r in packed.records)
    assert hashlib.sha256(read_bytes(packed.records[0])).hexdigest() == hashlib.sha256(read_bytes(loose.records[0])).hexdigest()
