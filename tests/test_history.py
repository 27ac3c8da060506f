"""Alias history and rollback on a real MLflow registry (SQLite in a temporary project, no mocks).

Versions are registered without training (a registered model and versions with a dummy
source): the history only reads and moves aliases.
"""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import history, registry
from transferops import history as core
from transferops.cli import main
from transferops.config import load_settings
from transferops.history import AliasMove, choose_rollback, forks

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parent.parent
MODEL = "transferops-classifier"


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database at the current schema (creating one costs seconds; copying it, nothing)."""
    s = load_settings(tmp_path_factory.mktemp("template"))
    registry.client(s).search_registered_models()
    return s.state_dir / "mlflow.db"


def _project(folder: Path, db: Path, versions: int = 3):
    """Settings of a project whose registry holds ``versions`` versions of the target model."""
    (folder / ".transferops").mkdir(parents=True)
    shutil.copy(db, folder / ".transferops" / "mlflow.db")
    s = load_settings(folder)
    c = registry.client(s)
    registry.ensure_registered(c, MODEL)
    for _ in range(versions):
        c.create_model_version(MODEL, (folder / "no-model").as_uri())
    return s


@pytest.fixture
def settings(tmp_path, monkeypatch, migrated_db):
    monkeypatch.setenv("TRANSFEROPS_USER", "ann")
    return _project(tmp_path / "proj", migrated_db)


def test_the_core_doctests_pass():
    assert doctest.testmod(core).failed == 0


def test_every_move_is_recorded_with_from_to_when_by_why_and_kind(settings):
    first = registry.set_alias(settings, MODEL, "champion", "1")
    registry.set_alias(settings, MODEL, "challenger", "2")
    registry.set_alias(settings, MODEL, "champion", "2", reason="beats v1 by 3 points", kind="approve")
    moves = history.history(settings, MODEL)
    assert [(m.alias, m.from_version, m.to_version, m.kind) for m in moves] == [
        ("champion", None, "1", "promote"), ("challenger", None, "2", "challenger"), ("champion", "1", "2", "approve")]
    assert all(m.by == "user:ann" and m.model == MODEL and m.record_id for m in moves)
    assert moves[0] == first and moves[2].reason == "beats v1 by 3 points"
    assert [m.at for m in moves] == sorted(m.at for m in moves) and moves[0].at.endswith("+00:00")
    # the registry itself moved
    assert registry.alias_version(settings, MODEL, "champion").version == "2"
    # filtered by alias, and the newest N, still oldest first
    assert [m.to_version for m in history.history(settings, MODEL, "champion")] == ["1", "2"]
    assert [m.alias for m in history.history(settings, MODEL, limit=2)] == ["challenger", "champion"]
    assert history.history(settings, "another-model") == []
    # the records are runs of the registry experiment, apart from the training runs
    exp = registry.client(settings).get_experiment_by_name(f"{settings.experiment}-registry")
    assert exp is not None and registry.client(settings).get_experiment_by_name(settings.experiment) is None


def test_a_reason_over_the_tag_limit_is_kept_whole(settings):
    why = "the night camera images " * 400  # 9,600 characters: over any run tag limit
    registry.set_alias(settings, MODEL, "champion", "1", reason=why)
    [move] = history.history(settings, MODEL)
    assert move.reason == why and not move.reason_truncated
    tags = registry.client(settings).get_run(move.record_id).data.tags
    assert len(tags["transferops.reason"]) == core.MAX_REASON and tags["transferops.reason_truncated"] == "true"


def test_setting_an_alias_where_it_already_points_records_nothing(settings):
    assert registry.set_alias(settings, MODEL, "champion", "1") is not None
    assert registry.set_alias(settings, MODEL, "champion", "1") is None  # a retried task
    assert registry.set_alias(settings, MODEL, "champion", 1) is None  # versions as ints, as MLflow returns them
    assert len(history.history(settings, MODEL)) == 1


def test_a_move_inside_a_flow_run_records_the_run(settings):
    with history.acting_run("abc123"):
        move = registry.set_alias(settings, MODEL, "champion", "1")
    assert move.by == "run:abc123"
    assert registry.set_alias(settings, MODEL, "champion", "2").by == "user:ann"


def test_rollback_goes_back_to_the_previous_champion_then_to_a_named_version(settings):
    for v in ("1", "2", "3"):
        registry.set_alias(settings, MODEL, "champion", v)
    choice, move = history.rollback(settings, MODEL, reason="v3 fails on night images")
    assert choice.target == "2" and "before v3" in choice.reason
    assert (move.from_version, move.to_version, move.kind, move.reason, move.by) == (
        "3", "2", "rollback", "v3 fails on night images", "user:ann")
    assert registry.alias_version(settings, MODEL, "champion").version == "2"
    choice, move = history.rollback(settings, MODEL, "1", reason="back to the first", by="user:bob")
    assert (move.from_version, move.to_version, move.by) == ("2", "1", "user:bob")
    assert [m.kind for m in history.history(settings, MODEL, "champion")] == ["promote"] * 3 + ["rollback"] * 2
    # --to the current champion: nothing moves, nothing is recorded
    choice, move = history.rollback(settings, MODEL, "1", reason="again")
    assert move is None and "already holds" in choice.reason and len(history.history(settings, MODEL)) == 5


def test_rollback_without_a_previous_champion_or_to_an_unknown_version_says_what_to_do(settings):
    with pytest.raises(registry.RegistryError, match="no version before now; pass --to VERSION"):
        history.rollback(settings, MODEL, reason="x")  # no champion, no history
    registry.set_alias(settings, MODEL, "champion", "1")
    with pytest.raises(registry.RegistryError, match="names no version before v1; pass --to VERSION"):
        history.rollback(settings, MODEL, reason="x")
    with pytest.raises(registry.RegistryError, match=r"to v9: no such version .*versions: 1, 2, 3"):
        history.rollback(settings, MODEL, "9", reason="x")
    assert registry.alias_version(settings, MODEL, "champion").version == "1"
    assert len(history.history(settings, MODEL)) == 1


def test_rollback_choice_and_forks_read_the_history():
    mk = lambda f, t, at="": AliasMove("m", "champion", f, t, at, "user:a", "", "promote")  # noqa: E731
    moves = [mk(None, "1"), mk("1", "2"), mk("2", "1"), mk("1", "3")]
    assert choose_rollback(moves, "3").target == "1"
    assert choose_rollback(moves, None).target == "3"  # the alias was removed: its last holder
    assert choose_rollback(moves, "3", to="2").target == "2"
    assert choose_rollback([], None).target is None
    raced = [mk(None, "5"), mk("5", "3"), mk("5", "1")]
    assert [m.to_version for m in forks(raced)] == ["1"]
    assert [m.at for m in core.ordered([mk("1", "2", "b"), mk(None, "1", "a")])] == ["a", "b"]


WRITER = """
import os, sys, time
from pathlib import Path
from tasks import registry
from transferops.config import load_settings
s = load_settings(sys.argv[1])
registry.alias_version(s, "transferops-classifier", "champion")  # connected and warm before the start
Path(sys.argv[3]).touch()
while not Path(sys.argv[4]).exists():
    time.sleep(0.005)
