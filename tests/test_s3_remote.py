"""An S3 DVC remote against a real S3 API on 127.0.0.1 (moto's server): push, fresh checkout, no secrets written."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-never-written-anywhere"


@pytest.fixture
def s3(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "transferops-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TRANSFEROPS_DVC_REMOTE_URL", "s3://transferops-data/dvc")
    monkeypatch.setenv("TRANSFEROPS_DVC_REMOTE_ENDPOINT", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="transferops-data")
    yield client
    srv.stop()


def test_push_and_fresh_checkout_through_s3(s3, tmp_path):
    from flows.data import DataParams, add_data_direct
    from tasks.versioning import checkout_version
    from transferops.samples import write_shapes

    project = tmp_path / "proj"
    v = add_data_direct(DataParams(source=str(write_shapes(tmp_path / "src", per_class=10)), project_dir=str(project)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="transferops-data").get("Contents", [])]
    assert keys and all(k.startswith("dvc/") for k in keys)
    config = (project / ".dvc" / "config").read_text()
    local = (project / ".dvc" / "config.local").read_text()
    # the remote is the project's, committed; how this machine reaches it is machine-local
    assert "s3://transferops-data/dvc" in config and "endpointurl" not in config
    assert "endpointurl" in local and s3.meta.endpoint_url in local
    ignored = subprocess.run(["git", "-C", str(project), "check-ignore", ".dvc/config.local"], capture_output=True, text=True)
    assert ignored.returncode == 0, "DVC's .gitignore must keep config.local out of git"
    # credentials only ever come from the environment
    tracked = subprocess.run(["git", "-C", str(project), "log", "-p", "--all"], capture_output=True, text=True).stdout
    on_disk = "".join(p.read_text(errors="ignore") for p in project.rglob("*") if p.is_file() and p.stat().st_size < 10**6)
    assert SECRET not in tracked and SECRET not in config and SECRET not in on_disk
    assert "endpointurl" not in tracked
    # a fresh clone has only git: the version comes back from S3, verified
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    got = checkout_version.fn(project, v["rev"], tmp_path / "co")
    assert got.meta["content_hash"] == v["meta"]["content_hash"] and (tmp_path / "co" / "VERSION.json").is_file()
