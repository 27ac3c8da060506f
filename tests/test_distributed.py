"""Data-parallel training under torchrun, on CPU with the gloo backend and 2 processes.

The same data and seed in 1 and in 2 processes: the same step budget and evaluations, the
same accuracy within noise; a rerun resumes from the checkpoint rank 0 wrote. Through the
train command: one MLflow run with each evaluation logged once, exactly one model version.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from transferops.assessment import DriftOutcome, pick_strategy
from transferops.cli import main
from transferops.config import load_settings
from transferops.data import scan_dataset
from transferops.engine import evaluate_on_test, train_model
from transferops.samples import write_shapes
from transferops.sources import open_source, parse_source

# Enough steps for plain shapes to be learnt from random weights, few enough for 2 cores.
TRAINING = {"epochs": 6, "batch_size": 16, "min_steps": 0, "eval_every_steps": 1, "patience": 100,
            "checkpoint_interval_s": 0, "augment": False}


def _settings(root: Path, nproc: int, **training):
    root.mkdir(parents=True, exist_ok=True)
    (root / "transferops.yaml").write_text(yaml.safe_dump({"training": TRAINING | {"nproc_per_node": nproc} | training}))
    return load_settings(root)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    # 60 a class: 24 validation and 31 test images, so one image moves accuracy by 3-4 points
    return write_shapes(tmp_path_factory.mktemp("ddp") / "shapes", per_class=60)


@pytest.mark.integration
def test_two_gloo_processes_train_like_one(tmp_path, shapes, source_bundle):
    src = open_source(parse_source(str(source_bundle)))
    runs = {}
    for n in (1, 2):
        s = _settings(tmp_path / f"p{n}", n)
        images = scan_dataset(shapes, s.data.val_fraction, s.data.test_fraction)
        # from random weights at the full rate: learns the shapes in 48 steps (the source bundle is random too)
        choice = pick_strategy(s, "scratch", src, images, DriftOutcome(None, "n/a"))
        rows: list[dict] = []
        trained = train_model(s, src, choice, images, tmp_path / f"ck{n}.pt", on_epoch=rows.append, progress=False)
        test = evaluate_on_test(s, trained.model, src.weights, images)["accuracy"]
        runs[n] = {"rows": rows, "fit": trained.fit, "test": test, "settings": s, "choice": choice, "images": images}

    one, two = runs[1], runs[2]
    # the budget is planned for the global batch: the same steps and evaluations in both
    assert two["fit"].steps == one["fit"].steps > 0
    assert [r["step"] for r in two["rows"]] == [r["step"] for r in one["rows"]]
    assert two["rows"] == two["fit"].history, "rank 0's rows reach on_epoch in this process, each once"
    # the validation sums count every image exactly once (no sampler padding): accuracies are k / n_val
    n_val = len(two["images"].split("val"))
    assert all(abs(r["val_accuracy"] * n_val - round(r["val_accuracy"] * n_val)) < 1e-6 for r in two["rows"])
    last1, last2 = one["rows"][-1], two["rows"][-1]
    assert last1["val_accuracy"] > 0.7 and last2["val_accuracy"] > 0.7, (last1, last2)  # chance is 1/3
    # within noise: different shards and augmentation streams, BatchNorm statistics per rank
    assert abs(one["test"] - two["test"]) <= 0.15, (one["test"], two["test"])
    assert abs(last1["val_accuracy"] - last2["val_accuracy"]) <= 0.15, (last1, last2)

    # rank 0 wrote the checkpoint, with each rank's random state; a rerun resumes after its last epoch
    ckpt = torch.load(tmp_path / "ck2.train.pt", weights_only=False)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    again = train_model(two["settings"], src, two["choice"], two["images"], tmp_path / "ck2.pt", progress=False)
    assert again.fit.resumed_from == ckpt["epoch"] and again.fit.steps == two["fit"].steps


@pytest.mark.integration
def test_the_train_command_in_two_processes_registers_one_version(tmp_path, capfd, monkeypatch, prefect_harness,
                                                                  shapes, source_bundle):
    proj = tmp_path / "proj"
    _settings(proj, 2, epochs=1)
    monkeypatch.setenv("TRANSFEROPS_STRATEGY__BASELINE_MAX_TRAIN_IMAGES", "0")
    assert main(["train", "-C", str(proj), "--source", str(source_bundle), "--data", str(shapes),
                 "--strategy", "scratch", "--json"]) == 0
    out, err = capfd.readouterr()
    run = json.loads(out)  # torchrun's and the ranks' output went to stderr: stdout is one document
    assert run["version"] == "1" and run["strategy"] == "scratch"
    assert "scratch x2/" in err, err[-2000:]  # rank 0's progress bar

    assert main(["status", "-C", str(proj), "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)
    assert [(r["model"], r["version"]) for r in rows] == [("transferops-classifier", "1")]

    settings = load_settings(proj)
    client = mlflow.MlflowClient(settings.resolved_tracking_uri)
    versions = client.search_model_versions("name='transferops-classifier'")
    assert len(versions) == 1
    history = client.get_metric_history(versions[0].run_id, "val_accuracy")
    steps = [m.step for m in history]
    assert steps and len(steps) == len(set(steps)), f"each evaluation logged once: {steps}"
