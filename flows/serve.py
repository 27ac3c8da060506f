"""``transferops serve``: the deployments of ``prefect.yaml`` run by one local process.

A laptop or a single box needs no work pool and no worker: Prefect's ``serve`` registers
each deployment with the API and runs its flow runs itself. The schedules, triggers,
parameters and concurrency limits are read from ``prefect.yaml``, so a served loop and a
deployed one (``transferops deploy`` + workers) behave the same; only ``work_pool`` (and its
job variables) is not used, because the serving process is the infrastructure.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from transferops.errors import InputError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PREFECT_FILE = REPO / "prefect.yaml"


def deployment_specs(prefect_file: Path, names: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The deployments of ``prefect_file`` (anchors resolved) to serve: those named, or every one
    whose work pool is not a GPU pool (a laptop has none; name ``train-gpu`` to serve it anyway)."""
    try:
        spec = yaml.safe_load(Path(prefect_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the deployment file {prefect_file}: {exc}; pass --prefect-file") from exc
    deployments = {d["name"]: d for d in (spec or {}).get("deployments") or []}
    unknown = sorted(set(names) - set(deployments))
    if unknown:
        raise InputError(f"{prefect_file} has no deployment named {', '.join(unknown)}; "
                         f"it has {', '.join(deployments) or 'none'}")
    if names:
        return [deployments[n] for n in names]
    return [d for d in deployments.values() if "gpu" not in ((d.get("work_pool") or {}).get("name") or "")]


def _flow(entrypoint: str) -> Any:
    """The flow object of ``flows/monitor.py:monitor`` (a path in this checkout)."""
    path, _, attr = entrypoint.partition(":")
    module = ".".join(Path(path).with_suffix("").parts)
    return getattr(importlib.import_module(module), attr)


def _triggers(deployment: str, specs: list[dict[str, Any]]) -> list[Any]:
    """Event triggers from their ``prefect.yaml`` form (``type: event``, ...), named as
    ``prefect deploy`` names them (``<deployment>__automation_<n>``)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python({"name": f"{deployment}__automation_{i}"} | spec) for i, spec in enumerate(specs, 1)]


def runner_deployments(specs: list[dict[str, Any]]) -> list[Any]:
    """Prefect ``RunnerDeployment`` objects for ``specs``: same name, parameters, tags,
    schedules (cron, interval), event triggers and concurrency limit as ``prefect deploy``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    deployments = []
    for spec in specs:
        schedules = []
        for sched in spec.get("schedules") or []:
            if "cron" in sched:
                schedules.append(Cron(sched["cron"], timezone=sched.get("timezone")))
            elif "interval" in sched:
                schedules.append(Interval(sched["interval"], timezone=sched.get("timezone")))
            else:
                raise InputError(f"deployment {spec['name']}: only cron and interval schedules can be served, got {sched}")
        limit = spec.get("concurrency_limit")
        deployments.append(_flow(spec["entrypoint"]).to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=spec.get("parameters") or {}, schedules=schedules or None,
            triggers=_triggers(spec["name"], spec.get("triggers") or []),
            concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
            # flows.monitor.monitor, not a file path: runs import it from the installed package,
            # whatever folder `transferops serve` was started in
            entrypoint_type=EntrypointType.MODULE_PATH))
    return deployments


def serve_deployments(specs: list[dict[str, Any]], limit: int | None = None) -> None:
    """Register ``specs`` with the configured Prefect API and run their flow runs here until
    interrupted (Ctrl-C pauses their schedules on the way out, as ``prefect`` does)."""
    from prefect import serve

    # Prefect's own banner goes to stdout, which belongs to the command's result
    serve(*runner_deployments(specs), limit=limit, print_starting_message=False)
