"""The end-to-end demo: one complete transfer story and the loop that keeps it fresh, offline,
on the embedded defaults.

1. Source domain with plenty of data: 2,000 typeset digits (generated). Target domain, small,
   different but related: 500 of scikit-learn's real handwritten digits (about 35 a class to
   train on: the small-data case, where transfer matters most).
2. Develop a source model on it (resnet18 from scratch), register it with its profile.
3. Train on the target with ``strategy=auto``: size and a linear probe of the source features
   pick the strategy; a same-budget scratch baseline shows what transfer brought. It becomes
   the first champion.
4. Production drifts: a batch of 600 *other* handwritten digits arrives with heavy noise and no
   labels. The monitor flow compares it with the champion's training data, estimates the
   champion's accuracy on it without labels and, with the labels that "arrive later", the true
   accuracy beside the estimate; its policy asks for a retrain.
5. Labelled images of the new look arrive (noised copies of the training digits) and the retrain
   flow runs, as the ``retrain`` deployment's trigger would start it from the drift event: a new
   data version, validation, strategy, training, evaluation against the champion on the same
   held-out split, promotion.
6. Show the registry: both versions, the drift statistics, the estimate against the truth and
   the reason for the promotion.

Everything (git+DVC repo and remote, MLflow store, reports) stays in the workdir.

Part of the command line (``transferops demo``): it orchestrates the flows. Its story
(the steps as they start) goes to ``say``, which the CLI points at stderr; the summary
table (:func:`print_summary`) is the command's result on stdout, or its JSON document.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from transferops.samples import flatten_labelled, write_font_digits, write_handwritten_digits

SOURCE_EPOCHS = 1
TARGET_EPOCHS = 4
TARGET_IMAGES = 500  # of scikit-learn's 1,797, from the start
PRODUCTION_IMAGES = 600  # the next ones: production's batch
NOISE = 70.0  # grey levels of Gaussian noise on production's images: plainly visible
# The demo's own settings, written as the project's transferops.yaml (a user's file is kept).
# On 2 CPU cores a resnet18 step at 32 px costs ~0.3 s at batch 32, so the demo trains for
# 40-odd steps (one epoch of the source, four of the target's scratch baseline), compares only
# the first champion with a scratch baseline, and measures transferability and calibrates the
# accuracy estimate on fewer images.
DEMO_SETTINGS = """\
# transferops demo: the whole loop in under three minutes on 2 CPU cores
training:
  batch_size: 32       # default 64
  min_steps: 40        # default 300; budgets are whole epochs: 44 steps for source and baseline
strategy:
  baseline_max_train_images: 400    # default 2000: the retrain (about 700 training images) has no scratch baseline
  probe_max_images: 500             # default 2000: train+val images the transferability probe reads
monitor:
  calibration_images: 150   # default 300: held-out images per synthetic shift of the accuracy estimate
"""


def _write_domains(incoming: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """The demo's four inputs, written once (a rerun reuses them)."""
    paths = {"source": incoming / "typeset-digits", "target": incoming / "handwritten-digits",
             "new_look": incoming / "handwritten-digits-noisy", "batch": incoming / "production-batch"}
    if not paths["source"].exists():
        say("[bold]1/6[/] writing the source domain: 2,000 typeset digits")
        write_font_digits(paths["source"], per_class=200)
    if not paths["target"].exists():
        say(f"[bold]1/6[/] writing the target domain: {TARGET_IMAGES:,} real handwritten digits (scikit-learn)")
        write_handwritten_digits(paths["target"], limit=TARGET_IMAGES)
        # the labelled data a retrain gets: the same digits in production's new look
        write_handwritten_digits(paths["new_look"], limit=TARGET_IMAGES, noise=NOISE, seed=1, prefix="noisy")
    paths["labels"] = paths["batch"].with_name(f"{paths['batch'].name}-labels.csv")
    if not paths["batch"].exists():
        tree = write_handwritten_digits(incoming / ".production-tree", start=TARGET_IMAGES, limit=PRODUCTION_IMAGES,
                                        noise=NOISE, seed=2, prefix="prod")
        flatten_labelled(tree, paths["batch"])
    return paths


