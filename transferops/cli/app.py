"""The commands of ``transferops``, and :func:`main`, which maps their outcome to an exit code.

The commands parse and print; the work is in the flows (``flows/``), the adapters
(``tasks/``) and the core (``transferops/``), imported inside each command's body so that
``--help`` and ``data add`` (which must not import Prefect) stay fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from transferops import __version__
from transferops.cli.output import Output, State, report_error, stdout_to_stderr, write_json
from transferops.errors import EXIT_DRIFT, EXIT_INTERRUPTED, EXIT_OK, InputError
from transferops.offline import apply_offline_defaults
from transferops.strategy import CHOICES

SAMPLES = ["handwritten-digits", "typeset-digits", "shapes"]

EPILOG = """\b
Global options (-C/--workdir, --config, --json, -v) go before or after the
command; given in both places, the command's value wins.

\b
Exit codes:
  0    success (drift: also when drift was found, unless --exit-code)
  1    failure: an error to fix (one line), or a bug (its type and origin; -v: traceback)
  2    usage error: unknown option, bad option value, missing argument
  3    the data failed validation: nothing was versioned, trained or registered
  4    drift detected (drift --exit-code)
  130  interrupted (Ctrl-C)

\b
With --json, stdout holds exactly one JSON document: the result, or on an error
{"error": ..., "details": [...], "type": ..., "exit_code": ...}; progress and logs
go to stderr. Shell completion: eval "$(_TRANSFEROPS_COMPLETE=bash_source transferops)"."""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# --------------------------------------------------------------------------- global options
def _remember(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """An option callback that records a given value in the shared :class:`State`; a later
    (inner: the command's) value overrides an earlier (the group's), absent values change nothing."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        setattr(ctx.ensure_object(State), attr, value)

    return callback


def global_params() -> list[click.Option]:
    """-C/--workdir, --config, --json, -v: fresh instances for the group and every command."""
    return [
        click.Option(["-C", "--workdir"], type=click.Path(file_okay=False, path_type=Path), default=None,
                     metavar="DIR", expose_value=False, callback=_remember("workdir"),
                     help="project folder (default: the current one; demo: demo-workdir)"),
        click.Option(["--config"], type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     expose_value=False, callback=_remember("config"),
                     help="YAML settings file (default: <workdir>/transferops.yaml if present)"),
        click.Option(["--json"], is_flag=True, default=False, expose_value=False, callback=_remember("json"),
                     help="print one JSON document on stdout instead of tables (progress goes to stderr)"),
        click.Option(["-v", "--verbose"], is_flag=True, default=False, expose_value=False,
                     callback=_remember("verbose"), help="show the traceback of an error"),
    ]


def with_global_options(f: Callable) -> Callable:
    """Decorator: the global options on a group."""
    f.__click_params__ = [*getattr(f, "__click_params__", []), *reversed(global_params())]  # type: ignore[attr-defined]
    return f


def command(group: click.Group, name: str, help: str) -> Callable[[Callable], Callable]:
    """Register ``fn(state, out, **options)`` as command ``name`` of ``group``.

    The command gets the global options after its own, runs with stdout sent to stderr
    when --json is given (then writes its one document), and returns its exit code.
    """

    def decorator(fn: Callable) -> Callable:
        own = list(reversed(getattr(fn, "__click_params__", [])))

        @functools.wraps(fn)
        def callback(**kwargs: Any) -> int:
            ctx = click.get_current_context()
            state = ctx.ensure_object(State)
            state.command = ctx.command_path
            out = Output(json=state.json)
            # progress bars draw on stderr by themselves (transferops.engine); --json also
            # sends everything else that would reach stdout there
            if state.json:
                with stdout_to_stderr():
                    code = fn(state, out, **kwargs)
            else:
                code = fn(state, out, **kwargs)
            out.write_document()
            return EXIT_OK if code is None else int(code)

        group.add_command(click.Command(name, callback=callback, params=[*own, *global_params()], help=help,
                                        short_help=help, context_settings=CONTEXT))
        return fn

    return decorator


