"""The monitor and retrain flows under Prefect's test harness, on a real MLflow store and git+DVC repo."""

from __future__ import annotations

import json

import pytest
import yaml

from transferops.samples import write_shapes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loop(prefect_harness, tmp_path_factory, source_bundle):
    """A project with a feature-extraction champion on plain shapes."""
    from flows.train import TrainParams, train

    root = tmp_path_factory.mktemp("loop-flows")
    project = root / "project"
    project.mkdir()
    # the scratch baseline is tested elsewhere; here it would only cost minutes
    (project / "transferops.yaml").write_text(yaml.safe_dump({"monitor": {"retrain_on": "drift"},
                                                              "strategy": {"baseline_max_train_images": 0}}))
    first = train(TrainParams(source=str(source_bundle), data=str(write_shapes(root / "plain", per_class=30, seed=1)),
                              strategy="feature_extraction", project_dir=str(project), run_name="first"))
    assert first["promoted"]
    return root, project


def test_monitor_logs_reports_remembers_and_emits(loop, flat_batch):
    from flows.monitor import LAST_MONITOR_TAG, MonitorParams, monitor
    from tasks import registry
    from transferops.config import load_settings

    root, project = loop
    res = monitor(MonitorParams(batch=str(flat_batch(root, "shifted", 3, "shifted")[0]), project_dir=str(project)))
    assert res["is_drift"] and res["retrain"] and res["version"] == "1"
    assert set(res["events"]) == {"transferops.drift.checked", "transferops.drift.detected"}
    s = load_settings(project)
    c = registry.client(s)
    exp = c.get_experiment_by_name(f"{s.experiment}-monitoring")
    run = c.get_run(res["run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.data.metrics["is_drift"] == 1.0
    assert "estimated_accuracy" in run.data.metrics and "bbsd_p_val" in run.data.metrics
    arts = {a.path for a in c.list_artifacts(res["run_id"], "report")}
    assert {"report/report.md", "report/class_mix.png", "report/monitor_embeddings.png"} <= arts
    last = json.loads(registry.model_tags(s, s.model_name)[LAST_MONITOR_TAG])
    assert last["run_id"] == res["run_id"] and last["is_drift"] is True


def test_retrain_needs_new_data_records_its_trigger_then_cools_down(loop):
    from flows.retrain import LAST_RETRAIN_TAG, RetrainParams, retrain
    from tasks import registry
    from tasks.tracking import summary_of_flow_run
    from transferops.cli import main
    from transferops.config import load_settings
    from transferops.errors import InputError

    root, project = loop
    trigger = {"event_id": "e-1", "monitor_run_id": "m-1", "p_value": "0.001"}
    same = retrain(RetrainParams(project_dir=str(project), trigger=trigger))
    assert same["status"] == "skipped" and "no new labelled data" in same["reason"]
    assert main(["-C", str(project), "data", "add", str(write_shapes(root / "new", per_class=30, seed=2, style="shifted"))]) == 0
    done = retrain(RetrainParams(project_dir=str(project), trigger=trigger, strategy="feature_extraction"))
    assert done["status"] == "retrained" and done["version"] == "2"
    # scored on the champion's own test data and on the new images too, both models by the same code
    assert set(done["slices"]) == {"previous_test", "new_test"}, done["slices_note"]
    assert all(r["champion"] is not None and r["images"] > 0 for r in done["slices"].values())
    # the harness's API has no transferops-gpu pool, so the training ran here, and says why
    assert done["trained_on"] == {"where": "in-process", "reason": "no worker online in pool transferops-gpu (no such pool)"}
    s = load_settings(project)
    v2 = [v for v in registry.list_versions(s, s.model_name) if v.version == "2"][0]
    assert json.loads(v2.tags["transferops.trigger"])["event_id"] == "e-1"
    run = registry.client(s).get_run(done["run_id"])
    assert {"previous_test_accuracy", "previous_test_champion_accuracy", "new_test_accuracy"} <= set(run.data.metrics)
    assert run.data.tags["transferops.flow"] == "retrain" and run.data.tags["transferops.trigger.monitor_run_id"] == "m-1"
    # the summary a retrain reads back when the GPU pool trained: found by the Prefect flow run id
    summary = summary_of_flow_run(s, run.data.tags["transferops.prefect_flow_run_id"])
    assert summary["run_id"] == done["run_id"] and summary["version"] == "2" and "report" not in summary
    with pytest.raises(InputError, match="no finished MLflow run of Prefect flow run nope"):
        summary_of_flow_run(s, "nope")
    last = json.loads(registry.model_tags(s, s.model_name)[LAST_RETRAIN_TAG])
    assert last["run"] == done["run_name"] and last["version"] == "2" and last["status"] in ("promoted", "not promoted")
    assert last["trained_on"] == done["trained_on"]
    again = retrain(RetrainParams(project_dir=str(project), trigger=trigger))
    assert again["status"] == "skipped" and again["reason"].startswith("cooldown")


def test_monitor_reads_a_batch_tracked_by_dvc_in_a_data_registry_at_a_revision(loop, flat_batch):
    """A production batch versioned with plain `dvc add` in another git+DVC repository: the monitor
    copies it as of --rev (from DVC's cache; the workspace copy is gone) and records what it read."""
    import shutil

    from dvc.repo import Repo

    from flows.monitor import MonitorParams, monitor
    from tasks.dvcstore import VersioningError, git

    root, project = loop
    registry_repo = root / "data-registry"
    registry_repo.mkdir()
    git(registry_repo, "init", "-q")
    Repo.init(str(registry_repo))
    day = registry_repo / "production" / "day1"
    revs = {}
    for version, (seed, n_styles) in {"one": (6, ("shifted",)), "two": (7, ("shifted", "plain"))}.items():
        shutil.rmtree(day, ignore_errors=True)
        shutil.copytree(flat_batch(root, f"registry-{version}", seed, *n_styles)[0], day)
        Repo(str(registry_repo)).add(str(day))
        git(registry_repo, "add", "-A")
        git(registry_repo, "commit", "-q", "-m", f"production day1 {version}")
        revs[version] = git(registry_repo, "rev-parse", "HEAD")
    shutil.rmtree(day)  # only git and DVC's cache know the images now

    first = monitor(MonitorParams(batch="production/day1", batch_repo=str(registry_repo), batch_rev=revs["one"],
                                  project_dir=str(project), emit_events=False))
    assert first["n_images"] == 45 and first["batch_version"]["rev"] == revs["one"]
    latest = monitor(MonitorParams(batch="production/day1", batch_repo=str(registry_repo), project_dir=str(project),
                                   emit_events=False))
    assert latest["n_images"] == 90 and latest["batch_version"]["rev"] == revs["two"]
    assert latest["batch_version"]["md5"] != first["batch_version"]["md5"]
    with pytest.raises(VersioningError, match="is not tracked by DVC"):
        monitor(MonitorParams(batch="production", batch_repo=str(registry_repo), project_dir=str(project),
                              emit_events=False))
