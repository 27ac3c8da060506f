"""`transferops data add | list | checkout` on a real git+DVC project."""

import json
import shutil

import pytest

from transferops.cli import main
from transferops.errors import EXIT_FAILURE
from transferops.samples import write_shapes

pytestmark = pytest.mark.integration


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_add_append_list_and_checkout_from_the_remote(tmp_path, capsys):
    proj = tmp_path / "proj"
    v1_src = write_shapes(tmp_path / "v1", per_class=15)
    assert main(["data", "add", str(v1_src), "--workdir", str(proj), "-m", "week 1", "--json"]) == 0
    v1 = _json(capsys)
    v2_src = write_shapes(tmp_path / "v2", per_class=5, seed=3)
    for f in v2_src.rglob("*.png"):
        f.rename(f.with_name("wk2_" + f.name))
    assert main(["data", "add", str(v2_src), "--workdir", str(proj), "-m", "week 2", "--json"]) == 0
    v2 = _json(capsys)
    assert (v1["images"], v2["images"], v2["added"]) == (45, 60, 15) and v2["new_bytes"] < v1["new_bytes"]

    assert main(["data", "list", "--workdir", str(proj), "--json"]) == 0
    versions = _json(capsys)
    assert [v["message"] for v in versions] == ["week 2", "week 1"]
    assert [v["content_hash"] for v in versions] == [v2["content_hash"], v1["content_hash"]]
    assert sum(versions[1]["counts"]["train"].values()) + sum(versions[1]["counts"]["test"].values()) <= 45

    # the cache is gone: the old version must come from the remote, verified
    shutil.rmtree(proj / ".dvc" / "cache")
    assert main(["data", "checkout", v1["rev"][:8], "--workdir", str(proj), "--export", str(tmp_path / "out"), "--json"]) == 0
    out = _json(capsys)
    assert out["verified"] and out["content_hash"] == v1["content_hash"] and out["exported"] == 45
    exported = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    original = {p.relative_to(v1_src).as_posix(): p.read_bytes() for p in v1_src.rglob("*.png")}
    assert exported == original


def test_checkout_refuses_a_corrupted_remote(tmp_path, capsys):
    proj = tmp_path / "proj"
    assert main(["data", "add", str(write_shapes(tmp_path / "src", per_class=10)), "--workdir", str(proj), "--json"]) == 0
    rev = _json(capsys)["rev"]
    shutil.rmtree(proj / ".dvc" / "cache")
    shutil.rmtree(proj / "data")  # as in a fresh clone: only the remote has the bytes
    remote_files = [p for p in (proj / ".transferops" / "dvc-remote").rglob("*") if p.is_file() and p.stat().st_size > 2000]
    biggest = max(remote_files, key=lambda p: p.stat().st_size)  # the pack
    data = bytearray(biggest.read_bytes())
    data[10] ^= 0xFF
    biggest.chmod(0o644)
    biggest.write_bytes(bytes(data))
    assert main(["data", "checkout", rev, "--workdir", str(proj), "--to", str(tmp_path / "co")]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "transferops data checkout: error: " in err and "Traceback" not in err
    assert "check the version out again" in err or "md5" in err.lower()
    assert not (tmp_path / "co").exists() and not (tmp_path / "co.partial").exists()


def test_unknown_revision(tmp_path, capsys):
    assert main(["data", "checkout", "deadbeef", "--workdir", str(tmp_path)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "is not a commit" in err and "Traceback" not in err
