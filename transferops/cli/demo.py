"""The end-to-end demo: one complete transfer story, offline, on the embedded defaults.

1. Source domain with plenty of data: 3,000 typeset digits (generated).
2. Develop a source model on it (resnet18 from scratch), register it with its profile.
3. Target domain, small and different but related: scikit-learn's 1,797 real handwritten digits.
4. Train with ``strategy=auto``: size and a linear probe of the source features pick the strategy;
   a same-budget scratch baseline shows what transfer brought (start, slope, asymptote).
5. Train a second challenger with plain feature extraction on the same data version;
   it is evaluated against the champion on the same held-out split.
6. Show the registry: versions, aliases, strategies, data revisions.

Everything (git+DVC repo and remote, MLflow store, reports) stays in the workdir.

Part of the command line (``transferops demo``): it orchestrates the flows. Its story
(the steps as they start) goes to ``say``, which the CLI points at stderr; the summary
table (:func:`print_summary`) is the command's result on stdout, or its JSON document.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from transferops.samples import write_font_digits, write_handwritten_digits

SOURCE_EPOCHS = 4
TARGET_EPOCHS = 6


def run_demo(workdir: Path, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the story in ``workdir`` and return its summary; each step is announced to ``say``
    (rich markup) as it starts."""
    from flows.source import SourceParams, develop_source
    from flows.train import TrainParams, train
    from tasks import registry
    from transferops.config import load_settings

    say = say or (lambda _msg: None)
    start = time.perf_counter()
    workdir = workdir.expanduser().resolve()
    incoming = workdir / "incoming"
    src_dir, tgt_dir = incoming / "typeset-digits", incoming / "handwritten-digits"
    if not src_dir.exists():
        say("[bold]1/5[/] writing the source domain: 3,000 typeset digits")
        write_font_digits(src_dir, per_class=300)
    if not tgt_dir.exists():
        say("[bold]1/5[/] writing the target domain: 1,797 real handwritten digits (scikit-learn)")
        write_handwritten_digits(tgt_dir)

    say("[bold]2/5[/] developing the source model (resnet18 from scratch) and its source profile")
    source = develop_source(SourceParams(data=str(src_dir), backbone="resnet18", image_size=32,
                                         project_dir=str(workdir), epochs=SOURCE_EPOCHS, run_name="demo-source"))
    say("[bold]3/5[/] training on the target with strategy=auto")
    auto = train(TrainParams(source=source["uri"], data=str(tgt_dir), strategy="auto", project_dir=str(workdir),
                             epochs=TARGET_EPOCHS, run_name="demo-target-auto"))
    say("[bold]4/5[/] a second challenger: feature extraction on the same data version")
    fe = train(TrainParams(source=source["uri"], data_rev=auto["data_rev"], strategy="feature_extraction",
                           project_dir=str(workdir), epochs=TARGET_EPOCHS, run_name="demo-target-feature-extraction"))

    say("[bold]5/5[/] the registry")
    settings = load_settings(workdir)
    champion = registry.alias_version(settings, settings.model_name, registry.CHAMPION)
    runs = [
        {"run": source["run_name"], "model": f"{source['model']} v{source['version']}", "strategy": "scratch (source)",
         "transferability": None, "test_accuracy": source["test_accuracy"], "vs_scratch": None,
         "promoted": "champion (source)"},
        *({"run": r["run_name"], "model": f"{r['model']} v{r['version']}", "strategy": r["strategy"],
           "transferability": r["strategy_evidence"].get("transferability"), "test_accuracy": r["test_accuracy"],
           "vs_scratch": (r["transfer_benefit"] or {}).get("asymptote"),
           "promoted": "champion" if r["promoted"] else "challenger only"} for r in (auto, fe)),
    ]
    summary = {
        "workdir": str(workdir), "seconds": round(time.perf_counter() - start, 1), "runs": runs,
        "champion": f"{settings.model_name} v{champion.version}" if champion else None,
        "champion_uri": f"models:/{settings.model_name}@champion",
        "strategy_reason": auto["strategy_reason"], "second_run_decision": fe["promotion_reason"],
        "data_rev": auto["data_rev"], "data_md5": auto["data_md5"],
        "reports": [source["report"], auto["report"], fe["report"]],
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
        ("Second challenger", summary["second_run_decision"]),
        ("Run reports", links),
    ])


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
    console.print(f"[bold]Why:[/] {summary['strategy_reason']}")
    console.print(f"[bold]Second challenger:[/] {summary['second_run_decision']}")
    console.print(f"[bold]Data version:[/] {summary['data_rev'][:12]} ({summary['data_md5']})")
    console.print(f"[bold]Reports:[/] {Path(summary['workdir']) / 'reports' / 'README.md'}")
    console.print(f"[bold]MLflow:[/] {summary['tracking_uri']}   (mlflow ui --backend-store-uri {summary['tracking_uri']})")
    console.print(f"Finished in {summary['seconds']:.0f} s.")