# --------------------------------------------------------------------------- the groups
@click.group(context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="transferops", message="%(prog)s %(version)s")
@with_global_options
def cli() -> None:
    """Keep transfer-learned image models fresh in production.

    Every command works on the project folder it runs in (like git and dvc), or on
    -C/--workdir DIR. Relative paths in other arguments are relative to where you run it.
    """


@cli.group("data", context_settings=CONTEXT, epilog=EPILOG)
@with_global_options
def data_group() -> None:
    """dataset versions: add, list, checkout"""


# --------------------------------------------------------------------------- commands
@command(cli, "init", "make the folder a transferops project (git, DVC, remote, MLflow store)")
def init_cmd(state: State, out: Output) -> None:
    from tasks.dvcstore import ensure_project
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    ensure_project(s.project_dir, s.resolved_dvc_remote, s.dvc_remote_endpoint)
    out.result({"project": str(s.project_dir), "tracking_uri": s.resolved_tracking_uri,
                "dvc_remote": s.resolved_dvc_remote}, "Project ready")


@command(cli, "demo", "run the whole loop offline on sample data (under three minutes on 2 cores)")
def demo_cmd(state: State, out: Output) -> None:
    from transferops.cli.demo import print_summary, run_demo
    from transferops.cli.output import _console

    summary = run_demo(state.project("demo-workdir"), say=out.note)
    if out.json:
        out.result(summary)
    else:
        print_summary(_console(stderr=False), summary)


@command(cli, "source", "develop a source model on a large source dataset and register it with its profile")
@click.option("--data", required=True, help="ImageFolder tree or manifest of the source domain")
@click.option("--backbone", default="resnet18", show_default=True, help="torchvision architecture")
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True,
              help="input side the source model is trained at")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="overrides training.epochs")
def source_cmd(state: State, out: Output, data: str, backbone: str, image_size: int, epochs: int | None) -> None:
    from flows.source import SourceParams, develop_source

    result = develop_source(SourceParams(data=data, backbone=backbone, image_size=image_size,
                                         project_dir=str(state.project()), config_file=state.config, epochs=epochs))
    out.result(result, "Source model registered")


@command(cli, "train", "train a challenger from a source model; register it and promote it if it wins")
@click.option("--data", default=None,
              help="folder/manifest to ingest as a new version, or a git revision of data.dvc (default: current version)")
@click.option("--source", required=True,
              help="models:/NAME@ALIAS, BACKBONE:WEIGHTS (resnet50:IMAGENET1K_V2), a bundle folder or a .pt file")
@click.option("--strategy", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option("--backbone", default=None, help="architecture of a .pt source file")
@click.option("--source-profile", default=None, help=".npz of source reference embeddings")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="overrides training.epochs")
def train_cmd(state: State, out: Output, data: str | None, source: str, strategy: str, backbone: str | None,
              source_profile: str | None, epochs: int | None) -> None:
    from flows.train import TrainParams, train

    folder, rev = None, None
    if data:
        if Path(data).exists():
            folder = data
        elif "/" in data or data.startswith("."):
            raise InputError(f"data folder {data} does not exist; pass an ImageFolder tree, a manifest, "
                             "or a git revision of data.dvc")
        else:
            rev = data
    result = train(TrainParams(source=source, data=folder, data_rev=rev, strategy=strategy, backbone=backbone,
                               source_profile=source_profile, project_dir=str(state.project()),
                               config_file=state.config, epochs=epochs))
    out.result(result, "Training run")


@command(cli, "profile", "build a source profile (reference embeddings) of a backbone from source-domain images")
@click.option("--backbone", required=True, help="torchvision architecture, e.g. resnet50")
@click.option("--weights", default="DEFAULT", show_default=True,
              help="weights enum (from the torch cache), .pt state dict or bundle folder")
