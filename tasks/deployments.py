"""What the Prefect API knows about the loop's deployments, and runs of them.

``transferops status`` asks when the monitor runs next; the retrain flow asks whether the GPU
pool has a worker online and, if so, runs the GPU train deployment and waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transferops.errors import TransferopsError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

MONITOR_DEPLOYMENT = "transferops-monitor/monitor"


class DeploymentRunError(TransferopsError, RuntimeError):
    """A deployment is missing, or a run of it did not complete; the message names it and the fix."""


@dataclass(frozen=True)
class PoolCheck:
    """Whether a work pool has a worker online, and why (not) in words."""

    online: bool
    reason: str


def check_pool(pool: str | None) -> PoolCheck:
    """Is a worker of ``pool`` online? Never raises: an unset pool, no API, a missing pool or an
    unreachable API is a reason to train in-process, not a failure of the retrain."""
    if not pool:
        return PoolCheck(False, "hand-off disabled (monitor.gpu_pool unset)")
    from prefect.settings import PREFECT_API_URL

    # Prefect's ephemeral API (no URL) lives in this process: it has no workers to hand to.
    if not PREFECT_API_URL.value():
        return PoolCheck(False, "no Prefect API configured")
    try:
        import httpx
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
        from prefect.client.schemas.objects import WorkerStatus

        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(
                pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=[WorkerStatus.ONLINE.value])))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return PoolCheck(False, f"no worker online in pool {pool} (no such pool)")
        return PoolCheck(False, f"Prefect API answered {exc.response.status_code} for pool {pool}")
    except Exception as exc:  # noqa: BLE001  (unreachable, timed out: train here rather than fail)
        return PoolCheck(False, f"Prefect API unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
    if not workers:
        return PoolCheck(False, f"no worker online in pool {pool}")
    return PoolCheck(True, f"worker {workers[0].name} online in pool {pool}")


def gpu_worker_online(pool: str | None) -> bool:
    """True only when a Prefect API is configured and ``pool`` has a worker whose status is ONLINE."""
    return check_pool(pool).online


def run_train_deployment(name: str, params: dict[str, Any]) -> "FlowRun":
    """Run deployment ``name`` (``flow/deployment``) with ``params`` as its ``params`` argument and
    wait for its final state, however long training takes; returns the finished flow run.

    Called inside a flow run, the new run is that run's subflow (Prefect links it through a
    task run of the caller), so the UI shows the training under the retrain that started it.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        return run_deployment(name, parameters={"params": params}, timeout=None)
    except ObjectNotFound:
        raise DeploymentRunError(f"deployment {name} is not registered with the Prefect API; register it "
                                 "(transferops deploy --name train-gpu) or set monitor.gpu_pool to \"\" "
                                 "to train in-process") from None


def next_scheduled_run(deployment: str = MONITOR_DEPLOYMENT) -> str:
    """When ``deployment`` runs next, or why that is unknown (no API configured, not deployed,
    no schedule, API unreachable). Never raises: status must work without a server."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return "unknown: no Prefect API configured (PREFECT_API_URL); run `transferops deploy` against a server"
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(deployment)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
    except Exception as exc:  # noqa: BLE001  (not deployed, unreachable: a status line, not a failure)
        return f"unknown: {type(exc).__name__} from the Prefect API ({str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if not runs:
        return "none scheduled (paused, or no schedule)"
    return runs[0].expected_start_time.isoformat(timespec="minutes") if runs[0].expected_start_time else "scheduled"
