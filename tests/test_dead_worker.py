"""A worker that dies: its flow run ends CRASHED (not RUNNING forever), a retry on another worker
resumes the training from its checkpoint and completes, and the registry never holds a partial version.

The real thing: a `prefect server` on a fresh SQLite database, the train deployment registered by
`transferops deploy` (which also creates the zombie automation, tasks/automations.py), process
workers on transferops-cpu. "Dies" is what a machine or container failure does: SIGKILL to the
worker *and* to the flow-run process it started (Prefect 3.8's process worker starts each run in a
session of its own, so killing the worker alone leaves the run's process training to the end). The
run is then marked CRASHED by the automation after its heartbeats stop, never by this test.
Every process started here is stopped by its process id at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_loop_server import _cli, _free_port, _poll, _start

from tasks.prefect_server import api_healthy, stop_process
from transferops.samples import write_shapes

pytestmark = [pytest.mark.integration, pytest.mark.server]
REPO = Path(__file__).resolve().parent.parent
MODEL = "transferops-classifier"
HEARTBEAT_S = 30  # prefect.yaml's value, Prefect's minimum
CRASH_AFTER_S = 60  # two heartbeats: the smallest window `transferops deploy --crash-after` accepts
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _flow_run(url: str, run_id: str) -> dict:
    res = httpx.get(f"{url}/flow_runs/{run_id}", timeout=10)
    res.raise_for_status()
    return res.json()


def _heartbeats(url: str, run_id: str) -> int:
    body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}
    return len(httpx.post(f"{url}/events/filter", json=body, timeout=10).json()["events"])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_machine(worker: subprocess.Popen) -> dict[int, tuple[str, int]]:
    """SIGKILL the worker's process group and every process it started (the flow run's own
    session included), as a dying machine would; returns those processes' command lines and sessions."""
    below = {}
    for pid in _descendants(worker.pid):
        try:
            below[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"),
                          os.getsid(pid))
        except OSError:  # gone meanwhile
            pass
    os.killpg(worker.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait(30)
    return below


def _runs_of(settings, flow_run_id: str) -> list:
    from tasks import registry
    from tasks.tracking import FLOW_RUN_TAG

    c = registry.client(settings)
    exp = c.get_experiment_by_name(settings.experiment)
    return c.search_runs([exp.experiment_id], f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'") if exp else []


def _steps(settings, run_id: str) -> list[int]:
    from tasks import registry

    return sorted(m.step for m in registry.client(settings).get_metric_history(run_id, "val_loss"))


def test_a_dead_worker_leaves_a_crashed_run_that_resumes_on_another_worker_and_registers_once(tmp_path, source_bundle):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import registry
    from tasks.automations import ensure_zombie_automation
    from transferops.config import load_settings

    started = time.monotonic()
    project = tmp_path / "project"
    project.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2", "TRANSFEROPS_PROJECT_DIR": str(project),
        # three short epochs, a checkpoint after each: killed in the second, the retry trains two
        "TRANSFEROPS_TRAINING__MIN_STEPS": "24", "TRANSFEROPS_TRAINING__CHECKPOINT_INTERVAL_S": "0",
        "TRANSFEROPS_TRAINING__PATIENCE": "1000", "TRANSFEROPS_STRATEGY__BASELINE_MAX_TRAIN_IMAGES": "0",
        "TRANSFEROPS_PROMOTION__LATENCY_REPEATS": "0",
    }
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        server = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        env, tmp_path / "server.log")
        procs.append((server, tmp_path / "server.log"))
        data = write_shapes(tmp_path / "shapes", per_class=30, seed=1)
        _poll(lambda: api_healthy(url), 240, "the prefect server to answer /health", procs=tuple(procs))
        _cli(env, project, "data", "add", str(data))
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "transferops-cpu", "--type", "process"],
                       env=env, check=True, capture_output=True, timeout=120)
        # the deployment as the project registers it, from the workers' checkout; the automation with it
        spec = (REPO / "prefect.yaml").read_text().replace("directory: /opt/transferops", f"directory: {REPO}")
        assert f'PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "{HEARTBEAT_S}"' in spec
        (tmp_path / "prefect.yaml").write_text(spec)
        deployed = _cli(env, project, "deploy", "--prefect-file", str(tmp_path / "prefect.yaml"), "--name", "train",
                        "--crash-after", str(CRASH_AFTER_S))
        assert deployed["zombie_automation"]["action"] == "created"
        with temporary_settings({PREFECT_API_URL: url}):  # a second deploy finds it as it is
            again = ensure_zombie_automation(float(CRASH_AFTER_S))
        assert again == deployed["zombie_automation"] | {"action": "unchanged"}

        worker_a = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "transferops-cpu",
                           "--type", "process", "--name", "worker-a"], env, tmp_path / "worker-a.log")
        procs.append((worker_a, tmp_path / "worker-a.log"))
        dep = httpx.get(f"{url}/deployments/name/transferops-train/train", timeout=10).json()
        params = {"source": str(source_bundle), "strategy": "partial_finetune", "run_name": "dead-worker"}
        res = httpx.post(f"{url}/deployments/{dep['id']}/create_flow_run", json={"parameters": {"params": params}},
                         timeout=10)
        res.raise_for_status()
        run_id = res.json()["id"]

        # training is under way (an evaluation logged, so its checkpoint is on disk: fit saves
        # first) and the server has heard the run's heartbeat, which starts the automation's clock
        s = load_settings(project)
        checkpoints = s.checkpoints_dir

        def training() -> bool:
            if _flow_run(url, run_id)["state_type"] in FINAL:
                return True
            if not any(checkpoints.glob("*.pt")):  # nor read MLflow's database before the run created it
                return False
            runs = _runs_of(s, run_id)
            return bool(runs and _steps(s, runs[0].info.run_id) and _heartbeats(url, run_id))

        _poll(training, 300, "the run to train and send a heartbeat", interval=0.3, procs=tuple(procs))
        assert _flow_run(url, run_id)["state_type"] == "RUNNING", (tmp_path / "worker-a.log").read_text()[-4000:]

        procs.remove((worker_a, tmp_path / "worker-a.log"))
        killed = _kill_machine(worker_a)
        killed_at = time.monotonic()
        # a replacement comes up meanwhile; it cannot take a run that is RUNNING (or CRASHED)
        worker_b = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "transferops-cpu",
                           "--type", "process", "--name", "worker-b"], env, tmp_path / "worker-b.log")
        procs.append((worker_b, tmp_path / "worker-b.log"))
        # the flow run's process was the worker's child, in a session of its own: the worker's
        # process group alone would not have taken it down
        engines = [sid for cmd, sid in killed.values() if "prefect.engine" in cmd]
        assert engines and all(sid != worker_a.pid for sid in engines), killed
        _poll(lambda: not any(_alive(p) for p in killed), 30, "the killed processes to be gone")

        # nothing reports the death: only the heartbeat automation ends the run
        crashed = _poll(lambda: (r := _flow_run(url, run_id))["state_type"] != "RUNNING" and r, CRASH_AFTER_S + 120,
                        "the zombie automation to crash the run", interval=2, procs=tuple(procs))
        waited = time.monotonic() - killed_at
        assert crashed["state_type"] == "CRASHED", crashed["state"]
        assert "no heartbeat" in crashed["state"]["message"], crashed["state"]
        assert waited < CRASH_AFTER_S + 60, f"crashed {waited:.0f} s after the kill"

        # the dead attempt registered nothing; its MLflow run stays as SIGKILL left it
        assert registry.list_versions(s, MODEL) == []
        dead = _runs_of(s, run_id)
        assert len(dead) == 1 and dead[0].info.status == "RUNNING"
        dead_steps = _steps(s, dead[0].info.run_id)
        assert dead_steps, "the dead attempt logged no evaluation"

        assert run_id not in (tmp_path / "worker-b.log").read_text()
        # the operator's retry: the run is scheduled again and the live worker takes it
        retry = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", run_id], env=env,
                               capture_output=True, text=True, timeout=120)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        done = _poll(lambda: (r := _flow_run(url, run_id))["state_type"] in FINAL and r, 420,
                     "the retried run to finish", interval=2, procs=tuple(procs))
        assert done["state_type"] == "COMPLETED", (tmp_path / "worker-b.log").read_text()[-4000:]
        assert run_id in (tmp_path / "worker-b.log").read_text()  # worker B ran it

        # exactly one version, from the retry's run, holding the aliases the flow moved
        versions = registry.list_versions(s, MODEL)
        assert len(versions) == 1, versions
        runs = {r.info.run_id: r for r in _runs_of(s, run_id)}
        assert len(runs) == 2 and runs[versions[0].run_id].info.status == "FINISHED"
        assert "challenger" in versions[0].aliases
        assert ("champion" in versions[0].aliases) == (versions[0].tags["transferops.promotion"] == "promote")
        # the retry resumed after the dead attempt's last checkpoint instead of starting over
        resumed = _steps(s, versions[0].run_id)
        assert resumed and resumed[0] > dead_steps[-1], (dead_steps, resumed)
    finally:
        for p, _ in reversed(procs):
            # a worker's flow-run process lives in a session of its own: stopped by its pid too
            below = _descendants(p.pid)
            stop_process(p)
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print(f"dead-worker scenario: {time.monotonic() - started:.0f} s, crashed {waited:.0f} s after the kill")


