"""Search and benchmark trials as Prefect task runs on a real Dask cluster (``tasks/runners.py``).

A ``distributed.LocalCluster`` of two worker processes with one thread each serves the search
tests; the benchmark starts its own through ``--dask local``, as a user's run does. Trials are
tiny (three 32 px shape classes, an epoch or two) so the file stays near two minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from prefect import flow

from transferops.assessment import DriftOutcome
from transferops.config import ConfigError, ExecutionConfig, load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
# the search's candidates: a convex fit, two SGD runs and lp_ft's two phases, without
# partial_finetune's block probes (seconds of setup that every trial would wait for)
CANDIDATES = ["feature_extraction", "full_finetune", "lp_ft", "scratch"]
SPAWN_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED",
             "DASK_LOGGING__DISTRIBUTED")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each; this process's environment is put back afterwards
    (Dask's Nanny writes its pre-spawn variables, OMP_NUM_THREADS=1 among them, into it)."""
    from distributed import Client, LocalCluster

    saved = {k: os.environ.get(k) for k in SPAWN_ENV}
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    try:
        # not the default client: Prefect's DaskTaskRunner would take the default's cluster over its own
        with Client(lc, set_as_default=False) as client:
            yield lc, client
    finally:
        lc.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _project(root: Path, execution: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True)
    cfg = {"training": {"epochs": 2, "batch_size": 16},
           "strategy": {"search_candidates": CANDIDATES, "search_min_fraction": 0.5}}
    if execution:
        cfg["execution"] = execution
    (root / "transferops.yaml").write_text(yaml.safe_dump(cfg))
    return root


@flow(name="test-dask-search")
def search_flow(project: str, data: str, bundle: str) -> Any:
    """The train flow's strategy step alone: the search runs where the project's settings say."""
    from tasks import modeling
    from transferops.data import scan_dataset
    from transferops.sources import open_source, parse_source

    s = load_settings(project)
    images = scan_dataset(data, s.data.val_fraction, s.data.test_fraction)
    return modeling.pick_strategy(s, "search", open_source(parse_source(bundle)), images,
                                  DriftOutcome(None, "not measured"))


