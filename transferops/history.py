"""Alias history: every move of a registry alias as a typed record, and the rollback decision.

MLflow keeps no alias history and has no compare-and-set: setting an alias is an upsert that
forgets where it pointed. The adapter (``tasks/history.py``) therefore writes one record per
move, as the tags of one MLflow run in the registry experiment (``<experiment>-registry``):
runs are append-only rows, so writers moving an alias at the same moment each add their own
row (none is lost, none rewrites another's), and the history has no size limit, where one
registered-model tag holding a growing list would hit MLflow's 5,000-character cap and lose
entries to concurrent read-modify-write.

This module is the pure half: the record, its tag encoding, and the decisions read from a
history (which version a rollback goes back to; where concurrent writers forked the chain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

PREFIX = "transferops."
# Run tag values are capped by MLflow's stores (8,000 characters today, 5,000 in older
# stores); a reason longer than this goes whole into an artifact of the record.
MAX_REASON = 5000
KINDS = ("promote", "approve", "rollback", "challenger", "move")


@dataclass(frozen=True)
class AliasMove:
    """One move of ``alias`` of registered model ``model`` from ``from_version`` to ``to_version``."""

    model: str
    alias: str
    from_version: str | None  # None: the alias did not exist before
    to_version: str
    at: str  # UTC, ISO 8601 with milliseconds
    by: str  # "run:<mlflow run id>" or "user:<name>"
    reason: str
    kind: str  # one of KINDS
    record_id: str = ""  # the MLflow run holding the record
    reason_truncated: bool = False  # the full reason is in the record's artifact

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The record as run tags (the reason cut to :data:`MAX_REASON`; see :meth:`from_tags`).

        >>> m = AliasMove("m", "champion", None, "2", "2026-01-01T00:00:00.000+00:00", "user:ann", "x" * 6000, "rollback")
        >>> t = m.tags(); len(t["transferops.reason"]), t["transferops.from_version"], t["transferops.reason_truncated"]
        (5000, '', 'true')
        """
        cut = len(self.reason) > MAX_REASON
        return {PREFIX + "model": self.model, PREFIX + "alias": self.alias,
                PREFIX + "from_version": self.from_version or "", PREFIX + "to_version": self.to_version,
                PREFIX + "at": self.at, PREFIX + "by": self.by, PREFIX + "kind": self.kind,
                PREFIX + "reason": self.reason[:MAX_REASON - 1] + "…" if cut else self.reason,
                PREFIX + "reason_truncated": "true" if cut or self.reason_truncated else "false"}

    @classmethod
    def from_tags(cls, tags: dict[str, str], record_id: str = "") -> "AliasMove":
        g = lambda k: tags.get(PREFIX + k, "")  # noqa: E731
        return cls(model=g("model"), alias=g("alias"), from_version=g("from_version") or None,
                   to_version=g("to_version"), at=g("at"), by=g("by"), reason=g("reason"), kind=g("kind"),
                   record_id=record_id, reason_truncated=g("reason_truncated") == "true")

    def line(self) -> str:
        """The move in words: ``champion: v2 -> v1 (rollback by user:ann at ...): why``."""
        head = f"{self.model}@{self.alias}: {_v(self.from_version)} -> {_v(self.to_version)}"
        return f"{head} ({self.kind} by {self.by} at {self.at})" + (f": {self.reason}" if self.reason else "")


def _v(version: str | None) -> str:
    return f"v{version}" if version else "(none)"


def default_kind(alias: str) -> str:
    """The kind of a move nobody named: a new challenger, a promotion, or a plain move."""
    return {"champion": "promote", "challenger": "challenger"}.get(alias, "move")


def ordered(moves: Sequence[AliasMove]) -> list[AliasMove]:
    """Oldest first: by time, then by record id (writers in the same millisecond)."""
    return sorted(moves, key=lambda m: (m.at, m.record_id))


def holders(moves: Sequence[AliasMove]) -> list[str]:
    """The versions that held the alias, in order, repeats in a row collapsed.

    >>> mk = lambda f, t: AliasMove("m", "champion", f, t, "", "", "", "promote")
    >>> holders([mk(None, "1"), mk("1", "2"), mk("2", "1")])
    ['1', '2', '1']
    """
    out: list[str] = []
    for m in moves:
        for v in (m.from_version, m.to_version):
            if v and (not out or out[-1] != v):
                out.append(v)
    return out


def forks(moves: Sequence[AliasMove]) -> list[AliasMove]:
    """The moves whose ``from`` is not where the previous move left the alias: two writers moved it
    at the same time (both read the same holder), or it was moved outside transferops.

    >>> mk = lambda f, t: AliasMove("m", "champion", f, t, "", "", "", "promote")
    >>> [m.to_version for m in forks([mk(None, "1"), mk("1", "2"), mk("1", "3")])]
    ['3']
    """
    out, last = [], None
    for m in moves:
        if last is not None and m.from_version != last:
            out.append(m)
        last = m.to_version
    return out


@dataclass(frozen=True)
class RollbackChoice:
    """Where a rollback takes the alias, and why (``target`` None: nothing to do, ``reason`` says why)."""

    target: str | None
    reason: str


def choose_rollback(moves: Sequence[AliasMove], current: str | None, to: str | None = None,
                    alias: str = "champion") -> RollbackChoice:
    """The version ``alias`` goes back to: ``to`` when given, else the last version that held it
    before the current one, by the history (oldest first) of that alias. A rollback is a move like
    any other, so a second rollback undoes the first; ``to`` goes further back.

    >>> mk = lambda f, t: AliasMove("m", "champion", f, t, "", "", "", "promote")
    >>> choose_rollback([mk(None, "1"), mk("1", "2"), mk("2", "3")], "3").target
    '2'
    >>> choose_rollback([mk(None, "1")], "1").target is None
    True
    """
    if to is not None:
        if to == current:
            return RollbackChoice(None, f"v{to} already holds {alias}; nothing to roll back")
        return RollbackChoice(to, f"back to v{to}, as asked" + (f" (from v{current})" if current else ""))
    for v in reversed(holders(moves)):
        if v != current:
            return RollbackChoice(v, f"back to v{v}, the version that held {alias} before v{current}"
                                  if current else f"back to v{v}, the last version that held {alias}")
    return RollbackChoice(None, f"the history of {alias} names no version before " + (f"v{current}" if current else "now"))
