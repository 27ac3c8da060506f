"""The retrain flow: what a drift event (or an operator, or a schedule) starts.

Guards first (``transferops.retraining``): no second retrain within the cooldown, which the
registry remembers so that a redeploy resetting Prefect's trigger window changes nothing,
and no retrain without new labelled data since the champion's version. Then the train
flow's own steps on the newest labelled data version, with the trigger (event id, monitor
run, statistics) in the run's tags and the new version's lineage.

Where it trains: when the GPU pool (``monitor.gpu_pool``) has a worker online, the training is
handed to the GPU train deployment (``monitor.gpu_deployment``) as a subflow of this run, on
the data version this run just committed to ``data.dvc``; otherwise it runs in this process.
The result and the registry's retrain record say which, and why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run as prefect_flow_run
from pydantic import BaseModel, Field

from flows.common import open_run, prepare_data
from flows.train import TrainParams, train_version
from tasks import deployments, registry
from tasks.tracking import summary_of_flow_run
from transferops.errors import InputError
from transferops.retraining import retrain_guard
from transferops.strategy import CHOICES

LAST_RETRAIN_TAG = "transferops.last_retrain"


class RetrainParams(BaseModel):
    """Parameters of one retrain run (a trigger fills ``trigger`` from the drift event)."""

    data: str | None = Field(None, description="labelled folder or manifest to ingest first (default: the current data version)")
    data_rev: str | None = Field(None, description="git revision of data.dvc to train on instead")
    source: str | None = Field(None, description="source model (default: the one the champion was trained from)")
    strategy: Literal[CHOICES] = "auto"  # type: ignore[valid-type]
    trigger: dict[str, Any] | None = Field(None, description="what started this run: event id, monitor run, statistics")
    force: bool = Field(False, description="skip the cooldown and the new-data check (a retrain by hand)")
    # None: TRANSFEROPS_PROJECT_DIR, else the working directory (a worker's environment decides)
    project_dir: str | None = None
    config_file: str | None = None
    epochs: int | None = Field(None, ge=1)
    run_name: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _last_start(tags: dict[str, str], flow_run_id: str | None = None) -> datetime | None:
    """When the last retrain started; None when none did, or when it was an earlier attempt of
    flow run ``flow_run_id`` itself (a retry after its worker died must not wait out its own cooldown)."""
    try:
        record = json.loads(tags[LAST_RETRAIN_TAG])
        if flow_run_id and record.get("flow_run_id") == flow_run_id:
            return None
        return datetime.fromisoformat(record["started"])
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


@flow(name="transferops-retrain", log_prints=True)
def retrain(params: RetrainParams) -> dict:
    """Retrain the model on its newest labelled data when the guards allow; promote if it wins."""
    ctx = open_run(params.project_dir, params.config_file, params.run_name, "retrain", params.epochs)
    s = ctx.settings
    champion = registry.alias_version(s, s.model_name, registry.CHAMPION)
    model_tags = registry.model_tags(s, s.model_name)
    base = {"run_name": ctx.run_name, "model": s.model_name, "trigger": params.trigger,
            "champion": champion.version if champion else None}
    flow_run_id = str(prefect_flow_run.id) if prefect_flow_run.id else None
    go = retrain_guard(_now(), _last_start(model_tags, flow_run_id), s.monitor.cooldown_hours, None, None, params.force)
    if not go.proceed:
        print(f"Retrain skipped: {go.reason}")
        return base | {"status": "skipped", "reason": go.reason}
    data = prepare_data(ctx, source=params.data, rev=params.data_rev)
    go = retrain_guard(_now(), None, 0, champion.tags.get("transferops.data_md5") if champion else None,
                       data.version.md5, params.force)
    if not go.proceed:
        print(f"Retrain skipped: {go.reason}")
        return base | {"status": "skipped", "reason": go.reason, "data_rev": data.version.rev}
    source = params.source or (champion.tags.get("transferops.source") if champion else None)
    if not source:
        raise InputError(f"model {s.model_name} has no champion to take the source from; pass params.source")
    started = _now().isoformat(timespec="seconds")
    record = {"started": started, "run": ctx.run_name, "status": "running", "flow_run_id": flow_run_id,
              "trigger": {k: params.trigger[k] for k in ("event_id", "monitor_run_id") if k in params.trigger}
              if params.trigger else None}
    registry.set_model_tag(s, s.model_name, LAST_RETRAIN_TAG, record)  # the cooldown starts now
    print(f"Retraining {s.model_name} from {source} on data {data.version.rev[:12]}: {go.reason}")
    # No project_dir: a GPU worker finds the project in its own environment. The data version
    # is a commit prepare_data just made, which that worker's checkout shares (prefect.yaml's pull step).
    # trigger {} (a retrain by hand) still makes the deployment's run a retrain.
    train_params = TrainParams(source=source, strategy=params.strategy, data_rev=data.version.rev,
                               trigger=params.trigger or {}, config_file=params.config_file,
                               run_name=ctx.run_name, epochs=params.epochs)
    trained_on: dict[str, Any] = {}
    try:
        pool = deployments.check_pool(s.monitor.gpu_pool)
        if pool.online:
            print(f"Handing training to {s.monitor.gpu_deployment}: {pool.reason}")
            trained_on = {"where": f"gpu pool {s.monitor.gpu_pool}", "deployment": s.monitor.gpu_deployment}
            child = deployments.run_train_deployment(s.monitor.gpu_deployment, train_params.model_dump(mode="json"))
            trained_on["flow_run_id"] = str(child.id)
            if not (child.state and child.state.is_completed()):
                ended = child.state.type.value if child.state else "without a state"
                raise deployments.DeploymentRunError(f"training on {s.monitor.gpu_deployment} ended {ended} "
                                                     f"(flow run {child.id}); its logs are in the Prefect UI")
            summary = summary_of_flow_run(s, str(child.id))
        else:
            print(f"Training in this process: {pool.reason}")
            trained_on = {"where": "in-process", "reason": pool.reason}
            summary = train_version(ctx, data, train_params, "retrain", params.trigger)
    except BaseException:
        registry.set_model_tag(s, s.model_name, LAST_RETRAIN_TAG, record | {"status": "failed", "trained_on": trained_on})
        raise
    registry.set_model_tag(s, s.model_name, LAST_RETRAIN_TAG, record | {
        "status": "promoted" if summary["promoted"] else "not promoted", "version": summary["version"],
        "finished": _now().isoformat(timespec="seconds"), "trained_on": trained_on})
    return base | summary | {"status": "retrained", "reason": go.reason, "trained_on": trained_on}


if __name__ == "__main__":
    import sys

    print(retrain(RetrainParams(data=sys.argv[1] if len(sys.argv) > 1 else None, force="--force" in sys.argv)))
