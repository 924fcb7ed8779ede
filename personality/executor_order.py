"""personality/executor.py's scheduler, shared by the local pool and Dask: jobs kept running one
per worker, results yielded in job order, a dead worker's jobs run again (`on_lost`), and a job
over its time limit ended as if its worker had died (`time_limit`; its length: `time_limit_s`).

Nothing here runs on its own; tests/test_executor.py runs every map through it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterator

from personality.common import get_logger

log = get_logger("executor")

MAX_CANCELS = 3  # re-runs of a job whose future is cancelled under the map; then on_lost's row
WATCH_S = 1.0  # how often a waiting map calls its `watch` (the pool's unstick)
TIME_LIMIT_ENV = "PERSONALITY_TIME_LIMIT_SCALE"  # per-video job time limits x this (time_limit_s)


class ExecutorError(RuntimeError):
    """A worker died while running a job (the message names the job, e.g. the video), or
    PERSONALITY_CLUSTER holds a value that names no executor (the message quotes it)."""


def time_limit_s(units: float | None, per_unit_s: float) -> float | None:
    """Wall-clock limit of one per-video job: (600 s + per_unit_s x units) x
    PERSONALITY_TIME_LIMIT_SCALE (default 1; 0: no limit; slow machines raise it). `units`: the
    clip's seconds or kept frames (None / NaN, unknown: 3600 s). Read from the
    environment like PERSONALITY_CLUSTER: it changes no output but a hung video's."""
    raw = os.environ.get(TIME_LIMIT_ENV, "").strip() or "1"
    try:
        scale = float(raw)
    except ValueError:
        scale = -1.0
    if not scale >= 0 or scale == float("inf"):
        raise ExecutorError(f"{TIME_LIMIT_ENV}={raw!r}: expected a number >= 0 (0: no limit)")
    known = units is not None and units == units and units >= 0  # NaN != NaN
    return scale * (600.0 + per_unit_s * units if known else 3600.0) if scale else None


@dataclasses.dataclass
class TimeLimit:
    """Per-job wall-clock limits: `seconds(job)` (None or inf: none), counted from when the job
    `started(i)` in a worker (not from its submission: a worker may still be busy), and
    `end(i)`, which ends job i's worker and says whether it did (the pool kills the process job
    i runs in; the map then sees a dead worker)."""
    seconds: Callable[[Any], float | None]
    end: Callable[[int], bool]
    started: Callable[[int], bool]
    limits: dict = dataclasses.field(default_factory=dict)  # job -> its limit in s
    deadlines: dict = dataclasses.field(default_factory=dict)  # job -> monotonic deadline
    overdue: dict = dataclasses.field(default_factory=dict)  # job -> its limit, once ended
    poll_s: float = 0.2  # how often a submitted job is looked at until it has started

    def start(self, i: int, job: Any) -> None:
        """Job i was (re)submitted: its clock starts again once it runs."""
        self.deadlines.pop(i, None)
        self.overdue.pop(i, None)
        limit = self.seconds(job)
        if limit is not None and math.isfinite(limit):
            self.limits[i] = limit

    def wait_s(self, running: list[int]) -> float | None:
        """Seconds until the first running job's deadline, or until the next look at a job not
        yet started (None: no limits)."""
        now = time.monotonic()
        ends = [self.deadlines[i] - now if i in self.deadlines else self.poll_s
                for i in running if i in self.limits]
        return max(0.0, min(ends)) if ends else None

    def enforce(self, running: list[int]) -> None:
        now = time.monotonic()
        for i in running:
            if i not in self.limits or i in self.overdue:
                continue
            if i not in self.deadlines:
                if self.started(i):
                    self.deadlines[i] = now + self.limits[i]
            elif now >= self.deadlines[i] and self.end(i):
                self.overdue[i] = self.limits[i]

    def why(self, i: int) -> str:
        return f"it ran over its time limit of {self.overdue[i]:.0f} s and was stopped (a hang?)"


def exit_reason(code: int | None) -> str:
    """A dead worker's exit status in words: the signal and what it usually means."""
    hints = {"SIGKILL": ": killed, e.g. by the kernel's OOM killer",
             "SIGSEGV": ": crashed inside native code"}
    with contextlib.suppress(ValueError, TypeError):
        return f"{signal.Signals(-code).name}{hints.get(signal.Signals(-code).name, '')}" \
            if code < 0 else f"exit code {code}"
    return f"exit code {code}"


