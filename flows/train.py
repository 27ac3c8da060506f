"""The train flow: validate -> version -> drift -> strategy -> fine-tune -> evaluate -> register.

Validation runs on the incoming data *before* it becomes a version, so bad data
never reaches ``data.dvc``, the DVC remote or the registry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field, model_validator

from flows.data import DataParams, add_data
from tasks import modeling, registry, reporting, versioning
from tasks.validation import DataValidationError, load_dataset, validate_dataset
from transferops.config import load_settings
from transferops.promotion import decide_promotion


class TrainParams(BaseModel):
    """Parameters of one training run."""

    source: str = Field(description="models:/NAME@ALIAS, BACKBONE:WEIGHTS (e.g. resnet50:IMAGENET1K_V2), a bundle folder, or a .pt file")
    data: str | None = Field(None, description="ImageFolder tree or manifest to ingest as a new data version")
    data_rev: str | None = Field(None, description="git revision of data.dvc to train on instead (default: the current one)")
    allow_class_change: bool = Field(False, description="accept data whose class set differs from the champion's")
    strategy: Literal["auto", "feature_extraction", "partial_finetune", "full_finetune", "scratch"] = "auto"
    backbone: str | None = Field(None, description="architecture of a .pt source file")
    source_profile: str | None = Field(None, description=".npz of source reference embeddings, overriding the source's own")
    project_dir: str = "."
    config_file: str | None = None
    epochs: int | None = Field(None, ge=1, description="overrides training.epochs")
    run_name: str | None = None

    @model_validator(mode="after")
    def _one_data(self) -> "TrainParams":
        if self.data and self.data_rev:
            raise ValueError("pass either data (a folder to ingest) or data_rev (an existing version), not both")
        return self


@flow(name="transferops-train", log_prints=True)
def train(params: TrainParams) -> dict:
    """Train a challenger from a source model and register it; move ``champion`` if it wins."""
    settings = load_settings(params.project_dir, params.config_file)
    if params.epochs:
        settings.training.epochs = params.epochs
    root = versioning.prepare_project(settings.project_dir, settings.resolved_dvc_remote,
                                         settings.dvc_remote_endpoint)
    run_name = params.run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    dcfg = settings.data

    # 1-2. validate and version new data (the data flow), or check out an existing version
    if params.data:
        added = add_data(DataParams(source=params.data, allow_class_change=params.allow_class_change,
                                    project_dir=str(settings.project_dir), config_file=params.config_file,
                                    run_name=run_name))
        rev = added["rev"]
    else:
        rev = params.data_rev or versioning.current_version(root).rev
    version = versioning.checkout_version(root, rev, settings.state_dir / "datasets" / rev)
    images = load_dataset(Path(version.path), dcfg.val_fraction, dcfg.test_fraction)
    validation_file = settings.reports_dir / run_name / "validation.json"
    if not params.data:  # an existing version is validated again: rules may have changed since
        try:
            validate_dataset(images, dcfg).write(validation_file)
        except DataValidationError as exc:
            reporting.record_validation_failure(settings, run_name, exc)
            raise

    run_id = registry.start_run(settings, run_name, {"transferops.flow": "train", "transferops.data_rev": version.rev})
    try:
        # 3-4. drift against the source domain, then the reuse strategy
        src = modeling.resolve_source(settings, params.source, params.backbone, params.source_profile)
        drift = modeling.measure_drift(settings, src, images)
        choice = modeling.pick_strategy(settings, params.strategy, src, images, drift)
        print(f"Strategy {choice.name}: {choice.reason}")
        registry.log_params(settings, run_id, {
            "source": params.source, "backbone": src.backbone, "strategy": choice.name, "data_rev": version.rev,
            "data_md5": version.md5, "classes": ",".join(images.classes), **{f"training.{k}": v for k, v in settings.training.model_dump().items()}})
        registry.log_json(settings, run_id, {"choice": choice.as_dict(), "drift": drift.as_dict()}, "decision/strategy.json")
        if drift.report:
            registry.log_metrics(settings, run_id, {f"drift_{r.test}_p_val": r.p_val for r in drift.report.results}
                                 | {"source_similarity": drift.report.similarity})

        # 5-6. fine-tune, evaluate challenger and champion on the same held-out split
        key = modeling.checkpoint_key(version.md5, params.source, choice.as_dict(), settings.training.model_dump())
        trained = modeling.train_model(settings, run_id, src, choice, images, key)
        metrics = modeling.evaluate_on_test(settings, trained.model, src.weights, images)
        registry.log_metrics(settings, run_id, {f"test_{k}": v for k, v in metrics.items() if k != "confusion"})
        champ_metrics, champ_version, champ_note = modeling.evaluate_champion(settings, images)
        decision = decide_promotion(metrics, champ_metrics, settings.promotion)

        # 7. register with lineage, then move aliases
        tags = registry.lineage_tags(version, choice, drift, src.backbone, params.source, metrics, images.classes)
        bundle = modeling.export_bundle(settings, trained.model, src, images, settings.state_dir / "bundles" / run_id,
                                        {"lineage": tags, "test_metrics": {k: v for k, v in metrics.items() if k != "confusion"}})
        example = modeling.input_example(src.weights, images)
        mv = registry.log_and_register(settings, run_id, settings.model_name, trained.model, bundle, example, tags)
        registry.set_alias(settings, settings.model_name, registry.CHALLENGER, mv.version)
        if decision.promote:
            registry.set_alias(settings, settings.model_name, registry.CHAMPION, mv.version)
        registry.log_json(settings, run_id, decision.as_dict() | {"champion_note": champ_note}, "decision/promotion.json")

        summary = {
            "run_name": run_name, "run_id": run_id, "model": settings.model_name, "version": mv.version,
            "promoted": decision.promote, "promotion_reason": decision.reason, "previous_champion": champ_version,
            "strategy": choice.name, "strategy_reason": choice.reason, "data_rev": version.rev, "data_md5": version.md5,
            "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
            "champion_test_accuracy": champ_metrics["accuracy"] if champ_metrics else None,
            "similarity": drift.similarity,
            "drift_p_val": drift.result.p_val if drift.result else None, "drift_note": drift.reason,
            "epochs_run": len(trained.fit.history), "trainable_params": trained.params["trainable"],
            "total_params": trained.params["total"],
        }
        report = reporting.write_run_report(settings, run_id, run_name, summary, trained.fit.history, metrics["confusion"],
                                            images.classes, src.profile.embeddings if src.profile else None,
                                            drift.target_embeddings, validation_file,
                                            drift.report.as_dict() if drift.report else None)
        registry.end_run(settings, run_id, "FINISHED")
    except BaseException:
        registry.end_run(settings, run_id, "FAILED")
        raise
    return summary | {"report": str(report)}


if __name__ == "__main__":
    import sys

    train(TrainParams(source=sys.argv[1], data=sys.argv[2] if len(sys.argv) > 2 else None))