@click.option("--data", required=True, help="ImageFolder tree or manifest of source-domain images")
@click.option("--out", "out_file", default=None, help="profile file (default: <data>-<backbone>.profile.npz here)")
@click.option("--size", type=click.IntRange(min=1), default=None, help="images to embed (default: drift.profile_size)")
def profile_cmd(state: State, out: Output, backbone: str, weights: str, data: str, out_file: str | None,
                size: int | None) -> None:
    from transferops.config import load_settings
    from transferops.sources import profile_backbone

    s = load_settings(state.project(), state.config)
    folder = Path(data)
    dest = Path(out_file or f"{folder.resolve().name}-{backbone}.profile.npz")
    prof = profile_backbone(s, backbone, weights, folder, size)
    prof.save(dest)
    out.result({"profile": str(dest), "backbone": backbone, "weights": weights, "samples": len(prof),
                "dim": int(prof.embeddings.shape[1]), "classes": len(prof.classes),
                "softmax_outputs": int(prof.probs.shape[1]) if prof.probs is not None else 0}, "Source profile")


@command(cli, "drift", "test a dataset for drift against a profile: MMD, classifier, KS and BBSD tests")
@click.option("--source", default=None,
              help="models:/NAME@ALIAS, a bundle folder, or BACKBONE:WEIGHTS (default: the profile's own)")
@click.option("--data", required=True, help="ImageFolder tree or manifest (labelled or not)")
@click.option("--profile", default=None, help="profile .npz (overrides the source's own)")
@click.option("--backbone", default=None, help="architecture of a .pt source file")
@click.option("--unlabelled", is_flag=True,
              help="every image of --data counts, whatever its folder names (default: a flat folder or a "
                   "manifest without labels is read as unlabelled)")
@click.option("--exit-code", "exit_code", is_flag=True,
              help=f"exit with {EXIT_DRIFT} when drift is detected (as git diff --exit-code)")
def drift_cmd(state: State, out: Output, source: str | None, data: str, profile: str | None, backbone: str | None,
              unlabelled: bool, exit_code: bool) -> int:
    from tasks.sources import open_source
    from transferops.assessment import measure_drift
    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.sources import source_from_profile

    s = load_settings(state.project(), state.config)
    if source is None:  # the profile names the network that made it
        if not profile:
            raise InputError("pass --source (a model) or --profile (a profile made by `transferops profile`)")
        ref = source_from_profile(profile)
        source, backbone = ref.spec, ref.backbone
    src = open_source(s, source, backbone, profile)
    images = scan_dataset(data, s.data.val_fraction, s.data.test_fraction, labels="none" if unlabelled else "auto")
    outcome = measure_drift(s, src, images, split=None)
    if outcome.report is None:
        raise InputError(f"{outcome.reason}; pass --profile FILE.npz")
    report = outcome.report
    drifted = bool(report.decision.is_drift)
    if out.json:
        out.result({"source": source, "data": str(data)} | report.as_dict())
    else:
        out.result(report.rows(), f"Drift of {data} against {src.profile_origin}")
        verdict = "[red]drift[/]" if drifted else "[green]no drift[/]"
        out.print(f"{verdict} by {report.decision.test} (p={report.decision.p_val:.4g}); "
                  f"similarity to the source domain {report.similarity:.3f}")
        if report.per_class:
            worst = sorted(report.per_class.items(), key=lambda kv: -kv[1])[:5]
            out.print("furthest classes (MMD²): " + ", ".join(f"{k} {v:.4f}" for k, v in worst))
        for name, why in report.skipped.items():
            out.print(f"[dim]{name} skipped: {why}[/]")
    return EXIT_DRIFT if exit_code and drifted else EXIT_OK


