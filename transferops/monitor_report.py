"""The monitor's report: production against training embeddings, the class mix, the tests,
the estimated (and, when labels came, realised) accuracy, and the retrain decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from transferops.monitoring import MonitorResult
from transferops.report import _pyplot, markdown_table, plot_embeddings, write_report


def plot_class_mix(mix: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars: the share of each predicted class in the training profile and the batch."""
    plt = _pyplot()
    classes = list(mix["production"])
    x = np.arange(len(classes))
    series = [(k, mix[k]) for k in ("training", "production") if k in mix]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(classes) + 2), 3.4))
    for i, (name, shares) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [shares[c] for c in classes], width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set(ylabel="share of images", title="Predicted class mix")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_monitor_report(result: MonitorResult, reference: np.ndarray, production: np.ndarray, folder: Path,
                          title: str) -> Path:
    """Draw the plots and write ``report.md`` (and ``monitor.json``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    d = result.as_dict()
    (folder / "monitor.json").write_text(json.dumps(d, indent=2, default=str))
    facts: dict[str, Any] = {"model": f"{result.model} v{result.version}", "batch": result.batch,
                             "images (embedded)": f"{result.n_images} ({result.n_embedded})",
                             "drift": f"{result.is_drift} ({result.test} statistic {result.statistic:.4g}, "
                                      f"p={result.p_val:.3g})",
                             "estimated accuracy": "n/a" if result.estimated_accuracy is None
                             else f"{result.estimated_accuracy:.3f} (held-out {result.heldout_accuracy:.3f})",
                             "estimate": result.estimate_note,
                             "retrain": f"{result.decision.retrain}: {result.decision.reason}"}
    if result.realized_accuracy is not None:
        facts["realised accuracy"] = f"{result.realized_accuracy:.3f} on {result.n_labelled} labelled images"
    sections = [("Summary", markdown_table([{"field": k, "value": v} for k, v in facts.items()]))]
    plot_embeddings(reference, production, folder / "monitor_embeddings.png", "Training profile vs production (PCA)",
                    labels=("training", "production"))
    rows = [{k: t[k] for k in ("test", "is_drift", "p_val", "threshold", "distance", "n_ref", "n_test")}
            for t in result.drift.get("tests", [])]
    sections.append(("Drift", "![training vs production embeddings](monitor_embeddings.png)\n\n" + markdown_table(rows)))
    plot_class_mix(result.class_mix, folder / "class_mix.png")
    mix_rows = [{"class": c} | {k: f"{v[c]:.3f}" for k, v in result.class_mix.items()} for c in result.class_mix["production"]]
    sections.append(("Class mix", "![predicted class mix](class_mix.png)\n\n" + markdown_table(mix_rows)))
    return write_report(folder / "report.md", title, sections)
