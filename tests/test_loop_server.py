"""The whole loop on the real thing: a `prefect server`, deployments from prefect.yaml, a process
worker, the monitor's drift event and the retrain deployment's trigger.

Guards Prefect's server against the FastAPI versions it breaks with (pyproject pins the range).
Every process started here is stopped by its process id (its process group) at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tasks.prefect_server import api_healthy, port_in_use, stop_process
from transferops.samples import write_shapes

pytestmark = [pytest.mark.integration, pytest.mark.server]
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    # a session of its own: stopping it stops its children (the worker's flow runs) too
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _poll(check, timeout: float, what: str, interval: float = 1.0, procs: tuple = ()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        for p, log in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: {p.args[2:5]} exited with {p.returncode}:\n{Path(log).read_text()[-3000:]}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _cli(env: dict[str, str], project: Path, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "transferops.cli", "-C", str(project), "--json", *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"transferops {' '.join(args)} failed:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A real prefect server and a process worker on transferops-cpu, on a fresh database."""
    root = tmp_path_factory.mktemp("loop")
    project = root / "project"
    project.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": url,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2", "TRANSFEROPS_PROJECT_DIR": str(project),
        # the worker's flow runs find the project through the environment; the loop retrains on any drift
        "TRANSFEROPS_MONITOR__RETRAIN_ON": "drift", "TRANSFEROPS_TRAINING__MIN_STEPS": "0",
        "TRANSFEROPS_STRATEGY__BASELINE_MAX_TRAIN_IMAGES": "0",
    }
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        server = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        env, root / "server.log")
        procs.append((server, root / "server.log"))

        _poll(lambda: api_healthy(url), 240, "the prefect server to answer /health", procs=tuple(procs))
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "transferops-cpu", "--type", "process"],
                       env=env, check=True, capture_output=True, timeout=120)
        worker = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "transferops-cpu",
                         "--type", "process"], env, root / "worker.log")
        procs.append((worker, root / "worker.log"))
        yield {"root": root, "project": project, "url": url, "env": env, "procs": tuple(procs)}
    finally:
        for p, _ in reversed(procs):
            stop_process(p)


