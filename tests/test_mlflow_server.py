"""Safety under failure (issue 12), on a real ``mlflow server`` and on sqlite.

Concurrent promotions: four runs in four processes decide against the same champion and
promote at once; the promotion lock (``tasks/promotion_lock.py``) leaves one champion, the best,
and an alias history with no lost or forked move. The lock itself: a waiter times out naming the
holder, a stale lock is broken, a lock is released only by its holder. An outage: the server is
killed in the middle of a run; the run fails with one clear RegistryError within the bounded
wait, and once the server is back nothing changed: same champion, no new version, no new move.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import time
from itertools import pairwise

import pytest
from mlflow.exceptions import MlflowException
from mlflow_server import MlflowServer, promote_step, register_version, settings_for

from tasks import history, mlflow_errors, promotion_lock, registry
from tasks.promotion_lock import PromotionLockTimeout, acquire, lock_name, promote_if_still_best, release
from tasks.tracking import tracked_run
from transferops.config import PromotionConfig
from transferops.promotion import decide_promotion

pytestmark = pytest.mark.integration
POLICY = PromotionConfig()


@pytest.fixture(autouse=True)
def _http_env():
    """MLflow's HTTP variables as they were: the tests set them through the settings."""
    saved = {k: os.environ.get(k) for k in mlflow_errors.HTTP_ENV}
    ours = dict(mlflow_errors._ours)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    mlflow_errors._ours.clear()
    mlflow_errors._ours.update(ours)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ``mlflow server`` for the module (a start costs 20-40 s on 2 busy cores); the outage test restarts it."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Settings on an embedded sqlite store, shared by the lock's unit tests (each uses its own model name)."""
    return settings_for(tmp_path_factory.mktemp("lock-sqlite"), None)


def _lock_models(settings) -> list[str]:
    return [m.name for m in registry.client(settings).search_registered_models() if promotion_lock.LOCK_SUFFIX in m.name]


def _first_champion(settings, name: str, accuracy: float) -> str:
    registry.ensure_registered(registry.client(settings), name)
    version = register_version(settings, name, accuracy)
    decision = decide_promotion({"accuracy": accuracy}, None, POLICY, version=version)
    promote_if_still_best(settings, name, version, decision, None, lambda now: pytest.fail("nobody else moved it"))
    return version


def test_a_duplicate_registered_model_is_refused_atomically_by_every_store(local, server, tmp_path):
    """The lock's premise: creating an existing name fails with RESOURCE_ALREADY_EXISTS, on sqlite and on a server."""
    for s in (local, settings_for(tmp_path, server.url)):
        c = registry.client(s)
        c.create_registered_model("dup", tags={"n": "1"})
        with pytest.raises(MlflowException) as err:
            c.create_registered_model("dup", tags={"n": "2"})
        assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert c.get_registered_model("dup").tags == {"n": "1"}, "the loser changed nothing"
        c.delete_registered_model("dup")
        c.create_registered_model("dup")  # deleting frees the name at once (an experiment's stays taken)
        c.delete_registered_model("dup")


def test_a_second_acquirer_waits_for_the_holder_then_times_out_naming_it(local, monkeypatch):
    name = "wait"
    held = acquire(local, name)
    t0 = time.monotonic()
    with pytest.raises(PromotionLockTimeout, match=f"held by {held.holder.split('/')[0]}.*since") as err:
        acquire(local, name, wait_s=1.0)
    assert 1.0 <= time.monotonic() - t0 < 15 and "\n" not in str(err.value)

    # a waiter gets the lock as soon as the holder lets go
    tried = threading.Event()
    real_create = promotion_lock._create

    def create(c, model, holder):
        got = real_create(c, model, holder)
        if not got and model == lock_name(name):
            tried.set()
        return got

    monkeypatch.setattr(promotion_lock, "_create", create)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(acquire(local, name, wait_s=60)))
    waiter.start()
    assert tried.wait(30), "the waiter never tried"
    release(held)
    waiter.join(60)
    assert got and got[0].holder != held.holder
    assert promotion_lock._read(registry.client(local), lock_name(name)).holder == got[0].holder
    release(got[0])
    assert _lock_models(local) == []


