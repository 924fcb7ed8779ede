"""Kept workers (personality/executor_kept.py): one worker serves map after map with its set-up run
once; a worker lost in a job, over its time limit or while idle is replaced and the next map runs;
a process that used them exits (a multiprocessing worker joins its children before
concurrent.futures stops them: without the exit finalizer it waited for ever).

    pytest tests/test_executor_kept.py
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from personality.executor import Placement, map_jobs
from personality.executor_kept import KeptWorkers

ONE = Placement("pool", 1)
_SETUPS = 0


def count_setup() -> None:
    global _SETUPS
    _SETUPS += 1


def pid_and_setups(x: int) -> tuple[int, int, int]:
    return x, os.getpid(), _SETUPS


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a native crash, every time it runs
    return x


def hang_on_two(x: int) -> int:
    if x == 2:
        time.sleep(600)
    return x


def lost(x: int, why: str) -> str:
    return f"lost {x}: {why}"


@pytest.fixture
def kept():
    workers = KeptWorkers(1, setup=count_setup)
    yield workers
    workers.close()


def test_one_worker_serves_every_map_with_its_setup_run_once(kept):
    first = list(map_jobs(pid_and_setups, [0, 1], workers=1, where=ONE, kept=kept))
    second = list(map_jobs(pid_and_setups, [2], workers=1, where=ONE, kept=kept))
    pids = {pid for _, pid, _ in first + second}
    assert [x for x, _, _ in first + second] == [0, 1, 2]
    assert len(pids) == 1 and pids != {os.getpid()} and kept.pids() == sorted(pids)
    assert {setups for _, _, setups in first + second} == {1}


def test_a_job_that_kills_its_worker_is_a_row_and_the_next_map_has_a_fresh_worker(kept):
    kept.pool(1)  # started before the map, as a second clip finds it
    before = kept.pids()
    [out] = map_jobs(die_on_three, [3], workers=1, where=ONE, kept=kept, on_lost=lost)
    assert out.startswith("lost 3: the worker process running it died twice (SIGKILL")
    after = list(map_jobs(pid_and_setups, [4], workers=1, where=ONE, kept=kept))
    assert after[0][0] == 4 and after[0][1] not in before


def record_setup(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def test_a_job_lost_twice_starts_no_pool_that_nothing_would_use(tmp_path):
    """After the second death the job's row is on_lost's: a fresh pool started then was never
    used (~2.5 s of predict's front-end set-up, before its per-stage fallback)."""
    log = tmp_path / "setups.txt"
    workers = KeptWorkers(1, setup=record_setup, setup_args=(str(log),))
    try:
        [out] = map_jobs(die_on_three, [3], workers=1, where=ONE, kept=workers, on_lost=lost)
        assert out.startswith("lost 3: the worker process running it died twice")
        assert len(log.read_text().split()) == 2  # the first try's worker and the second's
    finally:
        workers.close()


def raise_on_two(x: int) -> tuple[int, int]:
    if x == 2:
        raise ValueError(f"job {x}: not a video")
    return x, os.getpid()


def test_a_job_that_raises_leaves_the_worker_for_the_next_map(kept):
    """A job's own exception ends its map, not its worker: the next clip of a batch (or the
    next request) reuses it instead of paying a fresh worker's start and set-up."""
    [(_, pid)] = map_jobs(raise_on_two, [1], workers=1, where=ONE, kept=kept)
    with pytest.raises(ValueError, match="not a video") as raised:
        list(map_jobs(raise_on_two, [2], workers=1, where=ONE, kept=kept))
    assert any("while processing" in note for note in raised.value.__notes__)
    [(_, again), (_, later)] = map_jobs(raise_on_two, [3, 4], workers=1, where=ONE, kept=kept)
    assert again == later == pid and kept.pids() == [pid]
    for _ in range(2):  # twice in a row: the worker's own state may be what fails (a review)
        with pytest.raises(ValueError, match="not a video"):
            list(map_jobs(raise_on_two, [2], workers=1, where=ONE, kept=kept))
    [(_, fresh)] = map_jobs(raise_on_two, [5], workers=1, where=ONE, kept=kept)
    assert fresh != pid


def test_an_abandoned_map_never_ends_the_workers_under_the_next_one(kept):
    """A consumer that stops reading a map (an exception in its own loop) leaves the generator
    suspended; Python closes it later, at garbage collection, when the next map may be running
    on the same workers: that close must not kill them (it did, a review found), and a job the
    abandoned map left running must not hold the next map up."""
    import gc

    abandoned = map_jobs(pid_and_setups, [0, 1], workers=1, where=ONE, kept=kept)
    _, pid, _ = next(abandoned)
    unread = kept._pool.user.futures  # job 1 ends unread: the worker is free, the next map keeps it
    deadline = time.monotonic() + 30
    while not all(f.done() for f in unread.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [(_, same, setups)] = map_jobs(pid_and_setups, [2], workers=1, where=ONE, kept=kept)
    del abandoned
    gc.collect()
    assert same == pid and setups == 1 and kept.pids() == [pid]
    [(_, still, _)] = map_jobs(pid_and_setups, [3], workers=1, where=ONE, kept=kept)
    assert still == pid

    two, both = KeptWorkers(2), Placement("pool", 2)
    try:
        busy = map_jobs(hang_on_two, [1, 2], workers=2, where=both, kept=two)
        assert next(busy) == 1  # job 2 hangs in the other worker, its result unwanted
        before = two.pids()
        t0 = time.monotonic()
        rows = list(map_jobs(pid_and_setups, [4, 5], workers=2, where=both, kept=two))
        assert time.monotonic() - t0 < 60 and not {pid for _, pid, _ in rows} & set(before)
        busy.close()
        assert {pid for _, pid, _ in rows} <= set(two.pids()) and len(two.pids()) == 2
        hung = map_jobs(hang_on_two, [1, 2], workers=2, where=both, kept=two)
        assert next(hung) == 1
        t0 = time.monotonic()
        two.close()  # does not wait for the abandoned map's hung job
        assert time.monotonic() - t0 < 60 and two.pids() == []
    finally:
        two.close()


def test_a_job_over_its_time_limit_is_stopped_and_the_worker_replaced(kept):
    t0 = time.monotonic()
    out = list(map_jobs(hang_on_two, [2], workers=1, where=ONE, kept=kept, on_lost=lost,
                        time_limit=lambda x: 2.0))
    assert out == ["lost 2: it ran over its time limit of 2 s and was stopped (a hang?)"]
    assert time.monotonic() - t0 < 60
    assert list(map_jobs(pid_and_setups, [5], workers=1, where=ONE, kept=kept))[0][0] == 5


def test_a_worker_killed_while_idle_is_replaced_and_blames_no_job(kept):
    [(_, pid, _)] = map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=kept)
    os.kill(pid, signal.SIGKILL)  # the OOM killer, between two clips
    deadline = time.monotonic() + 10
    while kept.pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    # no on_lost: a death blamed on the job would raise ExecutorError here
    [(x, new_pid, setups)] = map_jobs(pid_and_setups, [1], workers=1, where=ONE, kept=kept)
    assert (x, setups) == (1, 1) and new_pid != pid


def fail_setup() -> None:
    raise ImportError("no module named mediapipe (a broken install)")


def test_a_setup_that_raises_keeps_no_worker_alive():
    before = set(mp.active_children())  # other modules' kept workers may live on
    workers = KeptWorkers(1, setup=fail_setup)
    with pytest.raises(ImportError, match="broken install"):
        list(map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=workers))
    assert workers._pool is None and set(mp.active_children()) <= before