def _start_prefect_api() -> threading.Thread | None:
    """Start Prefect's temporary API server in a thread, when no PREFECT_API_URL is set.

    The server is a subprocess that takes ~10 s to import and start on 2 cores; begun here it
    starts beside the writing of the sample data instead of after it. Join the thread before
    the first flow: Prefect's start-up is not safe to race. A failure is left to the first
    flow, which starts the server itself and reports the error in full.
    """
    import contextvars

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # a server to use (read here: a thread starts with empty context variables)
        return None

    def start() -> None:
        try:
            get_client(sync_client=True)  # starts the temporary server and waits for its health check
        except Exception:  # noqa: BLE001  (the first flow reports it)
            pass

    thread = threading.Thread(target=contextvars.copy_context().run, args=(start,), name="prefect-api-start", daemon=True)
    thread.start()
    return thread


def run_demo(workdir: Path, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the story in ``workdir`` and return its summary; each step is announced to ``say``
    (rich markup) as it starts."""
    from flows.monitor import MonitorParams, monitor
    from flows.retrain import RetrainParams, retrain
    from flows.source import SourceParams, develop_source
    from flows.train import TrainParams, train
    from tasks import registry
    from transferops.config import load_settings

    say = say or (lambda _msg: None)
    start = time.perf_counter()
    workdir = workdir.expanduser().resolve()
    prefect_api = _start_prefect_api()
    paths = _write_domains(workdir / "incoming", say)
    if prefect_api is not None:
        prefect_api.join()
    if not (workdir / "transferops.yaml").exists():
        (workdir / "transferops.yaml").write_text(DEMO_SETTINGS)

    say("[bold]2/6[/] developing the source model (resnet18 from scratch) and its source profile")
    source = develop_source(SourceParams(data=str(paths["source"]), backbone="resnet18", image_size=32,
                                         project_dir=str(workdir), epochs=SOURCE_EPOCHS, run_name="demo-source"))
    say("[bold]3/6[/] training on the target with strategy=auto: the first champion")
    auto = train(TrainParams(source=source["uri"], data=str(paths["target"]), strategy="auto", project_dir=str(workdir),
                             epochs=TARGET_EPOCHS, run_name="demo-target-auto"))
    say(f"[bold]4/6[/] production drifts: monitoring {len(list(paths['batch'].iterdir()))} unlabelled, noised "
        "images against the champion's training data")
    watch = monitor(MonitorParams(batch=str(paths["batch"]), labels=str(paths["labels"]), project_dir=str(workdir),
                                  run_name="demo-monitor"))
    say("[bold]5/6[/] labelled images of the new look arrive; the retrain the drift event starts in production")
    trigger = {"by": "transferops demo (in production: the retrain deployment's trigger)",
               "event_id": (watch["events"] or {}).get("transferops.drift.detected"), "monitor_run_id": watch["run_id"],
               "test": watch["test"], "statistic": watch["statistic"], "p_value": watch["p_val"],
               "estimated_accuracy": watch["estimated_accuracy"]}
    new = retrain(RetrainParams(data=str(paths["new_look"]), project_dir=str(workdir), epochs=TARGET_EPOCHS,
                                trigger=trigger, run_name="demo-retrain"))

    say("[bold]6/6[/] the registry")
    settings = load_settings(workdir)
    champion = registry.alias_version(settings, settings.model_name, registry.CHAMPION)
    runs = [
        {"run": source["run_name"], "model": f"{source['model']} v{source['version']}", "strategy": "scratch (source)",
         "transferability": None, "test_accuracy": source["test_accuracy"], "vs_scratch": None,
         "promoted": "champion (source)"},
        *({"run": r["run_name"], "model": f"{r['model']} v{r['version']}", "strategy": r["strategy"],
           "transferability": r["strategy_evidence"].get("transferability"), "test_accuracy": r["test_accuracy"],
           "vs_scratch": (r.get("transfer_benefit") or {}).get("asymptote"),
           "promoted": "champion" if r["promoted"] else "challenger only"} for r in (auto, new) if "version" in r),
    ]
    summary = {
        "workdir": str(workdir), "seconds": round(time.perf_counter() - start, 1), "runs": runs,
        "champion": f"{settings.model_name} v{champion.version}" if champion else None,
        "champion_uri": f"models:/{settings.model_name}@champion",
        "strategy_reason": auto["strategy_reason"],
        "monitor": {k: watch[k] for k in ("run_name", "n_images", "is_drift", "test", "statistic", "p_val",
                                          "estimated_accuracy", "heldout_accuracy", "realized_accuracy", "retrain",
                                          "retrain_reason", "report")},
        "retrain": {k: new.get(k) for k in ("status", "reason", "version", "promoted", "promotion_reason",
                                            "test_accuracy", "champion_test_accuracy", "data_rev", "report")},
        "data_rev": new.get("data_rev") or auto["data_rev"], "data_md5": new.get("data_md5") or auto["data_md5"],
        "reports": [source["report"], auto["report"], watch["report"], *([new["report"]] if new.get("report") else [])],
        "tracking_uri": settings.resolved_tracking_uri,
    }
    _write_index(workdir, summary)
    return summary


def _write_index(workdir: Path, summary: dict[str, Any]) -> None:
    from transferops.report import markdown_table, write_report

    links = "\n".join(f"- [{Path(r).parent.name}]({Path(r).relative_to(workdir / 'reports')})" for r in summary["reports"])
    write_report(workdir / "reports" / "README.md", "transferops demo", [
        ("Runs", markdown_table(summary["runs"])),
        ("Why this strategy", summary["strategy_reason"]),
        ("Production drifted", _monitor_line(summary["monitor"])),
        ("The retrain", _retrain_line(summary["retrain"])),
        ("Run reports", links),
    ])


def _monitor_line(m: dict[str, Any]) -> str:
    est, real = m["estimated_accuracy"], m["realized_accuracy"]
    return (f"{m['n_images']} images: {'drift' if m['is_drift'] else 'no drift'} ({m['test']} statistic "
            f"{m['statistic']:.4g}, p={m['p_val']:.3g}); champion accuracy estimated without labels "
            f"{'n/a' if est is None else f'{est:.3f}'} (held-out {m['heldout_accuracy']:.3f}), true "
            f"{'n/a' if real is None else f'{real:.3f}'} from the labels that arrived later; "
            f"retrain: {m['retrain']} ({m['retrain_reason']})")


def _retrain_line(r: dict[str, Any]) -> str:
    if r["status"] != "retrained":
        return f"{r['status']}: {r['reason']}"
    return (f"v{r['version']} {'promoted to champion' if r['promoted'] else 'not promoted'}: {r['promotion_reason']} "
            f"(data {r['data_rev'][:12]})")


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The summary as a table and a few lines."""
    table = Table(title="transferops demo")
    for col in ("run", "model", "strategy", "transferability", "test_accuracy", "val acc vs scratch", "promoted"):
        table.add_column(col)
    for r in summary["runs"]:
        table.add_row(r["run"], r["model"], r["strategy"],
                      "" if r["transferability"] is None else f"{r['transferability']:.3f}", f"{r['test_accuracy']:.3f}",
                      "" if r["vs_scratch"] is None else f"{100 * r['vs_scratch']:+.1f} pts", r["promoted"])
    console.print(table)
    console.print(f"[bold]Champion:[/] {summary['champion']}  (load with {summary['champion_uri']})")
    console.print(f"[bold]Why this strategy:[/] {summary['strategy_reason']}")
    console.print(f"[bold]Production drifted:[/] {_monitor_line(summary['monitor'])}")
    console.print(f"[bold]The retrain:[/] {_retrain_line(summary['retrain'])}")
    console.print(f"[bold]Data version:[/] {summary['data_rev'][:12]} ({summary['data_md5']})")
    console.print(f"[bold]Reports:[/] {Path(summary['workdir']) / 'reports' / 'README.md'}")
    console.print(f"[bold]MLflow:[/] {summary['tracking_uri']}   (mlflow ui --backend-store-uri {summary['tracking_uri']})")
    console.print(f"Finished in {summary['seconds']:.0f} s.")
