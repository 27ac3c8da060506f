"""The alias history's commands: ``history`` (every recorded move) and ``rollback``.

They register on the group of :mod:`transferops.cli.app` when the package is imported, and
import MLflow only inside their bodies (``--help`` stays fast).
"""

from __future__ import annotations

from typing import Any

import click

from transferops.cli.app import cli, command
from transferops.cli.output import Output, State
from transferops.errors import InputError
from transferops.history import AliasMove, forks


def _row(m: AliasMove) -> dict[str, Any]:
    return {"when": m.at.replace("T", " ")[:23], "alias": m.alias,
            "move": f"{'v' + m.from_version if m.from_version else '(none)'} -> v{m.to_version}",
            "by": m.by, "kind": m.kind, "why": m.reason}


@command(cli, "history", "show every recorded move of the registry aliases: when, from -> to, by whom, why")
@click.option("--model", default=None, help="registered model (default: the configured target model)")
@click.option("--alias", default=None, help="only this alias, e.g. champion (default: every alias)")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the newest N moves")
def history_cmd(state: State, out: Output, model: str | None, alias: str | None, limit: int | None) -> None:
    from tasks import history, registry
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    name = model or s.model_name
    moves = history.history(s, name, alias, limit)
    if out.json:
        out.result([m.as_dict() for m in moves])
        return
    if not moves:
        out.print(f"No alias moves of {name}" + (f"@{alias}" if alias else "") + f" recorded in {s.resolved_tracking_uri}.")
        return
    out.result([_row(m) for m in moves], f"Alias history of {name} (oldest first)")
    for a in sorted({m.alias for m in moves}):
        mine = [m for m in moves if m.alias == a]
        for m in forks(mine):
            out.print(f"[yellow]note:[/] {a} moved v{m.from_version or '-'} -> v{m.to_version} at {m.at} while the move "
                      "before had left it elsewhere: two writers moved it at once, or it was moved outside transferops")
        holder = registry.alias_version(s, name, a)
        if (holder.version if holder else None) != mine[-1].to_version:
            out.print(f"[yellow]note:[/] {name}@{a} is now {'v' + holder.version if holder else 'unset'}, not "
                      f"v{mine[-1].to_version} as the last recorded move says: it was moved or removed outside transferops")


@command(cli, "rollback", "move champion back to the version before it (or --to VERSION), recorded in the history")
@click.option("--model", default=None, help="registered model (default: the configured target model)")
@click.option("--to", "to", type=click.IntRange(min=1), default=None,
              help="version to make champion (default: the one that held it before the current one)")
@click.option("--reason", default=None, help="why (required): recorded with the move, shown by `transferops history`")
def rollback_cmd(state: State, out: Output, model: str | None, to: int | None, reason: str | None) -> None:
    if not (reason or "").strip():
        raise InputError("a rollback records why: pass --reason TEXT (e.g. --reason \"v7 misclassifies night images\")")
    from tasks import history
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    name = model or s.model_name
    choice, move = history.rollback(s, name, None if to is None else str(to), reason=reason.strip())
    if out.json:
        out.result({"moved": move is not None, "choice": choice.reason, "move": move.as_dict() if move else None})
    elif move is None:
        out.print(f"Nothing moved: {choice.reason}.")
    else:
        out.result({"model": name, "champion": _row(move)["move"], "chosen": choice.reason, "why": move.reason,
                    "by": move.by, "at": move.at, "record": move.record_id}, "Rollback")
