"""The per-video executor: placement from PERSONALITY_CLUSTER, results in job order, set-up once
per worker, a dead worker named, no orphan worker and no stale temp folder after a kill.

    pytest tests/test_executor.py

Stage-level checks (same bytes with 1, 2 local workers and a Dask LocalCluster; a worker killed
mid-stage) run real stages in subprocesses; they take about a minute.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from personality import executor
from personality.common import atomic_dir, atomic_file
from personality.executor import (ExecutorError, Placement, local_processes, map_jobs,
                                  placement, time_limit_s)

REPO = Path(__file__).resolve().parents[1]
POOL = Placement("pool", 2)
DASK = Placement("dask", 2)


# --------------------------------------------------------------------------------------------------
# jobs (module level: workers import them by name)

_SETUPS = 0


def count_setup(tag: str) -> None:
    global _SETUPS
    assert tag == "rigs"
    _SETUPS += 1


def square_slowly(x: int) -> tuple[int, int, int, str | None]:
    time.sleep(0.05 * (5 - x % 5))  # early jobs finish last: order must still hold
    return x * x, os.getpid(), _SETUPS, os.environ.get("OMP_NUM_THREADS")


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-job (OOM killer, native crash)
    time.sleep(0.2)
    return x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x


def die_once_on(job: tuple[int, str, str]) -> int:
    """Job (x, folder, which): kills its worker when x is `which` ("3": every time it runs;
    "3-once": the first time only, as the OOM killer might); a marker file counts the runs."""
    x, folder, which = job
    if which.split("-")[0] == str(x):
        marker = Path(folder) / f"ran-{x}"
        first = not marker.exists()
        marker.write_text("ran")
        if first or which != f"{x}-once":
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1)
    return x


class DiesWhileSent:
    """A result whose pickling, in the worker after the job returned (its ledger entry already
    says done), takes the result pipe's write lock, sends the header of a 1 MiB message and 100
    of its bytes, and dies: a worker SIGKILLed (the OOM killer) halfway through sending a large
    result, e.g. a video's frame rows."""

    def __reduce__(self):
        import inspect
        import struct

        queue = next(f.frame.f_locals["result_queue"] for f in inspect.stack()
                     if "result_queue" in f.frame.f_locals)  # concurrent.futures' worker
        if queue._wlock is not None:
            queue._wlock.acquire()  # as send_bytes holds it: the other workers wait on it
        os.write(queue._writer.fileno(), struct.pack("!i", 1 << 20) + bytes(100))
        os.kill(os.getpid(), signal.SIGKILL)


def die_mid_result_on_one(x: int):
    return DiesWhileSent() if x == 1 else x


def die_mid_result_later_on_one(x: int):
    """Job 1 dies halfway through its result 4 s after it started: time to list the workers."""
    if x == 1:
        time.sleep(4.0)
    return die_mid_result_on_one(x)


def die_mid_result_after_a_second_on_one(x: int):
    if x == 1:
        time.sleep(1.0)
    return die_mid_result_on_one(x)


def lost_row(job, why: str) -> str:
    return f"lost {job[0]}: {why}"


class TwoArgError(Exception):
    def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{a}/{b}")


def unpicklable_on_two(x: int) -> int:
    if x == 2:
        raise TwoArgError("half", "done")
    time.sleep(0.2)
    return x


def exit_on_one(x: int) -> int:
    if x == 1:
        sys.exit(0)
    return x


def hang_on_two(x: int) -> int:
    if x == 2:
        time.sleep(600)  # an FFmpeg read that never returns
    time.sleep(0.1)
    return x


def two_s_for_two(x: int) -> float | None:
    return 2.0 if x == 2 else None


def hang_below_three(x: int) -> int:
    if x < 3:
        time.sleep(600)
    return x


def two_s_below_three(x: int) -> float | None:
    return 2.0 if x < 3 else None


def own_pid(_job: object) -> int:
    return os.getpid()


def setup_killed_once(folder: str) -> None:
    """A set-up the OOM killer ends the first time (a model load): a marker file counts."""
    marker = Path(folder) / "setup-ran"
    if not marker.exists():
        marker.write_text("ran")
        os.kill(os.getpid(), signal.SIGKILL)


def second_setup_dies_late_once(folder: str) -> None:
    """The first worker sets up at once; the second takes 1 s and then dies, the first time only
    (markers count): a pool that returned from start() before it was ready would blame a job."""
    first, died = Path(folder) / "first", Path(folder) / "died"
    try:
        with open(first, "x"):
            return
    except FileExistsError:
        pass
    if not died.exists():
        died.write_text("died")
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)


def second_setup_dies_at_once_once(folder: str) -> None:
    """The first worker to set up lives; the second dies at once, the first time only. The
    second is usually the later-spawned one, which CPython's pool may not be watching yet."""
    try:
        with open(Path(folder) / "first", "x"):
            return
    except FileExistsError:
        pass
    if not (Path(folder) / "died").exists():
        (Path(folder) / "died").write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)


