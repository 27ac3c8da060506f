"""A flow run whose worker died ends CRASHED, not RUNNING forever.

A process worker runs each flow run as a child process in a session of its own, and nothing
on the Prefect server notices when the machine (worker and flow process together) dies: the
run stays RUNNING, holds its deployment's concurrency slot, and no retry can be asked for
(Prefect retries only runs in a final state). Prefect 3's answer, wired here:

* every flow run of a deployment emits ``prefect.flow-run.heartbeat`` every
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 at least; ``prefect.yaml`` sets it in
  each work pool's job variables, so it travels with the deployment whatever the worker's
  environment says);
* a proactive automation on the server expects, after each heartbeat of a ``transferops``
  run, another heartbeat or a final state within ``after_s`` seconds, and otherwise sets the
  run CRASHED (Prefect's "Detect zombie flows" recipe, limited to this project's runs by the
  ``transferops`` tag, which every deployment of ``prefect.yaml`` carries).

A crashed run is then retried like any other final one: ``prefect flow-run retry <id>``
schedules it again and any worker of its pool picks it up; training resumes from the
checkpoint the dead attempt left in the project (``transferops.engine``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from transferops.errors import InputError

if TYPE_CHECKING:
    from prefect.automations import Automation

ZOMBIE_AUTOMATION = "transferops: crash runs whose heartbeat stopped"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PROJECT_TAG = "transferops"  # every deployment of prefect.yaml carries it; other teams' runs are left alone
MIN_HEARTBEAT_S = 30  # Prefect emits no faster than this, whatever the setting says
MISSED_HEARTBEATS = 3  # Prefect's recipe: 30 s heartbeats, crashed after 90 s of silence
# States after which a run sends no more heartbeats: the automation must not fire then.
FINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed")


def prefect_default_heartbeat() -> int:
    """The heartbeat interval Prefect uses when nothing sets it (180 s in Prefect 3.8)."""
    from prefect.settings.models.flows import FlowsSettings

    default = FlowsSettings.model_fields["heartbeat_frequency"].default
    return max(int(default), MIN_HEARTBEAT_S) if default else 0


def heartbeat_seconds(prefect_file: Path, names: tuple[str, ...] = ()) -> int:
    """The slowest heartbeat among the deployments of ``prefect_file`` (those named, or all):
    the ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` of their work pool's job variables, Prefect's
    default where one sets none. The crash window is derived from it, so that no healthy run
    of these deployments is ever silent for longer than the window allows."""
    try:
        spec = yaml.safe_load(Path(prefect_file).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the deployment file {prefect_file}: {exc}; pass --prefect-file") from exc
    beats = []
    for dep in spec.get("deployments") or []:
        if names and dep.get("name") not in names:
            continue
        env = (((dep.get("work_pool") or {}).get("job_variables") or {}).get("env") or {})
        value = env.get(HEARTBEAT_ENV)
        try:
            beats.append(max(int(value), MIN_HEARTBEAT_S) if value is not None else prefect_default_heartbeat())
        except ValueError:
            raise InputError(f"deployment {dep.get('name')} of {prefect_file}: {HEARTBEAT_ENV} must be a whole "
                             f"number of seconds, got {value!r}") from None
    return max(beats, default=prefect_default_heartbeat())


def crash_window(heartbeat_s: int, after_s: float | None = None) -> float:
    """Seconds of silence after which a run is crashed: ``after_s`` if given (it must span two
    heartbeats, or a run that is merely slow to send one would be crashed), else three heartbeats."""
    if after_s is None:
        return float(MISSED_HEARTBEATS * heartbeat_s)
    if after_s < 2 * heartbeat_s:
        raise InputError(f"a crash window of {after_s:g} s is shorter than two heartbeats ({heartbeat_s} s each): "
                         f"healthy runs would be marked crashed; use at least {2 * heartbeat_s} s")
    return float(after_s)


def zombie_automation(after_s: float) -> "Automation":
    """The automation that sets a ``transferops`` flow run CRASHED when, after one of its
    heartbeats, neither another heartbeat nor a final state arrives within ``after_s`` seconds."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=("Marks a transferops flow run CRASHED when its heartbeats stop (its worker or machine died). "
                     "Retry it with `prefect flow-run retry <flow run id>`; training resumes from its checkpoint. "
                     "Created by `transferops deploy` and `transferops serve`."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                 "prefect.resource.id": f"prefect.tag.{PROJECT_TAG}"}),
            for_each={"prefect.resource.id"},  # one clock per flow run
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {after_s:g} s: the worker or machine running it died "
                    "(retry: prefect flow-run retry <flow run id>)")],
    )


def _comparable(automation: Any) -> Any:
    """What decides whether an existing automation already is the wanted one: its settings, with
    the trigger's own id (new on every object) left out and sets (``expect``...) sorted."""
    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items() if k != "id"}
        if isinstance(value, list):
            items = [norm(v) for v in value]
            return sorted(items) if all(isinstance(v, str) for v in items) else items
        return value

    return norm(automation.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions",
                                                            "actions_on_trigger", "actions_on_resolve"}))


def ensure_zombie_automation(after_s: float) -> dict[str, Any]:
    """Create the zombie automation on the configured Prefect API, or bring the one there up to
    date (one of that name: duplicates left by two deploys at once are deleted). Returns
    ``{"name", "id", "crash_after_s", "action": created | updated | unchanged}``."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    wanted = zombie_automation(after_s)
    core = AutomationCore(**wanted.model_dump(exclude={"id"}))
    with get_client(sync_client=True) as client:
        found = sorted(client.read_automations_by_name(ZOMBIE_AUTOMATION), key=lambda a: str(a.id))
        for extra in found[1:]:
            client.delete_automation(extra.id)
        if not found:
            automation_id, action = client.create_automation(core), "created"
        else:
            automation_id = found[0].id
            if _comparable(found[0]) == _comparable(core):
                action = "unchanged"
            else:
                client.update_automation(automation_id, core)
                action = "updated"
    return {"name": ZOMBIE_AUTOMATION, "id": str(automation_id), "crash_after_s": after_s, "action": action}
