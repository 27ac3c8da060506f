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