def setup_always_killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def broken_setup() -> None:
    raise ValueError("model bundle is corrupt (sha256 mismatch)")


def exiting_setup() -> None:
    sys.exit(3)  # absl or argparse inside a model load


def stuck_second_setup(folder: str) -> None:
    """The first worker to set up is ready at once; the second never is (a hung mount)."""
    try:
        with open(Path(folder) / "first", "x"):
            return
    except FileExistsError:
        time.sleep(3600)


# --------------------------------------------------------------------------------------------------
# placement


@pytest.mark.parametrize("setting, workers, expected", [
    ("", 1, Placement("inline", 1)),
    ("", 4, Placement("pool", 4)),
    ("  ", 3, Placement("pool", 3)),
    ("local:2", 8, Placement("dask", 2)),
    ("tcp://head:8786", 2, Placement("dask", 0, "tcp://head:8786")),
    (" inline ", 4, Placement("inline", 1, forced_inline=True)),
])
def test_placement_reads_the_setting(setting, workers, expected):
    assert placement(workers, setting) == expected


@pytest.mark.parametrize("bad", ["local:0", "local", "head:8786", "slurm", "local:-1"])
def test_a_bad_setting_is_quoted(bad):
    with pytest.raises(ExecutorError, match=repr(bad).replace("(", r"\(")):
        placement(2, bad)


def test_the_environment_variable_decides(monkeypatch):
    monkeypatch.setenv("PERSONALITY_CLUSTER", "local:3")
    assert placement(1) == Placement("dask", 3)
    monkeypatch.delenv("PERSONALITY_CLUSTER")
    assert placement(2) == Placement("pool", 2)


