"""The monitor flow: a production batch against the champion's training data, never training.

Fetch the champion's bundle (its training profile and calibration travel with it), compare
the unlabelled batch with ``transferops.monitoring.monitor_batch``, log the result to the
monitoring experiment, remember it on the registered model (for ``transferops status`` and
the retrain flow's cooldown) and emit the drift events the retrain deployment listens to.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks import events, registry, versioning
from tasks.tracking import tracked_run
from transferops.config import load_settings
from transferops.data import scan_dataset
from transferops.errors import InputError
from transferops.models import load_bundle
from transferops.monitor_report import render_monitor_report
from transferops.monitoring import monitor_batch

LAST_MONITOR_TAG = "transferops.last_monitor"


class MonitorParams(BaseModel):
    """Parameters of one monitoring run."""

    batch: str = Field(description="folder of production images (any layout; labels are ignored) or a manifest with a "
                                   "path column; a relative path is the project's. With batch_rev or batch_repo: a "
                                   "folder tracked by DVC in that repository")
    batch_rev: str | None = Field(None, description="git revision of the DVC-tracked batch (default: HEAD of batch_repo)")
    batch_repo: str | None = Field(None, description="git+DVC repository (path or URL, e.g. a data registry) the batch "
                                                     "is tracked in (default: the project, when batch_rev is set)")
    labels: str | None = Field(None, description="CSV of path,label for images of the batch, when labels arrive later "
                                                 "(a relative path is the project's)")
    # None: TRANSFEROPS_PROJECT_DIR, else the working directory (a worker's environment decides)
    project_dir: str | None = None
    config_file: str | None = None
    run_name: str | None = None
    emit_events: bool = Field(True, description="emit transferops.drift.* events (the retrain trigger listens)")


fetch_champion = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)(registry.fetch_bundle)
compare_batch = task(cache_policy=NO_CACHE)(monitor_batch)
emit = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)(events.emit_monitor_events)


@flow(name="transferops-monitor", log_prints=True)
def monitor(params: MonitorParams) -> dict:
    """Compare a production batch with the champion's training data; emit the drift events."""
    s = load_settings(params.project_dir, params.config_file)
    run_name = params.run_name or f"monitor-{time.strftime('%Y%m%d-%H%M%S')}"
    champion = registry.alias_version(s, s.model_name, registry.CHAMPION)
    if champion is None:
        raise InputError(f"model {s.model_name} has no champion in {s.resolved_tracking_uri} to monitor; "
                         "train one first (transferops train or transferops demo)")
    folder = fetch_champion(s, f"models:/{s.model_name}/{champion.version}",
                            s.state_dir / "champions" / f"v{champion.version}")
    tracked = None
    if params.batch_rev or params.batch_repo:
        tracked = versioning.fetch_tracked(params.batch_repo or str(s.project_dir), params.batch, params.batch_rev,
                                           s.state_dir / "batches")
        print(f"Batch {params.batch} of {tracked.repo} at {tracked.rev[:12]} (DVC {tracked.md5}) -> {tracked.local}")
    # a deployment's relative paths are the project's (the CLI passes absolute ones)
    batch = scan_dataset(tracked.local if tracked else s.project_dir / params.batch, labels="none")
    labels = s.project_dir / params.labels if params.labels else None
    result, reference, production = compare_batch(s, load_bundle(folder), champion.version, batch, labels,
                                                  progress=print)
    print(f"Monitor: {'drift' if result.is_drift else 'no drift'} ({result.test} p={result.p_val:.3g}); "
          f"retrain: {result.decision.retrain} ({result.decision.reason})")
    tracking = s.model_copy(update={"experiment": f"{s.experiment}-monitoring"})
    with tracked_run(tracking, run_name, {"transferops.flow": "monitor", "transferops.model": s.model_name,
                                          "transferops.model_version": champion.version}) as run:
        run.log_params({"batch": params.batch, "batch_rev": tracked.rev if tracked else "",
                        "batch_md5": tracked.md5 if tracked else "", "model": s.model_name, "version": champion.version,
                        "labels": params.labels or "", "retrain_on": s.monitor.retrain_on,
                        "max_accuracy_drop": s.monitor.max_accuracy_drop, "estimator": s.monitor.estimator},
                       with_training_config=False)
        run.log_metrics({"drift_statistic": result.statistic, "drift_p_val": result.p_val,
                         "is_drift": float(result.is_drift), "retrain": float(result.decision.retrain),
                         "n_images": result.n_images, "estimated_accuracy": result.estimated_accuracy,
                         "heldout_accuracy": result.heldout_accuracy, "realized_accuracy": result.realized_accuracy,
                         "monitor_seconds": result.seconds}
                        | {f"{t['test']}_p_val": t["p_val"] for t in result.drift.get("tests", [])})
        report_dir = s.reports_dir / run_name
        report = render_monitor_report(result, reference.embeddings, production.embeddings, report_dir,
                                       f"transferops monitor {run_name}")
        registry.log_artifacts(tracking, run.run_id, list(report_dir.iterdir()), "report")
        payload = result.event_payload() | {"monitor_run_id": run.run_id, "monitor_run": run_name}
        ids = emit(s.model_name, payload, result.decision.retrain) if params.emit_events else {}
        registry.set_model_tag(s, s.model_name, LAST_MONITOR_TAG, {
            "run_id": run.run_id, "run": run_name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": champion.version, "is_drift": result.is_drift, "test": result.test,
            "statistic": result.statistic, "p_val": result.p_val, "estimated_accuracy": result.estimated_accuracy,
            "realized_accuracy": result.realized_accuracy, "retrain": result.decision.retrain})
    return result.as_dict() | {"run_name": run_name, "run_id": run.run_id, "report": str(report), "events": ids,
                               "batch_version": tracked.as_dict() if tracked else None}


if __name__ == "__main__":
    import sys

    print(monitor(MonitorParams(batch=sys.argv[1], labels=sys.argv[2] if len(sys.argv) > 2 else None)))
