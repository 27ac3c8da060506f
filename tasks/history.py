"""Alias history in MLflow: one run per alias move in the experiment ``<experiment>-registry``.

Why runs (see :mod:`transferops.history`): MLflow has no alias history and no compare-and-set,
and a registered-model tag is one value capped at 5,000 characters that concurrent writers
would read, extend and overwrite, losing each other's entries. A run is a row of its own:
each writer creates one, so nothing is lost, and a search pages through any number of them.
The record's tags say everything (``transferops.model``, ``alias``, ``from_version``,
``to_version``, ``at``, ``by``, ``reason``, ``kind``); a reason over the tag limit is also kept
whole as the artifact ``move/reason.json``.

:func:`tasks.registry.set_alias` writes a record for every move it makes; :func:`rollback`
moves ``champion`` back through it.
"""

from __future__ import annotations

import contextvars
import getpass
import json
import os
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

from tasks import registry
from tasks.mlflow_errors import missing
from transferops.config import Settings
from transferops.history import AliasMove, RollbackChoice, choose_rollback, default_kind, ordered

REASON_ARTIFACT = "move/reason.json"
# The MLflow run of the flow that is moving aliases now (set by tasks.tracking.tracked_run):
# what a move records as ``by`` when the caller names nobody.
ACTING_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("transferops_acting_run", default=None)


def registry_experiment(settings: Settings) -> str:
    """The name of the experiment that holds the alias history."""
    return f"{settings.experiment}-registry"


@contextmanager
def acting_run(run_id: str) -> Iterator[None]:
    """Moves made inside the block record ``run:<run_id>`` as who made them."""
    token = ACTING_RUN.set(run_id)
    try:
        yield
    finally:
        ACTING_RUN.reset(token)


def default_by() -> str:
    """Who is moving an alias: the flow's MLflow run (or MLflow's active run), else the user
    (``TRANSFEROPS_USER``, else the login name)."""
    run_id = ACTING_RUN.get()
    if run_id is None:
        import mlflow

        active = mlflow.active_run()
        run_id = active.info.run_id if active else None
    if run_id:
        return f"run:{run_id}"
    user = os.environ.get("TRANSFEROPS_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # no login name and no passwd entry (some containers)
            user = "unknown"
    return f"user:{user}"


def _experiment_id(settings: Settings, create: bool) -> str | None:
    from mlflow.exceptions import MlflowException

    c = registry.client(settings)
    name = registry_experiment(settings)
    exp = c.get_experiment_by_name(name)
    if exp is not None or not create:
        return exp.experiment_id if exp else None
    local = settings.resolved_tracking_uri.startswith(("sqlite:", "file:", "/"))
    try:
        return c.create_experiment(name, artifact_location=settings.artifact_location if local else None)
    except MlflowException:  # another writer created it a moment ago
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def record_move(settings: Settings, name: str, alias: str, from_version: str | None, to_version: str, *,
                by: str | None = None, reason: str | None = None, kind: str | None = None) -> AliasMove:
    """Append the move of ``alias`` from ``from_version`` to ``to_version`` to the history."""
    from mlflow.exceptions import MlflowException

    now = datetime.now(UTC)
    move = AliasMove(model=name, alias=alias, from_version=str(from_version) if from_version else None,
                     to_version=str(to_version), at=now.isoformat(timespec="milliseconds"),
                     by=by or default_by(), reason=reason or "", kind=kind or default_kind(alias))
    c = registry.client(settings)
    millis = int(now.timestamp() * 1000)
    tags = move.tags()
    exp = _experiment_id(settings, create=True)
    for attempt in range(3):  # the alias has moved: a busy store (SQLite locked) must not lose its record
        try:
            run = c.create_run(exp, start_time=millis, tags=tags,
                               run_name=f"{alias} v{move.from_version or '-'} -> v{move.to_version}")
            break
        except MlflowException:
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))
    run_id = run.info.run_id
    if tags["transferops.reason_truncated"] == "true":
        c.log_dict(run_id, {"reason": move.reason}, REASON_ARTIFACT)
    c.set_terminated(run_id, "FINISHED", end_time=millis)
    return AliasMove(**(move.as_dict() | {"record_id": run_id}))


def _filter(name: str, alias: str | None) -> str:
    # MLflow's filter strings have no escapes: a value with a single quote goes in double quotes
    quote = lambda v: f'"{v}"' if "'" in v else f"'{v}'"  # noqa: E731
    f = f"tags.`transferops.model` = {quote(name)}"
    return f + (f" and tags.`transferops.alias` = {quote(alias)}" if alias else "")


def history(settings: Settings, name: str, alias: str | None = None, limit: int | None = None) -> list[AliasMove]:
    """The moves of ``name``'s aliases (only ``alias``'s when given), oldest first; with ``limit``,
    the newest ``limit`` of them."""
    exp = _experiment_id(settings, create=False)
    if exp is None:
        return []
    c = registry.client(settings)
    runs, token = [], None
    page = min(limit, 1000) if limit else 1000
    while True:
        got = c.search_runs([exp], _filter(name, alias), max_results=page, page_token=token,
                            order_by=["attributes.start_time DESC", "attributes.run_id DESC"])
        runs += list(got)
        token = got.token
        if not token or (limit and len(runs) >= limit):
            break
    moves = [AliasMove.from_tags(r.data.tags, r.info.run_id) for r in runs]
    moves = ordered(moves)[-limit:] if limit else ordered(moves)
    return [_full_reason(c, m) if m.reason_truncated else m for m in moves]


def _full_reason(c, move: AliasMove) -> AliasMove:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = json.loads(Path(c.download_artifacts(move.record_id, REASON_ARTIFACT, tmp)).read_text())["reason"]
        except Exception:  # noqa: BLE001  (a record whose artifact is gone keeps its cut reason)
            return move
    return AliasMove(**(move.as_dict() | {"reason": text, "reason_truncated": False}))


def rollback(settings: Settings, name: str, to: str | None = None, *, reason: str,
             by: str | None = None) -> tuple[RollbackChoice, AliasMove | None]:
    """Move ``champion`` of ``name`` back: to ``to``, else to the version that held it before the
    current one. Returns the choice and the move (None when ``to`` already holds it)."""
    from mlflow.exceptions import MlflowException

    current = registry.alias_version(settings, name, registry.CHAMPION)
    now = current.version if current else None
    choice = choose_rollback(history(settings, name, registry.CHAMPION), now, str(to) if to is not None else None)
    if choice.target is None:
        if to is not None:
            return choice, None
        raise registry.RegistryError(f"cannot roll back {name}@champion: {choice.reason}; pass --to VERSION")
    try:
        registry.client(settings).get_model_version(name, choice.target)
    except MlflowException as exc:
        if not missing(exc):
            raise
        known = ", ".join(v.version for v in reversed(registry.list_versions(settings, name))) or "none"
        raise registry.RegistryError(f"cannot roll back {name}@champion to v{choice.target}: no such version in the "
                                     f"registry (versions: {known}); pass --to VERSION") from None
    from tasks.promotion_lock import promotion_lock

    # under the promotion lock: a retrain finishing now must not move champion between our read and write
    with promotion_lock(settings, name):
        move = registry.set_alias(settings, name, registry.CHAMPION, choice.target, by=by, reason=reason, kind="rollback")
    return choice, move
