"""The one executor for per-video work (frames, faces, audio, synthetic rendering in ingest) and
for whole-model jobs (retrain's fine-tunings, explain's models: `local_processes`).

    from personality.executor import map_jobs
    for row in map_jobs(process_video, jobs, workers=base.workers, label=lambda j: j["video_id"],
                        setup=warm_up, setup_args=(params,)):
        ...                                   # results arrive in job order, whatever ran where

Nothing here runs on its own; `python -m pytest tests/test_executor.py` exercises it.

Where the work runs is read from the environment, never from params.yaml: it changes no byte of
any output, so it must not invalidate DVC's cache.

    PERSONALITY_CLUSTER=""                    # (default) `workers` local spawn processes; 1: inline
    PERSONALITY_CLUSTER=local:4               # a Dask LocalCluster of 4 worker processes
    PERSONALITY_CLUSTER=tcp://head:8786       # a running Dask scheduler (README: "Running the
                                              #   front-end on a cluster")

Every worker process runs with one BLAS / OpenMP / OpenCV thread (several workers already share
the cores) and runs `setup(*setup_args)` once (a model load, a JIT warm-up), not once per job.
A worker that dies (SIGKILL by the kernel for memory, a crash inside a native library) fails the
map at once with an `ExecutorError` naming the job it was running: never a hang. Local workers
(pool and LocalCluster) die with their parent: PR_SET_PDEATHSIG on Linux, and a thread that
polls the parent's pid everywhere, so killing a stage leaves no worker behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

__all__ = ["CLUSTER_ENV", "ExecutorError", "Placement", "placement", "local_processes",
           "map_jobs", "single_thread"]

CLUSTER_ENV = "PERSONALITY_CLUSTER"
# BLAS, OpenMP, numexpr, numba and TFLite (MediaPipe) read these when they load: spawned workers
# must have them before their first import
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "TFLITE_NUM_THREADS")
_PARENT_POLL_S = 0.5


class ExecutorError(RuntimeError):
    """A worker died while running a job (the message names the job, e.g. the video), or
    PERSONALITY_CLUSTER holds a value that names no executor (the message quotes it)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where per-video work runs: `inline` (this process), `pool` (local spawn processes) or
    `dask` (a LocalCluster of `workers` processes, or the scheduler at `address`)."""

    kind: str
    workers: int  # local processes; 0 for a remote scheduler (its workers decide)
    address: str = ""

    def describe(self) -> str:
        if self.kind == "dask":
            return f"Dask scheduler {self.address}" if self.address else \
                f"Dask LocalCluster of {self.workers} worker(s)"
        return f"{self.workers} local process(es)" if self.kind == "pool" else "this process"


def placement(workers: int, setting: str | None = None) -> Placement:
    """Parse PERSONALITY_CLUSTER (or `setting`): empty -> local pool of `workers` processes (inline
    when workers <= 1), `local:N` -> Dask LocalCluster of N processes, `tcp://host:port` (or
    tls://, ucx://) -> that Dask scheduler. Raises ExecutorError quoting any other value."""
    raw = os.environ.get(CLUSTER_ENV, "") if setting is None else setting
    value = raw.strip()
    if not value:
        return Placement("pool" if workers > 1 else "inline", max(1, workers))
    match = re.fullmatch(r"local:(\d+)", value)
    if match and int(match.group(1)) >= 1:
        return Placement("dask", int(match.group(1)))
    if re.fullmatch(r"(tcp|tls|ucx|inproc)://\S+", value):
        return Placement("dask", 0, value)
    raise ExecutorError(f"{CLUSTER_ENV}={raw!r}: expected empty (local process pool), "
                        "'local:N' (Dask LocalCluster of N >= 1 processes) or a Dask scheduler "
                        "address such as 'tcp://head:8786'")


def local_processes(n_jobs: int, workers: int, threads_per_job: int = 1) -> Placement:
    """Where whole-model jobs run (fine-tunings, explanations): a local pool whatever
    PERSONALITY_CLUSTER says (they read this repository's data/ folder), with no more processes
    than `workers` cores allow at `threads_per_job` torch threads each (0: torch's default, every
    core, so one process)."""
    per_job = threads_per_job if threads_per_job > 0 else (os.cpu_count() or 1)
    return placement(max(1, min(n_jobs, workers // per_job)), "")


# --------------------------------------------------------------------------------------------------
# inside a worker


def single_thread(*, loaded: bool = True) -> None:
    """One thread per library in this process: one job per process, more would only fight over
    the cores (env vars for libraries not loaded yet, OpenCV, and with `loaded` threadpoolctl for
    the BLAS / OpenMP pools already loaded: not inline, where torch shares this process)."""
    os.environ.update({var: "1" for var in THREAD_VARS if var != "NUMBA_NUM_THREADS"})
    if loaded:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)


def die_with_parent(parent_pid: int) -> None:
    """Make this worker exit when `parent_pid` does, even when the parent is SIGKILLed and runs no
    clean-up: the kernel's PR_SET_PDEATHSIG where there is one, and a daemon thread that polls
    os.getppid() (re-parenting changes it) as the portable fallback."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            threading.Event().wait(_PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


_SETUP_TOKEN: str | None = None


def _ensure_setup(token: str, setup: Callable | None, setup_args: tuple, *,
                  inline: bool = False) -> None:
    """Run `setup(*setup_args)` once per process and map call (`token`): a long-lived Dask worker
    that serves a second stage, or the same stage with other params, sets up again."""
    global _SETUP_TOKEN
    if _SETUP_TOKEN == token:
        return
    single_thread(loaded=not inline)
    if setup is not None:
        setup(*setup_args)
    _SETUP_TOKEN = token


_LEDGER = None  # shared ints: job i runs in process ledger[i] (> 0), or ran there (< 0)


def _pool_init(parent_pid: int, ledger, token: str, setup: Callable | None,
               setup_args: tuple) -> None:
    global _LEDGER
    die_with_parent(parent_pid)
    _LEDGER = ledger
    _private_progress_lock()
    _ensure_setup(token, setup, setup_args)


def _private_progress_lock() -> None:
    """A worker that draws progress bars (a model's epochs) locks them with a thread lock: tqdm's
    default is a multiprocessing lock, a POSIX semaphore that the pool's shutdown leaves behind,
    and Python then warns of 'leaked semaphore objects' when the stage exits."""
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())


def _pool_call(fn: Callable, index: int, job: Any) -> Any:
    if index < 0:
        return fn(job)
    _LEDGER[index] = os.getpid()  # running here: if this process dies, job `index` is the culprit
    try:
        return fn(job)
    finally:
        _LEDGER[index] = -os.getpid()  # done (or raised): no longer a culprit


def _started(_job: Any = None) -> int:
    return os.getpid()


def _dask_call(fn: Callable, job: Any, token: str, setup: Callable | None,
               setup_args: tuple) -> Any:
    _ensure_setup(token, setup, setup_args)
    return fn(job)


# --------------------------------------------------------------------------------------------------
# the parent


def map_jobs(fn: Callable[[Any], Any], jobs: Iterable[Any], *, workers: int,
             label: Callable[[Any], str] = str, setup: Callable | None = None,
             setup_args: tuple = (), where: Placement | None = None) -> Iterator[Any]:
    """`fn(job)` for every job, yielded in job order, on the placement PERSONALITY_CLUSTER names
    (or `where`). `fn`, `setup` and the jobs must be picklable: module-level functions. One job
    per worker is in flight; finished results waiting for a slow earlier one stay few.
    A job's own exception reaches the caller unchanged (with a note naming the job); a dead
    worker raises ExecutorError naming the job it ran."""
    jobs = list(jobs)
    where = where or placement(workers)
    token = uuid.uuid4().hex
    fn, setup = _importable(fn), _importable(setup)
    if where.kind == "inline" or (where.kind == "pool" and len(jobs) <= 1):
        # BLAS pools at one thread for the map, as in a worker (a matrix product summed in another
        # order changes float bytes), restored after it: torch may share this process
        with _loaded_pools_limited():
            _ensure_setup(token, setup, setup_args, inline=True)
            for job in jobs:
                yield _noted(fn, job, label)
        return
    if where.kind == "pool":
        yield from _map_pool(fn, jobs, min(where.workers, len(jobs)), label, token, setup,
                             setup_args)
    else:
        yield from _map_dask(fn, jobs, where, label, token, setup, setup_args)


@contextlib.contextmanager
def _loaded_pools_limited() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _importable(fn: Callable | None) -> Callable | None:
    """The same function from its importable module when it lives in `__main__` (a stage run as
    `python -m stages.audio`): Dask pickles `__main__` functions by value, each with a private
    copy of its globals, so the worker state that `setup` sets would be invisible to `fn`."""
    if fn is None or getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name:
        return fn
    return getattr(importlib.import_module(spec.name), fn.__qualname__, fn)


def _noted(fn: Callable, job: Any, label: Callable[[Any], str]) -> Any:
    try:
        return fn(job)
    except Exception as exc:
        exc.add_note(f"while processing {label(job)}")
        raise


def _in_order(submit: Callable[[int, Any], Future], jobs: list, n_running: int,
              on_error: Callable[[int, BaseException, dict], BaseException | None],
              label: Callable[[Any], str], ahead: int = 4) -> Iterator[Any]:
    """Keep `n_running` jobs running (one per worker: a worker that dies held one job, the one we
    name), yield results in job order, and let finished results wait for a slow earlier job up to
    `ahead` x n_running (memory stays bounded). `on_error(i, exc, failed)` (failed: every job
    that failed so far -> its exception) turns a lost worker into an ExecutorError, raised as
    soon as it is seen; a job's own exception is raised in its turn."""
    futures: dict[int, Future] = {}  # submitted, not yet yielded
    next_submit = next_yield = 0
    while next_yield < len(jobs):
        running = [f for f in futures.values() if not f.done()]
        while (next_submit < len(jobs) and len(running) < n_running
               and next_submit - next_yield < ahead * n_running):
            try:
                futures[next_submit] = submit(next_submit, jobs[next_submit])
            except BaseException as exc:  # a broken pool refuses new work
                lost = on_error(next_submit, exc, {})
                raise (lost or exc) from exc
            running.append(futures[next_submit])
            next_submit += 1
        failed = {k: f.exception() for k, f in futures.items()
                  if f.done() and f.exception() is not None}
        for k, exc in failed.items():
            lost = on_error(k, exc, failed)
            if lost is not None:
                raise lost from exc
        head = futures[next_yield]
        if not head.done():
            wait(running, return_when=FIRST_COMPLETED)
            continue
        del futures[next_yield]
        try:
            result = head.result()
        except Exception as exc:
            exc.add_note(f"while processing {label(jobs[next_yield])}")
            raise
        next_yield += 1
        yield result


@contextlib.contextmanager
def _child_environment() -> Iterator[None]:
    """THREAD_VARS = 1 in os.environ while workers are spawned (they inherit it and read it at
    their first import), restored afterwards: this process keeps its own thread pools."""
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update({var: "1" for var in THREAD_VARS})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            name = signal.Signals(-code).name
            hint = {"SIGKILL": ": killed, e.g. by the kernel's OOM killer",
                    "SIGSEGV": ": crashed inside native code"}.get(name, "")
            return f"{name}{hint}"
    return f"exit code {code}"


def _map_pool(fn, jobs, n, label, token, setup, setup_args) -> Iterator[Any]:
    ctx = mp.get_context("spawn")  # fork is unsafe beside MediaPipe, numba and BLAS threads
    ledger = ctx.Array("i", len(jobs), lock=False)
    executor = ProcessPoolExecutor(n, mp_context=ctx, initializer=_pool_init,
                                   initargs=(os.getpid(), ledger, token, setup, setup_args))
    with _child_environment():  # start every worker now, inside the single-thread environment
        for started in [executor.submit(_pool_call, _started, -1, None) for _ in range(n)]:
            started.result()
    processes = dict(getattr(executor, "_processes", None) or {})  # pid -> Process, for the
    finished = False  # post-mortem: which worker died, running which job

    def on_error(i: int, exc: BaseException, failed: dict) -> ExecutorError | None:
        if not isinstance(exc, BrokenProcessPool):
            return None
        executor.shutdown(wait=True, cancel_futures=True)  # the pool ends the survivors
        dead = {pid: p.exitcode for pid, p in processes.items()
                if p.exitcode not in (0, None, -signal.SIGTERM)}
        culprits = [k for k in range(len(jobs)) if ledger[k] in dead] or [i]
        k = culprits[0]
        why = _exit_reason(dead.get(ledger[k])) if ledger[k] in dead else "it died"
        return ExecutorError(f"{label(jobs[k])}: the worker process running it died "
                             f"({why}); the stage stops here, nothing is written")

    try:
        yield from _in_order(lambda i, job: executor.submit(_pool_call, fn, i, job), jobs,
                             n, on_error, label)
        finished = True
    finally:
        if not finished:  # an error, Ctrl-C or an abandoned generator: no worker outlives it
            for process in processes.values():
                with contextlib.suppress(Exception):
                    process.kill()
        executor.shutdown(wait=True, cancel_futures=True)


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


def _map_dask(fn, jobs, where, label, token, setup, setup_args) -> Iterator[Any]:
    from distributed import KilledWorker

    with _dask_client(where) as client:
        n = where.workers or max(1, sum(client.nthreads().values()))
        # the set-up arguments (face rigs, params) travel once per worker, not once per job
        [shared_args] = client.scatter([setup_args], broadcast=True, hash=False)
        executor: Executor = client.get_executor(pure=False)

        def on_error(i: int, exc: BaseException, failed: dict) -> ExecutorError | None:
            if not isinstance(exc, KilledWorker):
                return None
            # the scheduler may have queued a second job on the worker: it fails with it, and
            # which of the two ran is not known once the worker is gone
            lost = [label(jobs[k]) for k, e in failed.items() if isinstance(e, KilledWorker)
                    and e.last_worker == exc.last_worker]
            return ExecutorError(f"{' or '.join(lost)}: the Dask worker running it died "
                                 f"({exc}); the stage stops here, nothing is written")

        def submit(i: int, job: Any) -> Future:
            return executor.submit(_dask_call, fn, job, token, setup, shared_args)

        yield from _in_order(submit, jobs, n, on_error, label)


def _die_with_parent_plugin(parent_pid: int):
    """A Dask WorkerPlugin (built here: distributed is imported only when a cluster is asked for)
    that makes LocalCluster workers exit with the stage process that started them."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class DieWithParent(WorkerPlugin):
        name = "personality-die-with-parent"

        def setup(self, worker) -> None:
            die_with_parent(parent_pid)

    return DieWithParent()
