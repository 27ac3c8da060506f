"""The train flow: validate -> version -> drift -> strategy -> fine-tune -> evaluate -> register.

Validation runs on the incoming data *before* it becomes a version, so bad data
never reaches ``data.dvc``, the DVC remote or the registry.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run as prefect_flow_run
from pydantic import BaseModel, Field, model_validator

from flows.common import PreparedData, RunContext, open_run, prepare_data
from tasks import modeling, registry, versioning
from tasks.promotion_lock import promote_if_still_best
from tasks.tracking import FLOW_RUN_TAG, SUMMARY_ARTIFACT, tracked_run
from transferops.engine import checkpoint_key, example_images, input_example
from transferops.lineage import Lineage
from transferops.promotion import PromotionDecision, decide_promotion, gate_table
from transferops.report import RunReport
from transferops.slices import describe_slices, slice_metrics
from transferops.strategy import CHOICES
from transferops.training import resolve_device


class TrainParams(BaseModel):
    """Parameters of one training run."""

    source: str = Field(description="models:/NAME@ALIAS, BACKBONE:WEIGHTS (e.g. resnet50:IMAGENET1K_V2), a bundle folder, or a .pt file")
    data: str | None = Field(None, description="ImageFolder tree or manifest to ingest as a new data version")
    data_rev: str | None = Field(None, description="git revision of data.dvc to train on instead (default: the current one)")
    allow_class_change: bool = Field(False, description="accept data whose class set differs from the champion's")
    strategy: Literal[CHOICES] = "auto"  # type: ignore[valid-type]  (the core's names, one list)
    backbone: str | None = Field(None, description="architecture of a .pt source file")
    source_profile: str | None = Field(None, description=".npz of source reference embeddings, overriding the source's own")
    # None: TRANSFEROPS_PROJECT_DIR, else the working directory, so a worker on another machine
    # (the GPU pool) uses its own checkout of the project, not the path of whoever started the run.
    project_dir: str | None = None
    config_file: str | None = None
    epochs: int | None = Field(None, ge=1, description="overrides training.epochs")
    run_name: str | None = None
    trigger: dict[str, Any] | None = Field(None, description="set by the retrain flow ({} for one by hand): what "
                                           "started the retrain; the run is then tagged and traced as a retrain")

    @model_validator(mode="after")
    def _one_data(self) -> "TrainParams":
        if self.data and self.data_rev:
            raise ValueError("pass either data (a folder to ingest) or data_rev (an existing version), not both")
        return self


@flow(name="transferops-train", log_prints=True)
def train(params: TrainParams) -> dict:
    """Train a challenger from a source model and register it; move ``champion`` if it wins."""
    ctx = open_run(params.project_dir, params.config_file, params.run_name, "train", params.epochs)
    # 1-2. validate and version new data, or check out an existing version and validate it again
    data = prepare_data(ctx, source=params.data, rev=params.data_rev, allow_class_change=params.allow_class_change)
    if params.trigger is not None:  # a retrain handed to this deployment (the GPU pool)
        return train_version(ctx, data, params, "retrain", params.trigger)
    return train_version(ctx, data, params)


def train_version(ctx: RunContext, data: PreparedData, params: TrainParams, flow_name: str = "train",
                  trigger: dict[str, Any] | None = None) -> dict:
    """Steps 3-7 on a prepared data version: the body the train and retrain flows share.
    ``trigger`` (what started a retrain) goes into the run's tags and the version's lineage."""
    s = ctx.settings
    version, images = data.version, data.images
    tags = {"transferops.flow": flow_name, "transferops.data_rev": version.rev}
    if prefect_flow_run.id:  # how a retrain that handed training to another machine finds this run
        tags[FLOW_RUN_TAG] = prefect_flow_run.id
    tags |= {f"transferops.trigger.{k}": str(v)[:250] for k, v in (trigger or {}).items()}
    with tracked_run(s, ctx.run_name, tags) as run:
        # 3-4. drift against the source domain, then the reuse strategy
        src = modeling.resolve_source(s, params.source, params.backbone, params.source_profile)
        drift = modeling.measure_drift(s, src, images)
        choice = modeling.pick_strategy(s, params.strategy, src, images, drift)
        print(f"Strategy {choice.name}: {choice.reason}")
        run.log_params({"source": params.source, "backbone": src.backbone, "strategy": choice.name,
                        "strategy_requested": params.strategy, "data_rev": version.rev, "data_md5": version.md5,
                        "classes": ",".join(images.classes)} | {f"strategy.{k}": v for k, v in choice.params.items()})
        registry.log_data_inputs(s, run.run_id, target=version.target, rev=version.rev, md5=version.md5, images=images)
        run.log_json({"choice": choice.as_dict(), "drift": drift.as_dict()}, "decision/strategy.json")
        run.log_metrics({f"strategy_{k}": v for k, v in choice.evidence.items()}
                        | {"strategy_selection_seconds": choice.selection_seconds})
        if drift.report:
            run.log_metrics({f"drift_{r.test}_p_val": r.p_val for r in drift.report.results}
                            | {"source_similarity": drift.report.similarity})

        # 5-6. fine-tune, evaluate challenger and champion on the same held-out split, time the challenger
        key = checkpoint_key(version.md5, params.source, choice.name, choice.params, s.training.model_dump())
        trained = modeling.train_model(s, run, src, choice, images, key)
        metrics = modeling.evaluate_on_test(s, trained.model, src.weights, images)
        run.log_metrics(metrics, prefix="test_")
        run.log_metrics({f"test_recall_{_metric_key(c)}": r for c, r in metrics["per_class_recall"].items() if r is not None})
        example = input_example(src.weights, images)
        cost = modeling.measure_latency(trained.model, tuple(example.shape[1:]), resolve_device(s.training.device),
                                        repeats=s.promotion.latency_repeats)
        run.log_metrics(cost.metrics())
        baseline = modeling.scratch_baseline(s, src, choice, images, key, trained)
        if baseline.benefit:
            print(f"Transfer benefit: {baseline.benefit.sentence()}")
            run.log_metrics(baseline.benefit.metrics())
        champion = modeling.evaluate_champion(s, images)
        # a model trained on newer data may win on it while breaking what the champion did well
        earlier = modeling.evaluate_previous_data(s, ctx.root, trained.model, src.weights, champion.version, images,
                                                  version.rev)
        if earlier["slices"]:
            print(f"Previous and new data: {describe_slices(earlier['slices'])}")
            run.log_metrics(slice_metrics(earlier["slices"]))
        run.log_json(earlier, "decision/slices.json")

        # 7. register with lineage, decide (every gate), report, and only then move the aliases
        previous = modeling.drift_from_previous(s, champion.version, images)  # vs the champion's training data
        lineage = Lineage(role="target", data_rev=version.rev, data_md5=version.md5, backbone=src.backbone,
                          source=params.source, strategy=choice.name, strategy_reason=choice.reason,
                          strategy_params=choice.params,
                          git_sha=versioning.code_git_sha(), test_accuracy=metrics["accuracy"],
                          classes=tuple(images.classes), similarity=drift.similarity,
                          drift_p_val=drift.result.p_val if drift.result else None,
                          drift_note="" if drift.report else drift.reason, trigger=trigger,
                          # the test split scored above is this version's own: held-out data = training data's rev
                          heldout_rev=version.rev,
                          heldout_split=Lineage.held_out(images, s.data.val_fraction, s.data.test_fraction),
                          source_weights_sha256=modeling.source_weights_sha256(src), previous_drift=previous,
                          prefect_flow_run_id=str(prefect_flow_run.id or ""), source_version=src.version_uri or src.uri)
        tags = lineage.tags()
        bundle = modeling.export_bundle(s, trained.model, src, images, s.state_dir / "bundles" / run.run_id,
                                        {"lineage": tags, "test_metrics": {k: v for k, v in metrics.items() if k != "confusion"}})
        mv = registry.log_and_register(s, run.run_id, s.model_name, bundle, example_images(images), tags)
        decision = decide_promotion(metrics, champion.metrics, s.promotion, validation_ok=data.validated,
                                    lineage_missing=lineage.missing(), latency_ms=cost.latency_ms.get(1),
                                    version=mv.version)
        print(f"Promotion: {decision.reason}")
        registry.set_version_tags(s, s.model_name, mv.version, decision.tags())
        run.log_json(decision.as_dict() | {"champion_note": champion.note}, "decision/promotion.json")
        run.log_text(gate_table(decision), "decision/gates.md")
        summary = {
            "run_name": ctx.run_name, "run_id": run.run_id, "model": s.model_name, "version": mv.version,
            "promoted": decision.promote, "promotion_reason": decision.reason, "previous_champion": champion.version,
            "awaiting_approval": decision.awaiting_approval, "gates": [asdict(g) for g in decision.gates],
            "strategy": choice.name, "strategy_reason": choice.reason, "strategy_params": choice.params,
            "strategy_evidence": choice.evidence, "selection_seconds": choice.selection_seconds,
            "data_rev": version.rev, "data_md5": version.md5,
            "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"], "test_ece": metrics["ece"],
            "latency_ms_b1": cost.latency_ms.get(1), "model_params": cost.params,
            "champion_test_accuracy": champion.metrics["accuracy"] if champion.metrics else None,
            "similarity": drift.similarity,
            "drift_p_val": drift.result.p_val if drift.result else None, "drift_note": drift.reason,
            "epochs_run": (trained.fit.history[-1]["epoch"] + 1) if trained.fit.history else 0,
            "steps_run": trained.fit.steps, "trainable_params": trained.params["trainable"],
            "total_params": trained.params["total"],
            "transfer_benefit": baseline.benefit.as_dict() if baseline.benefit else None,
            "transfer_benefit_note": baseline.note,
            "slices": earlier["slices"], "slices_note": earlier["note"],
        }
        run.log_json(summary, SUMMARY_ARTIFACT)  # read back by a retrain that ran this flow elsewhere
        # the gates get their own table; slices read better as one sentence than as nested dicts
        facts = {k: v for k, v in summary.items() if k not in ("gates", "slices")}
        if earlier["slices"]:
            facts["slices"] = describe_slices(earlier["slices"])
        report = run.report(RunReport(ctx.run_name, facts, trained.fit.history, metrics["confusion"], images.classes,
                                      src.profile.embeddings if src.profile else None, drift.target_embeddings,
                                      drift.report.as_dict() if drift.report else None, data.validation_file,
                                      benefit=baseline.benefit, scratch_history=baseline.history,
                                      strategy={"name": choice.name, "reason": choice.reason} | choice.params
                                      | {f"evidence.{k}": v for k, v in choice.evidence.items()},
                                      promotion=gate_table(decision)))

        def rejudge(_now: str | None) -> PromotionDecision:  # another run moved champion: judge against it
            nonlocal champion
            champion = modeling.evaluate_champion(s, images)
            return decide_promotion(metrics, champion.metrics, s.promotion, validation_ok=data.validated,
                                    lineage_missing=lineage.missing(), latency_ms=cost.latency_ms.get(1),
                                    version=mv.version)

        final = promote_if_still_best(s, s.model_name, mv.version, decision, champion.version, rejudge)
        if final is not decision:  # the decision that was carried out is the one the run records
            print(f"Promotion, judged again (champion now: {champion.version or 'none'}): {final.reason}")
            summary |= {"promoted": final.promote, "promotion_reason": final.reason,
                        "previous_champion": champion.version, "awaiting_approval": final.awaiting_approval,
                        "gates": [asdict(g) for g in final.gates],
                        "champion_test_accuracy": champion.metrics["accuracy"] if champion.metrics else None}
            registry.set_version_tags(s, s.model_name, mv.version, final.tags())
            run.log_json(final.as_dict() | {"champion_note": champion.note}, "decision/promotion.json")
            run.log_text(gate_table(final), "decision/gates.md")
            run.log_json(summary, SUMMARY_ARTIFACT)
    return summary | {"report": str(report)}


def _metric_key(name: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, ``_-. /`` only)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


if __name__ == "__main__":
    import sys

    train(TrainParams(source=sys.argv[1], data=sys.argv[2] if len(sys.argv) > 2 else None))
