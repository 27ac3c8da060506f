"""A registered version's lineage read back, and what trained it re-materialised: the adapter
behind ``transferops lineage`` (plain functions, no Prefect).

It reads the version's tags and its MLflow run (``tasks/registry.py``), checks the data
version out through ``tasks/dvcstore.py`` and proves the copy is the one recorded by
recomputing DVC's own hash of it, and re-hashes the source weights as they resolve today.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import dvcstore, registry
from tasks.mlflow_errors import missing
from transferops.config import Settings
from transferops.errors import InputError, TransferopsError
from transferops.lineage import weights_sha256

CONFIG_ARTIFACT = "config/resolved_config.json"  # what tasks/registry.open_run logs with every run


@dataclass(frozen=True)
class VersionRecord(registry.RegisteredVersion):
    """A registered version with the tags and params of the MLflow run that made it."""

    run_tags: dict[str, str] = field(default_factory=dict)
    run_params: dict[str, str] = field(default_factory=dict)


def read_version(settings: Settings, name: str, version: str) -> VersionRecord:
    """Version ``version`` of ``name`` and its run; an InputError naming the versions there are."""
    from mlflow.exceptions import MlflowException

    versions = {v.version: v for v in registry.list_versions(settings, name)}
    if version not in versions:
        known = ", ".join(sorted(versions, key=int)) or "none"
        raise InputError(f"{name} has no version {version} in {settings.resolved_tracking_uri} (versions: {known}); "
                         "see `transferops status`")
    v = versions[version]
    try:
        run = registry.client(settings).get_run(v.run_id)
        run_tags, run_params = dict(run.data.tags), dict(run.data.params)
    except MlflowException as exc:  # the run was deleted: the version's own tags still tell most of it
        if not missing(exc):
            raise
        run_tags, run_params = {}, {}
    return VersionRecord(v.name, v.version, v.run_id, v.aliases, dict(v.tags), run_tags, run_params)


def resolved_config(settings: Settings, run_id: str) -> dict[str, Any]:
    """The resolved settings the run logged (``config/resolved_config.json``)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = registry.client(settings).download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception as exc:  # noqa: BLE001  (MlflowException or OSError, depending on the store)
            raise InputError(f"MLflow run {run_id} has no {CONFIG_ARTIFACT} ({type(exc).__name__}); its artifacts "
                             f"are gone from {settings.resolved_tracking_uri}'s artifact store") from None
        return json.loads(Path(local).read_text())


def dvc_md5(path: Path) -> str:
    """DVC's hash of a folder (``<md5>.dir``), computed as ``dvc add`` would, writing nothing."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    _, _, obj = build(HashFileDB(MemoryFileSystem(), "/odb"), str(path), LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)


def checkout_data(settings: Settings, rev: str, md5: str | None, dest: Path) -> dvcstore.DataVersion:
    """Data version ``rev`` copied into ``dest`` (from the DVC cache, else the remote) and proven to be
    the recorded one: DVC's hash of the copy must equal ``md5`` (None: what ``data.dvc`` records at
    ``rev``). One-line errors name the fix."""
    from transferops.store import verify

    root = settings.project_dir
    if dest.exists():
        raise InputError(f"{dest} exists; pass a --to folder without data/ in it")
    try:
        v = dvcstore.checkout_version(root, rev, dest)
    except TransferopsError:
        raise
    except Exception as exc:  # noqa: BLE001  (DVC says "missing" with FileNotFoundError or its own index errors)
        raise dvcstore.VersioningError(
            f"data version {rev[:12]} ({md5 or 'data.dvc'}) is neither in the DVC cache of {root} nor on its remote "
            f"{settings.resolved_dvc_remote} ({type(exc).__name__}: {exc}); run `dvc push` in a clone that has it, "
            "or set TRANSFEROPS_DVC_REMOTE_URL to the remote that holds it") from None
    if Path(v.path).resolve() != dest.resolve():  # the version checked out in the project: copied, not fetched
        shutil.copytree(v.path, dest)
        verify(dest)
    actual, md5 = dvc_md5(dest), md5 or v.md5
    if actual != md5:
        raise dvcstore.VersioningError(f"data version {rev[:12]} checked out into {dest} hashes to {actual}, not the "
                                       f"recorded {md5}; the version's data.dvc was rewritten after training")
    return v


def check_source(settings: Settings, source: str, backbone: str | None, recorded: str | None) -> dict[str, Any]:
    """Resolve ``source`` as a re-run would today and compare its weights' sha256 with ``recorded``."""
    from tasks.sources import open_source

    try:
        src = open_source(settings, source, backbone)
    except TransferopsError as exc:
        return {"matches": None, "sha256": None, "note": f"the source does not open here: {exc}"}
    now = weights_sha256(src.weights.url)
    if recorded is None:
        return {"matches": None, "sha256": now, "note": "the version does not record its source weights hash"}
    note = ("the source resolves to the weights the run started from" if now == recorded else
            "the source now resolves to other weights than the run started from: the re-run would not be exact"
            + ("; pass the source version that held the alias then (`transferops history`)" if "@" in source else ""))
    return {"matches": now == recorded, "sha256": now, "note": note}
