"""A stage run by DVC stops when the `dvc` process that ran it ends.

DVC runs a stage's command through `$SHELL -c` and waits for it; on SIGTERM (`kill <pid of dvc>`,
a supervisor stopping it) DVC dies at once and forwards nothing. dash, Debian's /bin/sh, does not
exec the command, so the stage's parent is the shell, not DVC: the stage ran on as an orphan,
took the machine for the rest of its work, and ended its MLflow run FINISHED for outputs DVC never
recorded. `watch_launcher()` (called by `personality.common.stage_errors` when DVC's `DVC_STAGE`
is in the environment) starts a daemon thread that polls the launcher; once it is gone it sends
this process SIGTERM, which the stage handles as any SIGTERM: it unwinds, writes nothing half,
marks its runs KILLED and dies of the signal.

Which process is DVC: the ancestor whose pid DVC wrote into its lock file while it runs the stage
(`$DVC_ROOT/.dvc/tmp/rwlock`: the stage's outputs, write-locked by DVC's pid), with the shells
between it and this process; without that file, the parent and, when the parent is a shell, the
shell's parent. The chain is read when this module is imported (personality.common imports it
first), before a stage's heavy imports. A DVC that died while the stage started counts as gone
at once: its rwlock still names it (DVC had no time to clean up) and no live dvc there is an
ancestor, or the stage (or its shell) is re-parented to init. A zombie counts as gone.

Linux only (it reads /proc); elsewhere it does nothing. Tested in tests/test_launcher.py (a real
`dvc repro` whose dvc process alone is sent SIGTERM, and the chain rules).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

__all__ = ["watch_launcher", "launcher_chain", "stop_watching"]

POLL_S = 1.0
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox", "tcsh",
                    "csh", "yash", "posh"})
_STOP = threading.Event()
_STARTED = [False]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, start time in clock ticks) of `pid`; None once it is gone or a
    zombie (dead, not yet reaped). The start time tells a reused pid from the process it was."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime": comm may hold spaces and parentheses
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return None if rest[0] in ("Z", "X") else (name, int(rest[1]), int(rest[19]))


def _dvc_pids(dvc_root: str | None) -> set[int]:
    """Pids DVC wrote into its rwlock (each running `dvc repro` / `dvc exp run` of the repo)."""
    try:
        lock = json.loads((Path(dvc_root or ".") / ".dvc" / "tmp" / "rwlock").read_text())
    except (OSError, ValueError):
        return set()
    infos = [*(lock.get("write") or {}).values(),
             *(i for listed in (lock.get("read") or {}).values() for i in listed)]
    return {i["pid"] for i in infos if isinstance(i, dict) and isinstance(i.get("pid"), int)}


def launcher_chain(dvc_root: str | None = None) -> list[tuple[int, int]] | None:
    """[(pid, start time)] of the processes whose end means nobody waits for this stage: up to
    the ancestor DVC's rwlock names (shells included), else the parent and, if it is a shell,
    its parent. [] when the launcher died before this process could look: the rwlock names a
    dead dvc and no live one above this process, or the parent (the shell's parent) is init.
    None where /proc cannot be read."""
    if not os.path.isdir("/proc/self"):
        return None
    dvc = _dvc_pids(dvc_root)
    ancestors, pid = [], os.getppid()
    while pid > 1 and len(ancestors) < 32:
        stat = _stat(pid)
        if stat is None:
            break
        ancestors.append((pid, stat))
        if pid in dvc:  # the dvc process itself: the chain ends here
            return [(p, s[2]) for p, s in ancestors]
        pid = stat[1]
    if any(_stat(p) is None for p in dvc):  # a dvc died holding its locks, and none that is
        return []                           # alive is an ancestor: it was this stage's
    chain = ancestors[:1]
    if ancestors and ancestors[0][1][0] in SHELLS:
        chain = ancestors[:2]
        if len(ancestors) < 2:  # a shell re-parented to init: its launcher is gone
            return []
    return [(p, s[2]) for p, s in chain]


# read at import, before the stage's heavy imports (see the module docstring)
_EARLY = launcher_chain(os.environ.get("DVC_ROOT")) if "DVC_STAGE" in os.environ else None


def _gone(chain: list[tuple[int, int]]) -> int | None:
    for pid, started in chain:
        stat = _stat(pid)
        if stat is None or stat[2] != started:
            return pid
    return None


def watch_launcher(log: logging.Logger) -> None:
    """Once per process: poll the launcher chain and SIGTERM this process when one of it ends
    (at once when it had ended before this process could look)."""
    chain = _EARLY if _EARLY is not None else launcher_chain(os.environ.get("DVC_ROOT"))
    if _STARTED[0] or chain is None:
        return
    _STARTED[0] = True
    _STOP.clear()
    me = os.getpid()

    def watch() -> None:
        while not _STOP.is_set():
            ended = _gone(chain) if chain else 1
            if ended is not None and os.getpid() == me and not _STOP.is_set():
                log.error("the process that ran this stage (%s) has ended: stopping",
                          f"pid {ended}, dvc or its shell" if chain else
                          "dvc or its shell: before this stage had started")
                os.kill(me, signal.SIGTERM)
                return
            _STOP.wait(POLL_S)

    threading.Thread(target=watch, name="watch-launcher", daemon=True).start()


def stop_watching() -> None:
    """End the watch (the stage is done: a launcher that ends now stops nothing)."""
    _STOP.set()
    _STARTED[0] = False
