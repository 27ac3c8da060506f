"""Plots and the Markdown run report.

Plots go where people would rather look than read: learning curves, the
confusion matrix, source-versus-target embeddings in 2-D (PCA), per-class drift
distances and transfer against a scratch baseline. They are
written as PNG files; the flows log them to MLflow and link them from the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from transferops.benefit import TransferBenefit, plot_transfer_benefit


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Train/val loss and accuracy per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="val")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = max(3.5, 0.45 * len(classes) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pca_2d(*arrays: np.ndarray) -> list[np.ndarray]:
    """Project arrays onto the first two principal components of their union."""
    z = np.concatenate(arrays).astype(np.float64)
    mu = z.mean(0)
    _, _, vt = np.linalg.svd(z - mu, full_matrices=False)
    return [(a - mu) @ vt[:2].T for a in arrays]


def plot_embeddings(reference: np.ndarray, target: np.ndarray, path: Path, title: str,
                    labels: tuple[str, str] = ("source", "target")) -> Path:
    """Reference and target embeddings on their first two principal components."""
    plt = _pyplot()
    a, b = pca_2d(reference, target)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(a[:, 0], a[:, 1], s=6, alpha=0.45, label=f"{labels[0]} (n={len(a)})")
    ax.scatter(b[:, 0], b[:, 1], s=6, alpha=0.45, label=f"{labels[1]} (n={len(b)})")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_class_distances(distances: dict[str, float], path: Path, title: str = "Per-class distance to the profile") -> Path:
    """Horizontal bars of each class's MMD^2 to the reference, largest first."""
    plt = _pyplot()
    items = sorted(distances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, max(2.5, 0.3 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:orange")
    ax.set(xlabel="MMD² (Gaussian kernel)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of dict rows."""
    rows = list(rows)
    if not rows:
        return "_(none)_\n"
    cols = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write a Markdown report of (heading, body) sections; images are linked by relative path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"] + [f"## {h}\n\n{body.rstrip()}\n" for h, body in sections]
    path.write_text("\n".join(parts))
    return path


@dataclass
class RunReport:
    """What one run's report shows; every part but the facts is optional."""

    run_name: str
    facts: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    confusion: list[list[int]] | None = None  # held-out confusion matrix, rows: true class
    classes: list[str] = field(default_factory=list)
    reference: np.ndarray | None = None  # profile embeddings (source or training data)
    target: np.ndarray | None = None  # the embeddings compared with them
    drift: dict[str, Any] | None = None  # ``DriftReport.as_dict()``
    validation: Path | None = None  # the GX result file
    benefit: TransferBenefit | None = None  # transfer (``history``) against the scratch baseline
    scratch_history: Sequence[dict[str, Any]] | None = None  # the scratch baseline's rows, for the plot
    strategy: dict[str, Any] | None = None  # ``StrategyChoice.as_dict()`` or any dict with name, reason, parameters
    promotion: str | None = None  # the promotion gates as Markdown (``transferops.promotion.gate_table``)


def _strategy_section(strategy: dict[str, Any]) -> str:
    """The strategy's name and reason, then its other entries as a key/value table."""
    def cell(v: Any) -> Any:
        v = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else v
        return v.replace("|", "\\|").replace("\n", " ") if isinstance(v, str) else v

    head = "".join(f"**{k}:** {strategy[k]}\n\n" for k in ("name", "reason") if strategy.get(k) is not None)
    rows = [{"parameter": k, "value": cell(v)} for k, v in strategy.items() if k not in ("name", "reason")]
    return head + (markdown_table(rows) if rows else "")


def _benefit_section(benefit: TransferBenefit) -> str:
    """The sentence and a start/area/final table, transfer against scratch."""
    t, s = benefit.transfer, benefit.scratch
    rows = [{"measure": name, "transfer": f"{a:.3f}", "scratch": f"{b:.3f}", "difference": f"{a - b:+.3f}"}
            for name, a, b in (("start (val accuracy at the first evaluation)", t.start, s.start),
                               (f"area under the val-accuracy curve (steps 0–{benefit.horizon})", t.auc, s.auc),
                               ("final (best val accuracy)", t.final, s.final))]
    return benefit.sentence() + "\n\n" + markdown_table(rows)


def render_run_report(report: RunReport, folder: Path) -> Path:
    """Draw the plots and write ``report.md`` into ``folder``; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str]] = [("Summary", markdown_table([{"field": k, "value": v}
                                                                    for k, v in report.facts.items()]))]
    if report.strategy:
        sections.append(("Strategy", _strategy_section(report.strategy)))
    ref, tgt, drift = report.reference, report.target, report.drift
    if ref is not None and tgt is not None and len(ref) and len(tgt):
        plot_embeddings(ref, tgt, folder / "drift_embeddings.png", "Source profile vs target (PCA)")
        body = "![source vs target embeddings](drift_embeddings.png)\n"
        if drift:
            (folder / "drift.json").write_text(json.dumps(drift, indent=2, default=str))
            rows = [{k: t[k] for k in ("test", "is_drift", "p_val", "threshold", "distance", "n_ref", "n_test")}
                    for t in drift.get("tests", [])]
            body += f"\nSimilarity to the source domain: {drift['similarity']:.3f}\n\n" + markdown_table(rows)
            if drift.get("per_class_distance"):
                plot_class_distances(drift["per_class_distance"], folder / "drift_per_class.png")
                body += "\n![per-class distance to the source profile](drift_per_class.png)\n"
        sections.append(("Drift", body))
    if report.history:
        plot_learning_curves(report.history, folder / "learning_curves.png")
        sections.append(("Learning curves", "![learning curves](learning_curves.png)\n\n" + markdown_table(report.history)))
    if report.benefit is not None:
        body = _benefit_section(report.benefit)
        if report.history and report.scratch_history:
            plot_transfer_benefit(report.history, report.scratch_history, folder / "transfer_benefit.png")
            body = "![transfer vs scratch validation accuracy](transfer_benefit.png)\n\n" + body
        sections.append(("Transfer benefit", body))
    if report.confusion is not None:
        plot_confusion(report.confusion, report.classes, folder / "confusion_matrix.png", "Held-out confusion matrix")
        sections.append(("Held-out evaluation", "![confusion matrix](confusion_matrix.png)"))
    if report.promotion:
        sections.append(("Promotion gates", report.promotion))
    if report.validation is not None:
        validation = Path(report.validation)
        body = json.loads(validation.read_text())
        rows = [{k: r[k] for k in ("table", "expectation", "column", "success", "unexpected")} |
                {"first offending": "; ".join(map(str, r["examples"][:3]))} for r in body["results"]]
        sections.append(("Data validation (Great Expectations)", markdown_table(rows) +
                         f"\nFull result: [{validation.name}]({validation.name})"))
        if validation.parent != folder:
            (folder / validation.name).write_text(validation.read_text())
    return write_report(folder / "report.md", f"transferops run {report.run_name}", sections)
