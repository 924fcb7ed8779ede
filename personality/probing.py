"""FFmpeg's first look at a media file (its duration, frame rate, audio), read in a worker process.

`probe` opens the file and decodes its first frame (personality/video_io.py); a file that crashes
FFmpeg there, or hangs it, would end or hold whatever process reads it: the ingest stage, or a
served model's. So the stages read it through `WorkerProbe` (ingest, one worker kept for all of a
dataset's files) or `probe_in_worker` (predict, in its front-end's worker): such a file costs the
worker, and is reported by name. `python -m pytest tests/test_ingest_folder.py` exercises it.

    with WorkerProbe() as probe:
        facts = probe(path)    # {"duration_s", "fps", "has_audio"}; StageInputError naming a bad file
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from personality.common import StageInputError
from personality.executor import map_jobs, placement, time_limit_s
from personality.executor_kept import KeptWorkers

__all__ = ["probe_facts", "probe_in_worker", "WorkerProbe"]


def probe_facts(path: str | os.PathLike) -> dict:
    """Duration, frame rate and audio presence of a media file (PyAV, `video_io.probe`), in this
    process. Raises StageInputError naming the file when it cannot be opened or holds no video
    stream."""
    from personality.video_io import probe

    try:
        info = probe(Path(path))
    except StageInputError:
        raise
    except Exception as exc:  # PyAV raises many kinds (InvalidDataError, OSError...)
        raise StageInputError(f"{path}: cannot be decoded: {exc}") from None
    return {"duration_s": info.duration_s, "fps": info.fps, "has_audio": info.has_audio}


def probe_in_worker(path: str | os.PathLike, *, kept: Any = None, where: Any = None,
                    setup: Callable | None = None) -> dict:
    """probe_facts(path) in a worker: `kept` workers (executor_kept.KeptWorkers, started with
    `setup`), else one spawned for it; this machine's even on a cluster (`where`, default: one
    local worker, or this process under PERSONALITY_CLUSTER=inline). A worker that dies or
    passes the time limit (600 s, scaled: time_limit_s) twice is a StageInputError naming the
    file."""
    where = where or local_placement()
    # absolute (a kept worker's working folder is the one its parent had when it started), not
    # resolved: the messages name the file as given, not a symlink's target (DVC's cache)
    [facts] = map_jobs(_probe_job, [Path(path).absolute()], workers=1, where=where, label=str,
                       setup=setup if kept is not None else None,  # one spawned to probe: bare
                       on_lost=_lost, time_limit=_limit, kept=kept)
    if "lost" in facts:
        raise StageInputError(f"{path}: reading it ended the worker that read it "
                              f"({facts['lost']}); not read")
    if "error" in facts:
        raise StageInputError(facts["error"])
    return facts


def local_placement():
    """One local worker whatever PERSONALITY_CLUSTER names (the files are on this machine), or
    this process under `inline` (a debugger wants everything here)."""
    return placement(1, "inline" if placement(1).forced_inline else "")


class WorkerProbe:
    """`probe(path)`: probe_in_worker on one worker kept for all the calls (an interpreter start
    once, not per file); its process ends with the `with` block."""

    def __init__(self):
        self.workers = KeptWorkers(1)

    def __call__(self, path: str | os.PathLike) -> dict:
        return probe_in_worker(path, kept=self.workers)

    def __enter__(self) -> "WorkerProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.workers.close()


def _probe_job(path: Path) -> dict:
    """probe_facts in the worker, a bad file's StageInputError returned as {"error": message}:
    an expected answer, not a failed job (two of those in a row end the kept workers)."""
    try:
        return probe_facts(path)
    except StageInputError as exc:
        return {"error": str(exc)}


def _lost(job: Path, why: str) -> dict:
    return {"lost": why}


def _limit(job: Path) -> float | None:
    return time_limit_s(0.0, 0.0)
