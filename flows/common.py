"""The run skeleton every flow shares: settings once, the project once, the data once.

A flow opens a :class:`RunContext` (settings with the run's overrides, the prepared
project, a run name), gets its data as a :class:`PreparedData` (ingested and validated,
or an earlier version checked out and validated again), and does its work inside
``tasks.tracking.tracked_run``. Nothing here knows what the flow trains or decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flows.data import TASK_STEPS
from tasks import reporting, versioning
from tasks.ingest import DataParams, ingest
from tasks.validation import DataValidationError, load_dataset, validate_dataset
from transferops.config import Settings, load_settings
from transferops.data import ImageSet


@dataclass
class RunContext:
    """What one flow run works in: its settings, the prepared project and its run name."""

    settings: Settings
    root: Path
    run_name: str


def open_run(project_dir: str | None, config_file: str | None, run_name: str | None, kind: str,
             epochs: int | None = None) -> RunContext:
    """Load the settings (with the run's ``epochs`` override) and prepare the project, once per run.
    ``project_dir`` None: ``TRANSFEROPS_PROJECT_DIR``, else the working directory."""
    settings = load_settings(project_dir, config_file)
    if epochs:
        settings.training.epochs = epochs
    root = versioning.prepare_project(settings.project_dir, settings.resolved_dvc_remote, settings.dvc_remote_endpoint)
    return RunContext(settings, root, run_name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


@dataclass
class PreparedData:
    """A dataset version ready to train on: its git/DVC identity, its records, its validation result."""

    version: versioning.DataVersion
    images: ImageSet
    validation_file: Path

    @property
    def validated(self) -> bool:
        """Whether this run validated the data and the suite passed (the promotion's validation gate)."""
        import json

        try:
            return json.loads(self.validation_file.read_text()).get("success") is True
        except (OSError, ValueError):
            return False


def prepare_data(ctx: RunContext, source: str | None = None, rev: str | None = None, target: str = "data",
                 replace: bool = False, allow_class_change: bool = False, message: str | None = None) -> PreparedData:
    """Ingest ``source`` as a new version (validated first), or check out ``rev`` (default: the
    current version) and validate it again under today's rules; then read it from the store."""
    s = ctx.settings
    if source:
        added = ingest(DataParams(source=source, target=target, replace=replace, message=message,
                                  allow_class_change=allow_class_change, run_name=ctx.run_name),
                       TASK_STEPS, settings=s, root=ctx.root)
        rev, validation_file = added["rev"], Path(added["validation"])
    else:
        rev = rev or versioning.current_version(ctx.root, target).rev
        validation_file = s.reports_dir / ctx.run_name / "validation.json"
    version = versioning.checkout_version(ctx.root, rev, s.state_dir / "datasets" / rev, target)
    images = load_dataset(Path(version.path), s.data.val_fraction, s.data.test_fraction)
    if not source:  # an existing version is validated again: rules may have changed since
        try:
            validate_dataset(images, s.data).write(validation_file)
        except DataValidationError as exc:
            reporting.record_validation_failure(s, ctx.run_name, exc)
            raise
    return PreparedData(version, images, validation_file)
