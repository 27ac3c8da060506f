"""Prefect tasks around the core's sources, drift assessment, strategy and training engine.

Each task is the core function as it is, made a task for the flow's run graph; retries
only where there is IO (the registry). The logic lives in ``transferops.sources``,
``transferops.assessment``, ``transferops.engine`` and ``transferops.lineage``, where the tests call it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry, runners, sources
from tasks.tracking import TrackedRun
from transferops import assessment, engine, lineage
from transferops import sources as core_sources
from transferops.config import Settings
from transferops.data import ImageSet
from transferops.engine import ChampionEvaluation, Trained
from transferops.models import load_bundle
from transferops.sources import SourceModel
from transferops.strategy import StrategyChoice

# Settings, models and datasets are not hashable inputs: no result caching anywhere here.
resolve_source = task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)(sources.open_source)
scratch_source = task(cache_policy=NO_CACHE)(core_sources.scratch_source)
measure_drift = task(cache_policy=NO_CACHE)(assessment.measure_drift)
evaluate_on_test = task(cache_policy=NO_CACHE)(engine.evaluate_on_test)
measure_latency = task(cache_policy=NO_CACHE)(engine.measure_latency)
export_bundle = task(cache_policy=NO_CACHE)(engine.export_bundle)


@task(cache_policy=NO_CACHE)
def pick_strategy(settings: Settings, requested: str, src: SourceModel, images: ImageSet,
                  drift: assessment.DriftOutcome) -> StrategyChoice:
    """The core's strategy choice; a search runs its trials where ``settings.execution`` says
    (one after another here, or as task runs on a Dask cluster: ``tasks/runners.py``)."""
    if requested != "search":
        return assessment.pick_strategy(settings, requested, src, images, drift)
    with runners.trial_map(settings.execution) as map_trials:
        return assessment.pick_strategy(settings, requested, src, images, drift, map_trials)


@task(cache_policy=NO_CACHE)
def train_model(settings: Settings, run: TrackedRun, src: SourceModel, choice: StrategyChoice, images: ImageSet,
                key: str) -> Trained:
    """Fit the model the strategy asks for, logging each epoch to the run; resumes from ``key``'s checkpoint."""
    return engine.train_model(settings, src, choice, images, settings.checkpoints_dir / f"{key}.pt",
                              on_epoch=run.epoch_logger())


@task(cache_policy=NO_CACHE)
def scratch_baseline(settings: Settings, src: SourceModel, choice: StrategyChoice, images: ImageSet,
                     key: str, trained: Trained) -> engine.Baseline:
    """The same-budget scratch run the transfer-benefit report compares with (or why there is none)."""
    return engine.scratch_baseline(settings, src, choice, images, settings.checkpoints_dir / f"{key}-scratch.pt",
                                   trained.fit)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def evaluate_champion(settings: Settings, images: ImageSet) -> ChampionEvaluation:
    """The registered champion's metrics on the same test split (fetched from the registry)."""
    mv = registry.alias_version(settings, settings.model_name, registry.CHAMPION)
    if mv is None:
        return engine.evaluate_champion(settings, None, None, images)
    dest = settings.state_dir / "champions" / f"v{mv.version}"
    folder = registry.fetch_bundle(settings, f"models:/{settings.model_name}/{mv.version}", dest)
    return engine.evaluate_champion(settings, load_bundle(folder), mv.version, images)


@task(cache_policy=NO_CACHE)
def source_weights_sha256(src: SourceModel) -> str:
    """sha256 of the weights file the source was opened from ("" when it has none)."""
    return lineage.weights_sha256(src.weights.url) or ""


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def drift_from_previous(settings: Settings, champion_version: str | None, images: ImageSet) -> dict:
    """The new train split against the training data of champion ``champion_version`` (None: there is none)."""
    if champion_version is None:
        return lineage.drift_from_previous(settings, None, None, images)
    dest = settings.state_dir / "champions" / f"v{champion_version}"
    folder = registry.fetch_bundle(settings, f"models:/{settings.model_name}/{champion_version}", dest)
    return lineage.drift_from_previous(settings, load_bundle(folder), champion_version, images)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def evaluate_previous_data(settings: Settings, root: Path, model: Any, weights: Any, champion_version: str | None,
                           images: ImageSet, rev: str) -> dict[str, Any]:
    """Challenger and champion on the champion's own test data and on this version's new test
    images (``transferops.slices``), when the champion was trained on another data version.

    Returns ``{"note": why or what, "slices": {name: metrics of both}}``; no slices when there is
    no champion, it saw this very version, or it left no data revision.
    """
    from tasks import dvcstore
    from tasks.checks import load_dataset
    from transferops.slices import evaluation_slices

    if champion_version is None:
        return {"note": "no champion yet", "slices": {}}
    name = settings.model_name
    before = registry.client(settings).get_model_version(name, champion_version).tags.get(f"{registry.LINEAGE_PREFIX}data_rev")
    if not before:
        return {"note": f"champion v{champion_version} records no data revision", "slices": {}}
    if before == rev:
        return {"note": f"champion v{champion_version} was trained on this data version: its test split is the "
                        "previous test data", "slices": {}}
    old = dvcstore.checkout_version(root, before, settings.state_dir / "datasets" / before)
    previous = load_dataset(Path(old.path), settings.data.val_fraction, settings.data.test_fraction)
    slices, note = evaluation_slices(images, previous, before)
    folder = registry.fetch_bundle(settings, f"models:/{name}/{champion_version}",
                                   settings.state_dir / "champions" / f"v{champion_version}")
    return {"note": note, "slices": engine.evaluate_slices(settings, model, weights, load_bundle(folder), slices)}