def test_a_retry_deletes_the_undecided_version_its_dead_attempt_registered(tmp_path):
    """The crash window inside registration: an attempt that registered its version and died before
    deciding on it (run RUNNING, no alias) leaves a version the retry of the same flow run deletes;
    a finished attempt's version, an aliased one and another flow run's are kept."""
    from tasks import registry
    from tasks.served_model import FLOW_RUN_VERSION_TAG, drop_partial_versions
    from transferops.config import Settings

    s = Settings(project_dir=tmp_path)
    c = registry.client(s)
    exp = registry.experiment_id(s)
    registry.ensure_registered(c, MODEL)

    def attempt(flow_run: str, status: str | None) -> str:
        run = c.create_run(exp)
        if status:
            c.set_terminated(run.info.run_id, status)
        mv = c.create_model_version(MODEL, "file:///nowhere", run_id=run.info.run_id,
                                    tags={FLOW_RUN_VERSION_TAG: flow_run})
        return str(mv.version)

    dead, failed, finished, aliased, other = (attempt("F", None), attempt("F", "FAILED"), attempt("F", "FINISHED"),
                                              attempt("F", None), attempt("G", None))
    c.set_registered_model_alias(MODEL, "champion", aliased)
    retry = c.create_run(exp).info.run_id
    assert drop_partial_versions(c, MODEL, retry, "F") == [dead, failed]
    assert {v.version for v in registry.list_versions(s, MODEL)} == {finished, aliased, other}
    assert drop_partial_versions(c, MODEL, retry, "F") == []  # nothing left to drop


