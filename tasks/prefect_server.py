"""A local ``prefect server`` for ``transferops serve`` when no Prefect API is configured.

Prefect's ephemeral API (what a flow called from Python uses) runs no scheduler, so a served
deployment would never get its scheduled runs there. A real server on 127.0.0.1, with its
database in the project (``.transferops/prefect``), keeps the schedules, the automations behind
the triggers, and the run history between sessions. It is stopped by its process id when the
``with`` block ends, whatever ends it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from transferops.errors import InputError

# a new database takes ~30 s to migrate on 2 cores; a loaded machine may need several times that
START_TIMEOUT_S = 300.0


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def api_healthy(url: str) -> bool:
    """Whether the Prefect API at ``url`` answers ``/health``."""
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def local_server(home: Path, port: int, say: Callable[[str], None] = lambda _m: None,
                 timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start ``prefect server`` on 127.0.0.1:``port`` with its home and database in ``home``;
    yield its API URL once it answers ``/health``; stop it (and its children) on exit."""
    url = f"http://127.0.0.1:{port}/api"
    if port_in_use(port):
        raise InputError(f"port {port} on 127.0.0.1 is in use; pass another --port, or set PREFECT_API_URL to use "
                         "the server that is running there")
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    say(f"starting a local Prefect server on {url} (database and log in {home}; the first start migrates "
        "the database, about 30 s)")
    with open(log, "ab") as out:
        # a session of its own, so that stopping it stops the processes it started too
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not api_healthy(url):
            if proc.poll() is not None:
                raise InputError(f"the local Prefect server exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise InputError(f"the local Prefect server did not answer within {timeout_s:.0f} s; see {log}")
            time.sleep(1)
        say(f"Prefect server ready: {url.removesuffix('/api')} (UI and API)")
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """Stop ``proc``, started with ``start_new_session=True``, and every process of its session:
    SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
