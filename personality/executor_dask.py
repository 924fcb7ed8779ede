"""personality/executor.py's Dask placement: `PERSONALITY_CLUSTER=local:N` (a LocalCluster of N
one-thread worker processes that die with the stage) or a scheduler's address. map_jobs imports
this module only when such a placement is asked for, so `distributed` is never imported otherwise.

Nothing here runs on its own; tests/test_executor.py runs every map on the pool and on Dask.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterator

from personality.executor import (Placement, _child_environment, _ensure_setup, _run_job,
                                  die_with_parent)
from personality.executor_order import InOrder, WorkerLost


def _dask_call(fn: Callable, job: Any, token: str, setup: Callable | None,
               setup_args: tuple) -> Any:
    _ensure_setup(token, setup, setup_args)
    return _run_job(fn, job)


@contextlib.contextmanager
def _dask_client(where: Placement):
    """A distributed Client: on `where.address`, or on a LocalCluster of one-thread worker
    processes that die with this one and fail a task at the first lost worker."""
    import dask
    from distributed import Client, LocalCluster

    if where.address:
        with Client(where.address) as client:
            yield client
        return
    # allowed-failures 0: a killed worker fails its task at once (default: rerun it 3 times)
    config = {"distributed.scheduler.allowed-failures": 0}
    with dask.config.set(config), _child_environment():
        cluster = LocalCluster(n_workers=where.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
    try:
        with Client(cluster) as client:
            client.register_plugin(_die_with_parent_plugin(os.getpid()))
            yield client
    finally:
        cluster.close()


def map_dask(fn, jobs, where, label, token, setup, setup_args) -> Iterator[Any]:
    from distributed import KilledWorker

    with _dask_client(where) as client:
        n = where.workers or max(1, sum(client.nthreads().values()))
        # the set-up arguments (face rigs, params) travel once per worker, not once per job
        [shared_args] = client.scatter([setup_args], broadcast=True, hash=False)
        executor: Executor = client.get_executor(pure=False)

        def on_error(i: int, exc: BaseException, failed: dict) -> WorkerLost | None:
            if not isinstance(exc, KilledWorker):
                return None
            # the scheduler may have queued a second job on the worker: it fails with it, and
            # which of the two ran is not known once the worker is gone
            lost = tuple(k for k, e in failed.items() if isinstance(e, KilledWorker)
                         and e.last_worker == exc.last_worker) or (i,)
            return WorkerLost(lost, str(exc), "Dask worker")

        def submit(i: int, job: Any) -> Future:
            return executor.submit(_dask_call, fn, job, token, setup, shared_args)

        # no second try here: the client cancels the futures of a lost worker's neighbours, and
        # a remote scheduler has already retried the task (allowed-failures) before KilledWorker
        yield from InOrder(submit, jobs, n, on_error, label)


def _die_with_parent_plugin(parent_pid: int):
    """A Dask WorkerPlugin (built here: distributed is imported only when a cluster is asked for)
    that makes LocalCluster workers exit with the stage process that started them."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class DieWithParent(WorkerPlugin):
        name = "personality-die-with-parent"

        def setup(self, worker) -> None:
            die_with_parent(parent_pid)

    return DieWithParent()