def test_a_stale_lock_is_broken_with_a_warning(local, caplog):
    name = "stale"
    c = registry.client(local)
    assert promotion_lock._create(c, lock_name(name), "ghost@gone:1/dead")  # a holder killed inside the block
    with caplog.at_level(logging.WARNING, logger="tasks.promotion_lock"):
        held = acquire(local, name, ttl_s=0.3, wait_s=30)
    assert "breaking the promotion lock" in caplog.text and "ghost@gone:1/dead" in caplog.text
    assert promotion_lock._read(c, lock_name(name)).holder == held.holder
    release(held)
    assert _lock_models(local) == [], "no lock nor break token is left"


def test_two_waiters_on_a_stale_lock_break_it_once_and_hold_it_in_turn(local, caplog):
    name = "stale-race"
    c = registry.client(local)
    assert promotion_lock._create(c, lock_name(name), "ghost@gone:2/dead")
    ttl = 3.0  # far longer than a hold, so that neither waiter takes the other's lock for a stale one
    while time.time() - promotion_lock._read(c, lock_name(name)).since <= ttl:
        time.sleep(0.05)
    spans: list[tuple[float, float]] = []
    start = threading.Barrier(2)

    def waiter() -> None:
        start.wait(30)
        with promotion_lock.promotion_lock(local, name, ttl_s=ttl, wait_s=60):
            t0 = time.monotonic()
            registry.alias_version(local, name, registry.CHAMPION)  # a little work under the lock
            spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="tasks.promotion_lock"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0, "both held the lock at once"
    assert caplog.text.count("breaking the promotion lock") == 1
    assert _lock_models(local) == []


def test_a_holder_whose_lock_was_broken_neither_moves_champion_nor_releases_the_new_lock(local, caplog):
    name = "broken"
    c = registry.client(local)
    held = acquire(local, name)
    promotion_lock._delete(c, lock_name(name))  # what a waiter does once this holder outlived the TTL
    assert promotion_lock._create(c, lock_name(name), "other@host:2/new")
    with pytest.raises(registry.RegistryError, match="was broken while"):
        held.ensure_held()
    with caplog.at_level(logging.WARNING, logger="tasks.promotion_lock"):
        release(held)
    assert "was broken" in caplog.text
    assert promotion_lock._read(c, lock_name(name)).holder == "other@host:2/new"
    promotion_lock._delete(c, lock_name(name))


def test_four_concurrent_promotions_end_with_the_best_champion_and_a_chained_history(server, tmp_path):
    s = settings_for(tmp_path, server.url)
    name = "race"
    seed = _first_champion(s, name, 0.75)
    accuracies = [0.70, 0.90, 0.80, 0.85]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(accuracies))
    outs = [tmp_path / f"result-{i}.json" for i in range(len(accuracies))]
    procs = [ctx.Process(target=promote_step, args=(str(tmp_path), server.url, name, acc, barrier, str(out)))
             for acc, out in zip(accuracies, outs, strict=True)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs), server.log_tail()
    results = [json.loads(out.read_text()) for out in outs]

    best = max(results, key=lambda r: r["accuracy"])
    champion = registry.alias_version(s, name, registry.CHAMPION)
    assert champion.version == best["version"]
    moves = history.history(s, name, registry.CHAMPION)
    assert (moves[0].from_version, moves[0].to_version) == (None, seed)
    assert all(b.from_version == a.to_version for a, b in pairwise(moves)), [m.as_dict() for m in moves]
    assert len(moves) == 1 + sum(r["promoted"] for r in results), "one move per promotion, none lost"
    acc = {r["version"]: r["accuracy"] for r in results} | {seed: 0.75}
    assert all(acc[b.to_version] > acc[a.to_version] for a, b in pairwise(moves)), "each move beat its predecessor"
    # all four judged v1; the first to promote changed it, so the others that would promote judged again
    assert len([r for r in results if r["accuracy"] > 0.75 and r["first"] and r["rejudged"]]) == 2
    assert not any(r["promoted"] for r in results if r["accuracy"] < 0.75)
    challenger = history.history(s, name, registry.CHALLENGER)
    assert len(challenger) == 1 + len(results)
    assert all(b.from_version == a.to_version for a, b in pairwise(challenger))
    assert _lock_models(s) == []


