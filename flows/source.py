"""The source flow: develop a source model on a large source dataset and register it.

"Develop a source model" transfer: train a backbone on plenty of source-domain
data, store it as a bundle with its source profile (reference embeddings), and
register it under ``source_model_name`` with alias ``champion``. Target runs then
reuse it with ``--source models:/transferops-source@champion``.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from pydantic import BaseModel, Field

from flows.data import DataParams, add_data
from tasks import modeling, registry, reporting, versioning
from tasks.validation import load_dataset
from transferops.config import load_settings


class SourceParams(BaseModel):
    """Parameters of one source-model development run."""

    data: str = Field(description="ImageFolder tree or manifest of the source domain")
    backbone: str = "resnet18"
    image_size: int = Field(32, ge=8, description="side of the square input the source model is trained at")
    project_dir: str = "."
    config_file: str | None = None
    epochs: int | None = Field(None, ge=1)
    run_name: str | None = None


@flow(name="transferops-source", log_prints=True)
def develop_source(params: SourceParams) -> dict:
    """Train a source model from scratch, profile it, register it as the source champion."""
    settings = load_settings(params.project_dir, params.config_file)
    if params.epochs:
        settings.training.epochs = params.epochs
    root = versioning.prepare_project(settings.project_dir, settings.resolved_dvc_remote,
                                         settings.dvc_remote_endpoint)
    run_name = params.run_name or f"source-{time.strftime('%Y%m%d-%H%M%S')}"
    dcfg = settings.data
    # a source dataset is a snapshot: replace, so its class set is its own
    added = add_data(DataParams(source=params.data, target="source-data", replace=True,
                                message=f"source data from {params.data}", project_dir=str(settings.project_dir),
                                config_file=params.config_file, run_name=run_name))
    version = versioning.checkout_version(root, added["rev"], settings.state_dir / "datasets" / added["rev"], "source-data")
    images = load_dataset(Path(version.path), dcfg.val_fraction, dcfg.test_fraction)
    validation_file = Path(added["validation"])

    run_id = registry.start_run(settings, run_name, {"transferops.flow": "source", "transferops.data_rev": version.rev})
    try:
        src = modeling.scratch_source(images, params.backbone, params.image_size)
        choice = modeling.pick_strategy(settings, "scratch", src, images, modeling.DriftOutcome(None, "source model: no drift test"))
        registry.log_params(settings, run_id, {"backbone": params.backbone, "image_size": params.image_size,
                                               "data_rev": version.rev, "data_md5": version.md5,
                                               **{f"training.{k}": v for k, v in settings.training.model_dump().items()}})
        key = modeling.checkpoint_key("source", version.md5, params.backbone, params.image_size, settings.training.model_dump())
        trained = modeling.train_model(settings, run_id, src, choice, images, key)
        metrics = modeling.evaluate_on_test(settings, trained.model, src.weights, images)
        registry.log_metrics(settings, run_id, {f"test_{k}": v for k, v in metrics.items() if k != "confusion"})
        tags = {"transferops.role": "source", "transferops.data_rev": version.rev, "transferops.data_md5": version.md5,
                "transferops.backbone": params.backbone, "transferops.strategy": "scratch",
                "transferops.git_sha": versioning.code_git_sha(), "transferops.test_accuracy": f"{metrics['accuracy']:.6f}"}
        bundle = modeling.export_bundle(settings, trained.model, src, images, settings.state_dir / "bundles" / run_id,
                                        {"lineage": tags, "role": "source"})
        example = modeling.input_example(src.weights, images)
        mv = registry.log_and_register(settings, run_id, settings.source_model_name, trained.model, bundle, example, tags)
        # A deliberately developed source replaces the previous one.
        registry.set_alias(settings, settings.source_model_name, registry.CHAMPION, mv.version)
        summary = {"run_name": run_name, "run_id": run_id, "model": settings.source_model_name, "version": mv.version,
                   "uri": f"models:/{settings.source_model_name}@champion", "backbone": params.backbone,
                   "data_rev": version.rev, "test_accuracy": metrics["accuracy"], "epochs_run": len(trained.fit.history)}
        report = reporting.write_run_report(settings, run_id, run_name, summary, trained.fit.history, metrics["confusion"],
                                            images.classes, None, None, validation_file)
        registry.end_run(settings, run_id, "FINISHED")
    except BaseException:
        registry.end_run(settings, run_id, "FAILED")
        raise
    return summary | {"report": str(report)}


if __name__ == "__main__":
    import sys

    develop_source(SourceParams(data=sys.argv[1]))