def test_whole_model_jobs_stay_local_within_the_cores(monkeypatch):
    """Fine-tunings and explanations read this repository's data/: never a Dask cluster, and
    no more processes than the cores allow at each job's torch threads."""
    monkeypatch.setenv("PERSONALITY_CLUSTER", "tcp://head:8786")
    assert local_processes(2, workers=2) == Placement("pool", 2)
    assert local_processes(5, workers=2, threads_per_job=2) == Placement("inline", 1)
    assert local_processes(1, workers=4) == Placement("inline", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert local_processes(3, workers=8, threads_per_job=0) == Placement("inline", 1)


# --------------------------------------------------------------------------------------------------
# order, set-up, errors


@pytest.mark.parametrize("where", [Placement("inline", 1), POOL, DASK], ids=["inline", "pool", "dask"])
def test_results_in_job_order_setup_once_per_worker(where):
    out = list(map_jobs(square_slowly, range(10), workers=2, setup=count_setup,
                        setup_args=("rigs",), where=where))
    assert [r[0] for r in out] == [x * x for x in range(10)]
    assert {r[2] for r in out} == {1}  # every process set up exactly once
    if where.kind != "inline":
        assert len({r[1] for r in out}) == 2 and os.getpid() not in {r[1] for r in out}
        assert {r[3] for r in out} == {"1"}  # one thread per worker


@pytest.mark.parametrize("where", [Placement("inline", 1), POOL, DASK], ids=["inline", "pool", "dask"])
def test_a_jobs_own_error_arrives_unchanged_and_names_the_job(where):
    with pytest.raises(ValueError, match="bad input 2") as info:
        list(map_jobs(fail_on_two, range(5), workers=2, label=lambda x: f"clip{x}", where=where))
    assert any("clip2" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("where", [POOL, DASK], ids=["pool", "dask"])
def test_a_dead_worker_fails_fast_naming_its_job(where):
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match=r"(clip\d or )?clip3( or clip\d)?: the (Dask )?worker") as info:
        list(map_jobs(die_on_three, range(8), workers=2, label=lambda x: f"clip{x}", where=where))
    assert time.monotonic() - t0 < 30
    if where.kind == "pool":
        assert "SIGKILL" in str(info.value)


@pytest.mark.timeout(120)
def test_a_worker_that_dies_halfway_through_sending_its_result_hangs_nothing():
    """CPython's pool waits for the rest of such a message for ever (it hung the frames stage in
    a kill test): the map notices the dead worker itself, the job has its second try, then is a
    row, and every other job's result arrives."""
    t0 = time.monotonic()
    out = list(map_jobs(die_mid_result_on_one, range(6), workers=2, label=lambda x: f"clip{x}",
                        where=POOL, on_lost=lost_row_of_int))
    assert out[:1] + out[2:] == [0, 2, 3, 4, 5] and out[1].startswith(
        "lost 1: the worker process running it died twice (SIGKILL")
    assert time.monotonic() - t0 < 60


@pytest.mark.timeout(120)
def test_a_map_ended_while_a_dead_worker_had_sent_half_a_result_ends_at_once():
    """The consumer stops reading (an exception in its loop, Ctrl-C) after a worker died halfway
    through sending: the map's end kills the workers and then waits for the pool's shutdown,
    whose manager thread waited for the rest of that message for ever (a review found it)."""
    abandoned = map_jobs(die_mid_result_after_a_second_on_one, range(2), workers=2,
                         where=POOL)
    assert next(abandoned) == 0
    time.sleep(3.0)  # job 1's worker has died halfway through its result meanwhile
    t0 = time.monotonic()
    abandoned.close()
    assert time.monotonic() - t0 < 30


def test_with_on_lost_a_video_that_kills_its_worker_twice_is_a_row_and_the_rest_go_on(tmp_path):
    jobs = [(x, str(tmp_path), "3") for x in range(8)]
    out = list(map_jobs(die_once_on, jobs, workers=2, label=lambda j: f"clip{j[0]}",
                        where=POOL, on_lost=lost_row))
    assert out[:3] + out[4:] == [0, 1, 2, 4, 5, 6, 7]
    assert out[3] == "lost 3: the worker process running it died twice (SIGKILL: killed, e.g. " \
                     "by the kernel's OOM killer)"


def ends_on_three(job: tuple[int, str]) -> int:
    """Job 3 ends its worker with an exit status of 0 (a native exit(0)) or a SIGTERM (`kill`,
    earlyoom's first signal); the others take 0.2 s."""
    x, how = job
    if x == 3:
        if how == "exit0":
            os._exit(0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    time.sleep(0.2)
    return x


@pytest.mark.parametrize("how", ["exit0", "sigterm"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_exits_0_or_is_sigtermed_is_blamed_on_its_own_job(how, workers):
    """Exit status 0 and SIGTERM were taken for the pool's own ending of survivors: the death
    was blamed on the next job submitted (which had not started), then on the next, until four
    losses stopped the whole stage (a review found it); the pool's own SIGTERMs are now noted
    when it sends them."""
    out = list(map_jobs(ends_on_three, [(x, how) for x in range(6)], workers=workers,
                        where=Placement("pool", workers), on_lost=lost_row))
    assert out[:3] + out[4:] == [0, 1, 2, 4, 5]
    assert out[3] == "lost 3: the worker process running it died twice (" + (
        "exit code 0)" if how == "exit0" else "SIGTERM)"), out[3]


def idle_death(job: tuple[int, str]) -> int:
    """Job 0 takes 4 s; the worker that ran job 1 kills itself 1 s after, idle (the look-ahead
    is full: the map waits on job 0), as the OOM killer picks a worker holding a model."""
    x, folder = job
    if x == 0:
        time.sleep(4.0)
    elif x == 1:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return x


def test_a_worker_that_dies_idle_blames_no_job(tmp_path, caplog):
    """The job running in the other worker was blamed (and SIGTERMed, rerun, given a strike: a
    second such death made an innocent video an error row)."""
    out = list(map_jobs(idle_death, [(x, str(tmp_path)) for x in range(3)], workers=2,
                        where=POOL, on_lost=lost_row))
    assert out == [0, 1, 2]
    assert "died while running no job (SIGKILL" in caplog.text
    assert "running (0" not in caplog.text


def test_a_map_of_no_jobs_starts_no_worker(tmp_path):
    """An AU-only dataset's audio and faces stages paid a worker's start and set-up for none."""
    assert list(map_jobs(square_slowly, [], workers=2, setup=setup_always_killed, where=POOL,
                         on_lost=lost_row)) == []


def test_on_dask_a_video_that_kills_its_worker_twice_is_a_row_and_the_rest_go_on(tmp_path):
    """The LocalCluster's Nanny restarts the dead worker; the video runs once more, then is a
    row (a job the scheduler had queued on the same worker may share the loss: it runs again)."""
    jobs = [(x, str(tmp_path), "3") for x in range(8)]
    t0 = time.monotonic()
    out = list(map_jobs(die_once_on, jobs, workers=2, label=lambda j: f"clip{j[0]}", where=DASK,
                        on_lost=lost_row))
    assert out[:3] + out[4:] == [0, 1, 2, 4, 5, 6, 7]
    assert out[3].startswith("lost 3: the Dask worker running it died twice (")
    assert time.monotonic() - t0 < 90


@pytest.mark.parametrize("where", [POOL, DASK], ids=["pool", "dask"])
def test_with_on_lost_a_worker_killed_once_costs_nothing(tmp_path, where, caplog):
    jobs = [(x, str(tmp_path), "3-once") for x in range(8)]
    assert list(map_jobs(die_once_on, jobs, workers=2, where=where, on_lost=lost_row,
                         label=lambda j: f"clip{j[0]}")) == list(range(8))
    assert (tmp_path / "ran-3").exists()  # it did die once
    assert "running clip3" in caplog.text and "it runs again" in caplog.text  # and the log says


def test_a_loss_a_remote_scheduler_already_retried_is_final_at_once():
    """WorkerLost(final=True) (a remote Dask scheduler's KilledWorker, after its own retries):
    on_lost's row at the first report, the job not submitted again."""
    from concurrent.futures import Future

    from personality.executor_order import InOrder, WorkerLost

    submitted = []

    def submit(i, job):
        submitted.append(i)
        future = Future()
        future.set_running_or_notify_cancel()
        if job == 2:
            future.set_exception(ConnectionError("worker gone"))
        else:
            future.set_result(job)
        return future

    def on_error(i, exc, failed):
        return WorkerLost((i,), "KilledWorker: 4 workers died", "Dask worker", final=True)

    out = list(InOrder(submit, [0, 1, 2, 3], 2, on_error, str, on_lost=lost_row_of_int,
                       is_lost=lambda e: isinstance(e, ConnectionError)))
    assert out == [0, 1, "lost 2: the Dask worker running it died (KilledWorker: 4 workers "
                   "died)", 3]
    assert sorted(submitted) == [0, 1, 2, 3]


def lost_row_of_int(job: int, why: str) -> str:
    return f"lost {job}: {why}"


def finished_future(job):
    from concurrent.futures import Future

    future = Future()
    future.set_result(job)
    return future


def test_futures_cancelled_under_the_map_run_again_then_become_rows():
    """A cancelled future (a Dask scheduler that forgot its task) is submitted again, up to
    MAX_CANCELS times; then on_lost's row, or without on_lost an ExecutorError naming it."""
    from concurrent.futures import Future

    from personality.executor_order import MAX_CANCELS, InOrder

    def submitter(cancel_times):
        submitted = []

        def submit(i, job):
            submitted.append(i)
            if job == 1 and submitted.count(1) <= cancel_times:
                future = Future()
                future.cancel()
                return future
            return finished_future(job)
        return submit, submitted

    submit, submitted = submitter(2)
    assert list(InOrder(submit, [0, 1, 2], 2, lambda *a: None, str)) == [0, 1, 2]
    assert submitted.count(1) == 3
    submit, _ = submitter(99)
    out = list(InOrder(submit, [0, 1, 2], 2, lambda *a: None, str, on_lost=lost_row_of_int))
    assert out == [0, f"lost 1: its task was cancelled {MAX_CANCELS + 1} times (workers lost?)", 2]
    submit, _ = submitter(99)
    with pytest.raises(ExecutorError, match="clip1: its task was cancelled"):
        list(InOrder(submit, [0, 1, 2], 2, lambda *a: None, lambda j: f"clip{j}"))


class FakeTask:
    """A Dask future's surface that executor_dask._concurrent reads: status, result() and
    add_done_callback, whose callback runs once the task has ended (at once if it has)."""

    def __init__(self, status, value=None):
        self.status, self.value, self.waiting = status, value, []
        self.called_back = False  # "lost": Dask called back once, then the worker died

    def result(self):
        if self.status == "cancelled":
            from concurrent.futures import CancelledError
            raise CancelledError
        if self.status == "error":
            raise self.value
        return self.value

    def add_done_callback(self, fn):
        if self.status == "pending" or (self.status == "lost" and self.called_back):
            self.waiting.append(fn)
        else:
            self.called_back = True
            fn(self)

    def end(self, status, value=None):
        self.status, self.value = status, value
        waiting, self.waiting = self.waiting, []
        for fn in waiting:
            fn(self)


def test_the_concurrent_future_follows_its_dask_task_through_every_ending():
    from personality.executor_dask import _concurrent

    assert _concurrent(FakeTask("finished", 7)).result() == 7
    with pytest.raises(ZeroDivisionError):
        _concurrent(FakeTask("error", ZeroDivisionError("x"))).result()
    assert _concurrent(FakeTask("cancelled")).cancelled()
    # a result lost with its worker (Dask called back, then the worker died) is recomputed:
    # the future waits for the recomputation, and is never None
    lost = FakeTask("lost")
    future = _concurrent(lost)
    assert not future.done()
    lost.end("finished", 8)
    assert future.result(timeout=1) == 8


def _dask(folder: Path, *command: str) -> subprocess.Popen:
    """`dask <command>` started in `folder`, quiet, with the project and tests/ on its
    PYTHONPATH (pytest imports this file as the module test_executor, the jobs' home)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *command], env=env,
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _remote_cluster(folder: Path, workers: list[list[str]], n_workers: int = 2):
    """`dask scheduler` and the worker command lines (after `dask worker --scheduler-file F`) as
    README's cluster recipe starts them (the project on both one's PYTHONPATH: the scheduler
    unpickles every task), with Dask's default allowed-failures (3); yields the placement and
    the worker processes."""
    from distributed import Client

    info = folder / "scheduler.json"
    procs = [_dask(folder, "scheduler", "--scheduler-file", str(info), "--port", "0",
                   "--no-dashboard")]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        procs += [_dask(folder, "worker", "--scheduler-file", str(info), "--no-dashboard", *args)
                  for args in workers]
        with Client(scheduler_file=str(info), timeout=60) as client:
            if n_workers:
                client.wait_for_workers(n_workers, timeout=60)
            address = client.scheduler.address
        yield Placement("dask", 0, address), procs[1:]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def remote_scheduler(tmp_path_factory):
    """A scheduler and `dask worker --nworkers 2 --nthreads 1`: Nanny-managed workers."""
    with _remote_cluster(tmp_path_factory.mktemp("dask"),
                         [["--nworkers", "2", "--nthreads", "1"]]) as (where, _):
        yield where


def test_on_a_remote_scheduler_a_hang_is_stopped_and_a_crash_is_final_at_its_report(
        tmp_path, remote_scheduler):
    out = list(map_jobs(hang_on_two, range(4), workers=2, where=remote_scheduler,
                        time_limit=two_s_for_two, on_lost=lambda x, why: f"lost {x}: {why}"))
    assert out == [0, 1, "lost 2: it ran over its time limit of 2 s and was stopped (a hang?)", 3]
    jobs = [(x, str(tmp_path), "3") for x in range(5)]
    out = list(map_jobs(die_once_on, jobs, workers=2, where=remote_scheduler, on_lost=lost_row))
    assert out[:3] + out[4:] == [0, 1, 2, 4]
    assert out[3].startswith("lost 3: the Dask worker running it died (") and "twice" not in out[3]


def test_on_a_worker_without_a_nanny_a_hang_ends_that_worker_and_the_map_goes_on(tmp_path):
    """`dask worker --no-nanny` (Dask's option for a batch system that restarts workers itself):
    nobody can restart the worker of a job over its time limit, so it is told to exit; the job
    is a row and the rest run on the other worker."""
    from distributed import Client

    alone = ["--no-nanny", "--nthreads", "1"]
    with _remote_cluster(tmp_path, [alone, alone]) as (where, workers):
        out = list(map_jobs(hang_on_two, range(5), workers=2, where=where,
                            time_limit=two_s_for_two, on_lost=lambda x, why: f"lost {x}"))
        assert out == [0, 1, "lost 2", 3, 4]
        deadline = time.monotonic() + 30
        while all(w.poll() is None for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(w.poll() is None for w in workers) == [False, True]  # the hung one exited
        with Client(where.address, timeout=30) as client:
            assert len(client.scheduler_info()["workers"]) == 1


def sleep_a_second(x: int) -> int:
    time.sleep(1.0)
    return x


def test_a_scheduler_left_without_workers_fails_the_map_instead_of_waiting_for_ever(
        tmp_path, monkeypatch):
    """A cluster's jobs that end mid-stage (a SLURM job's walltime, preemption, scancel) take
    every worker with them and nothing starts new ones: the tasks waited for a worker for ever
    (a stage on a real SLURM hung, docs/scaling.md). After PERSONALITY_CLUSTER_NO_WORKER_S
    seconds without a worker the map fails, naming the scheduler."""
    monkeypatch.setenv("PERSONALITY_CLUSTER_NO_WORKER_S", "3")
    one = [["--nworkers", "1", "--nthreads", "1"]]
    with _remote_cluster(tmp_path, one, n_workers=1) as (where, [worker]):
        out = map_jobs(sleep_a_second, range(30), workers=1, where=where, on_lost=lost_row)
        assert next(out) == 0
        worker.terminate()  # the job's end: its workers leave the scheduler
        start = time.monotonic()
        with pytest.raises(ExecutorError, match=f"at {where.address} has had no worker for 3 s"):
            list(out)
        assert time.monotonic() - start < 60


def test_a_map_started_before_any_worker_joined_waits_for_the_first(tmp_path, monkeypatch):
    """A SLURM job still queued: the scheduler has no worker yet, which is no job that ended.
    The map waits past PERSONALITY_CLUSTER_NO_WORKER_S for the first worker, then runs."""
    monkeypatch.setenv("PERSONALITY_CLUSTER_NO_WORKER_S", "1")
    with _remote_cluster(tmp_path, [], n_workers=0) as (where, _):
        late: list[subprocess.Popen] = []
        joins = threading.Timer(4.0, lambda: late.append(_dask(
            tmp_path, "worker", "--scheduler-file", str(tmp_path / "scheduler.json"),
            "--no-dashboard", "--nworkers", "1", "--nthreads", "1")))
        joins.start()
        try:
            assert list(map_jobs(sleep_a_second, range(2), workers=1, where=where)) == [0, 1]
        finally:
            joins.join()
            for worker in late:
                worker.terminate()
                worker.wait(30)


@pytest.mark.parametrize("bad", ["soon", "0", "-5"])
def test_a_bad_wait_for_workers_is_quoted(monkeypatch, bad):
    from personality.executor_dask import no_worker_s

    monkeypatch.setenv("PERSONALITY_CLUSTER_NO_WORKER_S", bad)
    with pytest.raises(ExecutorError, match=f"PERSONALITY_CLUSTER_NO_WORKER_S={bad!r}"):
        no_worker_s()


def test_with_on_lost_too_many_dead_workers_stop_the_map(tmp_path):
    jobs = [(x, str(tmp_path), str(x)) for x in range(4)]  # every job kills its worker
    with pytest.raises(ExecutorError, match="4 workers died in this run .* more than 3"):
        list(map_jobs(die_once_on, jobs, workers=2, where=POOL, on_lost=lost_row))


def test_with_on_lost_one_job_runs_in_a_worker_not_in_the_stage(tmp_path):
    out = list(map_jobs(die_once_on, [(3, str(tmp_path), "3")], workers=2, where=POOL,
                        on_lost=lost_row))
    assert out[0].startswith("lost 3") and "SIGKILL" in out[0]


def test_with_workers_1_a_crash_is_still_a_row_not_the_end_of_the_stage(tmp_path):
    """base.workers: 1 runs a per-video stage's jobs in one worker, not in the stage process:
    a segfault in FFmpeg or MediaPipe would otherwise end the stage naming no video."""
    jobs = [(x, str(tmp_path), "1") for x in range(3)]
    out = list(map_jobs(die_once_on, jobs, workers=1, where=placement(1, ""), on_lost=lost_row))
    assert out[0] == 0 and out[2] == 2 and out[1].startswith("lost 1") and "SIGKILL" in out[1]


@pytest.mark.parametrize("where", [POOL, DASK], ids=["pool", "dask"])
def test_a_job_over_its_time_limit_is_stopped_and_becomes_a_row_at_once(where):
    t0 = time.monotonic()
    out = list(map_jobs(hang_on_two, range(6), workers=2, where=where, time_limit=two_s_for_two,
                        on_lost=lambda x, why: f"lost {x}: {why}"))
    assert out[:2] + out[3:] == [0, 1, 3, 4, 5]
    assert out[2] == "lost 2: it ran over its time limit of 2 s and was stopped (a hang?)"
    assert time.monotonic() - t0 < 60  # stopped once, not retried (it would hang again)


def test_without_on_lost_a_job_over_its_time_limit_ends_the_map_naming_it():
    with pytest.raises(ExecutorError, match="clip2: the worker process running it died "
                                            r"\(it ran over its time limit of 2 s"):
        list(map_jobs(hang_on_two, range(4), workers=2, where=POOL, time_limit=two_s_for_two,
                      label=lambda x: f"clip{x}"))


@pytest.mark.parametrize("scale, expected", [("", 800.0), ("2.5", 2000.0), ("0", None)])
def test_time_limits_scale_with_the_clip_and_the_environment(monkeypatch, scale, expected):
    monkeypatch.setenv("PERSONALITY_TIME_LIMIT_SCALE", scale)
    assert time_limit_s(10.0, 20.0) == expected
    assert time_limit_s(float("nan"), 20.0) == (None if expected is None else 3600.0 * (
        float(scale) if scale else 1.0))


@pytest.mark.parametrize("bad", ["-1", "fast", "inf", "nan"])
def test_a_bad_time_limit_scale_is_quoted(monkeypatch, bad):
    monkeypatch.setenv("PERSONALITY_TIME_LIMIT_SCALE", bad)
    with pytest.raises(ExecutorError, match=f"PERSONALITY_TIME_LIMIT_SCALE='{bad}'"):
        time_limit_s(5.0, 20.0)


def test_a_worker_killed_during_its_setup_costs_a_fresh_start(tmp_path):
    out = list(map_jobs(fail_on_two, [0, 1, 3], workers=2, where=POOL, on_lost=lost_row,
                        setup=setup_killed_once, setup_args=(str(tmp_path),)))
    assert out == [0, 1, 3] and (tmp_path / "setup-ran").exists()


def test_start_waits_for_every_workers_setup_so_a_late_death_blames_no_job(tmp_path):
    """Without on_lost a dead worker ends the map: here it died in its set-up, after the other
    worker was ready, which is the pool's start, not any job's fault: a fresh start."""
    out = list(map_jobs(fail_on_two, [0, 1, 3, 4], workers=2, where=POOL,
                        setup=second_setup_dies_late_once, setup_args=(str(tmp_path),)))
    assert out == [0, 1, 3, 4] and (tmp_path / "died").exists()


def test_a_death_in_set_up_is_seen_at_once_not_after_the_barriers_timeout(tmp_path, monkeypatch):
    """CI once waited READY_TIMEOUT_S (30 min) at the barrier: the pool had not noticed the dead
    newest worker. start() now looks for it itself; 4 tries, since it is a race."""
    monkeypatch.setattr(executor, "READY_TIMEOUT_S", 120.0)
    for k in range(4):
        folder = tmp_path / str(k)
        folder.mkdir()
        t0 = time.monotonic()
        out = list(map_jobs(fail_on_two, [0, 1, 3], workers=2, where=POOL,
                            setup=second_setup_dies_at_once_once, setup_args=(str(folder),)))
        assert out == [0, 1, 3] and (folder / "died").exists()
        assert time.monotonic() - t0 < 60  # the barrier's 120 s would be a hang


def test_jobs_that_hang_together_are_all_stopped_and_the_map_ends():
    """Deadlines that pass at once (clips of one length, a stalled mount): every hung job is a
    row, none is run again without its limit (the map would hang)."""
    t0 = time.monotonic()
    out = list(map_jobs(hang_below_three, range(4), workers=3, where=POOL,
                        time_limit=two_s_below_three, on_lost=lambda x, why: f"lost {x}"))
    assert out == ["lost 0", "lost 1", "lost 2", 3] and time.monotonic() - t0 < 60


def test_workers_that_always_die_in_setup_stop_the_stage_naming_why():
    with pytest.raises(ExecutorError, match=r"died while starting .* 3 times in a row \(SIGKILL"):
        list(map_jobs(fail_on_two, [0, 1, 3], workers=2, where=POOL, on_lost=lost_row,
                      setup=setup_always_killed))


def test_inline_on_request_runs_every_job_in_this_process():
    """PERSONALITY_CLUSTER=inline (a debugger, a profiler): even maps with on_lost run here."""
    pids = list(map_jobs(own_pid, range(3), workers=2, where=placement(2, "inline"),
                         on_lost=lost_row))
    assert pids == [os.getpid()] * 3


@pytest.mark.parametrize("where", [POOL, DASK], ids=["pool", "dask"])
def test_an_exception_that_cannot_travel_back_names_its_job_not_a_dead_worker(where):
    with pytest.raises(RuntimeError, match="TwoArgError: half/done") as info:
        list(map_jobs(unpicklable_on_two, range(5), workers=2, label=lambda x: f"clip{x}",
                      where=where))
    assert not isinstance(info.value, ExecutorError)
    assert any("clip2" in note for note in getattr(info.value, "__notes__", []))


def test_sys_exit_in_a_job_is_an_error_not_a_clean_exit():
    with pytest.raises(RuntimeError, match=r"sys.exit\(0\)") as info:
        list(map_jobs(exit_on_one, range(4), workers=2, label=lambda x: f"clip{x}", where=POOL))
    assert any("clip1" in note for note in getattr(info.value, "__notes__", []))


def test_a_setup_that_fails_in_a_worker_raises_its_own_error():
    with pytest.raises(ValueError, match="sha256 mismatch"):
        list(map_jobs(square_slowly, range(4), workers=2, setup=broken_setup, where=POOL))


def test_a_setup_that_calls_sys_exit_says_so_not_a_dead_worker():
    with pytest.raises(RuntimeError, match=r"set-up raised SystemExit\(3\)"):
        list(map_jobs(square_slowly, range(4), workers=2, setup=exiting_setup, where=POOL))


def test_a_stuck_setup_stops_the_stage_once_after_the_barriers_timeout(tmp_path, monkeypatch):
    """The barrier's timeout is a stuck set-up, not a death: no retry (3 more waits)."""
    monkeypatch.setattr(executor, "READY_TIMEOUT_S", 3.0)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match="set-up took longer than 3 s"):
        list(map_jobs(square_slowly, range(4), workers=2, where=POOL,
                      setup=stuck_second_setup, setup_args=(str(tmp_path),)))
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------------------------------
# temp folders


def test_a_stale_temp_of_a_dead_writer_is_swept_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".audio.tmp-{int(dead.stdout)}-0123abcd"  # its writer is gone
    live = tmp_path / f".faces.tmp-{os.getppid()}-0123abcd"  # its writer still runs
    foreign = tmp_path / ".notes.tmp-keep"  # not ours
    for folder in (stale, live, foreign):
        folder.mkdir()
    with atomic_dir(tmp_path / "frames") as tmp:
        (tmp / "part-00000.parquet").write_bytes(b"x")
    assert not stale.exists() and live.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".frames")) == []


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def test_a_second_writer_of_an_artifact_leaves_a_live_writers_temp_alone(tmp_path):
    live = tmp_path / f".frames.tmp-{os.getppid()}-0123abcd"  # another run writing frames now
    live.mkdir()
    (live / "part-00000.parquet").write_bytes(b"theirs")
    with atomic_dir(tmp_path / "frames") as tmp:
        (tmp / "part-00000.parquet").write_bytes(b"x")
    assert (live / "part-00000.parquet").read_bytes() == b"theirs"


