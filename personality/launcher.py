"""A stage run by DVC stops when the `dvc` process that ran it ends.

DVC runs a stage's command through `$SHELL -c` and waits for it; on SIGTERM (`kill <pid of dvc>`,
a supervisor stopping it) DVC dies at once and forwards nothing. dash, Debian's /bin/sh, does not
exec the command, so the stage's parent is the shell, not DVC: the stage ran on as an orphan,
took the machine for the rest of its work, and ended its MLflow run FINISHED for outputs DVC never
recorded. `watch_launcher()` (called by `personality.common.stage_errors` when DVC's `DVC_STAGE`
is in the environment) starts a daemon thread that polls the launcher; once it is gone it sends
this process SIGTERM, which the stage handles as any SIGTERM: it unwinds, writes nothing half,
marks its runs KILLED and dies of the signal.

Linux only (it reads /proc); elsewhere it does nothing. Tested in tests/test_params_check.py
(a real `dvc repro` whose dvc process alone is sent SIGTERM).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

__all__ = ["watch_launcher", "launcher_pids"]

POLL_S = 1.0
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "fish", "busybox"})
_STARTED = [False]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, start time in clock ticks) of `pid`, None once it is gone. The
    start time tells a reused pid from the process that had it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime": comm may hold spaces and parentheses
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return name, int(rest[1]), int(rest[19])


def launcher_pids() -> list[tuple[int, int]]:
    """[(pid, start time)] of this process's parent and, when the parent is a shell (the
    `$SHELL -c` DVC starts), of the shell's parent too: every process whose end means nobody waits
    for this stage any more. Empty where /proc cannot be read."""
    chain: list[tuple[int, int]] = []
    pid = os.getppid()
    for _ in range(2):
        stat = _stat(pid) if pid > 1 else None
        if stat is None:
            break
        name, parent, started = stat
        chain.append((pid, started))
        if name not in SHELLS:
            break
        pid = parent
    return chain


def _gone(chain: list[tuple[int, int]]) -> int | None:
    for pid, started in chain:
        stat = _stat(pid)
        if stat is None or stat[2] != started:
            return pid
    return None


def watch_launcher(log: logging.Logger) -> None:
    """Once per process: poll the launcher chain and SIGTERM this process when one of it ends."""
    if _STARTED[0] or not os.path.isdir("/proc/self"):
        return
    chain = launcher_pids()
    if not chain:
        return
    _STARTED[0] = True
    me = os.getpid()

    def watch() -> None:
        while True:
            threading.Event().wait(POLL_S)
            if os.getpid() != me:  # a forked child's copy of the thread does not run; be sure
                return
            ended = _gone(chain)
            if ended is not None:
                log.error("the process that ran this stage (pid %d, dvc or its shell) has ended: "
                          "stopping", ended)
                os.kill(me, signal.SIGTERM)
                return

    threading.Thread(target=watch, name="watch-launcher", daemon=True).start()
