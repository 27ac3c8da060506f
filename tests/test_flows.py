"""The flows under Prefect's test harness, with MLflow on a temporary SQLite store and a real git+DVC repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from transferops.strategy import STRATEGIES

pytestmark = pytest.mark.integration

LINEAGE = ("transferops.data_rev", "transferops.data_md5", "transferops.strategy", "transferops.source_similarity",
           "transferops.drift_p_val", "transferops.git_sha", "transferops.backbone")


def _settings(project: Path):
    from transferops.config import load_settings

    return load_settings(project)


def _git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "transferops.yaml").write_text(yaml.safe_dump({"training": {"epochs": 6, "batch_size": 16, "lr": 0.01}}))
    return root


@pytest.fixture(scope="module")
def first_run(prefect_harness, project, shapes_dir, source_bundle):
    from flows.train import TrainParams, train

    return train(TrainParams(source=str(source_bundle), data=str(shapes_dir), project_dir=str(project), run_name="first"))


def test_train_flow_registers_a_champion_with_full_lineage(first_run, project):
    from tasks import registry

    s = _settings(project)
    versions = registry.list_versions(s, s.model_name)
    assert [v.version for v in versions] == ["1"]
    v = versions[0]
    assert set(v.aliases) == {"champion", "challenger"}
    for key in LINEAGE:
        assert v.tags.get(key), f"lineage tag {key} missing"
    dvc = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]
    assert v.tags["transferops.data_md5"] == dvc["md5"] == first_run["data_md5"]
    assert v.tags["transferops.data_rev"] == _git(project, "log", "-1", "--format=%H", "--", "data.dvc")
    assert v.tags["transferops.strategy"] == first_run["strategy"]
    assert v.tags["transferops.backbone"] == "resnet18"
    assert v.tags["transferops.git_sha"] == subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    sim, p = float(v.tags["transferops.source_similarity"]), float(v.tags["transferops.drift_p_val"])
    assert 0 <= sim <= 1 and 0 < p <= 1
    assert first_run["promoted"] and first_run["test_accuracy"] > 0.6, "a trivially separable task should be learned"
    # the data is in the DVC remote, and the run left its report and config
    remote = Path(s.resolved_dvc_remote)
    assert sum(1 for f in remote.rglob("*") if f.is_file()) >= dvc["nfiles"]
    report = Path(first_run["report"])
    assert report.is_file() and {"learning_curves.png", "confusion_matrix.png", "drift_embeddings.png", "drift.json",
                                 "drift_per_class.png"} <= {p.name for p in report.parent.iterdir()}
    # the transfer-benefit report: a same-budget scratch baseline, unless the run was scratch itself
    benefit = first_run["transfer_benefit"]
    if first_run["strategy"] != "scratch":
        assert (report.parent / "transfer_benefit.png").is_file() and "## Transfer benefit" in report.read_text()
        assert {"start", "slope", "asymptote"} <= set(benefit)
        assert "benefit_asymptote" in registry.client(s).get_run(v.run_id).data.metrics
    assert "## Strategy" in report.read_text() and first_run["strategy_reason"] in report.read_text()
    drift = json.loads((report.parent / "drift.json").read_text())
    # BBSD runs when the source profile has softmax outputs, else it is reported as skipped
    assert {t["test"] for t in drift["tests"]} | set(drift["skipped"]) == {"mmd", "classifier", "ks", "bbsd"}
    assert set(drift["per_class_distance"]) <= set(first_run_classes := json.loads(v.tags["transferops.classes"]))
    assert first_run_classes and "drift_mmd_p_val" in registry.client(s).get_run(v.run_id).data.metrics
    c = registry.client(s)
    artifacts = {a.path for a in c.list_artifacts(v.run_id)}
    assert {"bundle", "report", "config", "decision"} <= artifacts
    # the served model is an MLflow 3 logged model, an output of the run (its artifacts live with it)
    outputs = [c.get_logged_model(o.model_id) for o in c.get_run(v.run_id).outputs.model_outputs]
    source = c.get_model_version(s.model_name, v.version).source
    assert [m.name for m in outputs] == ["model"] and source == f"models:/{outputs[0].model_id}"
    assert c.get_run(v.run_id).info.status == "FINISHED"
    assert c.get_run(v.run_id).data.metrics["test_accuracy"] == pytest.approx(first_run["test_accuracy"])
    # the promotion gates: logged as a table, as tags on the version, in the result; cost and calibration as metrics
    run_metrics = c.get_run(v.run_id).data.metrics
    assert {"test_ece", "latency_ms_b1", "latency_ms_b64", "model_params", "model_bytes"} <= set(run_metrics)
    assert {f"test_recall_{k}" for k in first_run_classes} <= set(run_metrics) and run_metrics["latency_ms_b64"] > 0
    assert {g["name"]: g["passed"] for g in first_run["gates"]} == dict.fromkeys(
        ("metric", "class_drop", "ece", "latency", "validation", "lineage"), True)
    assert v.tags["transferops.promotion"] == "promote" and v.tags["transferops.gate.validation"].startswith("pass")
    assert v.tags["transferops.gate.metric"].startswith("skip") and not first_run["awaiting_approval"]
    assert "| lineage | pass |" in (Path(c.download_artifacts(v.run_id, "decision/gates.md", str(report.parent))).read_text())


def registry_tags(s) -> dict[str, str]:
    """The champion version's tags."""
    from tasks import registry

    return registry.alias_version(s, s.model_name, "champion").tags


