"""--json: stdout holds exactly one JSON document, for every command.

Checked at the file-descriptor level (``capfd``), so output of child processes (git, dvc),
progress bars and anything writing to fd 1 directly is caught too. The human progress
must still arrive, on stderr.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from transferops.cli import main
from transferops.cli.demo import PRODUCTION_IMAGES
from transferops.samples import write_shapes
from transferops.strategy import STRATEGIES


def one_json(capfd) -> tuple[object, str]:
    """The single JSON document on stdout (json.loads refuses anything before or after it), and stderr."""
    out, err = capfd.readouterr()
    try:
        return json.loads(out), err
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{out[:3000]}") from exc


def tiny_project(folder: Path) -> Path:
    """A project folder whose settings train for one epoch in small batches."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transferops.yaml").write_text(yaml.safe_dump({"training": {"epochs": 1, "batch_size": 16}}))
    return folder


def test_everything_written_to_stdout_during_a_command_goes_to_stderr(tmp_path, monkeypatch, capfd):
    """print, a raw write to fd 1 and a child process's stdout, in a command with --json."""
    import os
    import subprocess
    import sys

    from tasks import registry

    def noisy(*_a, **_k):
        print("printed by python")
        sys.stdout.flush()
        os.write(1, b"written to fd 1\n")
        subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
        return []

    monkeypatch.setattr(registry, "list_versions", noisy)
    assert main(["status", "-C", str(tmp_path), "--json"]) == 0
    doc, err = one_json(capfd)
    assert doc == []
    assert all(s in err for s in ("printed by python", "written to fd 1", "child process"))
    # and stdout is back to normal afterwards
    print("after")
    os.write(1, b"fd after\n")
    assert capfd.readouterr().out == "after\nfd after\n"


def test_init_sample_and_status(tmp_path, capfd):
    proj = tmp_path / "proj"
    assert main(["init", "-C", str(proj), "--json"]) == 0
    doc, _ = one_json(capfd)
    assert doc["project"] == str(proj.resolve()) and doc["dvc_remote"]

    assert main(["sample", "shapes", str(tmp_path / "shapes"), "--json"]) == 0
    doc, _ = one_json(capfd)
    assert doc["kind"] == "shapes" and doc["images"] > 0 and Path(doc["folder"]).is_dir()

    assert main(["status", "-C", str(proj), "--json"]) == 0
    doc, _ = one_json(capfd)
    assert doc == []


@pytest.mark.integration
def test_data_add_list_checkout(tmp_path, capfd):
    proj = tmp_path / "proj"
    src = write_shapes(tmp_path / "src", per_class=15)
    assert main(["data", "add", str(src), "-C", str(proj), "-m", "week 1", "--json"]) == 0
    added, err = one_json(capfd)
    assert added["images"] == added["added"] == 45
    # the human progress line went to stderr, not stdout
    assert re.search(r"data version [0-9a-f]{12}: 45 images, .*\+45 \(\d+ new bytes\)", err), err

    assert main(["data", "list", "-C", str(proj), "--json"]) == 0
    versions, _ = one_json(capfd)
    assert [v["rev"] for v in versions] == [added["rev"]]

    shutil.rmtree(proj / ".dvc" / "cache")  # dvc fetches from the remote: its output must stay off stdout
    assert main(["data", "checkout", added["rev"][:8], "-C", str(proj), "--export", str(tmp_path / "out"), "--json"]) == 0
    out, _ = one_json(capfd)
    assert out["verified"] and out["exported"] == 45 and out["content_hash"] == added["content_hash"]


def test_profile_and_drift(tmp_path, capfd, source_bundle, shapes_dir):
    prof = tmp_path / "p.npz"
    assert main(["profile", "-C", str(tmp_path), "--backbone", "resnet18", "--weights", str(source_bundle),
                 "--data", str(shapes_dir), "--out", str(prof), "--json"]) == 0
    doc, _ = one_json(capfd)
    assert doc["profile"] == str(prof) and doc["samples"] == 90

    assert main(["drift", "-C", str(tmp_path), "--profile", str(prof), "--data", str(shapes_dir), "--json"]) == 0
    doc, _ = one_json(capfd)
    assert doc["is_drift"] is False and doc["data"] == str(shapes_dir)


@pytest.mark.integration
def test_source_and_train(tmp_path, capfd, prefect_harness):
    proj = tiny_project(tmp_path / "proj")
    src = write_shapes(tmp_path / "source", per_class=20, classes=3)
    target = write_shapes(tmp_path / "target", per_class=20, classes=3, style="shifted", seed=1)

    assert main(["source", "-C", str(proj), "--data", str(src), "--json"]) == 0
    source, err = one_json(capfd)
    assert source["uri"] == "models:/transferops-source@champion" and source["epochs_run"] == 1
    assert re.search(r"on (cpu|cuda|mps)", err), err[-2000:]  # the training progress bar

    assert main(["train", "-C", str(proj), "--source", source["uri"], "--data", str(target), "--json"]) == 0
    run, err = one_json(capfd)
    assert run["version"] == "1" and run["promoted"] and run["strategy"] in STRATEGIES
    assert re.search(r"on (cpu|cuda|mps)", err), err[-2000:]

    assert main(["status", "-C", str(proj), "--json"]) == 0
    rows, _ = one_json(capfd)
    assert {(r["model"], r["version"]) for r in rows} == {("transferops-classifier", "1"), ("transferops-source", "1")}
    # the alias is recorded as given and pinned to the version it named: lineage re-runs that one
    assert main(["lineage", "1", "-C", str(proj), "--json"]) == 0
    chain, _ = one_json(capfd)
    assert chain["source"] == "models:/transferops-source@champion"
    assert chain["source_version"] == "models:/transferops-source/1"


@pytest.mark.integration
def test_demo(tmp_path, capfd, prefect_harness):
    """The whole demo, loop included: its story goes to stderr, its summary is the document. The
    noised production batch is detected, the estimate sees the drop, the retrain is promoted."""
    assert main(["demo", "-C", str(tmp_path / "demo"), "--json"]) == 0
    summary, err = one_json(capfd)
    assert summary["workdir"] == str((tmp_path / "demo").resolve()) and len(summary["runs"]) == 3
    assert all(f"{i}/6" in err for i in range(1, 7))
    watch, new = summary["monitor"], summary["retrain"]
    assert watch["is_drift"] and watch["retrain"] and watch["n_images"] == PRODUCTION_IMAGES
    # small data, where transfer matters most: it beats the same-budget scratch baseline
    auto = summary["runs"][1]
    assert auto["strategy"] == "feature_extraction" and auto["vs_scratch"] > 0
    # the champion really is worse on the noised batch, and the estimate says so without labels
    assert watch["realized_accuracy"] < watch["heldout_accuracy"] - 0.05
    assert watch["estimated_accuracy"] < watch["heldout_accuracy"] - 0.05
    assert new["status"] == "retrained" and new["promoted"] and new["version"] == "2"
    assert summary["champion"] == "transferops-classifier v2"
    assert [r["promoted"] for r in summary["runs"]] == ["champion (source)", "champion", "champion"]
    index = (tmp_path / "demo" / "reports" / "README.md").read_text()
    assert "Production drifted" in index and "demo-monitor" in index and "demo-retrain" in index
