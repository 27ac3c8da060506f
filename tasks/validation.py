"""Dataset validation with Great Expectations: the only adapter to GX.

The core builds the per-image table (``transferops.data.image_table``: decode status,
mode, size, sha256, cross-split duplicates); a GX suite on an ephemeral context checks it
and a per-class count table derived from it. A failed
validation raises :class:`DataValidationError` carrying the full report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.expectations import (  # noqa: F401  (re-exported: the flows' and tests' names)
    DataValidationError,
    Rules,
    SuiteRunner,
    ValidationReport,
    counts_table,
    run_suite,
)
from transferops.data import PARALLEL_MIN, ImageSet, image_table, mark_cross_split_duplicates


@task(cache_policy=NO_CACHE)
def validate_dataset(images: ImageSet, cfg: Any, expected_classes: list[str] | None = None,
                     base: pd.DataFrame | None = None, suite: SuiteRunner | None = None) -> ValidationReport:
    """Decode every image of ``images`` and run the GX suite over them plus ``base``.

    ``base`` is the already-validated table of the version being appended to; only
    the new images are decoded, but the expectations hold for the resulting version.
    ``suite`` is a runner the caller started early (see :class:`SuiteRunner`); without
    one, a runner starts here. Raises DataValidationError when the suite fails.
    """
    n_files = sum(1 for r in images.records if r.pack is None)
    with suite or SuiteRunner(enabled=n_files >= PARALLEL_MIN) as suite:
        table = image_table(images, max_pixels=cfg.max_image_pixels)
        table["new"] = True
        full = table
        if base is not None and len(base):
            old = base[~base.path.isin(table.path)].assign(new=False)
            full = mark_cross_split_duplicates(pd.concat([old, table], ignore_index=True))
        # the class list is the dataset's own (folders, classes.txt) plus the version appended to
        classes = sorted(set(images.classes) | (set(base.label) if base is not None else set()))
        report = suite.run(full, Rules.from_config(cfg, classes, expected_classes))
    report.table = table
    if not report.success:
        n = len(report.failures())
        raise DataValidationError(f"dataset {images.root} failed {n} expectation(s):\n{report.summary()}", report)
    return report


@task
def load_dataset(source: Path, val_fraction: float, test_fraction: float) -> ImageSet:
    """Scan an ImageFolder tree or a manifest into records."""
    from transferops.data import scan_dataset

    return scan_dataset(source, val_fraction, test_fraction)
