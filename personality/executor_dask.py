"""personality/executor.py's Dask placement: `PERSONALITY_CLUSTER=local:N` (a LocalCluster of N
one-thread worker processes that die with the stage) or a scheduler's address. map_jobs imports
this module only when such a placement is asked for, so `distributed` is never imported otherwise.

Faults are handled as in the local pool (personality/executor_order.py): with `on_lost`, a job
whose worker died (KilledWorker) runs once more and, when its worker dies again, becomes
on_lost's row; a remote scheduler retries a task on other workers itself (its allowed-failures,
3 by default) before it reports the loss, so there the first report is final. A job over its
`time_limit` is cancelled, its worker restarted through the worker's Nanny (or, without one,
told to exit), and it becomes on_lost's row at once. A remote scheduler left with no worker
for PERSONALITY_CLUSTER_NO_WORKER_S seconds (its jobs ended), or out of reach that long,
fails the map (`_NoWorkers`). A job's clock starts when the job itself
says it started (a Dask event on STARTED_TOPIC), not at submission: the scheduler may queue a job
behind another on one worker. The set-up arguments travel in a worker plugin, which every worker
gets once, a worker restarted by its Nanny too.

Nothing here runs on its own; tests/test_executor.py runs every map on the pool and on Dask.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any, Callable, Iterator

from personality.executor import Placement, _child_environment
from personality.executor_worker import THREAD_VARS, _ensure_setup, _run_job, die_with_parent
from personality.executor_order import ExecutorError, InOrder, TimeLimit, WorkerLost

STARTED_TOPIC = "personality-job-started"  # a job's event: {"tag": token:i:serial, "worker": addr}
ARGS_PLUGIN = "personality-setup-args"  # + the map's token: the worker plugin holding setup_args
RESTART_TIMEOUT_S = 60  # a Nanny's restart of a worker whose job ran over its time limit
# how long a map on a remote scheduler waits with no worker at all before it fails (_NoWorkers)
NO_WORKER_ENV, DEFAULT_NO_WORKER_S = "PERSONALITY_CLUSTER_NO_WORKER_S", 600.0


class StoppedAtLimit(Exception):
    """A job the map stopped at its time limit (its task cancelled, its worker restarted)."""


def _dask_call(fn: Callable, job: Any, token: str, setup: Callable | None,
               tag: str | None) -> Any:
    from distributed import get_worker

    worker = get_worker()
    _ensure_setup(token, setup, worker.plugins[f"{ARGS_PLUGIN}-{token}"].setup_args)
    if tag is not None:  # the clock of the job's time limit starts now, on this worker
        worker.log_event(STARTED_TOPIC, {"tag": tag, "worker": worker.address})
    return _run_job(fn, job)


def _exit_soon() -> None:
    """Run on a worker without a Nanny whose job hangs: it exits once this call has answered."""
    threading.Timer(0.2, os._exit, (1,)).start()


def _settle(out: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve `out` unless the map already did (a job stopped at its limit)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(result)


def _concurrent(task) -> Future:
    """A concurrent.futures Future that follows the Dask future `task` (InOrder waits on these).
    Not the client's own ClientExecutor: a task cancelled under it leaves that executor's future
    pending for ever. A result lost with its worker before it was fetched (status "lost") is
    recomputed by the scheduler: the future follows the recomputation."""
    out: Future = Future()

    def follow(done) -> None:
        if out.done():
            return
        if done.status == "lost":
            task.add_done_callback(follow)
            return
        try:
            if done.status == "cancelled":
                raise CancelledError
            result = done.result()
        except CancelledError:
            if out.cancel():
                out.set_running_or_notify_cancel()
        except Exception as exc:  # noqa: BLE001 - the job's own error, or a lost worker
            _settle(out, error=exc)
        else:
            _settle(out, result=result)

    task.add_done_callback(follow)
    return out


class _DaskJobs:
    """The Dask side of one map: submits each job as a task followed by a concurrent future,
    learns from the jobs' own events which worker runs the latest submission of each, and
    stops a job over its time limit (the client's event thread writes `worker`, the map's
    thread reads it: single dict operations)."""

    def __init__(self, client, token: str, fn: Callable, setup: Callable | None, *,
                 limited: bool):
        self.client, self.token, self.fn, self.setup = client, token, fn, setup
        self.limited = limited
        self.tasks: dict[int, tuple] = {}  # job -> (its latest Dask future, our future)
        self.serial: dict[int, int] = {}  # job -> its latest submission's number
        self.worker: dict[int, str] = {}  # job -> the worker its latest submission runs on
        if limited:
            client.subscribe_topic(STARTED_TOPIC, self._seen)

    def submit(self, i: int, job: Any) -> Future:
        tag = None
        if self.limited:
            self.serial[i] = self.serial.get(i, 0) + 1
            self.worker.pop(i, None)
            tag = f"{self.token}:{i}:{self.serial[i]}"
        task = self.client.submit(_dask_call, self.fn, job, self.token, self.setup, tag,
                                  pure=False)
        self.tasks[i] = (task, _concurrent(task))
        return self.tasks[i][1]

    def _seen(self, event: tuple) -> None:
        token, i, serial = str(event[1]["tag"]).rsplit(":", 2)
        if token == self.token and self.serial.get(int(i)) == int(serial):
            self.worker[int(i)] = event[1]["worker"]

    def started(self, i: int) -> bool:
        return i in self.worker

    def end(self, i: int) -> bool:
        """Stop job i: cancel its task (a remote scheduler would run it again elsewhere), fail
        our future with StoppedAtLimit, and restart its worker (the hung call still runs)."""
        task, out = self.tasks[i]
        # our future first: the cancel's callback would otherwise mark it cancelled (a re-run)
        _settle(out, error=StoppedAtLimit(f"job {i} stopped at its time limit"))
        self.client.cancel([task], force=True)
        self._stop_worker(self.worker[i])
        return True

    def _stop_worker(self, address: str) -> None:
        with contextlib.suppress(Exception):  # gone already (KeyError), no Nanny (ValueError)
            status = self.client.restart_workers([address], timeout=RESTART_TIMEOUT_S,
                                                 raise_for_error=False)
            if status.get(address) == "OK":
                return
        with contextlib.suppress(Exception):  # no Nanny: the worker exits; gone: nothing to do
            self.client.run(_exit_soon, workers=[address], on_error="ignore")

    def close(self) -> None:
        if self.limited:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(STARTED_TOPIC)


class _NoWorkers:
    """The map's `watch` on a remote scheduler: fail the map (ExecutorError) once the scheduler
    has had no worker for `no_worker_s()` seconds after it had some, or could not be reached
    that long. When a cluster's jobs end (a SLURM job's walltime, preemption, scancel) and
    nothing starts new ones, its tasks wait for a worker for ever: a stage on a real SLURM
    whose job was cancelled mid-stage hung (docs/scaling.md). Workers started again within the
    wait carry on; before the first worker joins (a job still queued) the map waits, as before."""

    def __init__(self, client, address: str):
        self.client, self.address = client, address
        self.grace_s, self.since, self.had_workers = no_worker_s(), None, False

    def __call__(self) -> None:
        try:
            workers, reached = len(self.client.nthreads()), True
        except Exception:  # noqa: BLE001 - the scheduler itself is gone (its RPC timed out)
            workers, reached = 0, False
        self.had_workers |= workers > 0
        if workers or (reached and not self.had_workers):
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        if now - self.since <= self.grace_s:
            return
        why = ("has had no worker for {:.0f} s (its jobs ended: walltime, preemption, scancel?)"
               if reached else "could not be reached for {:.0f} s (it stopped?)")
        raise ExecutorError(f"the Dask scheduler at {self.address} " + why.format(self.grace_s) +
                            f": start it or its workers and run the stage again ({NO_WORKER_ENV}"
                            " sets the wait)")


def no_worker_s() -> float:
    """PERSONALITY_CLUSTER_NO_WORKER_S: the seconds a map waits for a worker (default 600)."""
    raw = os.environ.get(NO_WORKER_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_NO_WORKER_S
    except ValueError:
        raise ExecutorError(f"{NO_WORKER_ENV}={raw!r}: not a number of seconds") from None
    if not seconds > 0:
        raise ExecutorError(f"{NO_WORKER_ENV}={raw!r}: must be > 0")
    return seconds


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
        # env: a worker its Nanny restarts is spawned again, outside _child_environment
        cluster = LocalCluster(n_workers=where.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40,
                               env={var: "1" for var in THREAD_VARS})
    try:
        with Client(cluster) as client:
            client.register_plugin(_die_with_parent_plugin(os.getpid()))
            yield client
    finally:
        cluster.close()


def map_dask(fn, jobs, where, label, token, setup, setup_args, on_lost=None,
             time_limit=None) -> Iterator[Any]:
    from distributed import KilledWorker

    with _dask_client(where) as client:
        n = where.workers or max(1, sum(client.nthreads().values()))
        # the set-up arguments (face rigs, params) travel once per worker, not once per job
        client.register_plugin(_args_plugin(token, setup_args))
        dask_jobs = _DaskJobs(client, token, fn, setup, limited=time_limit is not None)
        limits = TimeLimit(time_limit, dask_jobs.end, dask_jobs.started) if time_limit else None

        def on_error(i: int, exc: BaseException, failed: dict) -> WorkerLost | None:
            if isinstance(exc, StoppedAtLimit):
                return WorkerLost((i,), str(exc), "Dask worker")
            if not isinstance(exc, KilledWorker):
                return None
            # the scheduler may have queued a second job on the worker: it fails with it, and
            # which of the two ran is not known once the worker is gone
            lost = tuple(k for k, e in failed.items() if isinstance(e, KilledWorker)
                         and e.last_worker == exc.last_worker) or (i,)
            # a remote scheduler has retried the task on other workers (allowed-failures)
            return WorkerLost(lost, str(exc), "Dask worker", final=bool(where.address))

        try:
            yield from InOrder(dask_jobs.submit, jobs, n, on_error, label, on_lost=on_lost,
                               is_lost=lambda e: isinstance(e, (KilledWorker, StoppedAtLimit,
                                                                CancelledError)),
                               time_limit=limits,
                               watch=_NoWorkers(client, where.address) if where.address else None)
        finally:
            dask_jobs.close()
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(f"{ARGS_PLUGIN}-{token}")


def _args_plugin(token: str, setup_args: tuple):
    """A Dask WorkerPlugin that holds the map's set-up arguments on every worker (built here:
    distributed is imported only when a cluster is asked for)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class SetupArgs(WorkerPlugin):
        def __init__(self) -> None:
            self.name = f"{ARGS_PLUGIN}-{token}"
            self.setup_args = setup_args

    return SetupArgs()


def _die_with_parent_plugin(parent_pid: int):
    """A Dask WorkerPlugin (built here: distributed is imported only when a cluster is asked for)
    that makes LocalCluster workers exit with the stage process that started them."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class DieWithParent(WorkerPlugin):
        name = "personality-die-with-parent"

        def setup(self, worker) -> None:
            die_with_parent(parent_pid)

    return DieWithParent()
