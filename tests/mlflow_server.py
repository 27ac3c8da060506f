"""A real ``mlflow server`` for the tests, and the promotion step the concurrency test runs in child processes.

The server runs on 127.0.0.1 (a free port) with its sqlite database and artifacts in a
temporary folder, telemetry off; it is stopped by its process group, and can be stopped and
started again on the same port, database and artifacts (an outage and its end).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT_S = 240.0  # a new database migrates in ~20 s on 2 idle cores; the CI box is rarely idle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` with its store in ``root``; ``url`` is its tracking URI."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root, self.workers, self.port = root, workers, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        """Start it (two workers: requests really race across processes) and wait for ``/health``."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        with open(self.root / "server.log", "ab") as log:
            # a session of its own: killing its group stops the uvicorn workers too
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not answer /health in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server's process group (SIGKILL by default: an outage, not a shutdown) and wait for it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:  # a worker outliving its parent still answers
            time.sleep(0.1)

    def log_tail(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-3000:]


def settings_for(project: Path, uri: str | None, **tracking: Any):
    """Settings of a project folder on tracking URI ``uri`` (None: its sqlite file); ``tracking`` sets the HTTP retry fields."""
    from transferops.config import Settings, TrackingConfig

    return Settings(project_dir=project, tracking_uri=uri, tracking=TrackingConfig(**tracking))


def register_version(settings, name: str, accuracy: float) -> str:
    """A finished run with ``test_accuracy`` and a tiny artifact, registered as a new version of ``name``."""
    from tasks import registry

    c = registry.client(settings)
    run = c.create_run(registry.experiment_id(settings), run_name=f"acc-{accuracy}")
    c.log_metric(run.info.run_id, "test_accuracy", accuracy)
    c.log_text(run.info.run_id, json.dumps({"accuracy": accuracy}), "model/metrics.json")
    c.set_terminated(run.info.run_id, "FINISHED")
    mv = c.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(mv.version)


def recorded_metrics(settings, name: str, version: str | None) -> dict[str, float] | None:
    """The ``accuracy`` a version's run recorded (what the concurrency test judges by), None for no version."""
    from tasks import registry

    if version is None:
        return None
    c = registry.client(settings)
    run_id = c.get_model_version(name, version).run_id
    return {"accuracy": c.get_run(run_id).data.metrics["test_accuracy"]}


def promote_step(project: str, uri: str, name: str, accuracy: float, barrier: Any, out: str) -> None:
    """One train run's end, in a process of its own: register a version, decide against the champion
    it sees, wait until every run has decided, then promote through the lock; writes what happened to ``out``."""
    from tasks import registry
    from tasks.promotion_lock import promote_if_still_best
    from transferops.config import PromotionConfig
    from transferops.promotion import decide_promotion

    s = settings_for(Path(project), uri)
    policy = PromotionConfig()
    version = register_version(s, name, accuracy)
    held = registry.alias_version(s, name, registry.CHAMPION)
    against = held.version if held else None
    decision = decide_promotion({"accuracy": accuracy}, recorded_metrics(s, name, against), policy, version=version)
    barrier.wait(timeout=300)  # every run has judged the same champion: now they all promote at once
    rejudged: list[str | None] = []

    def rejudge(now: str | None):
        rejudged.append(now)
        return decide_promotion({"accuracy": accuracy}, recorded_metrics(s, name, now), policy, version=version)

    final = promote_if_still_best(s, name, version, decision, against, rejudge)
    Path(out).write_text(json.dumps({"version": version, "accuracy": accuracy, "first": decision.promote,
                                     "promoted": final.promote, "rejudged": rejudged}))
