"""Dataset validation with Great Expectations: the only adapter to GX.

The core builds the per-image table (``transferops.data.image_table``: decode status,
mode, size, sha256, cross-split duplicates); a GX suite on an ephemeral context checks it
and a per-class count table derived from it. A failed
validation raises :class:`DataValidationError` carrying the full report. The steps are
plain functions in ``tasks/checks.py``; here they become Prefect tasks.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import checks
from tasks.expectations import (  # noqa: F401  (re-exported: the flows' and tests' names)
    DataValidationError,
    Rules,
    SuiteRunner,
    ValidationReport,
    counts_table,
    run_suite,
)

validate_dataset = task(cache_policy=NO_CACHE)(checks.validate_dataset)
load_dataset = task(checks.load_dataset)