def test_the_crash_window_follows_the_heartbeat_of_prefect_yaml_and_watches_only_transferops_runs():
    from tasks.automations import HEARTBEAT_ENV, crash_window, heartbeat_seconds, zombie_automation
    from transferops.errors import InputError

    beat = heartbeat_seconds(REPO / "prefect.yaml")
    assert beat == HEARTBEAT_S and crash_window(beat) == 3 * HEARTBEAT_S
    assert crash_window(beat, CRASH_AFTER_S) == CRASH_AFTER_S
    with pytest.raises(InputError, match="two heartbeats"):
        crash_window(beat, 45)
    trigger = zombie_automation(90).trigger
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 90
    assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.Completed" in trigger.expect
    assert trigger.model_dump(mode="json")["match_related"] == {"prefect.resource.role": "tag",
                                                                "prefect.resource.id": "prefect.tag.transferops"}
    assert HEARTBEAT_ENV == "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def test_a_retried_retrain_does_not_wait_out_the_cooldown_its_own_dead_attempt_started():
    from flows.retrain import LAST_RETRAIN_TAG, _last_start

    tags = {LAST_RETRAIN_TAG: json.dumps({"started": "2026-11-23T10:00:00+00:00", "flow_run_id": "F"})}
    assert _last_start(tags, "F") is None  # its own earlier attempt
    assert _last_start(tags, "G").isoformat() == "2026-11-23T10:00:00+00:00"  # another run's cooldown holds
    assert _last_start(tags) is not None and _last_start({}, "F") is None
