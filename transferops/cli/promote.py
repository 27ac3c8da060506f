"""``transferops promote VERSION --reason TEXT``: a person moves ``champion``, and the registry says who and why.

The approval step of a policy with ``promotion.require_approval`` (the train flow leaves a
version that passed every gate as ``challenger``, tagged ``transferops.promotion:
awaiting_approval``), and the way to promote any version by hand. It registers on the group
of :mod:`transferops.cli.app` when the package is imported and imports MLflow only when it runs.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import click

from transferops.cli.app import cli, command
from transferops.cli.output import Output, State
from transferops.errors import InputError


def approver() -> str:
    """Who approves: ``TRANSFEROPS_USER`` (a CI job names the person it runs for), else the login name."""
    import getpass

    user = os.environ.get("TRANSFEROPS_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


@command(cli, "promote", "approve VERSION: move champion to it, recording who approved it and why")
@click.argument("version")
@click.option("--reason", default=None, metavar="TEXT", help="why this version should serve (required; kept on the version)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation (needed without a terminal)")
def promote_cmd(state: State, out: Output, version: str, reason: str | None, yes: bool) -> None:
    from tasks import registry
    from tasks.promotion_lock import promotion_lock
    from transferops.config import load_settings

    if not reason or not reason.strip():
        raise InputError("pass --reason TEXT: an approval records why the version should serve")
    if not yes and not sys.stdin.isatty():
        raise InputError("promote asks for confirmation; pass --yes to confirm without a terminal")
    s = load_settings(state.project(), state.config)
    name = s.model_name
    versions = {v.version: v for v in registry.list_versions(s, name)}
    if version not in versions:
        known = ", ".join(sorted(versions, key=int)) or "none"
        raise InputError(f"{name} has no version {version} in {s.resolved_tracking_uri} (versions: {known})")
    target = versions[version]
    current = registry.alias_version(s, name, registry.CHAMPION)
    failed = {k.removeprefix("transferops.gate."): v for k, v in target.tags.items()
              if k.startswith("transferops.gate.") and v.startswith("fail")}
    if failed:  # a person may overrule a gate; they should see which one first
        out.note("[yellow]warning[/]: v" + version + " failed gates: " + "; ".join(f"{k} ({v})" for k, v in failed.items()))
    if not yes:
        prev = f"v{current.version}" if current else "none"
        if not click.confirm(f"Move {name}@champion from {prev} to v{version}?", default=False, err=True):
            raise InputError("not confirmed; champion unchanged")
    who = approver()
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # under the promotion lock, as a retrain's promotion is: MLflow's alias write is an unconditional upsert
    with promotion_lock(s, name):
        current = registry.alias_version(s, name, registry.CHAMPION)
        registry.set_version_tags(s, name, version, {"transferops.approved_by": who, "transferops.approved_reason": reason,
                                                     "transferops.approved_at": at})
        registry.set_alias(s, name, registry.CHAMPION, version, by=f"user:{who}", reason=reason, kind="approve")
    out.result({"model": name, "version": version, "previous_champion": current.version if current else None,
                "approved_by": who, "approved_at": at, "reason": reason, "failed_gates": failed},
               f"{name} v{version} is champion")