def _retrain_runs(url: str) -> list[dict]:
    body = {"deployments": {"name": {"any_": ["retrain"]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return httpx.post(f"{url}/flow_runs/filter", json=body, timeout=10).json()


def _events(url: str, name: str, since: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since}}, "limit": 50}
    return httpx.post(f"{url}/events/filter", json=body, timeout=10).json()["events"]


def test_drift_event_triggers_one_retrain_that_promotes_then_the_window_and_a_clean_batch_trigger_none(
        stack, source_bundle, flat_batch):
    root, project, url, env, procs = (stack[k] for k in ("root", "project", "url", "env", "procs"))
    since = datetime.now(UTC).isoformat()
    # a first champion on plain shapes
    first = _cli(env, project, "train", "--data", str(write_shapes(root / "plain", per_class=30, seed=1)),
                 "--source", str(source_bundle), "--strategy", "feature_extraction")
    assert first["promoted"] and first["version"] == "1"
    # deploy monitor and retrain from prefect.yaml, with the workers' checkout as working directory
    spec = (REPO / "prefect.yaml").read_text().replace("directory: /opt/transferops", f"directory: {REPO}")
    (root / "prefect.yaml").write_text(spec)
    _cli(env, project, "deploy", "--prefect-file", str(root / "prefect.yaml"), "--name", "monitor", "--name", "retrain")
    # labelled data of the new look arrives, then production drifts to it
    _cli(env, project, "data", "add", str(write_shapes(root / "labelled-shifted", per_class=30, seed=2, style="shifted")))
    shifted = _cli(env, project, "monitor", "--batch", str(flat_batch(root, "batch-shifted-1", 3, "shifted")[0]))
    assert shifted["is_drift"] and shifted["retrain"] and shifted["events"]["transferops.drift.detected"]

    runs = _poll(lambda: _retrain_runs(url), 60, "the trigger to create a retrain run", procs=procs)
    assert len(runs) == 1
    params = runs[0]["parameters"]["params"]["trigger"]
    assert params["event_id"] == shifted["events"]["transferops.drift.detected"]
    assert params["monitor_run_id"] == shifted["run_id"] and float(params["p_value"]) == pytest.approx(shifted["p_val"])
    done = _poll(lambda: [r for r in _retrain_runs(url) if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")],
                 480, "the retrain run to finish", interval=3, procs=procs)
    assert done[0]["state_type"] == "COMPLETED", (root / "worker.log").read_text()[-4000:]
    status = _cli(env, project, "status")
    champion = [r for r in status if r["model"] == "transferops-classifier" and "champion" in r["aliases"]]
    assert champion and champion[0]["version"] == "2", status
    # the monitor's daily schedule made runs (Prefect's scheduler breaks on SQLAlchemy 2.1)
    assert champion[0]["next_monitor"][:4].isdigit(), champion[0]["next_monitor"]
    assert champion[0]["last_retrain"]["status"] == "promoted" and champion[0]["last_monitor"]["is_drift"]

    # a batch that drifts from the new champion too, within the trigger's window: its event
    # arrives, no run follows
    again = _cli(env, project, "monitor", "--batch", str(flat_batch(root, "batch-inverted", 4, "shifted", invert=True)[0]))
    assert again["retrain"]
    _poll(lambda: len(_events(url, "transferops.drift.detected", since)) >= 2, 60, "the second drift event")
    deadline = time.monotonic() + 15  # the trigger acts within a second or two of an event
    while time.monotonic() < deadline:
        assert len(_retrain_runs(url)) == 1
        time.sleep(1)

    # a batch that looks like what the new champion trained on (the shifted shapes replaced the
    # plain ones: same file names): checked, not detected
    clean = _cli(env, project, "monitor", "--batch", str(flat_batch(root, "batch-clean", 5, "shifted")[0]))
    assert not clean["is_drift"] and "transferops.drift.detected" not in clean["events"]
    _poll(lambda: len(_events(url, "transferops.drift.checked", since)) >= 3, 60, "the third checked event")
    assert len(_events(url, "transferops.drift.detected", since)) == 2 and len(_retrain_runs(url)) == 1


def _get(url: str, path: str) -> dict:
    res = httpx.get(f"{url}{path}", timeout=10)
    res.raise_for_status()
    return res.json()


def test_a_retrain_hands_training_to_the_gpu_deployment_while_its_pool_has_a_worker_online(stack, source_bundle):
    """A worker on transferops-gpu: a forced retrain runs `train-gpu` as its subflow (on the CPU here:
    the test's copy of prefect.yaml sets the deployment's device to cpu) and reads the summary back."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import registry
    from tasks.deployments import gpu_worker_online
    from transferops.config import load_settings

    root, project, url, env = (stack[k] for k in ("root", "project", "url", "env"))
    with temporary_settings({PREFECT_API_URL: url}):
        assert not gpu_worker_online("transferops-gpu")  # no such pool yet
    log = root / "worker-gpu.log"
    worker = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "transferops-gpu", "--type", "process"],
                    env, log)
    try:
        spec = (REPO / "prefect.yaml").read_text().replace("directory: /opt/transferops", f"directory: {REPO}")
        spec = spec.replace("TRANSFEROPS_TRAINING__DEVICE: cuda", "TRANSFEROPS_TRAINING__DEVICE: cpu")
        assert "TRANSFEROPS_TRAINING__DEVICE: cpu" in spec
        (root / "prefect-gpu.yaml").write_text(spec)
        _cli(env, project, "deploy", "--prefect-file", str(root / "prefect-gpu.yaml"), "--name", "train-gpu")
        with temporary_settings({PREFECT_API_URL: url}):
            _poll(lambda: gpu_worker_online("transferops-gpu"), 120, "the gpu worker to be online", procs=((worker, log),))
        if registry.alias_version(load_settings(project), "transferops-classifier", "champion") is None:  # run alone
            _cli(env, project, "train", "--data", str(write_shapes(root / "plain", per_class=30, seed=1)),
                 "--source", str(source_bundle), "--strategy", "feature_extraction")
        res = _cli(env, project, "retrain", "--force", "--strategy", "feature_extraction")
    finally:
        stop_process(worker)
        httpx.delete(f"{url}/work_pools/transferops-gpu", timeout=10)  # later retrains of the module train in-process
    where = res["trained_on"]
    assert where["where"] == "gpu pool transferops-gpu" and where["deployment"] == "transferops-train/train-gpu"
    child = _get(url, f"/flow_runs/{where['flow_run_id']}")
    assert child["state_type"] == "COMPLETED", log.read_text()[-4000:]
    assert child["deployment_id"] == _deployment(url, "transferops-train/train-gpu")["id"]
    parent = _get(url, f"/flow_runs/{_get(url, '/task_runs/' + child['parent_task_run_id'])['flow_run_id']}")
    assert _get(url, f"/flows/{parent['flow_id']}")["name"] == "transferops-retrain"
    assert parent["parameters"]["params"]["trigger"] == {"by": "command line"} and parent["state_type"] == "COMPLETED"

    s = load_settings(project)
    version = [v for v in registry.list_versions(s, s.model_name) if v.version == res["version"]][0]
    assert version.run_id == res["run_id"] and version.tags["transferops.data_rev"] == res["data_rev"]
    assert float(version.tags["transferops.test_accuracy"]) == pytest.approx(res["test_accuracy"], abs=1e-6)
    run = registry.client(s).get_run(res["run_id"])
    assert run.data.tags["transferops.prefect_flow_run_id"] == where["flow_run_id"]
    assert run.data.tags["transferops.flow"] == "retrain" and run.data.params["training.device"] == "cpu"
    last = json.loads(registry.model_tags(s, s.model_name)["transferops.last_retrain"])
    assert last["trained_on"] == where and last["version"] == res["version"]


def _deployment(url: str, name: str) -> dict | None:
    try:
        res = httpx.get(f"{url}/deployments/name/{name}", timeout=5)
    except httpx.HTTPError:  # not up yet
        return None
    return res.json() if res.status_code == 200 else None


def test_serve_runs_the_loop_without_workers_on_a_server_it_starts_and_stops(tmp_path, source_bundle, flat_batch):
    """`transferops serve`: no PREFECT_API_URL, so it starts a local server in the project; the
    monitor deployment gets its schedule, a drift event runs the retrain in the serving process."""
    project = tmp_path / "project"
    project.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")} | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false", "DO_NOT_TRACK": "1",
        "TRANSFEROPS_MONITOR__RETRAIN_ON": "drift", "TRANSFEROPS_TRAINING__MIN_STEPS": "0",
        "TRANSFEROPS_STRATEGY__BASELINE_MAX_TRAIN_IMAGES": "0"}
    log = tmp_path / "serve.log"
    serve = _start([sys.executable, "-m", "transferops.cli", "-C", str(project), "--json", "serve", "--port", str(port),
                    "--name", "monitor", "--name", "retrain"], env, log, cwd=tmp_path)
    procs = ((serve, log),)
    try:
        _poll(lambda: _deployment(url, "transferops-retrain/retrain"), 300, "serve to register the deployments",
              procs=procs)
        assert (project / ".transferops" / "prefect" / "prefect.db").exists()  # the server lives in the project
        monitor_dep = _deployment(url, "transferops-monitor/monitor")
        assert [s["schedule"]["cron"] for s in monitor_dep["schedules"]] == ["0 6 * * *"]
        assert _deployment(url, "transferops-retrain/retrain")["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"

        cli_env = env | {"PREFECT_API_URL": url}
        first = _cli(cli_env, project, "train", "--data", str(write_shapes(tmp_path / "plain", per_class=30, seed=1)),
                     "--source", str(source_bundle), "--strategy", "feature_extraction")
        assert first["version"] == "1"
        _cli(cli_env, project, "data", "add", str(write_shapes(tmp_path / "shifted", per_class=30, seed=2, style="shifted")))
        shifted = _cli(cli_env, project, "monitor", "--batch", str(flat_batch(tmp_path, "batch", 3, "shifted")[0]))
        assert shifted["retrain"] and shifted["events"]["transferops.drift.detected"]
        done = _poll(lambda: [r for r in _retrain_runs(url) if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")],
                     480, "the served retrain run to finish", interval=3, procs=procs)
        assert len(done) == 1 and done[0]["state_type"] == "COMPLETED", log.read_text()[-4000:]
        champion = [r for r in _cli(cli_env, project, "status") if "champion" in r["aliases"] and r["version"] == "2"]
        assert champion and champion[0]["next_monitor"][:4].isdigit(), champion
    finally:
        stop_process(serve)
    # SIGTERM to serve stopped the server it had started, too
    assert serve.returncode == 0, log.read_text()[-3000:]
    _poll(lambda: not port_in_use(port), 30, "the local server to stop")