def test_an_unreachable_server_fails_the_run_with_one_clear_error_and_changes_nothing(server, tmp_path, monkeypatch,
                                                                                      caplog):
    if not server.healthy():
        server.start()
    # 2 retries with factor 1: a call gives up after ~2-4 s (the defaults: ~15 s)
    s = settings_for(tmp_path, server.url, http_max_retries=2, http_backoff_factor=1, http_timeout_s=5)
    name = "outage"
    v1 = _first_champion(s, name, 0.80)
    moves = history.history(s, name)
    monkeypatch.setattr(registry, "start_run", registry.open_run)  # the task's plain function: no Prefect API needed
    run_ids: list[str] = []
    t0 = 0.0
    with caplog.at_level(logging.WARNING, logger="tasks.tracking"), pytest.raises(registry.RegistryError) as err:
        with tracked_run(s, "v2", {}) as run:
            run_ids.append(run.run_id)
            run.log_metrics({"test_accuracy": 0.95})
            server.stop()  # the server dies mid-run, before the new version is registered
            t0 = time.monotonic()
            version = register_version(s, name, 0.95)
            decision = decide_promotion({"accuracy": 0.95}, {"accuracy": 0.80}, POLICY, version=version)
            promote_if_still_best(s, name, version, decision, v1, lambda now: decision)
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert message.startswith(f"tracking server {server.url} unreachable after 3 tries (ConnectionError: ")
    assert "the champion is unchanged" in message and "TRANSFEROPS_TRACKING_URI" in message and "\n" not in message
    assert elapsed < 30, f"an outage took {elapsed:.0f} s to surface"
    assert "could not close MLflow run" in caplog.text, "closing the run FAILED warned instead of masking the error"

    server.start()  # the outage ends: same port, database and artifacts
    assert registry.alias_version(s, name, registry.CHAMPION).version == v1
    assert [v.version for v in registry.list_versions(s, name)] == [v1], "nothing half-registered"
    assert history.history(s, name) == moves
    assert _lock_models(s) == []
    assert registry.client(s).get_run(run_ids[0]).info.status == "RUNNING"  # it could not be closed; never FINISHED


def test_a_server_that_never_answers_fails_within_the_bounded_wait(tmp_path, monkeypatch):
    from mlflow_server import free_port

    monkeypatch.setattr(registry, "start_run", registry.open_run)
    s = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}", http_max_retries=1, http_backoff_factor=1)
    t0 = time.monotonic()
    with pytest.raises(registry.RegistryError, match=r"unreachable after 2 tries \(ConnectionError: .*refused"):
        with tracked_run(s, "never", {}):
            pytest.fail("no run can open")
    assert time.monotonic() - t0 < 20


def test_http_limits_come_from_the_settings_unless_exported(tmp_path, monkeypatch):
    for var in mlflow_errors.HTTP_ENV:
        monkeypatch.delenv(var, raising=False)
    mlflow_errors._ours.clear()
    mlflow_errors.apply_http_limits(settings_for(tmp_path, None))
    assert [os.environ[v] for v in mlflow_errors.HTTP_ENV] == ["4", "1", "20"]
    mlflow_errors.apply_http_limits(settings_for(tmp_path, None, http_max_retries=2))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2", "later settings change what settings set"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "300"  # the user's export wins
    mlflow_errors.apply_http_limits(settings_for(tmp_path, None))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
