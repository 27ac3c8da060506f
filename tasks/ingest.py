"""The ingest, step by step, free of Prefect: validate incoming images, then make them a version.

Validation covers the *resulting* version (the current one plus the new images), but
only new images are decoded. Bad data never becomes a version: the store, ``data.dvc``
and the remote are untouched when validation fails.

:func:`ingest` takes its steps as arguments: the flow (``flows/data.py``) passes the
Prefect tasks, the CLI's direct path (:func:`add_data_direct`) the plain functions of
``tasks/dvcstore.py`` and ``tasks/checks.py``, so ``transferops data add`` never imports
Prefect (or MLflow, unless a model is registered whose classes must be kept).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from pydantic import BaseModel, Field

from tasks import checks, dvcstore
from tasks.expectations import DataValidationError, SuiteRunner
from transferops.config import Settings, load_settings


@dataclass(frozen=True)
class IngestSteps:
    """The five steps of an ingest: plain functions (the CLI) or the Prefect tasks around them (the flows)."""

    prepare_project: Callable
    load_dataset: Callable
    validate_dataset: Callable
    add_version: Callable
    push_version: Callable


PLAIN_STEPS = IngestSteps(prepare_project=dvcstore.prepare_project, load_dataset=checks.load_dataset,
                          validate_dataset=checks.validate_dataset, add_version=dvcstore.add_version,
                          push_version=dvcstore.push_version)


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


def expected_classes(settings: Settings, target: str, base: pd.DataFrame | None) -> list[str] | None:
    """The class set a new version of ``target`` must keep: the registered champion's for the
    training data, else the current version's; None when there is nothing to keep."""
    local_db = settings.state_dir / "mlflow.db"
    no_registry = settings.tracking_uri is None and not local_db.exists()  # nothing registered yet
    if target == "data" and not no_registry:
        from tasks import registry  # only when there is a registry to ask: MLflow is slow to import

        champion = registry.alias_version(settings, settings.model_name, registry.CHAMPION)
        if champion is not None and champion.tags.get("transferops.classes"):
            return json.loads(champion.tags["transferops.classes"])
    if base is not None and len(base):
        return sorted(base["label"].unique().tolist())
    return None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)  # progress is for people; stdout stays clean for --json


def ingest(params: DataParams, steps: IngestSteps, say: Callable[[str], None] = _stderr,
           suite: SuiteRunner | None = None, settings: Settings | None = None, root: Path | None = None) -> dict:
    """Validate ``params.source`` and commit it as a new version of ``params.target``; returns the version.

    ``steps`` has ``prepare_project``, ``load_dataset``, ``validate_dataset``, ``add_version``
    and ``push_version`` (tasks or plain functions); ``suite`` is a GX runner the caller
    started early, otherwise one starts here. A flow that has already loaded its ``settings``
    and prepared the project (``root``) passes both, so neither happens twice in one run.
    """
    settings = settings or load_settings(params.project_dir, params.config_file)
    root = root or steps.prepare_project(settings.project_dir, settings.resolved_dvc_remote,
                                         settings.dvc_remote_endpoint)
    run_name = params.run_name or f"data-{time.strftime('%Y%m%d-%H%M%S')}"
    dcfg = settings.data
    # GX starts importing in a helper process now, beside the scan and the decoding
    with suite or SuiteRunner() as suite:
        incoming = steps.load_dataset(Path(params.source), dcfg.val_fraction, dcfg.test_fraction)
        base = None if params.replace else dvcstore.store_table(root, params.target)
        expected = None if params.allow_class_change else expected_classes(settings, params.target, base)
        try:
            report = steps.validate_dataset(incoming, dcfg, expected, base, suite)
        except DataValidationError as exc:
            from tasks import reporting  # a failed run goes to MLflow; only then is it imported

            reporting.record_validation_failure(settings, run_name, exc)
            raise
    version = steps.add_version(root, incoming, report.table, params.target, params.message, params.replace)
    steps.push_version(root, params.target)
    report.write(settings.reports_dir / run_name / "validation.json")
    say(f"{params.target} version {version.rev[:12]}: {version.meta.get('n_images')} images, "
        f"content {version.meta.get('content_hash', '')[:16]}, +{version.meta.get('added')} "
        f"({version.meta.get('new_bytes')} new bytes)")
    return version.as_dict() | {"run_name": run_name, "duplicates_within_split": report.duplicates_within_split,
                                "validation": str(settings.reports_dir / run_name / "validation.json")}


def add_data_direct(params: DataParams, suite: SuiteRunner | None = None) -> dict:
    """The ingest without Prefect, for the CLI: an append of 1,000 images takes seconds, and
    importing Prefect or starting an ephemeral API would cost more than the work. No retries."""
    return ingest(params, PLAIN_STEPS, suite=suite)
