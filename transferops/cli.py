"""The ``transferops`` command line.

Every command works on the project folder it is run in (like git and dvc), or
on ``--workdir DIR``. ``--json`` prints one JSON document for scripts. Flows and
adapters are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from transferops.offline import apply_offline_defaults

# Off a terminal rich falls back to 80 columns, which folds every table cell.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    cols = columns or (list(rows[0].keys()) if rows else [])
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str("" if v is None else v) for v in (r.get(c) for c in cols)])
    return table


def _emit(args: argparse.Namespace, result: Any, title: str, columns: list[str] | None = None) -> None:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    rows = result if isinstance(result, list) else [{"field": k, "value": v} for k, v in result.items()]
    console.print(_table(title, rows, columns))


# --------------------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> None:
    from tasks.dvcstore import ensure_project
    from transferops.config import load_settings

    s = load_settings(args.workdir, args.config)
    ensure_project(s.project_dir, s.resolved_dvc_remote, s.dvc_remote_endpoint)
    _emit(args, {"project": str(s.project_dir), "tracking_uri": s.resolved_tracking_uri,
                 "dvc_remote": s.resolved_dvc_remote}, "Project ready")


def cmd_source(args: argparse.Namespace) -> None:
    from flows.source import SourceParams, develop_source

    result = develop_source(SourceParams(data=args.data, backbone=args.backbone, image_size=args.image_size,
                                         project_dir=str(args.workdir), config_file=args.config, epochs=args.epochs))
    _emit(args, result, "Source model registered")


def cmd_train(args: argparse.Namespace) -> None:
    from flows.train import TrainParams, train

    data, rev = None, None
    if args.data:
        if Path(args.data).exists():
            data = args.data
        elif "/" in args.data or args.data.startswith("."):
            raise FileNotFoundError(f"data folder {args.data} does not exist; pass an ImageFolder tree, a manifest, "
                                    "or a git revision of data.dvc")
        else:
            rev = args.data
    result = train(TrainParams(source=args.source, data=data, data_rev=rev, strategy=args.strategy,
                               backbone=args.backbone, source_profile=args.source_profile,
                               project_dir=str(args.workdir), config_file=args.config, epochs=args.epochs))
    _emit(args, result, "Training run")


def cmd_profile(args: argparse.Namespace) -> None:
    from tasks.modeling import profile_backbone
    from transferops.config import load_settings

    s = load_settings(args.workdir, args.config)
    data = Path(args.data)
    out = Path(args.out or f"{data.resolve().name}-{args.backbone}.profile.npz")
    prof = profile_backbone.fn(s, args.backbone, args.weights, data, args.size)
    prof.save(out)
    _emit(args, {"profile": str(out), "backbone": args.backbone, "weights": args.weights, "samples": len(prof),
                 "dim": int(prof.embeddings.shape[1]), "classes": len(prof.classes),
                 "softmax_outputs": int(prof.probs.shape[1]) if prof.probs is not None else 0}, "Source profile")


def cmd_drift(args: argparse.Namespace) -> None:
    from tasks.modeling import measure_drift, resolve_source
    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.drift.profile import Profile

    s = load_settings(args.workdir, args.config)
    source, backbone = args.source, args.backbone
    if source is None:  # the profile names the network that made it
        if not args.profile:
            raise ValueError("pass --source (a model) or --profile (a profile made by `transferops profile`)")
        meta = Profile.load(args.profile).meta
        if not meta.get("backbone") or not meta.get("weights"):
            raise ValueError(f"profile {args.profile} does not name its backbone and weights; also pass --source")
        source, backbone = meta["weights"], meta["backbone"]
        if not Path(source).expanduser().exists():
            source = f"{backbone}:{source}"  # a weights enum name
    src = resolve_source.fn(s, source, backbone, args.profile)
    images = scan_dataset(args.data, s.data.val_fraction, s.data.test_fraction)
    outcome = measure_drift.fn(s, src, images, split=None)
    if outcome.report is None:
        raise ValueError(f"{outcome.reason}; pass --profile FILE.npz")
    report = outcome.report
    if args.json:
        print(json.dumps({"source": source, "data": str(args.data)} | report.as_dict(), indent=2, default=str))
        return
    console.print(_table(f"Drift of {args.data} against {src.profile_origin}", report.rows()))
    verdict = "[red]drift[/]" if report.decision.is_drift else "[green]no drift[/]"
    console.print(f"{verdict} by {report.decision.test} (p={report.decision.p_val:.4g}); "
                  f"similarity to the source domain {report.similarity:.3f}")
    if report.per_class:
        worst = sorted(report.per_class.items(), key=lambda kv: -kv[1])[:5]
        console.print("furthest classes (MMD²): " + ", ".join(f"{k} {v:.4f}" for k, v in worst))
    for name, why in report.skipped.items():
        console.print(f"[dim]{name} skipped: {why}[/]")


def cmd_status(args: argparse.Namespace) -> None:
    from tasks import registry
    from transferops.config import load_settings

    s = load_settings(args.workdir, args.config)
    rows = []
    for name in (s.model_name, s.source_model_name):
        for v in registry.list_versions(s, name):
            t = v.tags
            rows.append({"model": v.name, "version": v.version, "aliases": ",".join(v.aliases),
                         "strategy": t.get("transferops.strategy", ""), "backbone": t.get("transferops.backbone", ""),
                         "test_accuracy": t.get("transferops.test_accuracy", ""),
                         "similarity": t.get("transferops.source_similarity", ""),
                         "data_rev": t.get("transferops.data_rev", "")[:12], "run_id": v.run_id})
    if not rows and not args.json:
        console.print(f"No registered models in {s.resolved_tracking_uri}; run `transferops train` or `transferops demo`.")
        return
    _emit(args, rows, f"Registry at {s.resolved_tracking_uri}")


def cmd_data_add(args: argparse.Namespace) -> None:
    from tasks.expectations import SuiteRunner

    # GX takes ~2 s of CPU to import: its helper process starts before anything else loads
    with SuiteRunner(enabled=not args.orchestrate) as suite:
        from tasks.ingest import DataParams, add_data_direct  # no Prefect on the direct path

        params = DataParams(source=args.source, message=args.message, replace=args.replace,
                            allow_class_change=args.allow_class_change, project_dir=str(args.workdir),
                            config_file=args.config)
        if args.orchestrate:
            from flows.data import add_data

            v = add_data(params)
        else:
            v = add_data_direct(params, suite)
    meta = v["meta"]
    result = {"rev": v["rev"], "content_hash": meta["content_hash"], "dvc_md5": v["md5"], "images": meta["n_images"],
              "added": meta["added"], "new_bytes": meta["new_bytes"], "reused": meta["reused"],
              "classes": len(meta["classes"]), "duplicates_within_split": v["duplicates_within_split"]}
    _emit(args, result, "New data version")


def cmd_data_list(args: argparse.Namespace) -> None:
    from tasks.dvcstore import list_versions
    from transferops.config import load_settings

    s = load_settings(args.workdir, args.config)
    rows = list_versions(s.project_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        r["rev"], r["content_hash"] = r["rev"][:12], r["content_hash"][:16]
    _emit(args, rows, f"Versions of {s.project_dir / 'data'}",
          ["rev", "date", "message", "images", "classes", "train/val/test", "content_hash"])


def cmd_data_checkout(args: argparse.Namespace) -> None:
    from tasks.dvcstore import checkout_version
    from transferops.config import load_settings
    from transferops.store import export

    s = load_settings(args.workdir, args.config)
    dest = Path(args.to) if args.to else s.state_dir / "datasets" / args.rev
    v = checkout_version(s.project_dir, args.rev, dest)
    result = {"rev": v.rev, "path": v.path, "images": v.meta.get("n_images"),
              "content_hash": v.meta.get("content_hash"), "verified": True}
    if args.export:
        result["exported"] = export(v.path, args.export)
        result["export_path"] = str(Path(args.export).resolve())
    _emit(args, result, "Data version checked out")


def cmd_sample(args: argparse.Namespace) -> None:
    from transferops.samples import write_font_digits, write_handwritten_digits, write_shapes

    writers = {"handwritten-digits": write_handwritten_digits, "typeset-digits": write_font_digits,
               "shapes": write_shapes}
    dest = Path(args.dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; pass a new folder")
    writers[args.kind](dest)
    n = sum(1 for f in dest.rglob("*.png"))
    _emit(args, {"kind": args.kind, "folder": str(dest.resolve()), "images": n}, "Sample dataset written")


def cmd_demo(args: argparse.Namespace) -> None:
    from transferops.demo import run_demo

    result = run_demo(Path(args.workdir), console=console if not args.json else None)
    if args.json:
        print(json.dumps(result, indent=2, default=str))


# --------------------------------------------------------------------------- parser
def get_args_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    common = argparse.ArgumentParser(add_help=False)
    # default None, resolved per command: parent-parser actions are shared, so a
    # subparser's set_defaults would leak into every other command
    common.add_argument("--workdir", type=Path, default=None, help="project folder (default: the current one; demo: demo-workdir)")
    common.add_argument("--config", default=None, help="YAML settings file (default: <workdir>/transferops.yaml if present)")
    common.add_argument("--json", action="store_true", help="print one JSON document instead of tables")

    p = argparse.ArgumentParser(prog="transferops", description="Keep transfer-learned image models fresh in production.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    add("init", cmd_init, "make the folder a transferops project (git, DVC, remote, MLflow store)")
    add("demo", cmd_demo, "run the whole loop offline on sample data (about a minute on 2 cores)")
    sp = add("source", cmd_source, "develop a source model on a large source dataset and register it with its profile")
    sp.add_argument("--data", required=True, help="ImageFolder tree or manifest of the source domain")
    sp.add_argument("--backbone", default="resnet18", help="torchvision architecture (default: resnet18)")
    sp.add_argument("--image-size", type=int, default=32, help="input side the source model is trained at")
    sp.add_argument("--epochs", type=int, default=None, help="overrides training.epochs")
    sp = add("train", cmd_train, "train a challenger from a source model; register it and promote it if it wins")
    sp.add_argument("--data", default=None, help="folder/manifest to ingest as a new version, or a git revision of data.dvc (default: current version)")
    sp.add_argument("--source", required=True, help="models:/NAME@ALIAS, BACKBONE:WEIGHTS (resnet50:IMAGENET1K_V2), a bundle folder or a .pt file")
    sp.add_argument("--strategy", default="auto", choices=["auto", "feature_extraction", "partial_finetune", "full_finetune", "scratch"])
    sp.add_argument("--backbone", default=None, help="architecture of a .pt source file")
    sp.add_argument("--source-profile", default=None, help=".npz of source reference embeddings")
    sp.add_argument("--epochs", type=int, default=None, help="overrides training.epochs")
    sp = add("profile", cmd_profile, "build a source profile (reference embeddings) of a backbone from source-domain images")
    sp.add_argument("--backbone", required=True, help="torchvision architecture, e.g. resnet50")
    sp.add_argument("--weights", default="DEFAULT", help="weights enum (from the torch cache), .pt state dict or bundle folder (default: DEFAULT)")
    sp.add_argument("--data", required=True, help="ImageFolder tree or manifest of source-domain images")
    sp.add_argument("--out", default=None, help="profile file (default: <data>-<backbone>.profile.npz here)")
    sp.add_argument("--size", type=int, default=None, help="images to embed (default: drift.profile_size)")
    sp = add("drift", cmd_drift, "test a dataset for drift against a profile: MMD, classifier, KS and BBSD tests")
    sp.add_argument("--source", default=None, help="models:/NAME@ALIAS, a bundle folder, or BACKBONE:WEIGHTS (default: the profile's own)")
    sp.add_argument("--data", required=True, help="ImageFolder tree or manifest")
    sp.add_argument("--profile", default=None, help="profile .npz (overrides the source's own)")
    sp.add_argument("--backbone", default=None, help="architecture of a .pt source file")
    add("status", cmd_status, "show registered versions, aliases, strategy and data revision")
    data = sub.add_parser("data", help="dataset versions: add, list, checkout")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def add_data_cmd(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = dsub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    sp = add_data_cmd("add", cmd_data_add, "validate images and commit them as a new version of data/ (appends by default)")
    sp.add_argument("source", help="ImageFolder tree or .csv/.parquet manifest")
    sp.add_argument("--message", "-m", default=None, help="commit message of the version")
    sp.add_argument("--replace", action="store_true", help="make SOURCE the whole version instead of appending")
    sp.add_argument("--allow-class-change", action="store_true", help="accept a class set that differs from the registered model's")
    sp.add_argument("--orchestrate", action="store_true", help="run as a tracked Prefect flow (costs the API's start-up)")
    add_data_cmd("list", cmd_data_list, "show every version: revision, date, message, counts, content hash")
    sp = add_data_cmd("checkout", cmd_data_checkout, "materialise a version (from cache or remote) and verify it bit for bit")
    sp.add_argument("rev", help="git revision of data.dvc (see `transferops data list`)")
    sp.add_argument("--to", default=None, help="folder for the version (default: .transferops/datasets/REV)")
    sp.add_argument("--export", default=None, help="also write every image back as a loose file under this folder")
    sp = add("sample", cmd_sample, "write a bundled sample dataset (offline, deterministic) as an ImageFolder tree")
    sp.add_argument("kind", choices=["handwritten-digits", "typeset-digits", "shapes"])
    sp.add_argument("dest", help="new folder to write")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transferops`` console script."""
    apply_offline_defaults()
    args = get_args_parser().parse_args(argv)
    if args.workdir is None:
        args.workdir = Path("demo-workdir") if args.command == "demo" else Path(".")
    try:
        args.func(args)
    except KeyboardInterrupt:
        err_console.print("transferops: interrupted")
        return 130
    except Exception as exc:  # one clear line for the user; tracebacks only on request
        if _is_user_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            err_console.print(f"[bold red]transferops {args.command}: error:[/] {first}", highlight=False)
            details = str(exc).splitlines()[1:]
            for line in details[:20]:
                err_console.print(f"  {line}", highlight=False)
            return 2
        raise
    return 0


def _is_user_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    names = {"ConfigError", "DatasetError", "DataValidationError", "RegistryError", "VersioningError",
             "WeightsUnavailable", "DriftInputError", "StoreError"}
    return type(exc).__name__ in names or isinstance(exc, (ValueError, FileNotFoundError, ValidationError))


if __name__ == "__main__":
    sys.exit(main())
