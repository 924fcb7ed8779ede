"""The one executor for per-video work (frames, faces, audio, synthetic rendering in ingest) and
for whole-model jobs (retrain's fine-tunings, explain's models: `local_processes`); nothing here
runs on its own (`python -m pytest tests/test_executor.py` exercises it).

    from personality.executor import map_jobs
    for row in map_jobs(process_video, jobs, workers=base.workers, label=lambda j: j["video_id"],
                        setup=warm_up, setup_args=(params,)):
        ...                                   # results arrive in job order, whatever ran where

Where the work runs is read from the environment, never from params.yaml: it changes no byte of
any output, so it must not invalidate DVC's cache.

    PERSONALITY_CLUSTER=""                # (default) `workers` local spawn processes; 1: this
                                          #   process, but a per-video stage's one worker
    PERSONALITY_CLUSTER=inline            # every job in this process, crashes too (pdb)
    PERSONALITY_CLUSTER=local:4           # a Dask LocalCluster of 4 worker processes
    PERSONALITY_CLUSTER=tcp://head:8786   # a Dask scheduler (README: "Running the front-end on a
                                          #   cluster")

Each worker process runs with one BLAS / OpenMP / OpenCV thread (several workers already share
the cores) and runs `setup(*setup_args)` once (a model load, a JIT warm-up), not once per job.
A worker that dies (SIGKILL by the kernel for memory, a crash inside a native library) never hangs
the map, not even halfway through sending its result (CPython's pool alone would wait for the rest
for ever: `_Pool.unstick`). Without `on_lost` it fails the map at once with an `ExecutorError`
naming the job it was running. With `on_lost(job, why)` (the per-video stages: one bad video never takes a stage down)
the local pool is restarted (a Dask worker by its Nanny), the jobs in flight run again, and the
dead worker's job runs once more; when it kills a worker a second time its result is `on_lost`'s
(an error row naming the video), and the map goes on. A remote Dask scheduler retries a task on
other workers itself (allowed-failures) before it reports the loss, which is then final; one
left with no worker at all for PERSONALITY_CLUSTER_NO_WORKER_S (default 600 s: a SLURM job
that ended) fails the map with an ExecutorError naming it, where its tasks would wait. More
than `max(3, jobs / 20)` dead workers in one map is the machine (memory, a broken install), not a
video: ExecutorError. A job's exception that cannot travel back (unpicklable) or a job that calls
sys.exit() arrives as a RuntimeError naming what it was. Local workers (pool and LocalCluster)
die with their parent (PR_SET_PDEATHSIG on Linux, and a thread polling the parent's pid
everywhere), so killing a stage leaves no worker behind; a process that exits while a map it
stopped reading still runs jobs kills their workers, not waiting for them (_end_abandoned_maps).
A job that hangs (an FFmpeg read that never returns) is stopped at its time limit, in the pool
or on Dask (`time_limit`: the per-video stages give 600 s + 20 s per second of video, or 2 s per
kept frame for faces, times PERSONALITY_TIME_LIMIT_SCALE, default 1, 0 for none) and is then
on_lost's row at once. The scheduling itself (order, second tries, time limits) is
personality/executor_order.py, what a worker runs around each job personality/executor_worker.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from personality.executor_order import (ExecutorError, InOrder, TimeLimit, WorkerLost,
                                        exit_reason, time_limit_s)
from personality.executor_worker import (THREAD_VARS, _ensure_setup, _pool_call, _pool_init,
                                         _started, single_thread)

__all__ = ["CLUSTER_ENV", "ExecutorError", "Placement", "placement", "local_processes",
           "time_limit_s", "map_jobs", "single_thread", "THREAD_VARS"]

CLUSTER_ENV = "PERSONALITY_CLUSTER"
READY_TIMEOUT_S = 1800.0  # a set-up (model load, JIT warm-up) that takes longer is stuck
START_POLL_S = 0.2  # how often start() looks for a worker that died in its set-up
DEATH_SEEN_S = 2.0  # the longest start() waits to read a dead worker's exit status
UNSTICK_S = 5.0  # a dead worker the pool has not noticed by then never will be (_Pool.unstick)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where per-video work runs: `inline` (this process), `pool` (local spawn processes) or
    `dask` (a LocalCluster of `workers` processes, or the scheduler at `address`)."""

    kind: str
    workers: int  # local processes; 0 for a remote scheduler (its workers decide)
    address: str = ""
    forced_inline: bool = False  # PERSONALITY_CLUSTER=inline: every job here, crashes included

    def describe(self) -> str:
        if self.kind == "dask":
            return f"Dask scheduler {self.address}" if self.address else \
                f"Dask LocalCluster of {self.workers} worker(s)"
        return f"{self.workers} local process(es)" if self.kind == "pool" else "this process"


