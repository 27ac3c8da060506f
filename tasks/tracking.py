"""The tracked run every flow shares: one MLflow run, closed FINISHED or FAILED, never left open.

``tracked_run`` is the skeleton around a flow's work: it opens the run with the resolved
configuration, hands out a :class:`TrackedRun` with the logging the flows need, and closes
the run as FAILED on any exception (re-raised), so a failed flow never leaves a run
"RUNNING" and never reaches the code that moves aliases.
"""

from __future__ import annotations

import json
import logging
import numbers
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from tasks import registry
from tasks.history import acting_run
from tasks.mlflow_errors import tracking_errors, unreachable_cause, unreachable_message
from transferops.config import Settings
from transferops.errors import InputError
from transferops.report import RunReport

# Tags that tie an MLflow run to the Prefect flow run it ran in, and the artifact holding a
# train run's summary: a run on another machine (the GPU pool) is found and read back by them.
FLOW_RUN_TAG = "transferops.prefect_flow_run_id"
SUMMARY_ARTIFACT = "decision/summary.json"
log = logging.getLogger(__name__)


@dataclass
class TrackedRun:
    """An open MLflow run of a flow; every call names its run id explicitly."""

    settings: Settings
    run_id: str
    run_name: str

    def log_params(self, params: Mapping[str, Any], with_training_config: bool = True) -> None:
        """Log ``params`` and, flattened as ``training.<field>``, the training configuration."""
        flat = dict(params)
        if with_training_config:
            flat |= {f"training.{k}": v for k, v in self.settings.training.model_dump().items()}
        registry.log_params(self.settings, self.run_id, flat)

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        """Log the numeric entries of ``metrics`` (a confusion matrix or a note is skipped)."""
        numeric = {f"{prefix}{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        if numeric:
            registry.log_metrics(self.settings, self.run_id, numeric, step=step)

    def epoch_logger(self) -> Callable[[dict[str, Any]], None]:
        """A callback for the training loop: each evaluation's row as metrics at its optimizer step."""
        return lambda row: self.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")},
                                            step=int(row.get("step", row["epoch"])))

    def log_json(self, obj: Any, artifact_file: str) -> None:
        registry.log_json(self.settings, self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log ``text`` (Markdown, a table) as the artifact ``artifact_file``."""
        registry.client(self.settings).log_text(self.run_id, text, artifact_file)

    def report(self, report: RunReport) -> Path:
        """Write the run's Markdown report with its plots and log the folder to the run."""
        from tasks.reporting import write_run_report

        return write_run_report(self.settings, self.run_id, report)


@contextmanager
def tracked_run(settings: Settings, run_name: str, tags: dict[str, str]) -> Iterator[TrackedRun]:
    """Open a run, yield it, close it FINISHED; on any exception close it FAILED and re-raise.

    An unreachable tracking server, in the block or around it, is raised as one RegistryError
    (``tasks/mlflow_errors.py``) after MLflow's bounded retries; closing the run as FAILED then
    fails too, and is only logged, so that it never hides the error that ended the run.
    """
    with tracking_errors(settings):
        run_id = registry.start_run(settings, run_name, tags)
    try:
        with acting_run(run_id):  # aliases moved in the block record this run as who moved them
            yield TrackedRun(settings, run_id, run_name)
    except Exception as exc:
        _close_failed(settings, run_id)
        if unreachable_cause(exc) is not None and not isinstance(exc, registry.RegistryError):
            raise registry.RegistryError(unreachable_message(settings, exc)) from exc
        raise
    except BaseException:  # KeyboardInterrupt, a cancelled flow: closed FAILED all the same
        _close_failed(settings, run_id)
        raise
    with tracking_errors(settings, "the run's work is done but it stays RUNNING in the tracking store"):
        registry.end_run(settings, run_id, "FINISHED")


def _close_failed(settings: Settings, run_id: str) -> None:
    try:
        registry.end_run(settings, run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001  (the run's own error is the one to report, not this one)
        why = "the tracking server is unreachable" if unreachable_cause(exc) else f"{type(exc).__name__}: {exc}"
        log.warning("could not close MLflow run %s as FAILED; it stays RUNNING in the tracking store (%s)", run_id, why)


def summary_of_flow_run(settings: Settings, flow_run_id: str) -> dict[str, Any]:
    """The ``decision/summary.json`` of the newest finished run in the settings' experiment tagged
    with Prefect flow run ``flow_run_id`` (a train run that ran elsewhere, e.g. on the GPU pool)."""
    c = registry.client(settings)
    exp = c.get_experiment_by_name(settings.experiment)
    runs = c.search_runs([exp.experiment_id], f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}' and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    if not runs:
        raise InputError(f"no finished MLflow run of Prefect flow run {flow_run_id} in experiment {settings.experiment} "
                         f"at {settings.resolved_tracking_uri}; the worker that ran it must log to this tracking URI "
                         "(TRANSFEROPS_TRACKING_URI)")
    run_id = runs[0].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = c.download_artifacts(run_id, SUMMARY_ARTIFACT, tmp)
        except Exception as exc:  # noqa: BLE001  (MlflowException or OSError, depending on the store)
            raise InputError(f"MLflow run {run_id} of Prefect flow run {flow_run_id} has no {SUMMARY_ARTIFACT} "
                             f"({type(exc).__name__}); it was trained by an older transferops") from None
        return json.loads(Path(local).read_text())
