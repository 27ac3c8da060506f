"""Prefect events of the monitoring loop: the only adapter to ``prefect.events``.

``transferops.drift.checked`` goes out on every monitor run, so an operator sees the monitor
working; ``transferops.drift.detected`` when the retrain policy asks for a retrain. Both name
the model as their resource, ``transferops.model.<name>``, which the retrain deployment's
trigger matches (``prefect.yaml``). Names starting ``prefect.`` are Prefect's own.
"""

from __future__ import annotations

from typing import Any

DRIFT_CHECKED = "transferops.drift.checked"
DRIFT_DETECTED = "transferops.drift.detected"


def resource_id(model: str) -> str:
    """The event resource a model's monitor events are about."""
    return f"transferops.model.{model}"


def emit_monitor_events(model: str, payload: dict[str, Any], retrain: bool) -> dict[str, str | None]:
    """Emit ``checked`` (always) and ``detected`` (when ``retrain``); returns their event ids
    (None where Prefect's events are off or no API is configured)."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": resource_id(model), "prefect.resource.name": model}
    ids: dict[str, str | None] = {}
    for name in (DRIFT_CHECKED, *([DRIFT_DETECTED] if retrain else [])):
        event = emit_event(event=name, resource=resource, payload=payload)
        ids[name] = str(event.id) if event is not None else None
    return ids