def test_a_killed_single_file_writers_temp_goes_with_the_next_write(tmp_path):
    stale = tmp_path / f".functionals.parquet.tmp-{_dead_pid()}-0123abcd"  # SIGKILLed mid-write
    stale.write_bytes(b"half")
    with atomic_file(tmp_path / "functionals.parquet") as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["functionals.parquet"]
    dvcignore = (REPO / ".dvcignore").read_text().splitlines()
    assert ".*.tmp-*" in dvcignore  # and DVC never hashes one into an output


def test_the_swap_exchanges_in_one_step_on_linux(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "a").write_text("old")
    real_replace = os.replace

    def no_rename_onto(src, dst):  # the exchange needs no rename of the old folder aside
        assert Path(dst) != tmp_path / "art" and Path(src) != tmp_path / "art"
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_rename_onto)
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_ctrl_c_between_the_two_renames_waits_until_both_are_done(tmp_path, monkeypatch):
    import ctypes

    from personality import common

    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "a").write_text("old")
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("none")))
    real_replace, calls = os.replace, []

    def replace_then_ctrl_c(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # lands between the renames: held back

    monkeypatch.setattr(common.os, "replace", replace_then_ctrl_c)
    # Python's Ctrl-C handler, which a process started with SIGINT ignored (`cmd &` in a
    # script, nohup) does not install: the held-back signal would then vanish
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_dir(tmp_path / "art") as tmp:
                (tmp / "b").write_text("new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 2 and (tmp_path / "art" / "b").read_text() == "new"


# --------------------------------------------------------------------------------------------------
# a map left suspended when the process exits

ABANDONED = """
import concurrent.futures.thread  # before the executor: the thread pools' exit hook runs after ours
import multiprocessing, sys, time
from concurrent.futures import ThreadPoolExecutor
from personality.executor import map_jobs
from personality.executor_kept import KeptWorkers
from test_executor import die_mid_result_later_on_one


def start(how):
    global rows
    fn, jobs = (die_mid_result_later_on_one, [0, 1]) if how == "half-sent" else \\
        (time.sleep, [0, 600, 600])  # job 1 is submitted with job 0: one always runs on
    rows = map_jobs(fn, jobs, workers=2, kept=KeptWorkers(2) if how == "kept" else None)
    return next(rows)


if __name__ == "__main__":
    how = sys.argv[1]
    if how == "thread-pool":  # read by a pool's worker thread, idle (alive, no daemon) at exit
        threads = ThreadPoolExecutor(1)  # referenced: collected, it would end its worker
        print(threads.submit(start, how).result(), flush=True)
    else:
        print(start(how), flush=True)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(6.0)  # half-sent: job 1's worker has died halfway through its result meanwhile
"""  # ends with `rows` suspended, still referenced by the module


@pytest.mark.parametrize("how", ["sleeping", "kept", "half-sent", "thread-pool"])
def test_a_process_that_leaves_a_map_unread_exits_at_once(tmp_path, how):
    """CPython's exit joins each pool's manager thread, which waits for the jobs still running
    (two 600 s sleeps here) or for ever for a half-sent result: the executor's exit hook kills
    the workers of a map no thread will read again first, and none outlives the process."""
    script = tmp_path / "abandon.py"
    script.write_text(ABANDONED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "PERSONALITY_CLUSTER": ""}
    proc = subprocess.Popen([sys.executable, str(script), how], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a hang leaves no worker behind either
    assert proc.returncode == 0, err[-2000:]
    assert time.monotonic() - t0 < 30
    pids = [int(pid) for pid in out.split("\n")[1].split()]
    assert len(pids) == 2
    time.sleep(0.5)
    assert not [pid for pid in pids if _running(pid)]


def do_nothing() -> None:
    pass


def test_a_forked_child_that_exits_leaves_its_parents_map_alone():
    """A fork inherits the set of pools with a map under way, and its normal exit runs the exit
    hook: it must not kill the parent's workers (a review found it did)."""
    rows = map_jobs(time.sleep, [0, 0, 1, 1], workers=2, where=POOL)
    assert next(rows) is None
    child = mp.get_context("fork").Process(target=do_nothing)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert list(rows) == [None] * 3


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------------------------------
# a stage runs as `python -m stages.X`: its functions live in __main__

MODULE = """
from personality.executor import map_jobs

_STATE = None


def setup(value):
    global _STATE
    _STATE = value


def work(x):
    assert _STATE is not None, "worker not initialised"
    return x + _STATE


if __name__ == "__main__":
    print(list(map_jobs(work, range(4), workers=2, setup=setup, setup_args=(10,))))
"""


@pytest.mark.parametrize("cluster", ["", "local:2"], ids=["pool", "dask"])
def test_worker_state_reaches_jobs_of_a_module_run_with_dash_m(tmp_path, cluster):
    (tmp_path / "stagepkg").mkdir()
    (tmp_path / "stagepkg" / "__init__.py").write_text("")
    (tmp_path / "stagepkg" / "job.py").write_text(MODULE)
    env = {**os.environ, "PERSONALITY_CLUSTER": cluster,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "stagepkg.job"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[10, 11, 12, 13]"


def progress_lock_is_private(_job) -> bool:
    import threading

    from tqdm import tqdm

    return isinstance(tqdm.get_lock(), type(threading.RLock()))


def test_workers_lock_their_progress_bars_with_a_thread_lock():
    """tqdm's default lock holds a multiprocessing semaphore: a pool worker that drew a model's
    epochs with it left the semaphore behind, and Python warned of 'leaked semaphore objects'
    when the retrain stage exited."""
    assert list(map_jobs(progress_lock_is_private, range(2), workers=2, where=POOL)) == [True] * 2
