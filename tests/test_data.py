import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferops.data import DatasetError, hash_split, image_table, scan_dataset
from transferops.loading import make_loader
from transferops.samples import write_shapes


def test_flat_folder_gets_stable_hash_splits(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=40, classes=2)
    before = {Path(r.path).name: r.split for r in scan_dataset(root).records}
    write_shapes(tmp_path / "more", per_class=60, classes=2, seed=9)
    for cls in ("circle", "square"):
        for f in sorted((tmp_path / "more" / cls).iterdir())[40:]:
            shutil.copy(f, root / cls / f"new_{f.name}")
    after = {Path(r.path).name: r.split for r in scan_dataset(root).records}
    assert len(after) == 120
    assert all(after[name] == split for name, split in before.items()), "appending moved old images between splits"
    assert set(after.values()) == {"train", "val", "test"}
    assert hash_split("circle/a.png", 0.15, 0.15) == hash_split("circle/a.png", 0.15, 0.15)


def test_explicit_split_folders_and_manifest(tmp_path):
    src = write_shapes(tmp_path / "s", per_class=4, classes=2)
    for split in ("train", "test"):
        shutil.copytree(src, tmp_path / "split" / split)
    ds = scan_dataset(tmp_path / "split")
    assert ds.classes == ["circle", "square"] and ds.counts()["test"] == {"circle": 4, "square": 4}
    # a manifest that names every split is taken as it is (none is carved out of train)
    named = ["val", "test"] + ["train"] * 6
    lines = ["path,label,split"] + [f"s/{r.label}/{Path(r.path).name},{r.label},{split}"
                                    for r, split in zip(scan_dataset(src).records, named)]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    m = scan_dataset(tmp_path / "m.csv")
    assert [r.split for r in m.records] == named


@pytest.mark.parametrize("content,match", [
    ("file,label\na.png,x\n", "lacks column.*path"),
    ("path,label\n../../etc/passwd,x\n", "escapes"),
    ("path,label,split\na.png,x,holdout\n", "split 'holdout'"),
])
def test_bad_manifests_name_the_file_and_fix(tmp_path, content, match):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        scan_dataset(tmp_path / "m.csv")


def test_missing_or_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        scan_dataset(tmp_path / "empty")


def test_image_table_flags_bad_files_and_leaks(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=30, classes=2)
    (root / "circle" / "empty.png").write_bytes(b"")
    (root / "circle" / "text.png").write_text("not an image")
    good = next((root / "square").iterdir()).read_bytes()
    (root / "square" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((4000, 4000), np.uint8)).save(root / "square" / "huge.png")
    (tmp_path / "empty_class").mkdir()
    ds = scan_dataset(root)
    table = image_table(ds, max_pixels=1_000_000).set_index("path")
    assert table.loc["circle/empty.png", "error"] == "empty file"
    assert "UnidentifiedImageError" in table.loc["circle/text.png", "error"]
    assert not table.loc["square/truncated.png", "decodes"]
    assert "decompression bomb" in table.loc["square/huge.png", "error"]
    assert table.decodes.sum() == 60
    # the same bytes in train and test is a leak
    recs = ds.records
    a = next(r for r in recs if r.split == "train" and Path(r.path).stat().st_size > 100)
    b = next(r for r in recs if r.split == "test")
    shutil.copy(a.path, b.path)
    leaks = image_table(scan_dataset(root)).query("duplicate_across_splits")
    assert len(leaks) >= 2


def test_loader_yields_transformed_tensors(shapes_dir, source_bundle):
    from transferops.models import load_bundle

    ds = scan_dataset(shapes_dir)
    loader = make_loader(ds.split("train"), ds.class_to_idx, load_bundle(source_bundle).weights.transforms(),
                         batch_size=4, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and y.dtype.is_floating_point is False
