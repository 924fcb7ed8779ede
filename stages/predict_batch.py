"""predict's batch mode: which files a batch scores, their ids, and the worker pool that scores them.

    for i, row in run_jobs(score_row, jobs, workers=2, initializer=init, failed=error_row): ...

`run_jobs` runs each job in one of `workers` spawned processes and yields results as they finish.
A worker that dies (kill -9, the kernel's OOM killer, a segfault in a decoder) breaks Python's
whole ProcessPoolExecutor: every unfinished job would get BrokenProcessPool and none would say
which file did it. Here a fresh pool takes the jobs that had not started, and each job that was
running when the pool broke is retried once alone: a job that kills its worker again is the only
one reported (`failed(job, WorkerDied(...))`), the others are scored. At most `workers` jobs are
in flight at a time, so the suspects of a break are known.

`sigterm_exits` turns SIGTERM into SystemExit, so that a killed predict (or worker) unwinds its
`with` blocks: the temporary work folder goes, no temp file is renamed in. `save_table` writes
predictions.csv (`batch_table`: a row per video, those not yet scored saying so), at a batch's
start, as it goes and when it stops. `out_problem` says why results cannot go to a folder, before
any work.

Generic (no stage imports: tests/test_layering.py): stages/predict.py passes its own functions.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd

from personality.archives import mac_leftover
from personality.common import atomic_write_text, get_logger, shown_path
from personality.schemas import TRAITS

__all__ = ["VIDEO_EXTENSIONS", "WorkerDied", "collect_videos", "same_files", "batch_ids",
           "safe_video_id", "run_jobs", "sigterm_exits", "exit_on_sigterm", "CSV_COLUMNS",
           "NOT_SCORED", "batch_table", "save_table", "save_table_if_due", "out_problem"]

log = get_logger("predict")

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".3gp")


class WorkerDied(RuntimeError):
    """The worker process running a job died twice (once in the pool, once alone)."""


def collect_videos(paths: list[Path]) -> list[Path]:
    """The videos named by `paths`: a folder gives every file under it (recursively) whose
    extension is a video's, sorted; a file is taken as it is (a bad one becomes a row with its
    error). In the order given, every name once: the same name given twice (a folder and a file
    in it) is one video, but two names of one file (a hard link, a symlink beside its target)
    are two videos, each scored under its own name and so with the same scores, as a user who
    listed both expects a row for each; the log says which are the same file."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and not mac_leftover(f)
                           and f.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:  # a folder gives no row: the log says so, not silence
                log.warning("%s: no video (%s) under it", path, " ".join(VIDEO_EXTENSIONS))
            out += found
        else:
            out.append(path)
    unique: dict[str, Path] = {}
    for video in out:  # by name, not by resolved file: an alias must keep its row
        unique.setdefault(os.path.abspath(video), video)
    videos = list(unique.values())
    for later, first in same_files(videos).items():
        log.warning("%s is the same file as %s (a link): each is scored, under its own name",
                    videos[later], videos[first])
    return videos


def same_files(videos: list[Path]) -> dict[int, int]:
    """{i: j}: videos[i] is the same file as videos[j], the first name of it (a hard link or a
    symlink: same device and inode). A file that cannot be looked at is in none (its row says
    why)."""
    first: dict[tuple[int, int], int] = {}
    same: dict[int, int] = {}
    for i, video in enumerate(videos):
        try:
            info = video.stat()
        except (OSError, ValueError):  # missing, a symlink loop, a NUL byte: its own row
            continue
        same[i] = first.setdefault((info.st_dev, info.st_ino), i)
    return {i: j for i, j in same.items() if i != j}


def safe_video_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "video"


def batch_ids(videos: list[Path]) -> list[str]:
    """One file-name-safe id per video (its stem); a repeated stem gets _2, _3... Stems that
    differ only in case are repeats: on a case-insensitive file system (macOS's and Windows's
    defaults) `Clip.png` and `clip.png` are one file, and one report would replace the other."""
    ids, used = [], set()
    for video in videos:
        base = vid = safe_video_id(video)
        k = 1
        while vid.casefold() in used:
            k += 1
            vid = f"{base}_{k}"
        used.add(vid.casefold())
        ids.append(vid)
    return ids


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM as SystemExit (exit code 143): `with` blocks unwind and `finally` runs, which the
    default action (die at once) never allows."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """`exit_on_sigterm` for the block, the previous handler back afterwards. Only the main
    thread may set handlers: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


Failed = Callable[[Sequence, BaseException], Any]


def run_jobs(fn: Callable, jobs: Sequence[Sequence], workers: int, *,
             initializer: Callable | None = None, failed: Failed) -> Iterator[tuple[int, Any]]:
    """Yield (index, fn(*job)) as jobs finish: in this process when `workers` <= 1 or there is
    one job, else in `workers` spawned processes (module docstring: a dead worker). `failed(job,
    exc)` stands in for the result of a job that raised in a way `fn` could not catch: a result
    that cannot be sent back, or WorkerDied. A job's first item names it in the log."""
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
        return
    todo = collections.deque(range(len(jobs)))
    while todo:
        suspects = yield from _pool_pass(fn, jobs, todo, workers, initializer, failed)
        if suspects:
            log.warning("a worker process died (killed or crashed); retrying alone each job it "
                        "may have been running: %s", ", ".join(str(jobs[i][0]) for i in suspects))
        for i in suspects:
            yield from _alone(fn, jobs, i, initializer, failed)


