"""Dataset validation with Great Expectations, as Prefect tasks.

The GX adapter is ``tasks/expectations.py`` (the suite) and ``tasks/checks.py`` (the steps,
plain functions). The core builds the per-image table (``transferops.data.image_table``: decode status,
mode, size, sha256, cross-split duplicates); a GX suite on an ephemeral context checks it
and a per-class count table derived from it. A failed
validation raises :class:`DataValidationError` carrying the full report.
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
