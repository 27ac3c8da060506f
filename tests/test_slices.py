"""The previous-data slices a retrain is also scored on (transferops/slices.py)."""

from __future__ import annotations

import shutil

from transferops.data import scan_dataset
from transferops.samples import write_shapes
from transferops.slices import NEW_TEST, PREVIOUS_TEST, describe_slices, evaluation_slices, slice_metrics


def _versions(tmp_path):
    """An old dataset and a newer one: the old images, one of them replaced, plus shifted ones."""
    old = write_shapes(tmp_path / "old", per_class=30, seed=1)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    extra = write_shapes(tmp_path / "extra", per_class=30, seed=2, style="shifted")
    for f in extra.rglob("*.png"):  # new files next to the old ones
        f.rename(new / f.parent.name / f"new_{f.name}")
    return scan_dataset(old, 0.2, 0.2), scan_dataset(new, 0.2, 0.2), new


def test_previous_slice_is_the_old_test_split_and_new_slice_only_new_test_images(tmp_path):
    previous, current, _ = _versions(tmp_path)
    slices, note = evaluation_slices(current, previous, "a" * 40)
    by = {s.name: s for s in slices}
    assert set(by) == {PREVIOUS_TEST, NEW_TEST} and "aaaaaaaaaaaa" in note
    assert sorted(map(str, (r.path for r in by[PREVIOUS_TEST].images.records))) == \
        sorted(map(str, (r.path for r in previous.split("test"))))
    new_paths = {str(r.path) for r in by[NEW_TEST].images.records}
    assert new_paths and all("/new_" in p for p in new_paths)
    assert new_paths == {str(r.path) for r in current.split("test") if "/new_" in str(r.path)}
    assert all(r.split == "test" for s in slices for r in s.images.records)
    assert by[NEW_TEST].images.classes == current.classes


def test_a_replaced_file_counts_as_new(tmp_path):
    previous, current, new = _versions(tmp_path)
    kept = [r for r in current.split("test") if "/new_" not in str(r.path)][0]
    shutil.copy(next(p for p in (new / kept.label).glob("new_*.png")), kept.path)  # same name, other pixels
    current = scan_dataset(new, 0.2, 0.2)
    slices, _ = evaluation_slices(current, previous, "b" * 40)
    assert str(kept.path) in {str(r.path) for s in slices if s.name == NEW_TEST for r in s.images.records}


def test_no_slices_when_classes_differ_and_empty_slices_are_named(tmp_path):
    previous = scan_dataset(write_shapes(tmp_path / "two", per_class=20, classes=2), 0.2, 0.2)
    current = scan_dataset(write_shapes(tmp_path / "three", per_class=20, classes=3), 0.2, 0.2)
    slices, note = evaluation_slices(current, previous, "c" * 40)
    assert slices == [] and "has classes" in note
    same, note = evaluation_slices(previous, previous, "d" * 40)
    assert [s.name for s in same] == [PREVIOUS_TEST] and "empty, so not scored: new_test" in note


def test_metrics_and_sentence():
    slices = {PREVIOUS_TEST: {"images": 12, "description": "", "challenger": {"accuracy": 0.5, "ece": 0.1},
                              "champion": {"accuracy": 0.75, "ece": 0.2}},
              NEW_TEST: {"images": 3, "description": "", "challenger": {"accuracy": 1.0, "ece": 0.0}, "champion": None}}
    assert slice_metrics(slices) == {"previous_test_accuracy": 0.5, "previous_test_ece": 0.1,
                                     "previous_test_champion_accuracy": 0.75, "previous_test_champion_ece": 0.2,
                                     "new_test_accuracy": 1.0, "new_test_ece": 0.0}
    assert describe_slices(slices) == ("previous_test (12 images): challenger 0.500, champion 0.750; "
                                       "new_test (3 images): challenger 1.000")
