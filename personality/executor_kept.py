"""Local worker processes kept for one map_jobs call after another, not started for each: predict
runs a clip's whole front end in one worker (stages/predict_frontend.py), clip after clip in a
batch or a served model, and every fresh worker pays an interpreter start, the stages' imports and
their set-up (MediaPipe's model, numba's cache): about 3 s of a 6-10 s clip's 5 s
(`python bench/predict.py`). Nothing here runs on its own (`python -m pytest
tests/test_executor_kept.py`).

    from personality.executor_kept import KeptWorkers
    WORKERS = KeptWorkers(1, setup=warm_up)           # no process yet: started by the first map
    with WORKERS.borrow() as kept:                    # None while another thread maps on them
        rows = list(map_jobs(fn, jobs, workers=1, setup=warm_up, kept=kept))

What map_jobs promises of its own pool holds here too: a worker that dies in a job is replaced and
the job has its second try (with `on_lost`), a job over its time limit has its worker killed, and
the workers die with this process. A worker that died while the pool sat idle (the OOM killer) is
replaced before the next map, and no job is blamed for it. One map at a time uses them.
"""
from __future__ import annotations

import contextlib
import multiprocessing.util
import queue
import threading
import uuid
from concurrent.futures import Future
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
        self._free = threading.Lock()
        self._starts: queue.SimpleQueue = queue.SimpleQueue()  # Futures the keeper answers
        self._keeper: threading.Thread | None = None
        self._keeper_lock = threading.Lock()
        self._ends_at_exit = False

    def pool(self, n_jobs: int) -> _Pool:
        """The started pool for a map of `n_jobs` (map_jobs calls this): the kept one while all
        its workers live, else a fresh one."""
        if n_jobs > self.capacity:
            raise ValueError(f"{n_jobs} jobs in one map: these kept workers take at most "
                             f"{self.capacity}")
        return self._ask_keeper().result()

    def start_soon(self) -> None:
        """Start the workers now without waiting, so that their spawn, imports and set-up
        overlap this process's own work (predict imports torch meanwhile); the first map waits
        for them. A start that fails here is tried again, and raises, in that map."""
        self._ask_keeper()

    def _ask_keeper(self) -> Future:
        """Every start runs in one thread kept for the life of this process: Linux's
        PR_SET_PDEATHSIG (personality.executor.die_with_parent) kills a worker when the *thread*
        that spawned it ends, and a map may run in a short-lived thread (a server's)."""
        answer: Future = Future()
        self._starts.put(answer)
        with self._keeper_lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="kept-workers",
                                                daemon=True)
                self._keeper.start()
        return answer

    def _keep(self) -> None:
        while True:
            answer = self._starts.get()
            try:
                if self._pool is None or not self._pool.alive():
                    self.close()
                    pool = _Pool(self.n, self.capacity, self.token, self.setup, self.setup_args)
                    pool.start()  # ExecutorError when the set-up kills its workers
                    self._pool = pool
                    self._end_at_exit()
                answer.set_result(self._pool)
            except BaseException as exc:  # noqa: BLE001 - the asking map raises it
                answer.set_exception(exc)

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
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.kill()
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
        if self._pool is None or not self._pool.alive():
            return []
        return sorted(self._pool.processes)

    def close(self) -> None:
        """End the workers now (they also end when this process does)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            if not pool.alive():  # a dead worker's pool: end the survivors, do not wait on them
                pool.kill()
            pool.shutdown()
