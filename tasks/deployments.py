"""What the Prefect API knows about the loop's deployments (for ``transferops status``)."""

from __future__ import annotations

MONITOR_DEPLOYMENT = "transferops-monitor/monitor"


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
