"""The served model's limits (stages/serve.py, VideoScorer): what one request may ask, how long it
may run, and how many videos the process copies and scores at once. Each is read from the
environment when the model is loaded; nothing here runs on its own (`python -m pytest
tests/test_serve_paths.py`).

- PERSONALITY_MAX_VIDEO_GB (default 4): the largest file a request may name (each is copied).
- PERSONALITY_MAX_REQUEST_ROWS (default 100): the most videos in one request (else HTTP 400).
- MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (set by `mlflow models serve`): a request's deadline;
  a row whose turn, or whose slot, comes after it is an error row, not scored.
- PERSONALITY_MAX_CONCURRENT_VIDEOS (default 2): the videos copied and scored at once in this
  process, across all requests (`video_slots`). MLflow's server scores every request that arrives
  in a thread of its own, so without this bound each copied a video of up to 4 GiB at once.
  Two, because a clip's front end runs in one kept worker process: a second clip at once starts
  a fresh worker of its own (an interpreter, the stages' imports, MediaPipe), so more at once is
  slower, not faster (2 cores: two clips 3.0 s one after another, 9.1 s at once; README, Serving),
  while one alone would let one slow video (a 4 GiB copy, a long clip) hold up every request.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Iterator

from personality.common import StageInputError
from personality.schemas import TRAITS

MAX_GB_ENV, DEFAULT_MAX_GB = "PERSONALITY_MAX_VIDEO_GB", 4  # the largest file a request may name
MAX_ROWS_ENV, DEFAULT_MAX_ROWS = "PERSONALITY_MAX_REQUEST_ROWS", 100  # the most videos per request
# the videos copied and scored at once by this process, all requests together (module docstring)
MAX_VIDEOS_ENV, DEFAULT_MAX_VIDEOS = "PERSONALITY_MAX_CONCURRENT_VIDEOS", 2
# what `mlflow models serve` puts in its server's environment: the seconds after which it answers
# 504 (the request's thread scores on: the rows left after it are not scored)
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
# uvicorn's own (its CLI reads UVICORN_* variables): the connections its server keeps at once
CONCURRENCY_ENV = "UVICORN_LIMIT_CONCURRENCY"


def request_seconds() -> float | None:
    """The scoring server's time limit for a request (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, which
    `mlflow models serve` sets in its server's environment), None outside such a server. Past it
    MLflow answers 504 but its thread scored every row on: a request of 200 clips (~1.4 s each)
    kept a server busy 4-5 min after its 504, one of 10,000 for hours."""
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, ""))
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def late_row(requested: str, seconds: float) -> dict:
    return {**{t: math.nan for t in TRAITS},
            "error": f"{requested}: not scored: the request had run past the server's "
                     f"{seconds:g} s ({TIMEOUT_ENV}) before its turn; send fewer videos per "
                     f"request"}


def busy_row(requested: str, slots: int, seconds: float) -> dict:
    """The row of a video that waited for a slot (`video_slot`) until the request's deadline."""
    return {**{t: math.nan for t in TRAITS},
            "error": f"{requested}: not scored: the server was scoring {slots} other video(s) "
                     f"({MAX_VIDEOS_ENV}) until the request's {seconds:g} s ({TIMEOUT_ENV}) had "
                     f"passed; send it again later"}


def max_video_bytes() -> int:
    """The largest file a request may name: PERSONALITY_MAX_VIDEO_GB GiB (default 4); each request
    copies its file (`private_copy`), and a sparse file's holes are written out in full."""
    text = os.environ.get(MAX_GB_ENV, "").strip() or str(DEFAULT_MAX_GB)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes > 0:
        raise StageInputError(f"{MAX_GB_ENV}: {text!r} is not a positive number of GiB")
    return int(gigabytes * 2**30)


def _whole_number(env: str, default: int, unit: str) -> int:
    text = os.environ.get(env, "").strip() or str(default)
    if not text.isdigit() or int(text) < 1:
        raise StageInputError(f"{env}: {text!r} is not a positive whole number of {unit}")
    return int(text)


def max_request_rows() -> int:
    """The most videos one request may name: PERSONALITY_MAX_REQUEST_ROWS (default 100)."""
    return _whole_number(MAX_ROWS_ENV, DEFAULT_MAX_ROWS, "rows")


def max_concurrent_videos() -> int:
    """The most videos scored at once: PERSONALITY_MAX_CONCURRENT_VIDEOS (default 2)."""
    return _whole_number(MAX_VIDEOS_ENV, DEFAULT_MAX_VIDEOS, "videos")


_SLOTS_LOCK = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def video_slots(n: int) -> threading.BoundedSemaphore:
    """The process's semaphore of `n` slots, one for every model this process loads: the scoring
    server's threads (one per request) share it. A model loaded again with another `n` replaces
    it (the rows then in flight give back the slot of the one they took)."""
    global _slots
    with _SLOTS_LOCK:
        if _slots is None or _slots[0] != n:
            _slots = (n, threading.BoundedSemaphore(n))
        return _slots[1]


@contextlib.contextmanager
def video_slot(slots: threading.Semaphore, end: float) -> Iterator[bool]:
    """Hold one of `slots` for the block: yields True, or False when none came free before `end`
    (time.monotonic; math.inf outside a server: wait as long as it takes, every holder finishes
    its one video). A thread waiting past `end` would score for a client that had its 504."""
    wait = None if end == math.inf else max(0.0, end - time.monotonic())
    got = slots.acquire(timeout=wait)
    try:
        yield got
    finally:
        if got:
            slots.release()
