"""Trials in parallel: Prefect's ``DaskTaskRunner`` under the core's ``map_trials``.

A strategy search (``transferops.search``) and the strategy benchmark run independent trials
through a :data:`~transferops.search.TrialMap`. :func:`trial_map` gives the one
``settings.execution`` asks for: the plain sequential map, or one that submits each trial as a
Prefect task run (``run_trial``) to a ``DaskTaskRunner`` and gathers the results in order, on
the scheduler at ``execution.dask_address`` or on a ``distributed.LocalCluster`` of worker
processes that lives as long as the ``with`` block.

The task runner is entered directly (``with runner:``), not as the runner of a subflow around
the search: the same map then serves a task of a flow (the train flow's strategy step) and a
plain script (the benchmark), one cluster serves every rung, and no extra flow run carries the
search's inputs as parameters. Prefect ships its context with each task, so trials submitted
inside a flow run are task runs of that flow run, on whichever worker ran them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from transferops.config import ConfigError, ExecutionConfig
from transferops.search import TrialMap, sequential_map

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

DASK_EXTRA = "execution.task_runner: dask needs the dask extra: pip install 'transferops[dask]'"
# what every trial loads before it trains (seconds in a fresh worker process)
WARM_IMPORTS = "import torch, torchvision, transferops.engine, transferops.search, tasks.runners"


@task(cache_policy=NO_CACHE, persist_result=False)
def run_trial(fn: Callable[[Any], Any], item: Any) -> Any:
    """One trial, ``fn(item)``, in whichever process the task runner gave it."""
    return fn(item)


def trial_label(fn: Callable[[Any], Any], item: Any) -> str:
    """The task run's name: ``fn.label(item)`` when the trial function names its trials."""
    label = getattr(fn, "label", None)
    return f"trial {label(item) if callable(label) else item}"


def local_workers(cfg: ExecutionConfig) -> int:
    """Worker processes of a LocalCluster: ``dask_workers``, else one per core (at most ``max_parallel_trials``)."""
    if cfg.dask_workers:
        return cfg.dask_workers
    return max(1, min(os.cpu_count() or 1, cfg.max_parallel_trials or os.cpu_count() or 1))


