"""Local worker processes kept for one map_jobs call after another, not started for each: predict
runs a clip's whole front end in one worker (stages/predict_frontend.py), clip after clip in a
batch or a served model, and every fresh worker pays an interpreter start, the stages' imports and
their set-up (MediaPipe's model, numba's cache): about 4 of the 5.7 s a 6-10 s clip's front end
took (`python bench/predict.py`). Nothing here runs on its own (`python -m pytest
tests/test_executor_kept.py`).

    from personality.executor_kept import KeptWorkers
    WORKERS = KeptWorkers(1, setup=warm_up)           # no process yet: started by the first map
    with WORKERS.borrow() as kept:                    # None while another thread maps on them
        rows = list(map_jobs(fn, jobs, workers=1, setup=warm_up, kept=kept))

What map_jobs promises of its own pool holds here too: a worker that dies in a job is replaced and
the job has its second try (with `on_lost`), a job over its time limit has its worker killed, and
the workers die with this process. A worker that died while the pool sat idle (the OOM killer) is
replaced before the next map, and no job is blamed for it (one that dies in the instant the next
map begins costs that map's job its second try). One map at a time uses them; a map whose consumer
stopped reading it is ended by the next one (its jobs still running cost their workers), or at
this process's exit (personality.executor._end_abandoned_maps).
"""
from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import threading
import uuid
from typing import Any, Callable, Iterator

from personality.executor import _Pool

__all__ = ["KeptWorkers"]


class KeptWorkers:
    """`n` spawn workers with `setup(*setup_args)` run once in each, kept between maps; at most
    `capacity` jobs per map (the shared ledger of which worker runs which job is made once)."""

    def __init__(self, n: int = 1, setup: Callable | None = None, setup_args: tuple = (),
                 capacity: int = 64):
        self.n, self.capacity = n, capacity
        self.setup, self.setup_args = setup, setup_args
        self.token = uuid.uuid4().hex  # the workers' set-up runs once, not once per map
        self._pool: _Pool | None = None
        self._owner = os.getpid()  # a forked child inherits _pool but not the pool's threads
        self._free = threading.Lock()
        self._starting = threading.Lock()
        self._ends_at_exit = False

    def pool(self, n_jobs: int) -> _Pool:
        """The started pool for a map of `n_jobs` (map_jobs calls this, in the map's thread):
        the kept one while all its workers live, else a fresh one. Linux's PR_SET_PDEATHSIG
        (personality.executor_worker.die_with_parent) ends a worker when the *thread* that
        started it ends: workers started by a short-lived thread (a server's request) die with
        it, and the next map starts fresh ones (or its job has its second try, when the death
        lands during it)."""
        if n_jobs > self.capacity:
            raise ValueError(f"{n_jobs} jobs in one map: these kept workers take at most "
                             f"{self.capacity}")
        with self._starting:
            if self._owner != os.getpid():  # forked: the parent's pool is not ours to use, and
                self._pool, self._owner = None, os.getpid()  # a fork clears its finalizers
                self._ends_at_exit = False
            if not self._take_over():
                self._begin()
            if self._pool.begun is not None:
                try:
                    self._pool.start()  # waits for begin()'s workers; ExecutorError when the
                except BaseException:   # set-up kills them. One that raised: end them, keep none
                    self._kill()
                    raise
            return self._pool

    def _take_over(self) -> bool:
        """True when the kept pool is alive and free for a new map. A map its consumer stopped
        reading (an exception in the consumer's loop) stays suspended until garbage collection
        closes it: it is ended here instead. Its jobs not yet started are cancelled; one still
        running, whose result nobody will read, costs its worker (the new map would otherwise
        wait behind it). Under the pool's lock, so that the late close never kills workers that
        were found alive here."""
        pool = self._pool
        if pool is None:
            return False
        with pool.lock:
            abandoned, pool.user = pool.user, None  # its late close leaves the workers alone
            if abandoned is not None and not abandoned.settle():
                pool.kill()
            return _alive(pool)

    def start_soon(self) -> None:
        """Spawn the workers now and return: their imports and set-up overlap this process's
        own work (predict imports torch meanwhile), and the first map waits for them. A set-up
        that fails raises in that map."""
        with self._starting:
            if self._owner == os.getpid() and (self._pool is None or not _alive(self._pool)):
                self._begin()

    def _begin(self) -> None:
        self.close()
        self._end_at_exit()  # before the spawn: an exit during the set-up must not wait on it
        self._pool = _Pool(self.n, self.capacity, self.token, self.setup, self.setup_args)
        self._pool.begun = self._pool.begin()

    def _end_at_exit(self) -> None:
        """Kill the workers before this process joins its children at exit. A multiprocessing
        worker (a batch's) joins them before concurrent.futures tells an idle pool to stop, and
        would wait for ever on its own kept worker. A polite stop cannot be trusted there either:
        the pool's queues have exit finalizers of their own (priority 10), and one that ran
        first leaves the stop sentinel unsent. Priority 100 runs before them, and a kill needs
        no queue."""
        if not self._ends_at_exit:
            multiprocessing.util.Finalize(self, self._kill, exitpriority=100)
            self._ends_at_exit = True

    def _kill(self) -> None:
        """End every worker now, those of a pool still starting too (_Pool.kill)."""
        pool, self._pool = self._pool, None
        if pool is None or self._owner != os.getpid():
            return
        pool.kill()
        if pool.executor is not None:
            pool.shutdown()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """Yield these workers, or None while another thread's map holds them (that map then
        takes a pool of its own: map_jobs' `kept=None`)."""
        free = self._free.acquire(blocking=False)
        try:
            yield self if free else None
        finally:
            if free:
                self._free.release()

    def pids(self) -> list[int]:
        """The live workers' process ids (tests, and a user asking what runs)."""
        pool = self._pool
        return sorted(pool.processes) if pool is not None and _alive(pool) else []

    def close(self) -> None:
        """End the workers now (they also end when this process does)."""
        pool = self._pool
        if pool is not None and self._owner == os.getpid() and self._take_over():
            self._pool = None
            pool.shutdown()
        else:  # a dead worker's pool, or none: end the survivors, do not wait on them
            self._kill()


def _alive(pool: _Pool) -> bool:
    """Begun, and every worker still running (none killed while the pool sat idle)."""
    executor = pool.executor
    return (executor is not None and not pool.killed and not getattr(executor, "_broken", False)
            and not getattr(executor, "_shutdown_thread", False)
            and all(p.exitcode is None for p in pool.processes.values()))
