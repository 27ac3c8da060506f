"""MLflow tracking and Model Registry: the only adapter to MLflow.

Every call names its run id explicitly (``MlflowClient``), so nothing depends on
MLflow's thread-local active run while Prefect moves work between threads.
Registry state moves through aliases (``champion``, ``challenger``), never stages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tasks.mlflow_errors import RegistryError, apply_http_limits, guarded, missing
from transferops.config import Settings
from transferops.offline import apply_offline_defaults

apply_offline_defaults()
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_PREFIX = "transferops."


def client(settings: Settings):
    """An MlflowClient on the configured tracking/registry URI (sqlite in the project by default)."""
    import mlflow
    from mlflow import MlflowClient

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    apply_http_limits(settings)  # a bounded wait for an unreachable server, not MLflow's 4 minutes a call
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_tracking_uri)
    return MlflowClient(settings.resolved_tracking_uri, settings.resolved_tracking_uri)


def experiment_id(settings: Settings) -> str:
    """The project's experiment; on the embedded store its artifacts live in the project folder.

    Against a tracking server the server decides (``--artifacts-destination``), so that
    every worker can load what another one logged.
    """
    c = client(settings)
    exp = c.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    local = settings.resolved_tracking_uri.startswith(("sqlite:", "file:", "/"))
    return c.create_experiment(settings.experiment, artifact_location=settings.artifact_location if local else None)


@guarded
def open_run(settings: Settings, run_name: str, tags: dict[str, str]) -> str:
    """Open a run and log the resolved configuration with it."""
    c = client(settings)
    run = c.create_run(experiment_id(settings), run_name=run_name, tags=tags)
    c.log_dict(run.info.run_id, settings.public_dict(), "config/resolved_config.json")
    return run.info.run_id


start_run = task(retries=2, retry_delay_seconds=2)(open_run)


@guarded
def log_params(settings: Settings, run_id: str, params: dict[str, Any]) -> None:
    """Log flat params (values stringified and truncated to MLflow's limit)."""
    from mlflow.entities import Param

    c = client(settings)
    c.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


@guarded
def log_metrics(settings: Settings, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics at ``step``."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])


@guarded
def log_artifacts(settings: Settings, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Upload files or folders under ``artifact_path`` of the run."""
    c = client(settings)
    for p in paths:
        if Path(p).is_dir():
            c.log_artifacts(run_id, str(p), f"{artifact_path}/{Path(p).name}")
        else:
            c.log_artifact(run_id, str(p), artifact_path)


@guarded
def log_json(settings: Settings, run_id: str, obj: Any, artifact_file: str) -> None:
    """Log ``obj`` as a JSON artifact (anything JSON cannot hold written as its string)."""
    client(settings).log_dict(run_id, json.loads(json.dumps(obj, default=str)), artifact_file)


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """Close the run as FINISHED or FAILED."""
    client(settings).set_terminated(run_id, status)


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version and the aliases it holds."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


@task(retries=2, retry_delay_seconds=2)
@guarded
def log_and_register(settings: Settings, run_id: str, name: str, bundle_dir: Path, example_images: list[bytes],
                     tags: dict[str, str]) -> RegisteredVersion:
    """Log the bundle with the run, log it as the run's served model (an MLflow 3 logged pyfunc:
    image bytes in, class names and probabilities out), then register a version of it.

    Called only after evaluation succeeded, so a failed run never registers anything; safe to
    retry (``tasks/served_model.py``): a retried task finds the run's model and version again.
    """
    from tasks import served_model

    c = client(settings)
    c.log_artifacts(run_id, str(bundle_dir), "bundle")
    model_id = served_model.log_served_model(settings, run_id, Path(bundle_dir), example_images)
    return served_model.register(settings, run_id, name, model_id, tags)


@guarded
def set_alias(settings: Settings, name: str, alias: str, version: str, *, by: str | None = None,
              reason: str | None = None, kind: str | None = None):
    """Point ``alias`` at ``version`` and append the move to the alias history (``tasks/history.py``);
    returns the move, or None when ``alias`` already points there (a retried task moves nothing twice).

    ``by`` defaults to the flow's MLflow run (``run:<id>``), else the user (``user:<name>``); ``kind``
    to ``promote`` for champion and ``challenger`` for challenger. MLflow sets an alias as an upsert
    with no compare-and-set: the ``from`` recorded is the holder read just before.
    """
    from tasks import history

    current = alias_version(settings, name, alias)
    if current is not None and current.version == str(version):
        return None
    client(settings).set_registered_model_alias(name, alias, str(version))
    return history.record_move(settings, name, alias, current.version if current else None, str(version),
                               by=by, reason=reason, kind=kind)


def alias_version(settings: Settings, name: str, alias: str):
    """The version holding ``alias``, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        v = client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if missing(exc, "INVALID_PARAMETER_VALUE"):  # no such model, or no such alias
            return None
        raise
    return RegisteredVersion(v.name, str(v.version), v.run_id, tuple(v.aliases or ()), dict(v.tags))


def list_versions(settings: Settings, name: str) -> list[RegisteredVersion]:
    """Every version of ``name``, newest first, with aliases and tags."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        # search results carry no aliases; the registered model has the alias map
        alias_map = c.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if missing(exc):
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in alias_map.items():
        by_version.setdefault(str(version), []).append(alias)
    out = [RegisteredVersion(v.name, str(v.version), v.run_id, tuple(sorted(by_version.get(str(v.version), []))),
                             dict(v.tags)) for v in c.search_model_versions(f"name='{name}'")]
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"'{uri}' is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise RegistryError(f"'{uri}' names no alias or version; use models:/{rest}@champion or models:/{rest}/1")


@guarded
def fetch_bundle(settings: Settings, uri: str, dest: Path) -> Path:
    """Fetch the bundle folder of a registered version into ``dest``; returns the folder."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    c = client(settings)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException as exc:
        if not missing(exc, "INVALID_PARAMETER_VALUE"):
            raise
        known = ", ".join(sorted({m.name for m in c.search_registered_models()})) or "none"
        raise RegistryError(f"{uri} is not in the registry at {settings.resolved_tracking_uri} (registered models: {known})") from None
    dest.mkdir(parents=True, exist_ok=True)
    local = c.download_artifacts(mv.run_id, "bundle", str(dest))
    return Path(local)



# Registered-model tag values are capped at 5,000 characters by MLflow's stores.
TAG_LIMIT = 5000


@guarded
def set_model_tag(settings: Settings, name: str, key: str, value: Any) -> None:
    """Set a tag on the registered model (JSON for anything but a string), refusing values over
    MLflow's cap instead of letting the store cut them."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if len(text) > TAG_LIMIT:
        raise RegistryError(f"tag {key} of {name} would hold {len(text)} characters (MLflow keeps {TAG_LIMIT}); "
                            "store less in it")
    c = client(settings)
    ensure_registered(c, name)  # a first retrain with an explicit source tags a model no run has registered yet
    c.set_registered_model_tag(name, key, text)


def ensure_registered(c: Any, name: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return
    except MlflowException as exc:
        if not missing(exc):
            raise
    try:  # not found: the first version of this name
        c.create_registered_model(name, description="Registered by transferops; load with models:/NAME@champion")
    except MlflowException as exc:
        # RESOURCE_ALREADY_EXISTS: another run created it between the two calls, as we wanted
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise


def model_tags(settings: Settings, name: str) -> dict[str, str]:
    """The registered model's tags, or {} when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client(settings).get_registered_model(name).tags or {})
    except MlflowException as exc:
        if missing(exc):
            return {}
        raise


# Model-version tag values: MLflow's stores keep 5,000 characters.
VERSION_TAG_LIMIT = 5000


@guarded
def set_version_tags(settings: Settings, name: str, version: str, tags: dict[str, Any]) -> None:
    """Set tags on model version ``version`` of ``name`` (JSON for anything but a string), refusing
    values over MLflow's cap instead of letting the store cut them."""
    texts = {k: v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":")) for k, v in tags.items()}
    for key, text in texts.items():
        if len(text) > VERSION_TAG_LIMIT:
            raise RegistryError(f"tag {key} of {name} v{version} would hold {len(text)} characters "
                                f"(MLflow keeps {VERSION_TAG_LIMIT}); store less in it")
    c = client(settings)
    for key, text in texts.items():
        c.set_model_version_tag(name, str(version), key, text)


@guarded
def log_data_inputs(settings: Settings, run_id: str, *, target: str, rev: str, md5: str, images: Any,
                    splits: tuple[str, ...] = ("train", "test")) -> None:
    """Record the run's data version as MLflow dataset inputs whose source is the DVC version
    (git revision of ``<target>.dvc``, DVC hash, remote), one per split with its context
    (``training``, ``evaluation``), so the MLflow UI links the run and its model to the data."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps({"dvc_file": f"{target}.dvc", "rev": rev, "md5": md5, "remote": settings.public_dict()["dvc_remote_url"]},
                        sort_keys=True)
    counts = images.counts()
    inputs = []
    for split in splits:
        ds = Dataset(name=f"{target}@{rev[:12]}:{split}", digest=images.split_digest(split)[:36], source_type="dvc",
                     source=source, schema=json.dumps({"classes": list(images.classes)}),
                     profile=json.dumps({"images": sum(counts.get(split, {}).values()), "per_class": counts.get(split, {})}))
        context = {"train": "training", "test": "evaluation"}.get(split, split)
        inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)]))
    client(settings).log_inputs(run_id, datasets=inputs)