def _pool_pass(fn, jobs, todo: collections.deque, workers: int, initializer, failed):
    """Run the jobs of `todo` (taken off it as they are submitted), `workers` at a time, until
    all are done or the pool breaks. Returns the jobs in flight when it broke (else [])."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    with _pool(workers, initializer) as pool:
        running: dict = {}
        while todo or running:
            while todo and len(running) < workers:
                i = todo.popleft()
                try:
                    running[pool.submit(fn, *jobs[i])] = i
                except BrokenProcessPool:  # it broke since the last wait: i never started
                    return sorted([*running.values(), i])
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = []
            for future in done:
                i = running.pop(future)
                try:
                    yield i, future.result()
                except BrokenProcessPool:
                    broken.append(i)
                except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                    yield i, failed(jobs[i], exc)
            if broken:
                return sorted([*broken, *running.values()])
    return []


def _alone(fn, jobs, i: int, initializer, failed):
    """Job `i` in a pool of its own: its result, or `failed(job, WorkerDied)` when it kills this
    worker too."""
    from concurrent.futures.process import BrokenProcessPool

    with _pool(1, initializer) as pool:
        future = pool.submit(fn, *jobs[i])
        try:
            result = future.result()
        except BrokenProcessPool:
            result = failed(jobs[i], WorkerDied("its worker process died (killed or crashed) "
                                                "while scoring it"))
        except Exception as exc:  # noqa: BLE001 - as in _pool_pass
            result = failed(jobs[i], exc)
    yield i, result


@contextlib.contextmanager
def _pool(workers: int, initializer: Callable | None):
    """A spawned ProcessPoolExecutor (fork is unsafe beside numba / BLAS / MediaPipe threads, as
    stages/audio.py). Leaving the block by an exception (SIGTERM, Ctrl-C, a consumer that stops)
    terminates the workers rather than waiting minutes for their videos to finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=initializer)
    try:
        yield pool
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _stop(pool) -> None:
    """Cancel what has not started and SIGTERM the workers (their initializer should make that a
    clean exit: `exit_on_sigterm`); one that outlives 10 s is killed. The executor has no public
    way to reach its processes: `_processes` is read, never changed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------------------------------------
# predictions.csv

CSV_COLUMNS = ["video", "video_id", *TRAITS, "model", "face_share", "has_audio", "audio_silent",
               "voiced_share", "warnings", "error", "report"]
TABLE_EVERY_S = 5.0  # how often a running batch rewrites predictions.csv
NOT_SCORED = "not scored: the batch had not reached it (still running, or stopped first)"


def batch_table(rows: list[dict | None], jobs: Sequence[Sequence]) -> pd.DataFrame:
    """predictions.csv's table: a row per job (video, report path, ...), in job order; a job
    not yet done says so."""
    filled = [row or {"video": shown_path(job[0]), "video_id": Path(job[1]).stem, "report": "",
                      "error": NOT_SCORED} for row, job in zip(rows, jobs)]
    table = pd.DataFrame([{k: _cell(v) for k, v in row.items()} for row in filled])
    table = table.reindex(columns=CSV_COLUMNS)
    table["error"] = table["error"].fillna("")
    return table


def _cell(value):
    """A text cell as predictions.csv can hold it: a name's non-UTF-8 bytes as \\xNN, and a
    carriage return as \\r (the CSV writer quotes a newline in a field but not a lone CR, which
    readers take as the end of a row)."""
    return shown_path(value).replace("\r", "\\r") if isinstance(value, str) else value


def save_table(out: Path, rows: list[dict | None], jobs: Sequence[Sequence], *,
               strict: bool = True) -> pd.DataFrame:
    """out/predictions.csv, atomically; returns its table. Not `strict` (a rewrite while the
    batch runs): a failure (a full disk) is logged and the batch goes on, to try again at the
    next rewrite and at its end."""
    table = batch_table(rows, jobs)
    try:
        atomic_write_text(out / "predictions.csv", table.to_csv(index=False, float_format="%.6g"))
    except OSError as exc:
        if strict:
            raise
        log.warning("%s: not rewritten now (%s); tried again later", out / "predictions.csv",
                    exc.strerror or exc)
    return table


def save_table_if_due(out: Path, rows: list[dict | None], jobs: Sequence[Sequence],
                      saved: float) -> float:
    """save_table (not strict) when TABLE_EVERY_S have passed since `saved` (time.monotonic);
    returns when the table was last tried."""
    if time.monotonic() - saved < TABLE_EVERY_S:
        return saved
    save_table(out, rows, jobs, strict=False)
    return time.monotonic()


def out_problem(out: Path) -> str | None:
    """Why the results cannot go to the folder `out`, or None: found before any work, so that a
    read-only or mistyped folder costs no video its scores. A missing `out` is not made here
    (a run that fails leaves none): its nearest existing parent must take a new entry."""
    try:
        return _out_problem(out)
    except OSError as exc:  # a name too long, a loop of links
        return f"unusable path: {exc.strerror or exc}"


def _out_problem(out: Path) -> str | None:
    """out_problem's checks, in order: `out` itself, a broken link on the way, the nearest
    existing parent (a folder that takes a new entry)."""
    if out.exists() and not out.is_dir():
        return "exists and is not a folder; give a folder for the results"
    for parent in (out.absolute(), *out.absolute().parents):  # the nearest that exists
        if parent.exists():
            break
        if os.path.lexists(parent):
            return f"cannot be made: {parent} is a broken link"
    if not parent.is_dir():
        return f"cannot be made: {parent} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".predict-write-check-"):
            pass
    except OSError as exc:
        return f"cannot write {'there' if parent == out.absolute() else f'in {parent}'}: " \
               f"{exc.strerror or exc}"
    return None
