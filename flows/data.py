"""The data flow: validate incoming images, then make them a new dataset version.

Validation covers the *resulting* version (the current one plus the new images), but
only new images are decoded. Bad data never becomes a version: the store, ``data.dvc``
and the remote are untouched when validation fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from prefect import flow
from pydantic import BaseModel, Field

from tasks import registry, reporting, versioning
from tasks.validation import DataValidationError, SuiteRunner, load_dataset, validate_dataset
from transferops.config import load_settings


class DataParams(BaseModel):
    """Parameters of one ingest."""

    source: str = Field(description="ImageFolder tree or .csv/.parquet manifest to add")
    target: str = Field("data", description="tracked folder: data (training data) or source-data")
    message: str | None = Field(None, description="commit message of the new version")
    replace: bool = Field(False, description="make the source the whole version instead of appending to it")
    allow_class_change: bool = Field(False, description="accept a class set that differs from the registered model's")
    project_dir: str = "."
    config_file: str | None = None
    run_name: str | None = None


def _add_data(params: DataParams, call: Callable, say: Callable[[str], None] = print,
              suite: SuiteRunner | None = None) -> dict:
    """The ingest, step by step; ``call(task, *args)`` runs each task (tracked or plain).

    ``suite``: a GX runner the caller started early; otherwise one starts here.
    """
    settings = load_settings(params.project_dir, params.config_file)
    root = call(versioning.prepare_project, settings.project_dir, settings.resolved_dvc_remote,
                settings.dvc_remote_endpoint)
    run_name = params.run_name or f"data-{time.strftime('%Y%m%d-%H%M%S')}"
    dcfg = settings.data
    # GX starts importing in a helper process now, beside the scan and the decoding
    with suite or SuiteRunner() as suite:
        incoming = call(load_dataset, Path(params.source), dcfg.val_fraction, dcfg.test_fraction)
        base = None if params.replace else versioning.store_table(root, params.target)
        expected = None if params.allow_class_change else registry.expected_classes(settings, params.target, base)
        try:
            report = call(validate_dataset, incoming, dcfg, expected, base, suite)
        except DataValidationError as exc:
            reporting.record_validation_failure(settings, run_name, exc)
            raise
    version = call(versioning.add_version, root, incoming, report.table, params.target, params.message, params.replace)
    call(versioning.push_version, root, params.target)
    report.write(settings.reports_dir / run_name / "validation.json")
    say(f"{params.target} version {version.rev[:12]}: {version.meta.get('n_images')} images, "
          f"content {version.meta.get('content_hash', '')[:16]}, +{version.meta.get('added')} "
          f"({version.meta.get('new_bytes')} new bytes)")
    return version.as_dict() | {"run_name": run_name, "duplicates_within_split": report.duplicates_within_split,
                                "validation": str(settings.reports_dir / run_name / "validation.json")}


@flow(name="transferops-data", log_prints=True)
def add_data(params: DataParams) -> dict:
    """Validate ``params.source`` and commit it as a new version of ``params.target``; returns the version."""
    return _add_data(params, lambda task, *args: task(*args))


def add_data_direct(params: DataParams, suite: SuiteRunner | None = None) -> dict:
    """The same ingest without the Prefect API, for the CLI: an append of 1,000 images takes
    seconds, and starting an ephemeral API would cost more than the work. No retries here."""
    # stdout stays clean for --json; progress goes to stderr
    return _add_data(params, lambda task, *args: task.fn(*args), lambda msg: print(msg, file=sys.stderr), suite)


if __name__ == "__main__":
    add_data(DataParams(source=sys.argv[1]))