def placement(workers: int, setting: str | None = None) -> Placement:
    """Parse PERSONALITY_CLUSTER (or `setting`): empty -> local pool of `workers` processes (inline
    when workers <= 1, but for maps with on_lost), `inline` -> this process always, `local:N` ->
    Dask LocalCluster of N processes, `tcp://host:port` (or tls://, ucx://) -> that Dask
    scheduler. Raises ExecutorError quoting any other value."""
    raw = os.environ.get(CLUSTER_ENV, "") if setting is None else setting
    value = raw.strip()
    if not value:
        return Placement("pool" if workers > 1 else "inline", max(1, workers))
    if value == "inline":
        return Placement("inline", 1, forced_inline=True)
    match = re.fullmatch(r"local:(\d+)", value)
    if match and int(match.group(1)) >= 1:
        return Placement("dask", int(match.group(1)))
    if re.fullmatch(r"(tcp|tls|ucx|inproc)://\S+", value):
        return Placement("dask", 0, value)
    raise ExecutorError(f"{CLUSTER_ENV}={raw!r}: expected empty (local process pool), 'inline', "
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
# the parent


def map_jobs(fn: Callable[[Any], Any], jobs: Iterable[Any], *, workers: int,
             label: Callable[[Any], str] = str, setup: Callable | None = None,
             setup_args: tuple = (), where: Placement | None = None,
             on_lost: Callable[[Any, str], Any] | None = None,
             time_limit: Callable[[Any], float | None] | None = None,
             kept: Any = None) -> Iterator[Any]:
    """`fn(job)` for every job, yielded in job order, on the placement PERSONALITY_CLUSTER names
    (or `where`). `fn`, `setup` and the jobs must be picklable: module-level functions. One job
    per worker is in flight; finished results waiting for a slow earlier one stay few.
    A job's own exception reaches the caller unchanged (with a note naming the job). A dead
    worker raises ExecutorError naming the job it ran, or, with `on_lost(job, why)`, gives that
    job a second try and then on_lost's result (module docstring). `time_limit(job)`: seconds
    a job may run in a worker (pool or Dask) before the worker is killed (time_limit_s), then
    on_lost's result (or ExecutorError); not enforced in this process. `kept`: an executor_kept
    KeptWorkers, whose workers serve in place of a pool of this map's (not inline, nor Dask)."""
    jobs = list(jobs)
    if not jobs:  # no worker, no set-up (an AU-only dataset's audio and faces stages)
        return
    where = where or placement(workers)
    token = uuid.uuid4().hex
    fn, setup = _importable(fn), _importable(setup)
    # here, sparing a spawn, unless a crash in a job must not end the stage (on_lost: a worker
    # even when workers is 1), or PERSONALITY_CLUSTER=inline asks for this process (a debugger)
    if where.forced_inline or (on_lost is None and kept is None and where.kind != "dask"
                               and (where.kind == "inline" or len(jobs) <= 1)):
        # BLAS pools at one thread for the map, as in a worker (a matrix product summed in another
        # order changes float bytes), restored after it: torch may share this process
        with _loaded_pools_limited():
            _ensure_setup(token, setup, setup_args, inline=True)
            for job in jobs:
                yield _noted(fn, job, label)
        return
    if where.kind in ("pool", "inline"):
        pool = kept.pool(len(jobs)) if kept is not None else \
            _Pool(max(1, min(where.workers, len(jobs))), len(jobs), token, setup, setup_args)
        yield from _map_pool(fn, jobs, pool, label, on_lost, time_limit, kept=kept is not None)
    else:
        from personality.executor_dask import map_dask  # distributed only when asked for

        yield from map_dask(fn, jobs, where, label, token, setup, setup_args, on_lost, time_limit)


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


# a worker the pool ends (all of them, the dead one too) is first watched this long for an exit
EXITING_S = 0.05  # of its own


class _Pool:
    """A spawn ProcessPoolExecutor of `n` workers that can be restarted after one died, with the
    post-mortem of which worker died running which job (the shared ledger)."""

    def __init__(self, n: int, n_jobs: int, token: str, setup: Callable | None, setup_args: tuple):
        self.ctx = mp.get_context("spawn")  # fork is unsafe beside MediaPipe, numba, BLAS threads
        self.n, self.ledger = n, self.ctx.Array("i", n_jobs, lock=False)
        self.initargs = (token, setup, setup_args)
        self.executor: ProcessPoolExecutor | None = None
        self.processes: dict = {}
        self.begun: list[Future] | None = None  # begin()'s set-up answers that start() awaits
        self.restart = self.killed = False  # restart: a worker was lost, start at the next submit
        self.raised_in_a_row = 0  # kept maps ended by a job's own exception, one after another
        self.user: InOrder | None = None  # the map using the workers, until it ends
        self.reader: threading.Thread | None = None  # the thread that last read the map
        self.dead_since: float | None = None  # when unstick first saw a dead worker
        self.ended_here: set[int] = set()  # pids unstick ended: no culprits (post_mortem)
        self.submitted: dict[int, Future] = {}  # job -> its latest future (post_mortem)
        self.lock = threading.RLock()  # user's changes; re-entrant: a garbage collection in
        #                                KeptWorkers.pool may close an abandoned map right there

    def start(self, tries: int = 3) -> None:
        """Start every worker now and run its setup; a worker that dies meanwhile (the OOM
        killer during a model load) costs a fresh start, `tries` at most, then ExecutorError."""
        for _ in range(tries):
            started, self.begun = self.begun or self.begin(), None
            try:
                return self._await_started(started)
            except threading.BrokenBarrierError:  # only its timeout breaks it: a stuck set-up
                self._stop_after_setup_death(expect_death=False)
                raise ExecutorError(f"the stage's set-up took longer than {READY_TIMEOUT_S:.0f} s "
                                    "in a worker (stuck?); the stage stops here, nothing is "
                                    "written") from None
            except BrokenProcessPool:
                codes = self._stop_after_setup_death()
        why = exit_reason(codes[0]) if codes else "its exit status was not seen"
        raise ExecutorError(f"a worker process died while starting (running the stage's set-up) "
                            f"{tries} times in a row ({why})"
                            "; the stage stops here, nothing is written")

    def begin(self) -> list[Future]:
        """Spawn the workers and let them run their set-up, without waiting (start() waits)."""
        ready, self.killed, self.dead_since = self.ctx.Barrier(self.n), False, None
        self.ended_here, self.submitted = set(), {}
        self.executor = ProcessPoolExecutor(
            self.n, mp_context=self.ctx, initializer=_pool_init,
            initargs=(os.getpid(), self.ledger, ready, READY_TIMEOUT_S, *self.initargs))
        with _child_environment():  # workers start in the single-thread environment
            started = [self.executor.submit(_pool_call, _started, -1, None)
                       for _ in range(self.n)]
        # pid -> Process, for the post-mortem: which worker died, running which job
        self.processes = dict(getattr(self.executor, "_processes", None) or {})
        for pid, process in self.processes.items():  # CPython's pool ends survivors with it
            process.terminate = functools.partial(self._ended_by_pool, pid, process,
                                                  process.terminate)
        return started

    def _ended_by_pool(self, pid: int, process, terminate: Callable[[], None]) -> None:
        """A worker's terminate(), called by the pool on every worker after a death: a live one
        is noted, so that post_mortem never takes its SIGTERM for a death of its own."""
        if process.exitcode is None:  # the dead one may still be exiting: its pipe, which told
            process.join(timeout=EXITING_S)  # the pool, closes before its status is there
        self.ended_here |= {pid} if process.exitcode is None else set()
        terminate()

    def _stop_after_setup_death(self, expect_death: bool = True) -> list[int]:
        """End this try's pool; the exit codes of the workers that had died by themselves (read
        before the survivors are killed here; not those the pool ended with SIGTERM)."""
        def died() -> list[int]:
            return [p.exitcode for p in self.processes.values()
                    if p.exitcode is not None and p.exitcode != -signal.SIGTERM]

        # the pool's manager thread may be reaping the dead worker right now, and while it does
        # our own waitpid sees no status (ECHILD): give it a moment, it is dead already
        deadline = time.monotonic() + (DEATH_SEEN_S if expect_death else 0.0)
        while not died() and time.monotonic() < deadline:
            time.sleep(0.05)
        codes = died()
        self.kill()  # the survivors wait at the barrier: shutdown alone would wait too
        self.executor.shutdown(wait=True, cancel_futures=True)
        for process in self.processes.values():
            process.join(timeout=5)
        return codes

    def _await_started(self, started: list[Future]) -> None:
        """Every worker's `_started` answer; BrokenProcessPool as soon as one worker is dead. The
        pool alone may not notice: CPython's manager thread wakes for a submission before it
        spawns that submission's worker, so it can go on waiting without watching the newest
        worker, and the others would sit at the barrier until READY_TIMEOUT_S."""
        pending = set(started)
        while pending:
            done, pending = wait(pending, timeout=START_POLL_S, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a setup that failed in the worker raises here, as it was
            if pending and any(p.exitcode is not None for p in self.processes.values()):
                raise BrokenProcessPool("a worker process died during its set-up")

    def submit(self, fn: Callable, i: int, job: Any) -> Future:
        if self.restart:  # not before: a job lost twice needs no fresh pool (its on_lost row)
            self.restart = False
            self.start()
        self.ledger[i] = 0  # not started: no pid of an earlier pool's worker stays on it
        self.submitted[i] = self.executor.submit(_pool_call, fn, i, job)
        return self.submitted[i]

    def started(self, i: int) -> bool:
        return self.ledger[i] > 0

    def end(self, i: int) -> bool:
        """Kill the worker running job i (over its time limit); False when it is not running."""
        pid = self.ledger[i]
        if pid <= 0 or pid not in self.processes:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def post_mortem(self, i: int) -> WorkerLost:
        """After BrokenProcessPool: end the survivors, name the job the dead worker was running
        or sending the result of (its ledger says done, its future broke); none for one that sat
        idle (the jobs taken down run again, unblamed); with no dead worker seen, job `i` if it
        had started. Any exit status (0, an outside SIGTERM) is a death unless the pool ended
        the worker itself (`_ended_by_pool`, unstick)."""
        self.executor.shutdown(wait=True, cancel_futures=True)  # the pool ends the survivors
        dead = {pid: p.exitcode for pid, p in self.processes.items()
                if p.exitcode is not None and pid not in self.ended_here}
        sending = [k for k, f in self.submitted.items() if -self.ledger[k] in dead and f.done()
                   and not f.cancelled() and isinstance(f.exception(), BrokenProcessPool)]
        culprits = [k for k in range(len(self.ledger)) if self.ledger[k] in dead] + sending
        if not culprits:
            why = exit_reason(next(iter(dead.values()))) if dead else "it died"
            return WorkerLost((i,) if self.ledger[i] != 0 and not dead else (), why)
        pid = abs(self.ledger[culprits[0]])
        return WorkerLost((culprits[0],), exit_reason(dead[pid]) if pid in dead else "it died")

    def unstick(self) -> None:
        """CPython's pool never notices a worker that died halfway through sending its result:
        its manager thread waits for the rest of the message for ever (a SIGKILL while a frames
        worker sent a video's rows hung a test). A worker dead for UNSTICK_S without the pool
        broken: the survivors get SIGTERM (not blamed: post_mortem) and this process's end of
        the result pipe is closed, so the read ends (EOF) and the pool breaks as for any death."""
        executor, workers = self.executor, self._workers()
        if (executor is None or getattr(executor, "_broken", False)
                or all(p.exitcode is None for p in workers)):
            self.dead_since = None
            return
        self.dead_since = self.dead_since or time.monotonic()
        waited = time.monotonic() - self.dead_since
        if waited < UNSTICK_S:
            return
        for process in workers:  # SIGKILL for one that outlived its SIGTERM by UNSTICK_S
            if process.exitcode is None:
                self.ended_here.add(process.pid)
                with contextlib.suppress(Exception):
                    process.kill() if waited >= 2 * UNSTICK_S else process.terminate()
        self._close_result_pipe()

    def _close_result_pipe(self) -> None:
        """Close this process's write end of the workers' result pipe, once no worker will send
        again: a read left waiting for the rest of a dead worker's message then ends (EOF)."""
        with contextlib.suppress(Exception):
            self.executor._result_queue._writer.close()

    def _workers(self) -> list:
        """Every worker process: those begin() saw, and the executor's own list (those still
        starting too)."""
        live = getattr(self.executor, "_processes", None) or {}
        return [*self.processes.values(), *list(live.values())]

    def kill(self) -> None:
        self.killed = True  # at once: a process may take a moment to die (KeptWorkers' _alive)
        for process in self._workers():
            with contextlib.suppress(Exception):
                process.kill()
        self._close_result_pipe()  # a worker killed halfway through a result: shutdown ends

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _map_pool(fn, jobs, pool: _Pool, label, on_lost, time_limit, kept: bool) -> Iterator[Any]:
    """The jobs on `pool`: started here and shut down after, unless `kept` (started, and alive
    for the next map when this one ends well, or with a job's own exception after a map that
    ended well: a worker whose state that exception broke fails two clips, not every one)."""
    limits = TimeLimit(time_limit, pool.end, pool.started) if time_limit is not None else None

    def on_error(i: int, exc: BaseException, failed: dict) -> WorkerLost | None:
        if not isinstance(exc, BrokenProcessPool):
            return None
        pool.restart = on_lost is not None  # a fresh pool, once a job it took down runs again
        return pool.post_mortem(i)

    order = InOrder(lambda i, job: pool.submit(fn, i, job), jobs, pool.n, on_error, label,
                    on_lost=on_lost, is_lost=lambda e: isinstance(e, BrokenProcessPool),
                    time_limit=limits, watch=pool.unstick)
    with pool.lock:
        pool.user, pool.reader = order, threading.current_thread()
    _MAPPING.add(pool)
    try:
        if not kept:
            pool.start()
        for result in order:
            yield result
            pool.reader = threading.current_thread()  # a map may change hands between results
        pool.raised_in_a_row = 0
    except BaseException as exc:  # an error, Ctrl-C, an abandoned generator (_end_map)
        with pool.lock:  # kept workers another map took over since (KeptWorkers._take_over): not
            if not kept or pool.user is order:  # this late close's (garbage collection) to end
                _end_map(pool, order, exc, kept)
        raise
    finally:
        with pool.lock:
            if pool.user is order:
                pool.user = None
        if not kept:
            pool.shutdown()


_MAPPING: weakref.WeakSet[_Pool] = weakref.WeakSet()  # pools a map has used (_end_abandoned_maps)


def _end_abandoned_maps() -> None:
    """At interpreter exit, before CPython's pools join their manager threads (which wait for
    every job still running, and for ever for a result a dead worker half sent): kill the
    workers of each map that no thread will read again, one left suspended by the main thread
    (its code has ended), by a daemon thread, one that ended, or a thread pool's worker waiting
    for its next task (its pool's own exit hook may run after this one). A consumer that stopped
    reading while the map stays referenced (a global, an exception's traceback) would otherwise
    hang the exit until its jobs ended."""
    frames = sys._current_frames()
    for pool in _mapping_now():
        try:  # an exception here would skip the rest of CPython's exit: every thread's join
            with pool.lock:
                reader = pool.reader
                if pool.user is not None and (
                        reader is None or not reader.is_alive() or reader.daemon
                        or reader is threading.main_thread()
                        or _idle_pool_worker(frames.get(reader.ident))):
                    pool.kill()
        except Exception:  # noqa: BLE001 - at exit, nothing is left to tell
            continue


def _idle_pool_worker(frame) -> bool:
    """Whether a thread's innermost `frame` is a concurrent.futures thread pool's worker waiting
    for its next task: below its own frames only the queue and threading modules' (a task that
    still reads a map, or waits for anything of its own, has a frame of its own inside)."""
    while frame is not None and os.path.basename(frame.f_code.co_filename) in (
            "queue.py", "threading.py"):
        frame = frame.f_back
    return (frame is not None and frame.f_code.co_name == "_worker"
            and frame.f_code.co_filename.endswith(os.path.join("concurrent", "futures",
                                                               "thread.py")))


def _mapping_now() -> list[_Pool]:
    """_MAPPING's pools now; another thread starting a map meanwhile changes the set."""
    for _ in range(10):
        with contextlib.suppress(RuntimeError):  # "Set changed size during iteration"
            return list(_MAPPING)
    return []


# CPython's internal hook: runs before the non-daemon threads are joined, and (in reverse order)
# before every one registered earlier: concurrent.futures.process's _python_exit, imported above
with contextlib.suppress(AttributeError, RuntimeError):  # RuntimeError: exit has begun
    threading._register_atexit(_end_abandoned_maps)
# a forked child inherits the set, not the maps: its exit must not kill its parent's workers
os.register_at_fork(after_in_child=_MAPPING.clear)


def _end_map(pool: _Pool, order: InOrder, exc: BaseException, kept: bool) -> None:
    """No worker outlives a map that ended badly (KeptWorkers then starts fresh ones), but kept
    ones after a job's own exception (`exc`) that follows a map that ended well, with no job of
    this map left running."""
    pool.raised_in_a_row = pool.raised_in_a_row + 1 if exc is order.raised else 0
    if not (kept and pool.raised_in_a_row == 1 and order.settle()):
        pool.kill()