@command(cli, "status", "show registered versions, aliases, strategy and data revision")
def status_cmd(state: State, out: Output) -> None:
    from tasks import registry
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    rows = []
    for name in (s.model_name, s.source_model_name):
        for v in registry.list_versions(s, name):
            t = v.tags
            rows.append({"model": v.name, "version": v.version, "aliases": ",".join(v.aliases),
                         "strategy": t.get("transferops.strategy", ""), "backbone": t.get("transferops.backbone", ""),
                         "test_accuracy": t.get("transferops.test_accuracy", ""),
                         "similarity": t.get("transferops.source_similarity", ""),
                         "data_rev": t.get("transferops.data_rev", "")[:12], "run_id": v.run_id,
                         "strategy_params": t.get("transferops.strategy_params", ""),
                         "strategy_reason": t.get("transferops.strategy_reason", "")})
    if not rows and not out.json:
        out.print(f"No registered models in {s.resolved_tracking_uri}; run `transferops train` or `transferops demo`.")
        return
    loop = _loop_status(s) if any("champion" in r["aliases"] and r["model"] == s.model_name for r in rows) else {}
    for r in rows:  # the loop's state belongs to the model; its champion row carries it
        if r["model"] == s.model_name and "champion" in r["aliases"]:
            r |= loop
    if out.json:
        out.result(rows)
        return
    wide = ("strategy_params", "strategy_reason", "last_monitor", "last_retrain", "next_monitor", "last_champion_move")
    out.result([{k: v for k, v in r.items() if k not in wide} for r in rows], f"Registry at {s.resolved_tracking_uri}")
    # the why of each aliased version: the table would be unreadable with it
    for r in rows:
        if r["aliases"] and r["strategy_reason"]:
            out.print(f"[bold]{r['model']} v{r['version']}[/] ({r['aliases']}): {r['strategy']} "
                      f"{r['strategy_params']}\n  {r['strategy_reason']}")
    for r in rows:
        if "next_monitor" in r:
            m, t = r["last_monitor"], r["last_retrain"]
            est = m and m.get("estimated_accuracy")
            out.print(f"[bold]Loop of {r['model']}[/]\n"
                      f"  last monitor: " + (f"{m['at']} on v{m['version']}: {'drift' if m['is_drift'] else 'no drift'} "
                                            f"({m['test']} statistic {m['statistic']:.4g}, p={m['p_val']:.3g}), estimated "
                                            f"accuracy {'n/a' if est is None else format(est, '.3f')}, retrain {m['retrain']}"
                                            if m else "none yet (transferops monitor --batch DIR)") +
                      "\n  last retrain: " + (f"{t['started']} ({t['run']}): {t['status']}"
                                              + (f", v{t['version']}" if t.get("version") else "")
                                              + (f", trained: {t['trained_on']['where']}" if t.get("trained_on") else "")
                                              if t else "none yet") +
                      f"\n  next monitor: {r['next_monitor']}" +
                      "\n  last champion move: " + (_move_line(r["last_champion_move"]) if r["last_champion_move"]
                                                    else "none recorded"))


def _loop_status(s: Any) -> dict[str, Any]:
    """The monitoring loop of the target model: last monitor run, last retrain, next monitor run."""
    import json

    from tasks import registry
    from tasks.deployments import next_scheduled_run
    from tasks.history import history

    tags = registry.model_tags(s, s.model_name)
    parse = lambda k: json.loads(tags[k]) if k in tags else None  # noqa: E731
    last_move = history(s, s.model_name, registry.CHAMPION, limit=1)
    return {"last_monitor": parse("transferops.last_monitor"), "last_retrain": parse("transferops.last_retrain"),
            "next_monitor": next_scheduled_run(), "last_champion_move": last_move[0].as_dict() if last_move else None}


def _move_line(move: dict[str, Any]) -> str:
    """A recorded alias move (``transferops history``) in a line."""
    from transferops.history import AliasMove

    return AliasMove(**move).line()


@command(cli, "sample", "write a bundled sample dataset (offline, deterministic) as an ImageFolder tree")
@click.argument("kind", type=click.Choice(SAMPLES))
@click.argument("dest")
def sample_cmd(state: State, out: Output, kind: str, dest: str) -> None:
    from transferops.samples import write_font_digits, write_handwritten_digits, write_shapes

    writers = {"handwritten-digits": write_handwritten_digits, "typeset-digits": write_font_digits,
               "shapes": write_shapes}
    folder = Path(dest)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder} is not empty; pass a new folder")
    writers[kind](folder)
    n = sum(1 for _ in folder.rglob("*.png"))
    out.result({"kind": kind, "folder": str(folder.resolve()), "images": n}, "Sample dataset written")


