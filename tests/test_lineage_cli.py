"""`transferops lineage`: a trained version's chain read back against the real values, and the
re-materialised data, settings and command re-run its training (MLflow on SQLite, real git+DVC)."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transferops.cli import main
from transferops.errors import EXIT_FAILURE, EXIT_OK

pytestmark = pytest.mark.integration

NEW_FIELDS = ["heldout_rev", "heldout_split", "source_version", "source_weights_sha256", "drift_vs_previous"]


def _lineage(capfd, *argv: str) -> dict:
    assert main(["lineage", *argv, "--json"]) == EXIT_OK, capfd.readouterr().err[-2000:]
    return json.loads(capfd.readouterr().out)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lineage-project")
    # one epoch, no scratch baseline, no shift panel: the chain is the subject here, not the model
    (root / "transferops.yaml").write_text(yaml.safe_dump({"training": {"epochs": 1, "batch_size": 16, "lr": 0.01},
                                                           "strategy": {"baseline_max_train_images": 0},
                                                           "monitor": {"estimator": "atc"}}))
    return root


@pytest.fixture(scope="module")
def first(prefect_harness, project, shapes_dir, source_bundle) -> dict:
    from flows.train import TrainParams, train

    return train(TrainParams(source=str(source_bundle), data=str(shapes_dir), strategy="feature_extraction",
                             project_dir=str(project), run_name="lineage-first"))


@pytest.fixture(scope="module")
def rerun(first, project, tmp_path_factory):
    """``lineage 1 --to DIR``'s document, after running the command it printed (which registers v2)."""
    out = tmp_path_factory.mktemp("rerun") / "v1"
    # as a user runs it, in its own process (capfd, function-scoped, cannot serve a module fixture)
    proc = subprocess.run([sys.executable, "-m", "transferops.cli", "-C", str(project), "lineage", "1", "--to",
                           str(out), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    argv = doc["materialised"]["argv"]
    assert argv[0] == "transferops" and main(argv[1:]) == EXIT_OK
    return doc


def test_chain_holds_the_real_values(first, project, source_bundle, capfd):
    from tasks import registry
    from tasks.tracking import FLOW_RUN_TAG
    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.lineage import Lineage

    doc = _lineage(capfd, "1", "-C", str(project))
    dvc = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]
    rev = subprocess.run(["git", "-C", str(project), "log", "-1", "--format=%H", "--", "data.dvc"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert doc["data_md5"] == dvc["md5"] == first["data_md5"] and doc["data_rev"] == rev == doc["heldout_rev"]
    assert doc["source_weights_sha256"] == hashlib.sha256((source_bundle / "weights.pt").read_bytes()).hexdigest()
    assert doc["source"] == doc["source_version"] == str(source_bundle) and doc["backbone"] == "resnet18"
    assert doc["strategy"] == "feature_extraction" and doc["strategy_params"] == first["strategy_params"]
    assert doc["strategy_reason"] == first["strategy_reason"] and doc["mlflow_run_id"] == first["run_id"]
    s = load_settings(project)
    run = registry.client(s).get_run(first["run_id"])
    assert doc["prefect_flow_run_id"] and doc["prefect_flow_run_id"] == run.data.tags[FLOW_RUN_TAG]
    assert doc["trigger"] == {"flow": "train", "by": "hand"}
    # the held-out record rebuilds: the same test images from the checked-out version
    images = scan_dataset(project / "data")
    assert doc["heldout_split"] == Lineage.held_out(images, s.data.val_fraction, s.data.test_fraction)
    assert doc["heldout_split"]["counts"]["test"] == len(images.split("test")) > 0
    assert doc["drift_vs_source"]["p_val"] == pytest.approx(first["drift_p_val"], abs=1e-6)
    assert doc["drift_vs_previous"] == {"note": "no champion yet: there is no previous training data"}
    assert doc["gates"]["lineage"].startswith("pass") and doc["promotion"] == "promote"
    assert doc["test_accuracy"] == pytest.approx(first["test_accuracy"], abs=1e-6) and doc["not_recorded"] == []


def test_to_dir_rematerialises_data_and_settings_and_the_command_reruns(rerun, first, project, source_bundle, capfd):
    from tasks.lineage import dvc_md5
    from transferops.config import load_settings

    done = rerun["materialised"]
    data, original = Path(done["data"]), project / "data"
    assert dvc_md5(data) == first["data_md5"] == done["data_md5"] and done["data_md5_verified"]
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert all((data / f).read_bytes() == (original / f).read_bytes() for f in files)
    # the written settings load and train exactly as the run did (its one-epoch override included)
    again, now = load_settings(project, done["config"]), load_settings(project)
    for section in ("data", "training", "strategy", "drift", "promotion", "monitor"):
        assert getattr(again, section) == getattr(now, section), section
    assert again.model_name == now.model_name and "tracking_uri" not in yaml.safe_load(Path(done["config"]).read_text())
    argv = shlex.split(done["command"])
    assert argv == done["argv"] and argv[argv.index("--data") + 1] == first["data_rev"]
    assert argv[argv.index("--source") + 1] == str(source_bundle) and argv[argv.index("--strategy") + 1] == "feature_extraction"
    assert done["source_check"]["matches"] is True
    # the command ran (the fixture): v2 is the same training, and it measured drift against v1's data
    v2 = _lineage(capfd, "2", "-C", str(project))
    v1 = _lineage(capfd, "1", "-C", str(project))
    for key in ("data_rev", "data_md5", "heldout_split", "source", "source_weights_sha256", "strategy", "strategy_params"):
        assert v2[key] == v1[key], key
    assert v2["test_accuracy"] == pytest.approx(v1["test_accuracy"])
    prev = v2["drift_vs_previous"]
    assert prev["against_version"] == "1" and prev["against_data_rev"] == v1["data_rev"] and prev["test"] == "mmd"
    assert not prev["is_drift"] and 0 < prev["p_val"] <= 1  # the same images, embedded by the same network


def test_a_version_from_before_the_new_fields_prints_not_recorded(first, project, capfd):
    from tasks import registry
    from transferops.config import load_settings

    s = load_settings(project)
    c = registry.client(s)
    v1 = c.get_model_version(s.model_name, "1")
    old = {k: v for k, v in v1.tags.items()
           if k.removeprefix("transferops.") not in ("heldout_rev", "heldout_split", "source_version", "source_weights_sha256",
                                                     "previous_drift", "prefect_flow_run_id")}
    v = c.create_model_version(s.model_name, v1.source, run_id=v1.run_id, tags=old).version
    doc = _lineage(capfd, str(v), "-C", str(project))
    assert doc["not_recorded"] == NEW_FIELDS and all(doc[k] is None for k in NEW_FIELDS)
    assert doc["prefect_flow_run_id"]  # older versions: from the run's own tag
    assert main(["lineage", str(v), "-C", str(project)]) == EXIT_OK
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in capfd.readouterr().out.splitlines()
            if line.count("│") >= 3}
    assert all(rows[k] == "not recorded" for k in NEW_FIELDS) and rows["data_md5"] == first["data_md5"]


def test_unknown_version_fails_with_one_line(first, project, capfd):
    assert main(["lineage", "99", "-C", str(project)]) == EXIT_FAILURE
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("transferops lineage: error:") and "has no version 99" in err[0]
    assert main(["lineage", "99", "-C", str(project), "--json"]) == EXIT_FAILURE
    assert "has no version 99" in json.loads(capfd.readouterr().out)["error"]


def test_data_missing_from_cache_and_remote_fails_naming_the_fix(first, project, tmp_path, capfd):
    from transferops.config import load_settings

    s = load_settings(project)
    # the version is in neither the project's work tree, its DVC cache nor its remote
    moved = [project / "data", project / ".dvc" / "cache", Path(s.resolved_dvc_remote)]
    for i, p in enumerate(moved):
        p.rename(tmp_path / f"aside{i}")
    try:
        assert main(["lineage", "1", "-C", str(project), "--to", str(tmp_path / "out")]) == EXIT_FAILURE
    finally:
        for i, p in enumerate(moved):
            shutil.rmtree(p, ignore_errors=True)  # whatever the failed attempt created in their place
            (tmp_path / f"aside{i}").rename(p)
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("transferops lineage: error:")]
    assert len(err) == 1 and "is neither in the DVC cache" in err[0] and "dvc push" in err[0], err
    assert first["data_rev"][:12] in err[0] and not (tmp_path / "out" / "data").exists()


def test_lineage_has_help_and_is_listed(capsys):
    from transferops.cli import cli

    assert "lineage" in cli.commands and main(["lineage", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("VERSION", "--model", "--to DIR", "--json", "-C, --workdir"))
