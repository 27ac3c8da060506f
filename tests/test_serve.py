"""`transferops serve` reads prefect.yaml into Prefect runner deployments (no server needed here;
tests/test_loop_server.py serves them on a real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.serve import DEFAULT_PREFECT_FILE, deployment_specs, runner_deployments
from transferops.errors import InputError


def test_by_default_every_deployment_off_the_gpu_pool_is_served():
    names = [d["name"] for d in deployment_specs(DEFAULT_PREFECT_FILE)]
    assert {"monitor", "retrain", "train"} <= set(names) and "train-gpu" not in names
    assert [d["name"] for d in deployment_specs(DEFAULT_PREFECT_FILE, ("train-gpu",))] == ["train-gpu"]


def test_served_deployments_keep_the_schedule_trigger_and_concurrency_of_prefect_yaml():
    monitor, retrain = runner_deployments(deployment_specs(DEFAULT_PREFECT_FILE, ("monitor", "retrain")))
    assert monitor.entrypoint == "flows.monitor.monitor" and retrain.entrypoint == "flows.retrain.retrain"
    assert [s.schedule.cron for s in monitor.schedules] == ["0 6 * * *"]
    assert monitor.parameters == {"params": {"batch": "production/incoming"}}
    (trigger,) = retrain.triggers
    assert trigger.expect == {"transferops.drift.detected"} and trigger.within.total_seconds() == 86400
    assert trigger.parameters["params"]["trigger"]["event_id"] == "{{ event.id | string }}"
    assert retrain.concurrency_limit == 1 and retrain.concurrency_options.collision_strategy == "CANCEL_NEW"
    # reading the file twice gives the same triggers (Prefect names them in place)
    again = runner_deployments(deployment_specs(DEFAULT_PREFECT_FILE, ("retrain",)))[0]
    assert again.triggers[0].name == trigger.name == "retrain__automation_1"


@pytest.mark.parametrize("text,names,message", [
    (None, ("nope",), "has no deployment named nope"),
    ("deployments: [\n", (), "cannot read the deployment file"),
])
def test_bad_deployment_files_and_names_get_one_line(tmp_path, text, names, message):
    path = DEFAULT_PREFECT_FILE
    if text is not None:
        path = tmp_path / "prefect.yaml"
        path.write_text(text)
    with pytest.raises(InputError, match=message):
        deployment_specs(Path(path), names)


def test_a_schedule_serve_cannot_run_is_refused(tmp_path):
    path = tmp_path / "prefect.yaml"
    path.write_text("deployments:\n  - name: m\n    entrypoint: flows/monitor.py:monitor\n    schedules: [{rrule: 'FREQ=DAILY'}]\n")
    with pytest.raises(InputError, match="only cron and interval schedules"):
        runner_deployments(deployment_specs(path))


def test_the_gpu_pool_is_only_used_through_a_configured_api_and_an_unset_pool_disables_it():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.deployments import check_pool, gpu_worker_online

    # Prefect's ephemeral API (no URL) runs in the retrain's own process: no worker to hand to
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not gpu_worker_online("transferops-gpu")
        assert check_pool("transferops-gpu").reason == "no Prefect API configured"
    for unset in (None, ""):
        assert check_pool(unset).reason == "hand-off disabled (monitor.gpu_pool unset)"


def test_a_retrain_hands_train_params_with_its_trigger_and_no_project_folder():
    from flows.train import TrainParams

    params = TrainParams(source="models:/transferops-source@champion", data_rev="a1b2c3d",
                         trigger={"event_id": "e-1", "p_value": "0.001"})
    dumped = params.model_dump(mode="json")
    # what run_deployment sends: JSON, read back the same by the deployment's flow
    assert TrainParams.model_validate(dumped) == params
    assert dumped["trigger"] == {"event_id": "e-1", "p_value": "0.001"} and dumped["project_dir"] is None
    assert TrainParams(source="x:y").trigger is None  # a plain train run is no retrain
