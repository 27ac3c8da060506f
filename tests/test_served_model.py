"""The registered model as a caller meets it: an MLflow 3 logged pyfunc that takes image bytes,
loads without unpickling, reproduces its logged test accuracy, and answers over HTTP through
a real ``mlflow models serve`` on 127.0.0.1. Registration is safe to retry."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    (root / "transferops.yaml").write_text(yaml.safe_dump({"training": {"epochs": 2, "batch_size": 16}}))
    return root


@pytest.fixture(scope="module")
def trained(prefect_harness, project, shapes_dir, source_bundle):
    from flows.train import TrainParams, train

    return train(TrainParams(source=str(source_bundle), data=str(shapes_dir), project_dir=str(project), run_name="served"))


@pytest.fixture(scope="module")
def settings(project, trained):
    from transferops.config import load_settings

    return load_settings(project)


def trained_version_tags(settings, trained) -> dict[str, str]:
    from tasks import registry

    return dict(registry.client(settings).get_model_version(settings.model_name, trained["version"]).tags)


def _test_images(settings, trained) -> tuple[list[bytes], list[str]]:
    from tasks.dvcstore import checkout_version
    from tasks.validation import load_dataset
    from transferops.data import read_bytes

    rev = trained["data_rev"]
    path = checkout_version(settings.project_dir, rev, settings.state_dir / "datasets" / rev).path
    images = load_dataset(Path(path), settings.data.val_fraction, settings.data.test_fraction)
    test = images.split("test")
    return [read_bytes(r) for r in test], [r.label for r in test]


def test_version_is_a_logged_pyfunc_model_with_its_data_version_as_input(settings, trained):
    from tasks import registry

    c = registry.client(settings)
    mv = c.get_model_version(settings.model_name, trained["version"])
    # the SQL registry keeps the logged model only in the source URI (it drops model_id)
    assert mv.source.startswith("models:/m-")
    logged = c.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.name == "model" and logged.source_run_id == trained["run_id"]
    # in the run's experiment, with its artifacts in the project: not in MLflow's default ./mlruns
    assert logged.experiment_id == c.get_run(trained["run_id"]).info.experiment_id
    assert not Path("mlruns").exists() and not (Path(settings.project_dir) / "mlruns").exists()
    inputs = {i.tags[0].value: i.dataset for i in c.get_run(trained["run_id"]).inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    for ds in inputs.values():
        source = json.loads(ds.source)
        assert ds.source_type == "dvc" and source["md5"] == trained["data_md5"] and source["rev"] == trained["data_rev"]
    assert inputs["training"].digest != inputs["evaluation"].digest


def test_champion_loads_without_pickles_and_reproduces_its_test_accuracy(settings, trained):
    import mlflow.pyfunc
    from mlflow.models import Model

    from tasks import registry

    uri = f"models:/{settings.model_name}@champion"
    registry.client(settings)  # sets the tracking/registry URI
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle")), "the served model holds a pickle"
    meta = Model.load(str(local / "MLmodel")).metadata
    classes = json.loads(trained_version_tags(settings, trained)["transferops.classes"])
    assert meta["categories"] == classes and meta["backbone"] == "resnet18"
    model = mlflow.pyfunc.load_model(uri)
    images, labels = _test_images(settings, trained)
    import pandas as pd

    answers = model.predict(pd.DataFrame({"image": images}))
    assert len(answers) == len(labels)
    assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-4 for a in answers)
    accuracy = float(np.mean([a["label"] == y for a, y in zip(answers, labels, strict=True)]))
    assert accuracy == pytest.approx(trained["test_accuracy"], abs=1e-9)


def test_bad_image_bytes_get_a_clear_error(settings, trained):
    import mlflow.pyfunc
    import pandas as pd

    from transferops.errors import InputError

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    with pytest.raises(InputError, match="image 1: .* not a readable image"):
        model.predict(pd.DataFrame({"image": [_test_images(settings, trained)[0][0], b"not an image"]}))


def test_uint8_arrays_are_answered_like_their_image_bytes(settings, trained):
    import io

    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    images = _test_images(settings, trained)[0][:4]
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.uint8) for b in images]
    from_bytes = model.predict(pd.DataFrame({"image": images}))
    from_arrays = model.predict(pd.DataFrame({"image": arrays}))
    assert [a["label"] for a in from_arrays] == [b["label"] for b in from_bytes]
    for a, b in zip(from_arrays, from_bytes, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_a_retried_registration_creates_no_second_version_or_model(settings, trained):
    from tasks import registry

    c = registry.client(settings)
    exp = c.get_experiment_by_name(settings.experiment).experiment_id
    before = (len(c.search_model_versions(f"name='{settings.model_name}'")), len(c.search_logged_models([exp])))
    bundle = settings.state_dir / "bundles" / trained["run_id"]
    images, _ = _test_images(settings, trained)
    again = registry.log_and_register.fn(settings, trained["run_id"], settings.model_name, bundle, images[:2], {})
    assert again.version == trained["version"]
    assert (len(c.search_model_versions(f"name='{settings.model_name}'")), len(c.search_logged_models([exp]))) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_an_image_request(settings, trained, tmp_path):
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # serve runs `uvicorn` from PATH, as in an activated venv
    env = os.environ | {"MLFLOW_TRACKING_URI": settings.resolved_tracking_uri,
                        "MLFLOW_REGISTRY_URI": settings.resolved_tracking_uri,
                        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"models:/{settings.model_name}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
                time.sleep(0.5)
        images, labels = _test_images(settings, trained)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(b).decode()] for b in images[:4]]}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        answers = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        import mlflow.pyfunc
        import pandas as pd

        local = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion").predict(pd.DataFrame({"image": images[:4]}))
        assert [a["label"] for a in answers] == [a["label"] for a in local]
        classes = set(json.loads(trained_version_tags(settings, trained)["transferops.classes"]))
        assert all(set(a["probabilities"]) == classes for a in answers)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