@command(data_group, "add", "validate images and commit them as a new version of data/ (appends by default)")
@click.argument("source")
@click.option("-m", "--message", default=None, help="commit message of the version")
@click.option("--replace", is_flag=True, help="make SOURCE the whole version instead of appending")
@click.option("--allow-class-change", is_flag=True, help="accept a class set that differs from the registered model's")
@click.option("--orchestrate", is_flag=True, help="run as a tracked Prefect flow (costs the API's start-up)")
def data_add_cmd(state: State, out: Output, source: str, message: str | None, replace: bool,
                 allow_class_change: bool, orchestrate: bool) -> None:
    from tasks.expectations import SuiteRunner

    # GX takes ~2 s of CPU to import: its helper process starts before anything else loads
    with SuiteRunner(enabled=not orchestrate) as suite:
        from tasks.ingest import DataParams, add_data_direct  # no Prefect on the direct path

        params = DataParams(source=source, message=message, replace=replace, allow_class_change=allow_class_change,
                            project_dir=str(state.project()), config_file=state.config)
        if orchestrate:
            from flows.data import add_data

            v = add_data(params)
        else:
            v = add_data_direct(params, suite)
    meta = v["meta"]
    out.result({"rev": v["rev"], "content_hash": meta["content_hash"], "dvc_md5": v["md5"], "images": meta["n_images"],
                "added": meta["added"], "new_bytes": meta["new_bytes"], "reused": meta["reused"],
                "classes": len(meta["classes"]), "duplicates_within_split": v["duplicates_within_split"]},
               "New data version")


@command(data_group, "list", "show every version: revision, date, message, counts, content hash")
def data_list_cmd(state: State, out: Output) -> None:
    from tasks.dvcstore import list_versions
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    rows = list_versions(s.project_dir)
    if out.json:
        out.result(rows)
        return
    for r in rows:
        r["rev"], r["content_hash"] = r["rev"][:12], r["content_hash"][:16]
    out.result(rows, f"Versions of {s.project_dir / 'data'}",
               ["rev", "date", "message", "images", "classes", "train/val/test", "content_hash"])


@command(data_group, "checkout", "materialise a version (from cache or remote) and verify it bit for bit")
@click.argument("rev")
@click.option("--to", default=None, help="folder for the version (default: .transferops/datasets/REV)")
@click.option("--export", "export_to", default=None, help="also write every image back as a loose file under this folder")
def data_checkout_cmd(state: State, out: Output, rev: str, to: str | None, export_to: str | None) -> None:
    from tasks.dvcstore import checkout_version
    from transferops.config import load_settings
    from transferops.store import export

    s = load_settings(state.project(), state.config)
    dest = Path(to) if to else s.state_dir / "datasets" / rev
    v = checkout_version(s.project_dir, rev, dest)
    result = {"rev": v.rev, "path": v.path, "images": v.meta.get("n_images"),
              "content_hash": v.meta.get("content_hash"), "verified": True}
    if export_to:
        result["exported"] = export(v.path, export_to)
        result["export_path"] = str(Path(export_to).resolve())
    out.result(result, "Data version checked out")


# --------------------------------------------------------------------------- entry point
def _wants_json(args: list[str]) -> bool:
    """--json among the options (before a ``--``), for errors raised before it was parsed."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(argv: list[str] | None = None) -> int:
    """Run ``transferops`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    apply_offline_defaults()
    args = list(sys.argv[1:] if argv is None else argv)
    state = State()
    try:
        rv = cli.main(args=args, prog_name="transferops", standalone_mode=False, obj=state)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(f"{state.command}: interrupted", err=True)
        if state.json or _wants_json(args):
            write_json({"error": "interrupted", "details": [], "type": "KeyboardInterrupt",
                        "exit_code": EXIT_INTERRUPTED})
        return EXIT_INTERRUPTED
    except click.ClickException as exc:  # UsageError (2) and its kin: click's own message
        exc.show()
        if state.json or _wants_json(args):
            write_json({"error": exc.format_message(), "details": [], "type": type(exc).__name__,
                        "exit_code": exc.exit_code})
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001  (every other error: user errors and bugs, see output.py)
        return report_error(exc, state, state.json or _wants_json(args))
    return rv if isinstance(rv, int) else EXIT_OK
