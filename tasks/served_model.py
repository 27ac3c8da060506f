"""Log a trained bundle as an MLflow 3 logged model and register it, idempotently.

The model is a pyfunc (``tasks/served_pyfunc.py``, "models from code") that answers image
bytes with class names and probabilities; class names, backbone and preprocessing travel in
its MLmodel metadata and its bundle artifact (weights.pt + meta.json). Nothing is pickled:
``mlflow.pytorch.log_model`` would pickle the whole module, and loading that executes code.

Registration is safe to retry: a run that already has a version of ``name`` gets that
version back, and a run that already logged its model reuses it, so a task retried after a
lost connection never creates a duplicate version.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tasks import registry
from transferops.config import Settings
from transferops.models import BUNDLE_META, BUNDLE_WEIGHTS, read_bundle_meta

log = logging.getLogger(__name__)
MODEL_NAME = "model"  # the logged model's name within its run
PYFUNC_FILE = Path(__file__).with_name("served_pyfunc.py")


def _requirements() -> list[str]:
    """Pinned serving requirements: MLflow would otherwise spend ~15 s inferring them."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in ("torch", "torchvision", "pillow", "numpy", "pandas")]


def _logged_model_of(c: Any, experiment_id: str, run_id: str) -> Any | None:
    """The model this run already created under :data:`MODEL_NAME`, if any (READY or not)."""
    found = c.search_logged_models(experiment_ids=[experiment_id], max_results=1,
                                   filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
    return found[0] if found else None


def log_served_model(settings: Settings, run_id: str, bundle_dir: Path, example_images: list[bytes]) -> str:
    """Log ``bundle_dir`` as the run's pyfunc logged model (reused when the run has one); returns its id.

    The logged model is created here, in the run's experiment, rather than by ``Model.log``:
    MLflow's fluent API would put it in whatever experiment is "active" in this thread (the
    default one, with artifacts under ``./mlruns``). A model left PENDING by a crash is
    finished on the retry instead of created twice.
    """
    import pandas as pd
    from mlflow import pyfunc
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model, infer_signature

    import transferops
    from transferops.serving import BUNDLE_ARTIFACT, ImageClassifier

    c = registry.client(settings)
    run = c.get_run(run_id)
    model = _logged_model_of(c, run.info.experiment_id, run_id)
    if model is not None and model.status == LoggedModelStatus.READY:
        return model.model_id
    if model is None:
        model = c.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                      params={k: str(v) for k, v in run.data.params.items()})
    meta = read_bundle_meta(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        serving = Path(tmp) / BUNDLE_ARTIFACT  # what serving needs; profiles stay with the run
        serving.mkdir()
        for f in (BUNDLE_WEIGHTS, BUNDLE_META):
            shutil.copy2(bundle_dir / f, serving / f)
        example = pd.DataFrame({"image": example_images})
        answer = [p.as_dict() for p in ImageClassifier.from_bundle(serving).predict(example_images)]
        info = Model.log(artifact_path=None, flavor=pyfunc, name=MODEL_NAME, run_id=run_id, model_id=model.model_id,
                         python_model=str(PYFUNC_FILE), artifacts={BUNDLE_ARTIFACT: str(serving)},
                         code_paths=[str(Path(transferops.__file__).parent)],
                         signature=infer_signature(example, answer), input_example=example,
                         pip_requirements=_requirements(),
                         metadata={"categories": meta["categories"], "backbone": meta["backbone"],
                                   "transforms": json.dumps(meta["transforms"], sort_keys=True)})
    return info.model_id


FLOW_RUN_VERSION_TAG = f"{registry.LINEAGE_PREFIX}prefect_flow_run_id"  # transferops.lineage.Lineage.tags()


def drop_partial_versions(c: Any, name: str, run_id: str, flow_run_id: str) -> list[str]:
    """Delete the versions of ``name`` that an earlier attempt of Prefect flow run ``flow_run_id``
    registered and never finished (a retry after a crash or a failure); returns their numbers.

    A train run registers its version, then tags the decision and moves ``challenger`` (and
    maybe ``champion``); its MLflow run ends FINISHED only after that. An attempt that died in
    between (SIGKILL: its run stays RUNNING; an exception: FAILED) left a version no decision
    was taken on. Versions holding an alias, and those of a FINISHED run (a retried run that had
    completed), are kept: only undecided leftovers go, so a flow run ends with one version.
    """
    out: list[str] = []
    earlier = [v for v in c.search_model_versions(f"name='{name}' and tags.`{FLOW_RUN_VERSION_TAG}` = '{flow_run_id}'")
               if v.run_id != run_id]
    if not earlier:
        return out
    # search results carry no aliases; the registered model has the alias map
    aliased = {str(v) for v in (c.get_registered_model(name).aliases or {}).values()}
    for v in sorted(earlier, key=lambda v: int(v.version)):
        if str(v.version) in aliased:
            continue
        if c.get_run(v.run_id).info.status == "FINISHED":
            continue
        c.delete_model_version(name, str(v.version))
        out.append(str(v.version))
    return out


def register(settings: Settings, run_id: str, name: str, model_id: str, tags: dict[str, str]) -> registry.RegisteredVersion:
    """The version of ``name`` made from this run: created once, found again on a retry. A
    version an earlier, dead attempt of the same Prefect flow run left undecided is deleted
    first (:func:`drop_partial_versions`)."""
    c = registry.client(settings)
    registry.ensure_registered(c, name)
    if tags.get(FLOW_RUN_VERSION_TAG):
        dropped = drop_partial_versions(c, name, run_id, tags[FLOW_RUN_VERSION_TAG])
        if dropped:
            log.warning("deleted version(s) %s of %s: an earlier attempt of flow run %s registered them and died "
                        "before deciding on them", ", ".join(dropped), name, tags[FLOW_RUN_VERSION_TAG])
    found = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if found:
        mv = min(found, key=lambda v: int(v.version))
    else:
        mv = c.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                    tags={k: str(v) for k, v in tags.items()})
    return registry.RegisteredVersion(name, str(mv.version), run_id, (), dict(mv.tags))