def _task_runs(wanted: int, **filters: Any) -> list[Any]:
    """Task runs matching ``filters``, once ``wanted`` of them are completed: Prefect 3 records
    task runs from their events, a moment after the tasks themselves have finished."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(**filters)
            done = [r for r in runs if r.state and r.state.is_completed()]
            if len(done) >= wanted or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, prefect_harness, cluster, shapes_dir, source_bundle):
    """The same search twice: in this process (sequential) and through the flow on the cluster."""
    from distributed import get_task_stream

    from transferops.assessment import pick_strategy
    from transferops.data import scan_dataset
    from transferops.sources import open_source, parse_source

    lc, client = cluster
    root = tmp_path_factory.mktemp("dask-search")
    # each in a project of its own: a second search in the same one would resume the first's checkpoints
    seq = load_settings(_project(root / "sequential"))
    dask_project = _project(root / "dask", {"task_runner": "dask", "dask_address": lc.scheduler_address})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' one thread: float sums depend on how many threads split them
    try:
        images = scan_dataset(shapes_dir, seq.data.val_fraction, seq.data.test_fraction)
        sequential = pick_strategy(seq, "search", open_source(parse_source(str(source_bundle))), images,
                                   DriftOutcome(None, "not measured"))
    finally:
        torch.set_num_threads(threads)
    with get_task_stream(client) as stream:
        state = search_flow(str(dask_project), str(shapes_dir), str(source_bundle), return_state=True)
    return {"sequential": sequential, "dask": state.result(), "flow_run_id": state.state_details.flow_run_id,
            "stream": stream.data, "pids": client.run(os.getpid)}


def test_search_trials_run_as_prefect_task_runs_on_the_dask_workers(searched):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    board = searched["dask"].leaderboard
    assert len(board) == len(CANDIDATES) + 2  # 4 trials at half the budget, the better 2 at the full one
    # every trial was a task of the cluster, spread over both worker processes, none in this one
    assert len(searched["stream"]) == len(board)
    workers = {rec["worker"] for rec in searched["stream"]}
    assert workers == set(searched["pids"]), workers
    assert os.getpid() not in searched["pids"].values() and len(set(searched["pids"].values())) == 2
    # ... and a Prefect task run of the flow that searched, named after its trial
    runs = _task_runs(len(board) + 1, flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[searched["flow_run_id"]])))
    trials = sorted(r.name for r in runs if r.name.startswith("trial "))
    assert trials == sorted(f"trial {r['strategy']} at {r['fraction']:g}" for r in board)
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]


def test_the_search_on_the_cluster_picks_what_the_sequential_one_picks(searched):
    seq, par = searched["sequential"], searched["dask"]
    assert par.leaderboard == seq.leaderboard  # every score to the last bit, not only the ranking
    assert (par.name, par.params, par.reason) == (seq.name, seq.params, seq.reason)
    # a search that cannot tell its candidates apart would pass the comparison above vacuously
    assert len({(r["val_accuracy"], r["val_loss"]) for r in seq.leaderboard if r["rung"] == 0}) > 1


def _record_window(item: int) -> tuple[float, float, int]:
    """A trial that only takes time: when it ran, and where."""
    start = time.time()
    time.sleep(2.0)  # long enough that two trials started together overlap on a loaded machine
    return start, time.time(), os.getpid()


def test_max_parallel_trials_bounds_the_trials_in_flight(prefect_harness, cluster):
    from tasks.runners import trial_map

    address = cluster[0].scheduler_address
    with trial_map(ExecutionConfig(task_runner="dask", dask_address=address, max_parallel_trials=1)) as one:
        windows = one(_record_window, [0, 1])
    first, second = sorted(windows)
    assert first[1] <= second[0], windows  # the second started only once the first had ended
    with trial_map(ExecutionConfig(task_runner="dask", dask_address=address)) as free:
        windows = free(_record_window, [0, 1])
    assert max(w[0] for w in windows) < min(w[1] for w in windows), "two workers: the two trials overlap"
    assert len({w[2] for w in windows}) == 2


def test_a_trial_the_workers_cannot_unpickle_is_refused_not_retried_forever(prefect_harness, cluster, tmp_path,
                                                                              monkeypatch):
    from tasks.runners import trial_map

    (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # after the workers started: they do not see it
    import only_here

    cfg = ExecutionConfig(task_runner="dask", dask_address=cluster[0].scheduler_address)
    with trial_map(cfg) as map_trials:
        with pytest.raises(ConfigError, match=r"^Dask worker tcp://.* cannot import .*only_here.*PYTHONPATH"):
            map_trials(only_here.double, [1, 2])
        assert map_trials(abs, [-3]) == [3]  # the cluster is fine for trials it can run


def test_an_address_where_no_scheduler_answers_is_one_clear_error(prefect_harness):
    import dask

    from tasks.runners import trial_map

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with trial_map(ExecutionConfig(task_runner="dask", dask_address="tcp://127.0.0.1:9")) as map_trials:
            with pytest.raises(ConfigError, match=r"^execution\.dask_address tcp://127\.0\.0\.1:9: no Dask scheduler"):
                map_trials(abs, [-1])


def test_runner_configuration_and_its_errors(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import runners

    runner = runners.dask_task_runner(ExecutionConfig(task_runner="dask", dask_workers=3))
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["processes"] is True
    assert runners.dask_task_runner(ExecutionConfig(task_runner="dask", dask_address="tcp://10.1.2.3:8786")).address \
        == "tcp://10.1.2.3:8786"
    assert runners.local_workers(ExecutionConfig(max_parallel_trials=1)) == 1
    # a scheduler on another machine cannot reach this process's temporary Prefect API
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ConfigError, match=r"^execution\.dask_address tcp://10\.1\.2\.3:8786: .*PREFECT_API_URL"):
            with runners.trial_map(ExecutionConfig(task_runner="dask", dask_address="tcp://10.1.2.3:8786")):
                pass
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if the dask extra were not installed
    with pytest.raises(ConfigError) as exc:
        runners.dask_task_runner(ExecutionConfig(task_runner="dask"))
    assert str(exc.value) == "execution.task_runner: dask needs the dask extra: pip install 'transferops[dask]'"


def test_execution_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFEROPS_EXECUTION__TASK_RUNNER", "dask")
    monkeypatch.setenv("TRANSFEROPS_EXECUTION__DASK_ADDRESS", "tcp://127.0.0.1:8786")
    s = load_settings(tmp_path)
    assert (s.execution.task_runner, s.execution.dask_address, s.execution.dask_workers) == \
        ("dask", "tcp://127.0.0.1:8786", None)
    monkeypatch.setenv("TRANSFEROPS_EXECUTION__TASK_RUNNER", "threads")
    with pytest.raises(ConfigError, match="'execution.task_runner' in environment variable TRANSFEROPS_EXECUTION__TASK_RUNNER"):
        load_settings(tmp_path)


def _fake_fashion(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 images, ``per_class`` of each of the ten labels, each image unique."""
    rng = np.random.default_rng(seed)
    n = per_class * 10
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return x, rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))


def test_the_benchmark_runs_its_named_runs_on_a_local_dask_cluster(tmp_path, monkeypatch, prefect_harness):
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    sys.path.insert(0, str(REPO / "bench" / "strategies"))
    import bench_strategies

    fake = {"train": _fake_fashion(30, 0), "test": _fake_fashion(5, 1)}
    monkeypatch.setattr(bench_strategies, "fmnist", fake.__getitem__)  # no Fashion-MNIST download here
    out = tmp_path / "out" / "strategies"
    monkeypatch.setattr(sys, "argv", [
        "bench_strategies.py", "--sizes", "small", "--domains", "clean", "--seeds", "1", "--epochs", "1",
        "--source-train", "6", "--source-val", "3", "--source-epochs", "1", "--test-cap", "3", "--modes", "auto",
        "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(out), "--dask", "local",
        "--dask-workers", "2"])
    threads = torch.get_num_threads()
    try:
        bench_strategies.main()
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["plan"]["parallel"] == {"task_runner": "dask", "dask_address": None, "dask_workers": 2,
                                       "max_parallel_trials": None}
    named = {r["name"]: r for r in doc["runs"] if r["kind"] == "run"}
    assert sorted(named) == sorted(doc["plan"]["strategies"]) and all(0 <= r["accuracy"] <= 1 for r in named.values())
    assert "Prefect task runs on Dask (a LocalCluster of 2 processes)" in out.with_suffix(".md").read_text()
    labels = [f"trial small-clean {name} seed 0" for name in named]
    runs = _task_runs(len(labels), task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=labels)))
    assert sorted(r.name for r in runs) == sorted(labels) and all(r.state.is_completed() for r in runs)