def _map_in_fork(kept, queue) -> None:
    queue.put(list(map_jobs(pid_and_setups, [9], workers=1, where=ONE, kept=kept))[0][:2])


def test_a_forked_child_starts_workers_of_its_own(kept):
    [(_, parent_worker, _)] = map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=kept)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_map_in_fork, args=(kept, queue))
    child.start()
    x, worker = queue.get(timeout=120)
    child.join(timeout=60)
    assert x == 9 and worker != parent_worker and child.exitcode == 0
    assert kept.pids() == [parent_worker]  # the parent's worker is untouched


def test_a_worker_that_dies_with_the_short_lived_thread_that_started_it_costs_no_result(kept):
    out = []
    thread = threading.Thread(target=lambda: out.extend(
        map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=kept)))
    thread.start()
    thread.join()
    # PR_SET_PDEATHSIG ends that worker with its thread, but only once the OS thread is gone,
    # which can be after join() returns: a map at once may still be served by it (a race this
    # test lost about 1 run in 10), or see it die and give the job its second try (predict's maps
    # have on_lost); never a lost result. Wait for the death, then the next map has a new worker.
    deadline = time.monotonic() + 10
    while out[0][1] in kept.pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out[0][1] not in kept.pids()
    [(x, pid, setups)] = map_jobs(pid_and_setups, [1], workers=1, where=ONE, kept=kept,
                                  on_lost=lost)
    assert (x, setups) == (1, 1) and pid != out[0][1]


def test_start_soon_spawns_the_workers_the_first_map_then_uses(kept):
    kept.start_soon()
    spawned = sorted(kept._pool.processes)  # spawned already, set-up under way
    [(x, pid, setups)] = map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=kept)
    assert (x, setups) == (0, 1) and spawned == [pid] == kept.pids()
    kept.start_soon()  # running already: nothing new
    assert kept.pids() == [pid]


def test_a_setup_that_raises_after_start_soon_raises_in_the_map_and_keeps_no_worker():
    before = set(mp.active_children())
    workers = KeptWorkers(1, setup=fail_setup)
    workers.start_soon()
    with pytest.raises(ImportError, match="broken install"):
        list(map_jobs(pid_and_setups, [0], workers=1, where=ONE, kept=workers))
    assert workers._pool is None and set(mp.active_children()) <= before


def test_borrow_lends_the_workers_to_one_map_at_a_time(kept):
    seen = []
    with kept.borrow() as mine:
        thread = threading.Thread(target=lambda: seen.append(kept.borrow().__enter__()))
        thread.start()
        thread.join()
        assert mine is kept
    assert seen == [None]  # the other thread takes a pool of its own
    with kept.borrow() as again:
        assert again is kept


def test_too_many_jobs_for_the_ledger_is_refused():
    with pytest.raises(ValueError, match="at most 2"):
        KeptWorkers(1, capacity=2).pool(3)


def slow_setup() -> None:
    time.sleep(3)  # the imports and warm-ups of predict's front end


def _map_then_return(queue, how: str) -> None:
    workers = KeptWorkers(1, setup=slow_setup)
    if how == "map":
        queue.put(list(map_jobs(pid_and_setups, [7], workers=1, where=ONE, kept=workers))[0][0])
    else:  # a batch worker whose videos all failed at once: it exits while the set-up runs
        workers.start_soon()
        queue.put(7)


@pytest.mark.parametrize("how", ["map", "start_soon"])
def test_a_multiprocessing_worker_that_kept_workers_exits(how):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_map_then_return, args=(queue, how))
    child.start()
    assert queue.get(timeout=120) == 7
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