def test_champion_loads_through_its_alias(first_run, project):
    import io

    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    from PIL import Image

    s = _settings(project)
    mlflow.set_tracking_uri(s.resolved_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{s.model_name}@champion")
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
    (answer,) = model.predict(pd.DataFrame({"image": [png.getvalue()]}))
    classes = json.loads(registry_tags(s)["transferops.classes"])
    assert answer["label"] in classes and set(answer["probabilities"]) == set(classes)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_worse_challenger_does_not_move_champion(first_run, project, tmp_path):
    from flows.train import TrainParams, train
    from tasks import registry

    cfg = tmp_path / "worse.yaml"
    cfg.write_text(yaml.safe_dump({"training": {"epochs": 1, "lr": 1e-9}}))  # random weights stay random
    second = train(TrainParams(source=str(first_run_source(project)), data_rev=first_run["data_rev"],
                               strategy="scratch", project_dir=str(project), config_file=str(cfg),
                               run_name="worse"))
    s = _settings(project)
    assert second["test_accuracy"] < first_run["test_accuracy"]
    assert second["champion_test_accuracy"] == pytest.approx(first_run["test_accuracy"])  # same held-out split
    assert not second["promoted"]
    assert registry.alias_version(s, s.model_name, "challenger").tags["transferops.gate.metric"].startswith("fail")
    assert registry.alias_version(s, s.model_name, "champion").version == "1"
    assert registry.alias_version(s, s.model_name, "challenger").version == "2"
    assert second["data_md5"] == first_run["data_md5"]
    # the alias history: each run recorded the moves it made, the worse one only its challenger
    from tasks.history import history

    by = {m.alias + ":" + m.to_version: (m.from_version, m.by, m.kind) for m in history(s, s.model_name)}
    assert by == {"champion:1": (None, f"run:{first_run['run_id']}", "promote"),
                  "challenger:1": (None, f"run:{first_run['run_id']}", "challenger"),
                  "challenger:2": ("1", f"run:{second['run_id']}", "challenger")}


def first_run_source(project: Path) -> Path:
    """The source bundle the first run used, as the run recorded it."""
    from tasks import registry

    s = _settings(project)
    v = registry.alias_version(s, s.model_name, "champion")
    return Path(v.tags["transferops.source"])


def test_corrupt_image_stops_the_flow_before_training(prefect_harness, tmp_path, shapes_dir, source_bundle):
    from flows.train import TrainParams, train
    from tasks import registry
    from tasks.validation import DataValidationError

    bad = tmp_path / "bad"
    shutil.copytree(shapes_dir, bad)
    victim = sorted((bad / "square").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated PNG
    project = tmp_path / "proj"
    with pytest.raises(DataValidationError, match=f"square/{victim.name}"):
        train(TrainParams(source=str(source_bundle), data=str(bad), project_dir=str(project), run_name="bad"))
    s = _settings(project)
    assert registry.list_versions(s, s.model_name) == []
    assert not (project / "data.dvc").exists() and not (project / "data").exists()
    assert not (s.checkpoints_dir).exists(), "training must not have started"
    report = json.loads((project / "reports" / "bad" / "validation.json").read_text())
    assert not report["success"] and any(victim.name in str(r["examples"]) for r in report["results"])
    runs = registry.client(s).search_runs([registry.experiment_id(s)])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert {a.path for a in registry.client(s).list_artifacts(runs[0].info.run_id)} >= {"report"}


def test_source_flow_then_train_from_the_registry(prefect_harness, tmp_path, shapes_dir):
    from flows.source import SourceParams, develop_source
    from flows.train import TrainParams, train
    from tasks import registry

    project = tmp_path / "proj"
    src = develop_source(SourceParams(data=str(shapes_dir), backbone="resnet18", image_size=32,
                                      project_dir=str(project), epochs=1, run_name="src"))
    s = _settings(project)
    v = registry.alias_version(s, s.source_model_name, "champion")
    assert v.version == src["version"] == "1" and v.tags["transferops.role"] == "source"
    assert (project / "source-data.dvc").is_file()
    files = {a.path for a in registry.client(s).list_artifacts(v.run_id, "bundle")}
    assert {"bundle/weights.pt", "bundle/meta.json", "bundle/profile.npz"} <= files
    out = train(TrainParams(source=src["uri"], data=str(shapes_dir), project_dir=str(project), epochs=1,
                            strategy="auto", run_name="tgt"))
    # the target *is* the source domain here: the drift statistic says so, and auto read the probe
    assert out["similarity"] > 0.5 and out["strategy"] in STRATEGIES
    ev = out["strategy_evidence"]
    assert 0 <= ev["probe_accuracy"] <= 1 and ev["per_class"] > 0 and "linear probe" in out["strategy_reason"]
    assert registry.alias_version(s, s.model_name, "champion").tags["transferops.source"] == src["uri"]
