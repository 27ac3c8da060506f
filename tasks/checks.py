"""Validation steps as plain functions (no Prefect): decode the images, run the GX suite.

``tasks/validation.py`` wraps them as Prefect tasks; the CLI's direct ingest path calls them
as they are. The suite itself runs in :class:`~tasks.expectations.SuiteRunner`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.expectations import DataValidationError, Rules, SuiteRunner, ValidationReport
from transferops.config import DataConfig
from transferops.data import PARALLEL_MIN, SPLITS, ImageSet, check_splits, image_table, mark_cross_split_duplicates


def validate_dataset(images: ImageSet, cfg: DataConfig, expected_classes: list[str] | None = None,
                     base: pd.DataFrame | None = None, suite: SuiteRunner | None = None) -> ValidationReport:
    """Decode every image of ``images`` and run the GX suite over them plus ``base``.

    ``base`` is the already-validated table of the version being appended to; only
    the new images are decoded, but the expectations hold for the resulting version.
    ``suite`` is a runner the caller started early (see :class:`SuiteRunner`); without
    one, a runner starts here. Raises :class:`~transferops.data.SplitError` when the
    resulting version has no train, val or test image (before the suite runs), and
    DataValidationError when the suite fails.
    """
    n_files = sum(1 for r in images.records if r.pack is None)
    with suite or SuiteRunner(enabled=n_files >= PARALLEL_MIN) as suite:
        table = image_table(images, max_pixels=cfg.max_image_pixels)
        table["new"] = True
        full = table
        if base is not None and len(base):
            old = base[~base.path.isin(table.path)].assign(new=False)
            full = mark_cross_split_duplicates(pd.concat([old, table], ignore_index=True))
        # an empty split would fail training only after its first epoch; refuse the version now
        per_split = full["split"].value_counts()
        check_splits({s: int(per_split.get(s, 0)) for s in SPLITS}, images.root, cfg.val_fraction, cfg.test_fraction)
        # the class list is the dataset's own (folders, classes.txt) plus the version appended to
        classes = sorted(set(images.classes) | (set(base.label) if base is not None else set()))
        report = suite.run(full, Rules.from_config(cfg, classes, expected_classes))
    report.table = table
    if not report.success:
        n = len(report.failures())
        raise DataValidationError(f"dataset {images.root} failed {n} expectation(s):\n{report.summary()}", report)
    return report


def load_dataset(source: Path, val_fraction: float, test_fraction: float) -> ImageSet:
    """Scan an ImageFolder tree or a manifest into records."""
    from transferops.data import scan_dataset

    return scan_dataset(source, val_fraction, test_fraction)
