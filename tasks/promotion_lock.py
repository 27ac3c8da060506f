"""One champion move at a time, across processes and machines, on sqlite, a SQL database or an ``mlflow server``.

MLflow has no compare-and-set: two runs that finish together both read the champion, both
decide against it, and the last to set the alias wins, whether or not it is the best. But every
SQL store keeps registered-model names unique (a primary key, behind a server too; not the
deprecated file store, which checks, then creates), so *creating* a registered model is an
atomic test-and-set: of N processes creating ``<model>.promotion-lock`` at once, one succeeds
and the others get ``RESOURCE_ALREADY_EXISTS`` (an ``MlflowException`` from a sqlite store, a
``RestException`` from a server). The lock model names its holder in a tag; releasing deletes
it. Not an experiment: a deleted experiment keeps its name until garbage collection, a deleted
registered model frees it at once.

A holder killed inside the block leaves its lock behind: a waiter breaks a lock older than
``promotion.lock_ttl_s``, with a warning. Breaking is guarded the same way: the breaker first
creates ``<lock>.break.<holder>``, which only one can, and deletes the lock only if it still
names that holder, so two waiters never both break it, nor one delete the lock the other then
took. A live holder that outlasts the TTL may lose its lock: it checks before moving
``champion`` and refuses rather than move it unguarded. A lock's age is the store's creation
time read against this machine's clock: the clocks must agree to well within the TTL.

:func:`promote_if_still_best` is the one user: under the lock it re-reads the champion and,
when another run moved it since the decision was made, has the decision made again.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable, Iterator

from tasks import registry
from tasks.mlflow_errors import tracking_errors, unreachable_cause
from transferops.config import Settings
from transferops.promotion import PromotionDecision

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".promotion-lock"
HOLDER_TAG = "transferops.lock.holder"
POLL_S = 0.25  # between tries while another run holds the lock (jittered, so waiters do not move in step)


class PromotionLockTimeout(registry.RegistryError):
    """Another process held the promotion lock for longer than this one would wait."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock model and since when (the store's creation time, epoch seconds)."""

    holder: str
    since: float

    def describe(self) -> str:
        at = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        return f"{self.holder} since {at} ({time.time() - self.since:.0f} s ago)"


def lock_name(name: str) -> str:
    """The registered model that is the promotion lock of ``name``."""
    return f"{name}{LOCK_SUFFIX}"


