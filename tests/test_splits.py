"""Missing split folders are carved out of train/ with the unsplit layout's hash; empty splits are refused."""

import shutil
from pathlib import Path

import pytest

from transferops.data import SPLITS, SplitError, check_splits, scan_dataset
from transferops.errors import EXIT_VALIDATION
from transferops.samples import write_shapes


def _by_key(images, root: Path) -> dict[str, str]:
    """split per "class/path under the class folder", whatever folder the class folder is in."""
    out = {}
    for r in images.records:
        rel = Path(r.path).relative_to(root).parts
        key = "/".join(rel[1:] if rel[0] in SPLITS else rel)
        out[key] = r.split
    return out


@pytest.fixture
def flat(tmp_path) -> Path:
    root = write_shapes(tmp_path / "flat", per_class=40, classes=2)
    (root / "circle" / "nested").mkdir()  # the key is the path under the class folder, sub-folders included
    shutil.copy(root / "circle" / "circle_0000.png", root / "circle" / "nested" / "deep.png")
    return root


def _split_layout(tmp_path: Path, flat: Path, *present: str) -> Path:
    """flat's images as root/train/, plus other split folders of different images."""
    root = tmp_path / "split"
    shutil.copytree(flat, root / "train")
    for i, split in enumerate(present):
        other = write_shapes(tmp_path / f"other_{split}", per_class=6, classes=2, seed=10 + i)
        for f in other.rglob("*.png"):
            f.rename(f.with_name(f"{split}_{f.name}"))
        shutil.copytree(other, root / split)
    return root


def test_train_and_test_without_val_carve_val_with_the_unsplit_hash(tmp_path, flat):
    unsplit = _by_key(scan_dataset(flat), flat)
    root = _split_layout(tmp_path, flat, "test")
    images = scan_dataset(root)
    split = _by_key(images, root)
    train_files = {k: v for k, v in split.items() if not Path(k).name.startswith("test_")}
    assert set(train_files) == set(unsplit)
    # a train/ image is in val exactly when the unsplit layout puts it in val; the rest stays in train
    assert {k for k, v in train_files.items() if v == "val"} == {k for k, v in unsplit.items() if v == "val"}
    assert all(v in ("train", "val") for v in train_files.values())
    # test images are never moved
    assert images.counts()["test"] == {"circle": 6, "square": 6}
    assert all(v == "test" for k, v in split.items() if Path(k).name.startswith("test_"))
    assert min(len(images.split(s)) for s in SPLITS) > 0


def test_train_and_val_without_test_carve_test(tmp_path, flat):
    unsplit = _by_key(scan_dataset(flat), flat)
    root = _split_layout(tmp_path, flat, "val")
    split = _by_key(scan_dataset(root), root)
    carved = {k for k, v in split.items() if v == "test"}
    assert carved and carved == {k for k, v in unsplit.items() if v == "test"}
    assert all(v == "val" for k, v in split.items() if Path(k).name.startswith("val_"))


def test_train_folder_alone_splits_like_the_unsplit_layout(tmp_path, flat):
    root = _split_layout(tmp_path, flat)
    assert _by_key(scan_dataset(root), root) == _by_key(scan_dataset(flat), flat)
    # explicit folders override the hash: with all three, train/ stays train
    shutil.copytree(tmp_path / "split" / "train", tmp_path / "all" / "train")
    for split in ("val", "test"):
        shutil.copytree(write_shapes(tmp_path / f"x_{split}", per_class=2, classes=2, seed=3), tmp_path / "all" / split)
    assert {r.split for r in scan_dataset(tmp_path / "all").records if "/train/" in str(r.path)} == {"train"}


def test_carving_is_stable_when_images_are_appended(tmp_path, flat):
    root = _split_layout(tmp_path, flat, "test")
    before = _by_key(scan_dataset(root), root)
    more = write_shapes(tmp_path / "more", per_class=30, classes=2, seed=5)
    for f in more.rglob("*.png"):
        shutil.copy(f, root / "train" / f.parent.name / f"new_{f.name}")
    after = _by_key(scan_dataset(root), root)
    assert len(after) == len(before) + 60
    assert all(after[k] == v for k, v in before.items()), "appending moved an old image between splits"


def test_manifest_split_column_follows_the_same_rule(tmp_path, flat):
    rows = [(f"{r.label}/{Path(r.path).name}", r.label) for r in scan_dataset(flat).records
            if "nested" not in str(r.path)]
    (flat / "plain.csv").write_text("path,label\n" + "\n".join(f"{p},{c}" for p, c in rows))
    plain = {Path(r.path).name: r.split for r in scan_dataset(flat / "plain.csv").records}
    # every row says train: val and test are carved exactly as without a split column
    (flat / "train_only.csv").write_text("path,label,split\n" + "\n".join(f"{p},{c},train" for p, c in rows))
    assert {Path(r.path).name: r.split for r in scan_dataset(flat / "train_only.csv").records} == plain
    # some rows name test: those stay test, only val is carved from the train rows
    named_test = {p for p, _ in rows[:5]}
    lines = [f"{p},{c},{'test' if p in named_test else 'train'}" for p, c in rows]
    (flat / "with_test.csv").write_text("path,label,split\n" + "\n".join(lines))
    got = {f"{r.label}/{Path(r.path).name}": r.split for r in scan_dataset(flat / "with_test.csv").records}
    assert {p for p, s in got.items() if s == "test"} == named_test
    val = {p for p, s in got.items() if s == "val"}
    assert val and val == {p for p, _ in rows if p not in named_test and plain[Path(p).name] == "val"}


def test_check_splits_names_the_empty_split_and_the_fix():
    check_splits({"train": 40, "val": 5, "test": 10, "batch": 3}, "/x", 0.15, 0.15)
    with pytest.raises(SplitError) as exc:
        check_splits({"train": 40, "val": 0, "test": 10}, "/x", 0.15, 0.15)
    assert str(exc.value) == ("dataset /x has no val images (train 40, val 0, test 10): add a val/<class>/ folder "
                              "(or manifest rows with split val) or more train images, or raise data.val_fraction (now 0.15)")
    assert exc.value.exit_code == EXIT_VALIDATION and isinstance(exc.value, ValueError)
    with pytest.raises(SplitError, match=r"no test images \(train 3, val 1, test 0\).*data.test_fraction \(now 0.05\)"):
        check_splits({"train": 3, "val": 1}, "/x", 0.15, 0.05)
    with pytest.raises(SplitError, match="no train images.*lower data.val_fraction"):
        check_splits({"val": 1, "test": 1}, "/x", 0.15, 0.15)


def test_zero_val_fraction_without_val_folder_gives_an_empty_val_split(tmp_path, flat):
    root = _split_layout(tmp_path, flat, "test")
    images = scan_dataset(root, val_fraction=0.0)
    counts = {s: len(images.split(s)) for s in SPLITS}
    assert counts["val"] == 0 and counts["train"] == 81
    with pytest.raises(SplitError, match=r"raise data.val_fraction \(now 0.0\)"):
        check_splits(counts, root, 0.0, 0.15)