@dataclasses.dataclass(frozen=True)
class WorkerLost:
    """on_error's answer to a dead worker: the job(s) it may have run, why, who ("Dask worker"),
    and whether the loss is final (a remote Dask scheduler has already retried the job)."""
    jobs: tuple[int, ...]
    why: str
    who: str = "worker process"
    final: bool = False


class InOrder:
    """Keep `n_running` jobs running (one per worker: a worker that dies held one job, the one we
    name), yield results in job order, and let finished results wait for a slow earlier job up to
    `ahead` x n_running (memory stays bounded). `on_error(i, exc, failed)` (failed: every job
    that failed so far -> its exception) returns None for a job's own exception (raised in its
    turn), or a WorkerLost, seen at once: without `on_lost` an ExecutorError ends the map; with
    it every job the loss took down (`is_lost(exc)`) runs again, the dead worker's job at most
    twice (once when the loss is `final`) before `on_lost(job, why)` stands in for its result.
    A job over its `time_limit` is ended by it, and on_lost's result at once (no second try: it
    would hang again). `watch()` is called every WATCH_S while the map waits. A future
    cancelled under the map (Dask) runs again, up to MAX_CANCELS times."""

    def __init__(self, submit: Callable[[int, Any], Future], jobs: list, n_running: int,
                 on_error: Callable, label: Callable[[Any], str], *,
                 on_lost: Callable[[Any, str], Any] | None = None,
                 is_lost: Callable[[BaseException], bool] = lambda exc: False, ahead: int = 4,
                 time_limit: TimeLimit | None = None, watch: Callable[[], None] | None = None):
        self.submit, self.jobs, self.n_running, self.on_error = submit, jobs, n_running, on_error
        self.label, self.on_lost, self.is_lost, self.ahead = label, on_lost, is_lost, ahead
        self.futures: dict[int, Future] = {}  # submitted, not yet yielded
        self.final: dict[int, Any] = {}  # on_lost's results, waiting for their turn
        self.again: list[int] = []  # jobs a lost worker took down, run before new ones
        self.deaths: dict[int, int] = {}  # job -> workers that died running it
        self.cancels: dict[int, int] = {}  # job -> times its future was cancelled under us
        self.losses, self.budget = 0, max(3, len(jobs) // 20)
        self.next_submit = self.next_yield = 0
        self.time_limit, self.watch = time_limit, watch
        self.raised: BaseException | None = None  # a job's own exception, raised in its turn

    def __iter__(self) -> Iterator[Any]:
        while self.next_yield < len(self.jobs):
            self._submit_more()
            if self._losses_seen():
                continue
            if self.next_yield in self.final:
                self.next_yield += 1
                yield self.final.pop(self.next_yield - 1)
                continue
            head = self.futures.get(self.next_yield)
            if head is None or not head.done():
                self._wait_for_one()
                continue
            if head.cancelled() or (head.exception() is not None and self._losses_seen()):
                continue  # a loss (or a cancel: _cancels_seen) since the last look
            del self.futures[self.next_yield]
            try:
                result = head.result()
            except Exception as exc:
                exc.add_note(f"while processing {self.label(self.jobs[self.next_yield])}")
                self.raised = exc
                raise
            self.next_yield += 1
            yield result

    def settle(self) -> bool:
        """After a job's own exception ended the map: cancel the jobs not yet started; True when
        no job of the map is left running, i.e. its workers are free for another map."""
        for future in self.futures.values():
            future.cancel()
        return all(future.done() for future in self.futures.values())

    def _wait_for_one(self) -> None:
        """Until a running job finishes, or the first running job's time limit passes (then
        its worker is ended: the loss shows in the next _losses_seen)."""
        running = [k for k, f in self.futures.items() if not f.done()]
        if not running:
            return
        limit = self.time_limit.wait_s(running) if self.time_limit else None
        if self.watch is not None:
            limit = WATCH_S if limit is None else min(limit, WATCH_S)
        wait([self.futures[k] for k in running], timeout=limit, return_when=FIRST_COMPLETED)
        if self.time_limit:
            self.time_limit.enforce([k for k in running if not self.futures[k].done()])
        if self.watch is not None:
            self.watch()

    def _submit_more(self) -> None:
        running = sum(not f.done() for f in self.futures.values())
        while running < self.n_running:
            if self.again:
                i = self.again.pop(0)
            elif self.next_submit < len(self.jobs) and \
                    self.next_submit - self.next_yield < self.ahead * self.n_running:
                i, self.next_submit = self.next_submit, self.next_submit + 1
            else:
                return
            try:
                self.futures[i] = self.submit(i, self.jobs[i])
                if self.time_limit:
                    self.time_limit.start(i, self.jobs[i])
            except BaseException as exc:  # a broken pool refuses new work
                verdict = self.on_error(i, exc, {})
                if verdict is None:  # not a lost worker: e.g. a restart whose set-up failed
                    raise
                if not isinstance(verdict, WorkerLost):
                    raise verdict from exc
                self._recover(verdict, exc, refused=i)
                return
            running += 1

    def _losses_seen(self) -> bool:
        """Handle the first lost worker among the failed futures; True when there was one."""
        failed = {k: f.exception() for k, f in self.futures.items()
                  if f.done() and not f.cancelled() and f.exception() is not None}
        for k, exc in failed.items():
            verdict = self.on_error(k, exc, failed)
            if isinstance(verdict, WorkerLost):
                self._recover(verdict, exc)
                return True
            if verdict is not None:
                raise verdict from exc
        return self._cancels_seen()

    def _cancels_seen(self) -> bool:
        """Futures cancelled under us (a Dask scheduler that forgets a task, e.g. one whose
        inputs were lost): run again, at most MAX_CANCELS times each, then on_lost's result
        (or ExecutorError); True when there were any."""
        cancelled = [k for k, f in self.futures.items() if f.cancelled()]
        for k in cancelled:
            del self.futures[k]
            self.cancels[k] = self.cancels.get(k, 0) + 1
            if self.cancels[k] <= MAX_CANCELS:
                self.again = sorted({*self.again, k})
                continue
            why = f"its task was cancelled {self.cancels[k]} times (workers lost?)"
            if self.on_lost is None:
                raise ExecutorError(f"{self.label(self.jobs[k])}: {why}; the stage stops here, "
                                    "nothing is written")
            self.final[k] = self.on_lost(self.jobs[k], why)
        return bool(cancelled)

    def _recover(self, lost: WorkerLost, exc: BaseException, refused: int | None = None) -> None:
        overdue = self.time_limit.overdue if self.time_limit else {}
        if lost.jobs and all(k in overdue for k in lost.jobs):  # ended by its limit, not a crash
            lost = dataclasses.replace(lost, why=self.time_limit.why(lost.jobs[0]))
        names = " or ".join(self.label(self.jobs[k]) for k in lost.jobs) or "no job (idle)"
        if self.on_lost is None:
            raise ExecutorError(f"{names}: the {lost.who} running it died ({lost.why}); the stage "
                                "stops here, nothing is written") from exc
        # a hang is the video's, not the machine's; a worker lost idle is the machine's
        self.losses += not lost.jobs or not all(k in overdue for k in lost.jobs)
        if self.losses > self.budget:
            raise ExecutorError(f"{self.losses} workers died in this run (the last running "
                                f"{names}: {lost.why}): more than {self.budget}, the machine "
                                "rather than a video; the stage stops here, nothing is written") \
                from exc
        taken = [k for k, f in self.futures.items() if f.done() and (f.cancelled() or (
            f.exception() is not None and self.is_lost(f.exception())))]
        for k in taken:
            del self.futures[k]
        for k in overdue.keys() & {*taken, *lost.jobs}:  # stopped by its limit: never rerun
            self.final[k] = self.on_lost(self.jobs[k], self.time_limit.why(k))
        for k in lost.jobs:
            self.deaths[k] = self.deaths.get(k, 0) + 1
            if k not in overdue and (self.deaths[k] >= 2 or lost.final):
                times = "" if lost.final and self.deaths[k] < 2 else " twice"
                self.final[k] = self.on_lost(self.jobs[k], f"the {lost.who} running it died"
                                             f"{times} ({lost.why})")
        rerun = set(self.again) | set(taken) | ({refused} if refused is not None else set())
        self.again = sorted(rerun - set(self.final))
        again = [self.label(self.jobs[k]) for k in lost.jobs if k not in self.final]
        if not lost.jobs:
            log.warning("a %s died while running no job (%s): the jobs its pool lost run again "
                        "(%d of %d lost workers allowed in this run)", lost.who, lost.why,
                        self.losses, self.budget)
        if again:  # seen in the log, not only in the metrics of the jobs that fail for good
            log.warning("the %s running %s died (%s): it runs again (%d of %d lost workers "
                        "allowed in this run)", lost.who, " or ".join(again), lost.why,
                        self.losses, self.budget)