def new_holder_id() -> str:
    """Who is taking the lock, unique per acquisition: ``user@host:pid/random``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _create(c: Any, model: str, holder: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(model, tags={HOLDER_TAG: holder},
                                  description=f"transferops promotion lock held by {holder}; deleted on release")
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def _read(c: Any, model: str) -> LockInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        rm = c.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return LockInfo((rm.tags or {}).get(HOLDER_TAG, "unknown"), (rm.creation_timestamp or 0) / 1000)


def _delete(c: Any, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.delete_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _break(c: Any, lock: str, stale: LockInfo, me: str, ttl_s: float) -> None:
    """Delete ``stale``'s lock, if this process wins the right to and it is still ``stale``'s."""
    token = f"{lock}.break.{hashlib.sha1(f'{stale.holder}|{stale.since}'.encode()).hexdigest()[:12]}"
    if not _create(c, token, me):
        other = _read(c, token)
        if other is not None and time.time() - other.since > ttl_s:  # a breaker died mid-break
            _delete(c, token)
        return
    try:
        if _read(c, lock) == stale:
            log.warning("breaking the promotion lock %s: held by %s, longer than promotion.lock_ttl_s (%.0f s); "
                        "its holder is presumed dead", lock, stale.describe(), ttl_s)
            _delete(c, lock)
    finally:
        _delete(c, token)


@dataclass(frozen=True)
class HeldLock:
    """The promotion lock of ``name`` as held by ``holder``."""

    settings: Settings
    name: str
    holder: str

    def ensure_held(self) -> None:
        """Raise RegistryError when the lock was broken (this holder outlived the TTL)."""
        info = _read(registry.client(self.settings), lock_name(self.name))
        if info is None or info.holder != self.holder:
            raise registry.RegistryError(
                f"the promotion lock of {self.name} was broken while {self.holder} held it (now: "
                f"{info.describe() if info else 'free'}): {registry.CHAMPION} not moved; raise promotion.lock_ttl_s")


def acquire(settings: Settings, name: str, ttl_s: float | None = None, wait_s: float | None = None) -> HeldLock:
    """Take the promotion lock of ``name``, waiting up to ``wait_s`` (default ``promotion.lock_wait_s``)
    and breaking a lock older than ``ttl_s`` (default ``promotion.lock_ttl_s``)."""
    ttl_s = settings.promotion.lock_ttl_s if ttl_s is None else ttl_s
    wait_s = settings.promotion.lock_wait_s if wait_s is None else wait_s
    c, lock, me = registry.client(settings), lock_name(name), new_holder_id()
    deadline = time.monotonic() + wait_s
    while True:
        if _create(c, lock, me):
            return HeldLock(settings, name, me)
        info = _read(c, lock)
        if info is not None and info.holder == me:  # our create went through but its reply was lost and retried
            return HeldLock(settings, name, me)
        if info is not None and time.time() - info.since > ttl_s:
            _break(c, lock, info, me, ttl_s)
            continue
        if time.monotonic() >= deadline:
            raise PromotionLockTimeout(
                f"waited {wait_s:.0f} s for the promotion lock of {name} ({lock} in {settings.public_dict()['tracking_uri']}), "
                f"held by {info.describe() if info else 'another run'}: {registry.CHAMPION} not moved; wait for "
                f"that run, or delete the registered model {lock} if its holder is gone")
        time.sleep(POLL_S * (0.5 + random.random()))


def release(lock: HeldLock) -> None:
    """Delete the lock if it is still ``lock.holder``'s; a broken one (someone else's now) is left alone."""
    c, model = registry.client(lock.settings), lock_name(lock.name)
    info = _read(c, model)
    if info is None or info.holder != lock.holder:
        log.warning("promotion lock %s was broken while %s held it; leaving %s", model, lock.holder,
                    info.describe() if info else "it free")
        return
    _delete(c, model)


@contextmanager
def promotion_lock(settings: Settings, name: str, ttl_s: float | None = None,
                   wait_s: float | None = None) -> Iterator[HeldLock]:
    """Hold the promotion lock of ``name`` for the block; released in ``finally``."""
    with tracking_errors(settings):
        held = acquire(settings, name, ttl_s, wait_s)
    try:
        yield held
    finally:
        try:
            release(held)
        except Exception as exc:  # noqa: BLE001  (never mask the block's own error, nor undo its success)
            why = "the tracking server is unreachable" if unreachable_cause(exc) else f"{type(exc).__name__}: {exc}"
            log.warning("could not release the promotion lock %s (%s); the next run breaks it after "
                        "promotion.lock_ttl_s", lock_name(name), why)


def _champion_version(settings: Settings, name: str) -> str | None:
    """The champion's version, None when there is none; an unreachable server raises (never "none")."""
    held = registry.alias_version(settings, name, registry.CHAMPION)
    return held.version if held else None


def promote_if_still_best(settings: Settings, name: str, version: str, decision: PromotionDecision,
                          evaluated_against: str | None,
                          rejudge: Callable[[str | None], PromotionDecision]) -> PromotionDecision:
    """Move ``challenger`` to ``version`` and, if the decision says so, ``champion``, under the promotion lock.

    ``decision`` was made against champion ``evaluated_against`` (None: there was none). If
    another run moved ``champion`` since, ``rejudge(current champion version or None)`` decides
    again against the current one, and that decision is applied. Returns the decision applied:
    ``decision`` itself when it still stood. ``challenger`` moves under the lock too, so that its
    history is a chain as well (a move records the holder it read just before).
    """
    version = str(version)
    before = str(evaluated_against) if evaluated_against is not None else None
    with promotion_lock(settings, name) as held:
        with tracking_errors(settings):
            now = _champion_version(settings, name)
            if now not in (before, version):  # version already holding it: a retried call, nothing to redo
                log.info("champion of %s moved from %s to %s since v%s was judged; judging again", name,
                         f"v{before}" if before else "none", f"v{now}" if now else "none", version)
                decision = rejudge(now)
            held.ensure_held()  # a re-evaluation longer than the TTL may have cost the lock
            registry.set_alias(settings, name, registry.CHALLENGER, version)
        if decision.promote and now != version:
            with tracking_errors(settings, f"the move of {registry.CHAMPION} to v{version} may be incomplete "
                                           "(check `transferops history`)"):
                registry.set_alias(settings, name, registry.CHAMPION, version, reason=decision.reason)
    return decision
