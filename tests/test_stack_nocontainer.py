"""The compose stack (infra/docker-compose.yml) without containers, and one flow run end to end on it.

No container engine runs on the project's machines, so the stack is brought up from the same
programs the images run: PostgreSQL from the distribution's packages (the ``prefect``, ``mlflow``
and ``mlflow_auth`` databases made by infra/initdb's script), moto's S3 server on 127.0.0.1 in
MinIO's place (buckets ``mlflow`` and ``dvc``), ``prefect server start`` on the ``prefect``
database and ``mlflow server`` on the ``mlflow`` database with its artifacts proxied to
``s3://mlflow``, each with the compose service's command and environment (test secrets in place
of infra/.env's), so authentication is on as there: Prefect requires the API auth string, and
MLflow runs the basic-auth app with the config the image bakes (infra/mlflow/basic_auth.ini, its
users in ``mlflow_auth``). The train command then runs the way a worker or a laptop does against
the shared stack (README's "Scaling out" plus the workers' credentials), every server is asked
what it holds with those credentials, and each API is checked to refuse a request without them.

Skipped only where no Postgres can be started: binaries absent, or root without a ``postgres``
user. Every process started here is stopped by its process id at the end.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pg_server import PostgresServer, unavailable
from test_infra import INFRA, SERVICES, command_of, dockerfile, dockerfile_env, environment, interpolate
from test_loop_server import _free_port, _poll, _start

from tasks.prefect_server import api_healthy, stop_process
from tasks.tracking import FLOW_RUN_TAG
from transferops.samples import write_shapes

pytestmark = [pytest.mark.integration, pytest.mark.server]
MODEL = "transferops-classifier"

# the compose file's telemetry block
TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "transferops-test", "AWS_SECRET_ACCESS_KEY": "transferops-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
# infra/.env's credentials (the Postgres ones come from the test server)
PREFECT_AUTH = "transferops:" + "prefect-test-password"
MLFLOW_LOGIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "mlflow-test-password"}
DOTENV = {"PREFECT_API_AUTH_STRING": PREFECT_AUTH, **MLFLOW_LOGIN,
          "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow-test-flask-secret-key",
          "AWS_ACCESS_KEY_ID": S3_KEYS["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}
# what a Prefect client sends for PREFECT_API_AUTH_STRING: the whole string, base64, as basic auth
PREFECT_HEADERS = {"Authorization": "Basic " + base64.b64encode(PREFECT_AUTH.encode()).decode()}


def _compose_env(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """A compose service's environment, its ``${VAR}`` values taken from ``dotenv`` (infra/.env's part)."""
    return {k: interpolate(v, dotenv) for k, v in environment(SERVICES[service]).items()}


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: moto's root path is not a health check)."""
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


def _mlflow_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _cli(env: dict[str, str], project: Path, log: Path, *args: str) -> dict:
    """``transferops -C project --json ARGS``: its JSON document; its stderr (progress, logs) kept in ``log``."""
    with open(log, "w") as err:
        res = subprocess.run([sys.executable, "-m", "transferops.cli", "-C", str(project), "--json", *args],
                             env=env, cwd=project, stdout=subprocess.PIPE, stderr=err, text=True, timeout=600)
    assert res.returncode == 0, f"transferops {' '.join(args)} failed with {res.returncode}:\n{log.read_text()[-4000:]}"
    return json.loads(res.stdout)