def dask_task_runner(cfg: ExecutionConfig) -> "TaskRunner":
    """Prefect's ``DaskTaskRunner`` for ``cfg``: the scheduler at ``dask_address``, else a new
    ``distributed.LocalCluster`` of :func:`local_workers` processes with one thread each."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(DASK_EXTRA) from None
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    # a random dashboard port: two searches on one machine must not fight over 8787
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": local_workers(cfg), "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0", "silence_logs": logging.WARNING})


def _loopback(address: str) -> bool:
    """Whether a scheduler address (tcp://host:port, host:port) is on this machine."""
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def _prefect_for_workers(cfg: ExecutionConfig) -> Iterator[None]:
    """Prefect settings the workers need, set here: Prefect ships this process's settings with
    every task, and a worker reads those, not its own environment.

    The API: with no ``PREFECT_API_URL``, Prefect runs a temporary server per process, so each
    worker would start its own (seconds of start-up, a second writer on the same database); the
    URL of this process's server reaches workers on this machine, not a cluster elsewhere.
    Outside a flow run, trial task runs have no flow run to send their logs to, and Prefect
    would warn once per trial.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    updates: dict[Any, Any] = {}
    if FlowRunContext.get() is None:
        updates[PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW] = "ignore"
    if not PREFECT_API_URL.value():
        if cfg.dask_address and not _loopback(cfg.dask_address):
            raise ConfigError(f"execution.dask_address {cfg.dask_address}: its workers report each trial to Prefect's "
                              "API, and this process has only a temporary one on 127.0.0.1; set PREFECT_API_URL to a "
                              "Prefect server both can reach")
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the one this process's own client started, or starts now
        server.start()
        updates[PREFECT_API_URL] = server.api_url
    with temporary_settings(updates):
        yield


@contextmanager
def _dask_config(cfg: ExecutionConfig) -> Iterator[None]:
    """Quieter Dask logs and, for a LocalCluster started in the block, its worker processes' setup.

    Dask logs every worker start and stop at INFO, through Prefect's handler: WARNING here and
    in the workers. Torch threads: the cores shared out among the workers (Dask's default is one
    each, through OMP_NUM_THREADS set before a worker starts). No MALLOC_TRIM_THRESHOLD_ (Dask
    sets 64 KiB): any value turns off glibc's adaptive mmap threshold, so every large tensor
    is a fresh mmap and its page faults; a trial trained 1.6 times slower with it (2 CPU cores).
    Not daemonic: a trial on CUDA loads its images in DataLoader worker processes, which a
    daemonic process may not start; Dask's worker processes still exit when this one does (they
    watch a pipe from it).
    """
    import dask

    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    threads = str(max(1, (os.cpu_count() or 1) // local_workers(cfg)))
    spawn_env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}).items()
                 if k != "MALLOC_TRIM_THRESHOLD_"}
    spawn_env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
                  "DASK_LOGGING__DISTRIBUTED": "warning"}
    # the Nanny writes its pre-spawn variables into this process's environment too: put them back
    saved = {k: os.environ.get(k) for k in [*spawn_env, "PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_"]}
    try:
        if cfg.dask_address:
            yield
        else:
            with dask.config.set({"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": spawn_env}):
                yield
    finally:
        quiet.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_workers_import(runner: Any, fn: Callable[[Any], Any], checked: set[str]) -> None:
    """Raise ConfigError unless every worker can import the modules a trial unpickles from
    (those not in ``checked`` yet, which it then joins).

    A Dask worker that cannot unpickle a task dies, its Nanny starts another, the scheduler
    hands it the same task: without this check a missing module is a silent endless loop.
    """
    module = getattr(fn, "__module__", None) or type(fn).__module__
    wanted = sorted({__name__, "transferops.search", module} - {"__main__", "builtins"})
    if set(wanted) <= checked:
        return
    # exec, a builtin, pickles by name: a helper function of this module would itself need the module
    results = runner.client.run(exec, f"import {', '.join(wanted)}", on_error="return")
    failed = {worker: res for worker, res in results.items() if isinstance(res, BaseException)}
    if failed:
        worker, err = sorted(failed.items())[0]
        raise ConfigError(f"Dask worker {worker} cannot import what a trial needs ({err}); start the workers with "
                          "transferops installed and the repository (and, for the benchmark, bench/strategies) "
                          "on PYTHONPATH")
    checked.update(wanted)


class _Warmup(threading.Thread):
    """Start the cluster (or connect to it) and load the trials' imports on its workers, in the
    background: meanwhile this process prepares the first rung (a search measures its candidates
    first), and a LocalCluster's start plus torch's import take seconds per worker."""

    def __init__(self, runner: "TaskRunner", address: str | None) -> None:
        super().__init__(name="transferops-dask-warmup", daemon=True)
        self.runner, self.address, self.error = runner, address, None

    def run(self) -> None:
        try:  # a worker that cannot import these fails the import check of the first map, by name
            self.runner.client.run(exec, WARM_IMPORTS, on_error="return")
        except BaseException as exc:  # re-raised in the thread that maps
            self.error = exc

    def wait(self) -> None:
        """Block until the cluster is up (the runner's client is not safe to create twice); raise its error."""
        self.join()
        if isinstance(self.error, OSError) and self.address:  # distributed's connect timeout is an OSError
            raise ConfigError(f"execution.dask_address {self.address}: no Dask scheduler answers there "
                              f"({self.error}); start one (dask scheduler) or fix the address") from self.error
        if self.error is not None:
            raise self.error


def _submit_all(runner: "TaskRunner", limit: int | None, warmup: _Warmup, checked: set[str], fn: Callable[[Any], Any],
                items: Sequence[Any]) -> list[Any]:
    """``[fn(item) for item in items]`` as task runs on ``runner``, at most ``limit`` at once.

    Results come back in the order of ``items``; the first failed trial raises its error.
    """
    import distributed

    warmup.wait()
    _check_workers_import(runner, fn, checked)
    futures: list[Any] = []
    for item in items:
        if limit:
            running = [f.wrapped_future for f in futures if not f.wrapped_future.done()]
            while len(running) >= limit:
                with runner.client.as_current():  # wait() asks for the current client, not the futures'
                    distributed.wait(running, return_when="FIRST_COMPLETED")
                running = [f for f in running if not f.done()]
        named = run_trial.with_options(task_run_name=trial_label(fn, item))
        futures.append(runner.submit(named, {"fn": fn, "item": item}))
    return [f.result() for f in futures]


@contextmanager
def trial_map(cfg: ExecutionConfig) -> Iterator[TrialMap]:
    """The :data:`~transferops.search.TrialMap` ``cfg`` asks for, usable inside the ``with`` block.

    ``sequential``: :func:`~transferops.search.sequential_map`, nothing started. ``dask``: the
    task runner of :func:`dask_task_runner`, started in the background on entry (the first map
    waits for it) and shut down on exit, whatever ends the block.

    >>> with trial_map(ExecutionConfig()) as map_trials:
    ...     map_trials(abs, [-1, 2])
    [1, 2]
    """
    if cfg.task_runner == "sequential":
        yield sequential_map
        return
    runner = dask_task_runner(cfg)
    with _dask_config(cfg), _prefect_for_workers(cfg), runner:
        warmup = _Warmup(runner, cfg.dask_address)
        warmup.start()
        try:
            yield partial(_submit_all, runner, cfg.max_parallel_trials, warmup, set())
        finally:
            warmup.join()  # the runner's exit closes the cluster the thread may still be starting