registry.set_alias(s, "transferops-classifier", "champion", sys.argv[2], by="user:writer" + sys.argv[2], reason="race")
"""


def test_writers_moving_champion_at_the_same_moment_all_leave_a_record(tmp_path, migrated_db):
    """Four processes move champion at once against one SQLite store: no record is lost; the
    history shows that they all moved it from the same version (MLflow has no compare-and-set)."""
    s = _project(tmp_path / "proj", migrated_db, versions=5)
    registry.set_alias(s, MODEL, "champion", "5")
    go = tmp_path / "go"
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(s.project_dir), str(v), str(tmp_path / f"ready{v}"),
                               str(go)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for v in range(1, 5)]
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"ready{v}").exists() for v in range(1, 5)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[0].decode()[-2000:] for p in procs if p.poll() is not None]
            time.sleep(0.1)
        go.touch()
        for p in procs:
            out = p.communicate(timeout=120)[0].decode()
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    moves = history.history(s, MODEL, "champion")
    raced = moves[1:]
    assert sorted(m.to_version for m in raced) == ["1", "2", "3", "4"]
    assert {m.by for m in raced} == {f"user:writer{v}" for v in range(1, 5)}
    assert registry.alias_version(s, MODEL, "champion").version in {"1", "2", "3", "4"}
    # every writer read v5 before any move landed, or a move of another; either way the chain
    # forks wherever one writer's from is not the previous record's to
    assert len(forks(moves)) == sum(1 for a, b in zip(moves, moves[1:], strict=False) if b.from_version != a.to_version)


def _one_json(capfd):
    out, err = capfd.readouterr()
    return json.loads(out), err


def test_history_and_rollback_commands(tmp_path, capfd, monkeypatch, migrated_db):
    monkeypatch.setenv("TRANSFEROPS_USER", "ann")
    s = _project(tmp_path / "proj", migrated_db)
    proj = str(s.project_dir)
    registry.set_alias(s, MODEL, "champion", "1", reason="first")
    registry.set_alias(s, MODEL, "champion", "2", reason="better")
    capfd.readouterr()

    assert main(["rollback", "-C", proj]) == 1
    assert "pass --reason TEXT" in capfd.readouterr().err
    assert main(["rollback", "-C", proj, "--reason", "v2 fails at night", "--json"]) == 0
    doc, _ = _one_json(capfd)
    assert doc["moved"] and doc["move"]["from_version"] == "2" and doc["move"]["to_version"] == "1"
    assert doc["move"]["kind"] == "rollback" and doc["move"]["by"] == "user:ann" and "before v2" in doc["choice"]
    assert main(["rollback", "-C", proj, "--to", "3", "--reason", "try v3"]) == 0
    assert "v1 -> v3" in capfd.readouterr().out

    assert main(["history", "-C", proj, "--json"]) == 0
    doc, _ = _one_json(capfd)
    assert [(m["from_version"], m["to_version"], m["kind"], m["reason"]) for m in doc] == [
        (None, "1", "promote", "first"), ("1", "2", "promote", "better"), ("2", "1", "rollback", "v2 fails at night"),
        ("1", "3", "rollback", "try v3")]
    assert main(["history", "-C", proj, "--alias", "champion", "--limit", "1", "--json"]) == 0
    doc, _ = _one_json(capfd)
    assert [m["to_version"] for m in doc] == ["3"]
    assert main(["history", "-C", proj]) == 0
    table = capfd.readouterr().out
    assert "v2 -> v1" in table and "v2 fails at night" in table and "note:" not in table
    # an alias moved behind transferops's back is pointed out
    registry.client(s).set_registered_model_alias(MODEL, "champion", "2")
    assert main(["history", "-C", proj]) == 0
    assert "champion is now v2, not v3" in capfd.readouterr().out
