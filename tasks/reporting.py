"""Run reports: the core draws them into ``reports/<run>/``; this adapter mirrors them to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry
from transferops.config import Settings
from transferops.report import RunReport, render_run_report

if TYPE_CHECKING:
    from tasks.expectations import DataValidationError


def publish_run_report(settings: Settings, run_id: str, report: RunReport) -> Path:
    """Render ``report`` into ``reports/<run>/`` and log the folder as the run's ``report`` artifact."""
    folder = settings.reports_dir / report.run_name
    path = render_run_report(report, folder)
    registry.log_artifacts(settings, run_id, [p for p in folder.iterdir()], "report")
    return path


write_run_report = task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)(publish_run_report)


def record_validation_failure(settings: Settings, run_name: str, exc: "DataValidationError") -> Path:
    """Keep a failed validation visible: the GX result in reports/ and in a FAILED MLflow run.

    Nothing is versioned or registered; returns the report path. Plain functions only: this
    also runs on the CLI's direct path, outside any flow and without the Prefect API.
    """
    path = exc.report.write(settings.reports_dir / run_name / "validation.json")
    run_id = registry.open_run(settings, run_name, {"transferops.flow": "data", "transferops.status": "failed_validation"})
    try:
        report = publish_run_report(settings, run_id, RunReport(
            run_name, {"status": "failed validation", "error": str(exc).splitlines()[0]}, validation=path))
    finally:
        registry.end_run(settings, run_id, "FAILED")
    return report
