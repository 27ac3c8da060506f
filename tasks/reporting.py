"""Run reports: plots and Markdown in ``reports/<run>/``, mirrored to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry
from transferops.config import Settings
from transferops.report import (markdown_table, plot_class_distances, plot_confusion, plot_embeddings,
                                plot_learning_curves, write_report)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def write_run_report(settings: Settings, run_id: str, run_name: str, facts: dict[str, Any],
                     history: list[dict[str, Any]], confusion: list[list[int]] | None, classes: list[str],
                     reference: np.ndarray | None, target: np.ndarray | None, validation: Path | None,
                     drift: dict[str, Any] | None = None) -> Path:
    """Plot, write ``report.md`` and log the folder as the run's ``report`` artifact."""
    folder = settings.reports_dir / run_name
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str]] = [("Summary", markdown_table([{"field": k, "value": v} for k, v in facts.items()]))]
    if reference is not None and target is not None and len(reference) and len(target):
        plot_embeddings(reference, target, folder / "drift_embeddings.png", "Source profile vs target (PCA)")
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
    if history:
        plot_learning_curves(history, folder / "learning_curves.png")
        sections.append(("Learning curves", "![learning curves](learning_curves.png)\n\n" + markdown_table(history)))
    if confusion is not None:
        plot_confusion(confusion, classes, folder / "confusion_matrix.png", "Held-out confusion matrix")
        sections.append(("Held-out evaluation", "![confusion matrix](confusion_matrix.png)"))
    if validation is not None:
        body = json.loads(Path(validation).read_text())
        rows = [{k: r[k] for k in ("table", "expectation", "column", "success", "unexpected")} |
                {"first offending": "; ".join(map(str, r["examples"][:3]))} for r in body["results"]]
        sections.append(("Data validation (Great Expectations)", markdown_table(rows) +
                         f"\nFull result: [{Path(validation).name}]({Path(validation).name})"))
        if Path(validation).parent != folder:
            (folder / Path(validation).name).write_text(Path(validation).read_text())
    path = write_report(folder / "report.md", f"transferops run {run_name}", sections)
    registry.log_artifacts(settings, run_id, [p for p in folder.iterdir()], "report")
    return path


def record_validation_failure(settings: Settings, run_name: str, exc: Any) -> Path:
    """Keep a failed validation visible: the GX result in reports/ and in a FAILED MLflow run.

    Nothing is versioned or registered; returns the report path.
    """
    path = exc.report.write(settings.reports_dir / run_name / "validation.json")
    run_id = registry.start_run.fn(settings, run_name, {"transferops.flow": "data", "transferops.status": "failed_validation"})
    # .fn: this also runs on the CLI's direct path, outside any flow and without the Prefect API
    report = write_run_report.fn(settings, run_id, run_name, {"status": "failed validation",
                                                              "error": str(exc).splitlines()[0]},
                                 [], None, [], None, None, path)
    registry.end_run(settings, run_id, "FAILED")
    return report
