"""The monitoring loop's commands: ``monitor``, ``retrain``, ``deploy`` and ``serve``.

They register on the group of :mod:`transferops.cli.app` when the package is imported, and
import flows and Prefect only inside their bodies (``--help`` stays fast).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from transferops.cli.app import cli, command
from transferops.cli.output import Output, State
from transferops.errors import EXIT_DRIFT, EXIT_OK, InputError
from transferops.strategy import CHOICES

REPO = Path(__file__).resolve().parents[2]


def _monitor_view(r: dict[str, Any]) -> dict[str, Any]:
    """The fields a person reads first; --json has everything."""
    est = r["estimated_accuracy"]
    tracked = r.get("batch_version")
    batch = f"{tracked['path']} of {tracked['repo']} at {tracked['rev'][:12]}" if tracked else r["batch"]
    view = {"model": f"{r['model']} v{r['version']}", "batch": batch,
            "images (embedded)": f"{r['n_images']} ({r['n_embedded']})",
            "drift": f"{r['is_drift']} ({r['test']} statistic {r['statistic']:.4g}, p={r['p_val']:.3g})",
            "estimated accuracy": "n/a" if est is None else f"{est:.3f} (held-out {r['heldout_accuracy']:.3f})"}
    if r["realized_accuracy"] is not None:
        view["realised accuracy"] = f"{r['realized_accuracy']:.3f} ({r['n_labelled']} labelled images)"
    view |= {"retrain": f"{r['retrain']}: {r['retrain_reason']}", "report": r["report"],
             "events": ", ".join(k for k, v in (r.get("events") or {}).items()) or "none"}
    return view


@command(cli, "monitor", "compare a batch of unlabelled production images with the champion's training data")
@click.option("--batch", required=True, help="folder of production images (any layout) or a manifest with a path "
              "column; with --rev/--repo, a folder tracked by DVC there")
@click.option("--rev", "batch_rev", default=None, help="git revision of the DVC-tracked batch (default: HEAD)")
@click.option("--repo", "batch_repo", default=None,
              help="git+DVC repository (path or URL) the batch is tracked in (default: the project)")
@click.option("--labels", default=None, help="CSV of path,label for images of the batch (labels that arrived later)")
@click.option("--no-events", is_flag=True, help="emit no transferops.drift.* events (nothing gets triggered)")
@click.option("--exit-code", "exit_code", is_flag=True, help=f"exit with {EXIT_DRIFT} when the policy asks for a retrain")
def monitor_cmd(state: State, out: Output, batch: str, batch_rev: str | None, batch_repo: str | None,
                labels: str | None, no_events: bool, exit_code: bool) -> int:
    from flows.monitor import MonitorParams, monitor

    tracked = bool(batch_rev or batch_repo)
    if not tracked and not Path(batch).exists():
        raise InputError(f"production batch {batch} does not exist; pass a folder of images or a manifest "
                         "(or --rev/--repo for a DVC-tracked one)")
    if batch_repo and "://" not in batch_repo and not batch_repo.startswith("git@"):
        batch_repo = str(Path(batch_repo).resolve())
    # relative paths are relative to where the command runs, as for every command; a tracked
    # batch's path is relative to its repository
    result = monitor(MonitorParams(batch=batch if tracked else str(Path(batch).resolve()), batch_rev=batch_rev,
                                   batch_repo=batch_repo, labels=str(Path(labels).resolve()) if labels else None,
                                   project_dir=str(state.project()), config_file=state.config,
                                   emit_events=not no_events))
    out.result(result if out.json else _monitor_view(result), "Monitor")
    return EXIT_DRIFT if exit_code and result["retrain"] else EXIT_OK


@command(cli, "retrain", "retrain the model on its newest labelled data (what a drift event starts)")
@click.option("--data", default=None, help="labelled folder or manifest to ingest first (default: the current data version)")
@click.option("--source", default=None, help="source model (default: the one the champion was trained from)")
@click.option("--strategy", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="skip the cooldown and the new-data check")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="overrides training.epochs")
def retrain_cmd(state: State, out: Output, data: str | None, source: str | None, strategy: str, force: bool,
                epochs: int | None) -> None:
    from flows.retrain import RetrainParams, retrain

    result = retrain(RetrainParams(data=data, source=source, strategy=strategy, force=force, epochs=epochs,
                                   project_dir=str(state.project()), config_file=state.config,
                                   trigger={"by": "command line"}))
    keys = ("status", "reason", "model", "version", "promoted", "promotion_reason", "strategy", "test_accuracy",
            "champion_test_accuracy", "data_rev", "report")
    view = {k: result[k] for k in keys if k in result}
    if result.get("trained_on"):
        view["trained on"] = trained_on_line(result["trained_on"])
    out.result(result if out.json else view, "Retrain")


def trained_on_line(where: dict[str, Any]) -> str:
    """Where a retrain trained, in a line: the GPU deployment and its flow run, or why in-process."""
    if where.get("deployment"):
        return f"{where['where']} ({where['deployment']}, flow run {where['flow_run_id']})"
    return f"{where['where']}: {where.get('reason', '')}"


# How long a run may be silent (no heartbeat) before it is marked CRASHED; default three heartbeats.
CRASH_AFTER_HELP = ("seconds without a heartbeat after which a transferops flow run is marked CRASHED (its worker "
                    "died); at least two heartbeats [default: three heartbeats of prefect.yaml's "
                    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY]")


@command(cli, "deploy", "register the deployments of prefect.yaml (schedules, triggers) with the Prefect API")
@click.option("--name", "names", multiple=True, help="deployment to register (repeatable; default: all)")
@click.option("--prefect-file", default=str(REPO / "prefect.yaml"), show_default=True,
              help="deployment file (its entrypoints are read from this checkout)")
@click.option("--crash-after", type=click.FloatRange(min=0, min_open=True), default=None, help=CRASH_AFTER_HELP)
def deploy_cmd(state: State, out: Output, names: tuple[str, ...], prefect_file: str, crash_after: float | None) -> None:
    from prefect.settings import PREFECT_API_URL

    from tasks import automations

    if not PREFECT_API_URL.value():
        raise InputError("no Prefect API is configured to deploy to; start one (prefect server start, or "
                         "infra/docker-compose.yml) and set PREFECT_API_URL, or run `transferops serve` instead")
    # every deployment's heartbeat, not only the named ones': the automation watches all their runs
    window = automations.crash_window(automations.heartbeat_seconds(Path(prefect_file)), crash_after)
    args = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(Path(prefect_file).resolve())]
    args += [a for n in names for a in ("--name", n)] or ["--all"]
    # prefect.yaml's entrypoints (flows/...) are relative to this checkout, wherever the file is
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
    sys.stderr.write(res.stdout + res.stderr)
    if res.returncode:
        raise InputError(f"prefect deploy failed (exit {res.returncode}); its output is above")
    # runs of these deployments whose worker dies end CRASHED instead of RUNNING forever
    crashed = automations.ensure_zombie_automation(window)
    out.result({"prefect_file": prefect_file, "deployments": list(names) or "all", "api": PREFECT_API_URL.value(),
                "zombie_automation": crashed}, "Deployed")


@command(cli, "serve", "run the deployments of prefect.yaml (schedules, triggers) in this process, without workers")
@click.option("--name", "names", multiple=True,
              help="deployment to serve (repeatable; default: every one not on a GPU pool)")
@click.option("--prefect-file", default=str(REPO / "prefect.yaml"), show_default=True, help="deployment file")
@click.option("--port", type=click.IntRange(1, 65535), default=4200, show_default=True,
              help="port of the local Prefect server started when PREFECT_API_URL is not set")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="most flow runs at once (default: no limit)")
@click.option("--crash-after", type=click.FloatRange(min=0, min_open=True), default=None, help=CRASH_AFTER_HELP)
def serve_cmd(state: State, out: Output, names: tuple[str, ...], prefect_file: str, port: int,
              limit: int | None, crash_after: float | None) -> None:
    from contextlib import nullcontext

    from flows.serve import deployment_specs, serve_deployments
    from tasks import automations

    specs = deployment_specs(Path(prefect_file), names)
    project = state.project()
    # served flow runs are child processes: they find the project (and the API) in the environment
    os.environ["TRANSFEROPS_PROJECT_DIR"] = str(project)
    # Served runs get no job variables: they heartbeat as prefect.yaml's deployments would,
    # unless this environment sets its own interval, which the crash window then follows.
    os.environ.setdefault(automations.HEARTBEAT_ENV,
                          str(automations.heartbeat_seconds(Path(prefect_file), tuple(s["name"] for s in specs))))
    try:
        beat = max(int(os.environ[automations.HEARTBEAT_ENV]), automations.MIN_HEARTBEAT_S)
    except ValueError:
        raise InputError(f"{automations.HEARTBEAT_ENV} must be a whole number of seconds, "
                         f"got {os.environ[automations.HEARTBEAT_ENV]!r}") from None
    window = automations.crash_window(beat, crash_after)
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        server = nullcontext(configured)
    else:
        from tasks.prefect_server import local_server

        server = local_server(project / ".transferops" / "prefect", port, say=out.note)
    with server as url:
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            crashed = automations.ensure_zombie_automation(window)
            out.note(f"serving {', '.join(s['name'] for s in specs)} for project {project} against {url}; "
                     f"runs silent for {window:g} s are marked crashed; Ctrl-C stops (and pauses their schedules)")
            serve_deployments(specs, limit=limit)
    out.result({"served": [s["name"] for s in specs], "api": url, "project": str(project),
                "zombie_automation": crashed}, "Served")
