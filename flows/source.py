"""The source flow: develop a source model on a large source dataset and register it.

"Develop a source model" transfer: train a backbone on plenty of source-domain
data, store it as a bundle with its source profile (reference embeddings), and
register it under ``source_model_name`` with alias ``champion``. Target runs then
reuse it with ``--source models:/transferops-source@champion``.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from flows.common import open_run, prepare_data
from tasks import modeling, registry, versioning
from tasks.tracking import tracked_run
from transferops.engine import checkpoint_key, example_images
from transferops.lineage import Lineage
from transferops.report import RunReport
from transferops.strategy import StrategyChoice, strategy_params


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
    ctx = open_run(params.project_dir, params.config_file, params.run_name, "source", params.epochs)
    s = ctx.settings
    # a source dataset is a snapshot: replace, so its class set is its own
    data = prepare_data(ctx, source=params.data, target="source-data", replace=True,
                        message=f"source data from {params.data}")
    version, images = data.version, data.images
    with tracked_run(s, ctx.run_name, {"transferops.flow": "source", "transferops.data_rev": version.rev}) as run:
        src = modeling.scratch_source(images, params.backbone, params.image_size)
        choice = StrategyChoice("scratch", "a source model is developed from scratch on plenty of source data.",
                                strategy_params("scratch", s))
        run.log_params({"backbone": params.backbone, "image_size": params.image_size,
                        "data_rev": version.rev, "data_md5": version.md5})
        key = checkpoint_key("source", version.md5, params.backbone, params.image_size, s.training.model_dump())
        trained = modeling.train_model(s, run, src, choice, images, key)
        metrics = modeling.evaluate_on_test(s, trained.model, src.weights, images)
        run.log_metrics(metrics, prefix="test_")
        tags = Lineage(role="source", data_rev=version.rev, data_md5=version.md5, backbone=params.backbone,
                       source=src.uri, strategy="scratch", strategy_reason=choice.reason,
                       git_sha=versioning.code_git_sha(), test_accuracy=metrics["accuracy"],
                       classes=tuple(images.classes), drift_note="source model: no drift test").tags()
        bundle = modeling.export_bundle(s, trained.model, src, images, s.state_dir / "bundles" / run.run_id,
                                        {"lineage": tags, "role": "source"}, shift_panel=False)
        mv = registry.log_and_register(s, run.run_id, s.source_model_name, bundle, example_images(images), tags)
        summary = {"run_name": ctx.run_name, "run_id": run.run_id, "model": s.source_model_name, "version": mv.version,
                   "uri": f"models:/{s.source_model_name}@champion", "backbone": params.backbone,
                   "data_rev": version.rev, "test_accuracy": metrics["accuracy"],
                   "epochs_run": (trained.fit.history[-1]["epoch"] + 1) if trained.fit.history else 0,
                   "steps_run": trained.fit.steps}
        report = run.report(RunReport(ctx.run_name, summary, trained.fit.history, metrics["confusion"], images.classes,
                                      validation=data.validation_file))
        # A deliberately developed source replaces the previous one.
        registry.set_alias(s, s.source_model_name, registry.CHAMPION, mv.version)
    return summary | {"report": str(report)}


if __name__ == "__main__":
    import sys

    develop_source(SourceParams(data=sys.argv[1]))
