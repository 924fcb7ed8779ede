"""The worker side of personality/executor.py: what a spawned pool worker (or a Dask worker) runs
around each job: one thread per library, death with its parent, the stage's set-up once, the
shared ledger of which job runs where, and job failures made able to travel back. Nothing here
runs on its own (tests/test_executor.py exercises it through map_jobs).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable

__all__ = ["THREAD_VARS", "single_thread", "die_with_parent"]

# BLAS, OpenMP, numexpr, numba and TFLite (MediaPipe) read these when they load: spawned workers
# must have them before their first import
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "TFLITE_NUM_THREADS")
_PARENT_POLL_S = 0.5



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
_READY = None  # a barrier of the pool's workers: start() returns once every one is set up
_READY_TIMEOUT_S = 0.0  # this worker's wait at the barrier (the parent's READY_TIMEOUT_S)
_SETUP_ERROR: Exception | None = None  # what setup raised in this worker: every call raises it


def _pool_init(parent_pid: int, ledger, ready, ready_timeout_s: float, token: str,
               setup: Callable | None, setup_args: tuple) -> None:
    global _LEDGER, _READY, _READY_TIMEOUT_S, _SETUP_ERROR
    die_with_parent(parent_pid)
    _LEDGER, _READY, _READY_TIMEOUT_S = ledger, ready, ready_timeout_s
    _private_progress_lock()
    try:
        _ensure_setup(token, setup, setup_args)
    except Exception as exc:  # an initializer's exception never reaches the parent: the pool
        _SETUP_ERROR = exc    # would just break; the first call carries it back instead
    except BaseException as exc:  # sys.exit() in a model load: the worker would end with code 0
        _SETUP_ERROR = RuntimeError(f"the stage's set-up raised {type(exc).__name__}"
                                    f"({getattr(exc, 'code', '')})")


def _private_progress_lock() -> None:
    """A worker that draws progress bars (a model's epochs) locks them with a thread lock: tqdm's
    default is a multiprocessing lock, a POSIX semaphore that the pool's shutdown leaves behind,
    and Python then warns of 'leaked semaphore objects' when the stage exits."""
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())


def _pool_call(fn: Callable, index: int, job: Any) -> Any:
    if _SETUP_ERROR is not None:
        raise _SETUP_ERROR
    if index < 0:
        return fn(job)
    _LEDGER[index] = os.getpid()  # running here: if this process dies, job `index` is the culprit
    try:
        return _run_job(fn, job)
    finally:
        _LEDGER[index] = -os.getpid()  # done (or raised): no longer a culprit


def _run_job(fn: Callable, job: Any) -> Any:
    """fn(job) in a worker, its failure made able to travel back: sys.exit() in a job would end
    the stage with status 0, and an exception that cannot be unpickled would break the pool and
    pass for a dead worker."""
    try:
        return fn(job)
    except SystemExit as exc:
        raise RuntimeError(f"the job called sys.exit({exc.code!r})") from None
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - any failure to round-trip
            raise RuntimeError(f"{type(exc).__name__}: {exc} (its exception could not be sent "
                               "back as it was)") from None
        raise


def _started(_job: Any = None) -> int:
    """Wait until every worker of the pool has run its set-up: each one takes one such call and
    holds it, so the n calls prove n ready workers (not one worker answering n times)."""
    _READY.wait(timeout=_READY_TIMEOUT_S)
    return os.getpid()