def _keys(s3, bucket: str) -> list[str]:
    """Every object key in ``bucket`` (all pages)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Postgres, S3, a prefect server and an mlflow server on 127.0.0.1, each on a free port."""
    if reason := unavailable():
        pytest.skip(reason)
    boto3 = pytest.importorskip("boto3")
    root = tmp_path_factory.mktemp("stack")
    # nothing from the caller's environment may point the servers or the run elsewhere
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API_", "PREFECT_SERVER_API_", "PREFECT_SERVER_DATABASE_", "TRANSFEROPS_",
                                 "MLFLOW_", "AWS_", "PG"))}
    base |= TELEMETRY | S3_KEYS | {"PREFECT_SERVER_UI_ENABLED": "false"}
    pg = PostgresServer()
    dotenv = DOTENV | {"POSTGRES_USER": pg.user, "POSTGRES_PASSWORD": pg.password}
    procs: list[tuple] = []
    try:
        pg.start()
        # what the postgres image runs on an empty volume: the prefect, mlflow and mlflow_auth databases
        pg.psql("-f", str(INFRA / "initdb" / "01-databases.sql"))

        s3_port = _free_port()
        s3_url = f"http://127.0.0.1:{s3_port}"
        moto = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                      base, root / "moto.log")
        procs.append((moto, root / "moto.log"))
        _poll(lambda: _answers(s3_url), 60, "the S3 server to answer", interval=0.3, procs=tuple(procs))
        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        for bucket in ("mlflow", "dvc"):  # minio-init's `mc mb local/mlflow local/dvc`
            s3.create_bucket(Bucket=bucket)

        # both servers migrate a new database on start: started together, they migrate at once
        prefect_port = _free_port()
        prefect_url = f"http://127.0.0.1:{prefect_port}/api"
        # the compose service's environment (PREFECT_SERVER_API_AUTH_STRING included); the database on this machine
        prefect_env = base | _compose_env("prefect-server", dotenv) | {
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": pg.url("prefect", "postgresql+asyncpg")}
        assert prefect_env["PREFECT_SERVER_API_AUTH_STRING"] == PREFECT_AUTH
        prefect = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(prefect_port)], prefect_env, root / "prefect.log")
        procs.append((prefect, root / "prefect.log"))
        mlflow_port = _free_port()
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        # the compose service's command (--app-name basic-auth, postgresql:///mlflow, s3://mlflow proxied)
        command = command_of("mlflow")
        assert command[:2] == ["mlflow", "server"] and "basic-auth" in command, command
        command[command.index("--host") + 1], command[command.index("--port") + 1] = "127.0.0.1", str(mlflow_port)
        # and its environment: libpq's PG* variables (the stores' URIs and the auth config's name only their
        # database), the admin login, the CSRF key; Postgres and S3 at this machine's addresses
        mlflow_env = base | _compose_env("mlflow", dotenv) | {
            "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "MLFLOW_S3_ENDPOINT_URL": s3_url}
        # the auth config the image bakes (Dockerfile.mlflow's COPY to its MLFLOW_AUTH_CONFIG_PATH), unchanged
        image_config = dockerfile_env(INFRA / "Dockerfile.mlflow")["MLFLOW_AUTH_CONFIG_PATH"]
        copies = {a.split()[-1]: a.split()[0] for i, a in dockerfile(INFRA / "Dockerfile.mlflow") if i == "COPY"}
        mlflow_env["MLFLOW_AUTH_CONFIG_PATH"] = str(INFRA / copies[image_config])
        assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= mlflow_env.keys()
        # one worker: two shared cores, and one client
        mlflow_server = _start([sys.executable, "-m", *command, "--workers", "1"], mlflow_env, root / "mlflow.log")
        procs.append((mlflow_server, root / "mlflow.log"))
        _poll(lambda: api_healthy(prefect_url), 240, "the prefect server to answer /health", procs=tuple(procs))
        _poll(lambda: _mlflow_healthy(mlflow_url), 240, "the mlflow server to answer /health", procs=tuple(procs))

        # a laptop's environment against the shared stack (README, "Scaling out"), with the credentials the
        # workers get from compose (PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD)
        worker_env = _compose_env("worker-cpu", dotenv)
        client_env = base | {k: worker_env[k] for k in ("PREFECT_API_AUTH_STRING", *MLFLOW_LOGIN)} | {
            "PREFECT_HOME": str(root / "client-prefect-home"), "PREFECT_API_URL": prefect_url,
            "TRANSFEROPS_TRACKING_URI": mlflow_url, "TRANSFEROPS_DVC_REMOTE_URL": "s3://dvc/transferops",
            "TRANSFEROPS_DVC_REMOTE_ENDPOINT": s3_url, "MLFLOW_S3_ENDPOINT_URL": s3_url,
            # small: one quick feature-extraction run, no scratch baseline
            "TRANSFEROPS_TRAINING__MIN_STEPS": "0", "TRANSFEROPS_STRATEGY__BASELINE_MAX_TRAIN_IMAGES": "0"}
        yield {"root": root, "pg": pg, "s3": s3, "s3_url": s3_url, "prefect_url": prefect_url,
               "mlflow_url": mlflow_url, "env": client_env, "procs": tuple(procs)}
    finally:
        for p, _ in reversed(procs):
            stop_process(p)
        pg.stop()


def test_a_train_run_on_the_stack_is_recorded_by_prefect_mlflow_postgres_and_s3(stack, source_bundle, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    root, pg, s3, env = (stack[k] for k in ("root", "pg", "s3", "env"))
    project = root / "project"
    project.mkdir()
    data = write_shapes(root / "plain", per_class=30, seed=1)
    # data versioning, validation, training, registration and promotion: the train flow
    res = _cli(env, project, root / "train.log", "train", "--data", str(data), "--source", str(source_bundle),
               "--strategy", "feature_extraction")
    assert res["promoted"] and res["version"] == "1", res

    # MLflow server: the run, the version and its champion alias, read with the workers' login
    for key, value in MLFLOW_LOGIN.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=stack["mlflow_url"], registry_uri=stack["mlflow_url"])
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "feature_extraction"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # proxied by the server
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.run_id == res["run_id"]
    assert champion.tags["transferops.data_rev"] == res["data_rev"]

    # Prefect server: the flow run behind the MLflow run, completed
    flow_run_id = run.data.tags[FLOW_RUN_TAG]
    flow_run = httpx.get(f"{stack['prefect_url']}/flow_runs/{flow_run_id}", headers=PREFECT_HEADERS, timeout=10).json()
    assert flow_run["state_type"] == "COMPLETED", flow_run
    flow = httpx.get(f"{stack['prefect_url']}/flows/{flow_run['flow_id']}", headers=PREFECT_HEADERS, timeout=10).json()
    assert flow["name"] == "transferops-train"

    # authentication is on: each API refuses the same reads without credentials, or with wrong ones
    user = PREFECT_AUTH.split(":", 1)[0]
    for auth in (None, (user, "wrong-password")):
        assert httpx.get(f"{stack['prefect_url']}/flow_runs/{flow_run_id}", auth=auth, timeout=10).status_code == 401
    for auth in (None, (MLFLOW_LOGIN["MLFLOW_TRACKING_USERNAME"], "wrong-password")):
        answer = httpx.get(f"{stack['mlflow_url']}/api/2.0/mlflow/runs/get", params={"run_id": res["run_id"]},
                           auth=auth, timeout=30)
        assert answer.status_code == 401, (auth, answer.status_code, answer.text[:300])
    # MLflow's users live in Postgres' mlflow_auth (infra/mlflow/basic_auth.ini), its admin made from the login
    users = pg.psql("-c", "SELECT username, is_admin FROM users", database="mlflow_auth").strip()
    assert users == f"{MLFLOW_LOGIN['MLFLOW_TRACKING_USERNAME']}|t", users

    # Postgres: each server wrote to its own database
    row = pg.psql("-c", f"SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                        f"WHERE r.id = '{flow_run_id}'", database="prefect").strip()
    assert row == "transferops-train|COMPLETED", row
    alias = pg.psql("-c", f"SELECT version FROM registered_model_aliases WHERE name = '{MODEL}' "
                          "AND alias = 'champion'", database="mlflow").strip()
    assert alias == "1", alias
    assert pg.psql("-c", f"SELECT status FROM runs WHERE run_uuid = '{res['run_id']}'", database="mlflow").strip() == "FINISHED"

    # S3 bucket mlflow: the run's bundle and the registered (logged) model's files, through the server
    keys = _keys(s3, "mlflow")
    run_prefix = run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    assert f"{run_prefix}/bundle/meta.json" in keys and f"{run_prefix}/bundle/weights.pt" in keys, keys[:20]
    # the version's source is its logged model (tasks/served_model.py registers models:/<model id>)
    assert champion.source.startswith("models:/m-"), champion.source
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    model_prefix = logged.artifact_location.removeprefix("mlflow-artifacts:/")
    assert f"{model_prefix}/MLmodel" in keys, (logged.artifact_location, keys[:20])
    # and read back from the bucket through the server, with the defaults every transferops entry
    # point sets: not from a presigned S3 link, whose endpoint only the server may reach (minio:9000)
    from transferops.offline import apply_offline_defaults

    apply_offline_defaults()
    mlmodel = Path(download_artifacts(artifact_uri=f"{logged.artifact_location}/MLmodel",
                                      tracking_uri=stack["mlflow_url"], dst_path=str(root / "download")))
    assert "python_function" in mlmodel.read_text()
    access = (root / "mlflow.log").read_text()
    assert "/mlflow-artifacts/presigned/" not in access and f"/mlflow-artifacts/artifacts/{model_prefix}/MLmodel" in access

    # S3 bucket dvc: the data version pushed to the remote, reached through this machine's endpoint
    dvc_keys = _keys(s3, "dvc")
    assert dvc_keys and all(k.startswith("transferops/") for k in dvc_keys), dvc_keys[:20]
    md5 = res["data_md5"]
    assert f"transferops/files/md5/{md5[:2]}/{md5[2:]}" in dvc_keys, (md5, dvc_keys[:20])
    assert stack["s3_url"] in (project / ".dvc" / "config.local").read_text()
