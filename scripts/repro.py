"""`make run`'s pipeline: `dvc repro`, with the one-core training stages run side by side.

    .venv/bin/python scripts/repro.py             # what `make run` does (2 trainings at once)
    .venv/bin/python scripts/repro.py --jobs 1    # plain `dvc repro`, one stage at a time
    .venv/bin/python scripts/repro.py --dry       # print the plan, run nothing

DVC runs one stage at a time. Every stage up to `functionals` and after the trainings already uses
every core (base.workers processes), but each `train@<model>` trains on one torch thread
(`train.threads: 1`, so that the numbers do not depend on the thread count) and leaves the other
core idle. DVC's own documentation ("Parallel stage execution", `dvc repro`) allows several
`dvc repro` of independent stages at once: each holds its outputs' read/write lock while its
command runs and takes the repository lock only around it (`--wait-for-lock`: wait for it rather
than fail after 3 s). So this runs, in the repository of the current folder:

1. `dvc repro <the stages the trainings depend on>` (ingest ... functionals), one at a time;
2. the `train@<model>` stages that `dvc status` lists, `--jobs` at a time, the longest first
   (by the seconds they took last time here, else in `train.models` order), each
   `dvc --wait-for-lock repro --single-item train@<model>`, its output in
   .dvc/tmp/repro/<stage>.log (the tail is printed if it fails);
3. `dvc repro`: the rest (retrain, deploy, evaluate, register, explain), the trainings up to date.

The outputs are the bytes `dvc repro` gives: each training runs in its own process either way, on
one thread, from the same seed (the pipeline bench's fresh clone reproduced every output of
dvc.lock byte for byte: docs/scaling.md, How long `make run` takes). The MLflow store, its
experiment and the pipeline's parent run are made before the trainings start, so that two of them
never create one at once. A failed training starts no new one; the running ones finish (committed
by DVC) and the exit code is 1. Ctrl-C, SIGTERM or a hang-up send SIGINT to every running stage's
process group (DVC then commits nothing; the stages write their outputs atomically), SIGKILL after
a grace of a minute to what is left, and the exit code is 130: nothing is left running. `--jobs`
defaults to the cores this process may use (its CPU affinity and cgroup quota) divided by
`train.threads`, at most 4 (memory: each training holds its inputs); `train.threads: 0` (torch's
own choice, every core) gives 1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import yaml

PARALLEL_PREFIX = "train@"  # stages that use one core each and may run side by side
LOG_DIR = Path(".dvc") / "tmp" / "repro"
SECONDS_FILE = LOG_DIR / "seconds.json"  # {stage: seconds of its last run here}: the order
GRACE_SECONDS = 60.0  # after Ctrl-C, how long running stages get to stop before SIGKILL
MAX_DEFAULT_JOBS = 4
# Signals received. The handler only records them; the loops below look between polls. A handler
# that raised could land inside Popen (after the fork) or inside `interrupt` and orphan a stage.
STOP: list[int] = []


class Interrupted(Exception):
    """A recorded signal, raised where every started process is known."""


def _record_signal(signum, frame) -> None:
    STOP.append(signum)


def check_stop() -> None:
    if STOP:
        raise Interrupted


def dvc_command() -> list[str]:
    """`dvc` of this interpreter's environment (the venv), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return [str(local) if local.exists() else "dvc"]


def spawn(root: Path, args: list[str], log: Path | None = None) -> subprocess.Popen:
    """`dvc <args>` in its own process group (a signal to this script does not reach it: only
    `interrupt` does, once), its output to `log` or to this terminal."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("w")) if log else None
        return subprocess.Popen([*dvc_command(), *args], cwd=root, stdout=out,
                                stderr=subprocess.STDOUT if log else None,
                                start_new_session=True)


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (a zombie waiting for a reaper does not)."""
    procfs = Path("/proc")
    if not procfs.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in procfs.glob("[0-9]*/stat"):
        try:  # fields after the command's ")": state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def interrupt(procs: list[subprocess.Popen]) -> None:
    """SIGINT to each process's group (as Ctrl-C would: DVC's stage command stops and DVC commits
    nothing), SIGKILL to what is still there after the grace; returns when every group is gone.
    Signals meanwhile are only recorded, so this cannot be cut short."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
                os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    for proc in procs:
        while (proc.poll() is None or group_alive(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)  # dvc may exit before its stage's command: wait for the group
        if proc.poll() is None or group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def plan(root: Path) -> tuple[list[str], list[str]]:
    """(upstream, parallel): the stages the parallel ones depend on (their names, sorted) and the
    parallel stages (dvc.yaml order). Edges of DVC's graph point from a stage to its deps."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        parallel = [s for s in graph.nodes if s.addressing.startswith(PARALLEL_PREFIX)]
        upstream = set().union(*(nx.descendants(graph, s) for s in parallel)) if parallel else set()
        upstream -= set(parallel)
        return sorted(s.addressing for s in upstream), [s.addressing for s in parallel]


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's limit, which the affinity does not show)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores or 1, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota
    return cores or 1


def default_jobs(root: Path) -> int:
    """Usable cores divided by the torch threads of one training, at most MAX_DEFAULT_JOBS."""
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    threads = int((params.get("train") or {}).get("threads") or 0)
    return max(1, min(MAX_DEFAULT_JOBS, usable_cores() // threads)) if threads > 0 else 1


def longest_first(stages: list[str], seconds: dict[str, float]) -> list[str]:
    """Stages with a known duration, longest first, then the unknown ones in their given order
    (longest-processing-time-first: the last to start are the shortest)."""
    known = sorted((s for s in stages if s in seconds), key=lambda s: -seconds[s])
    return known + [s for s in stages if s not in seconds]


def read_seconds(root: Path) -> dict[str, float]:
    try:
        data = json.loads((root / SECONDS_FILE).read_text())
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # no earlier run here (a fresh clone), or an unreadable file: plain order


def changed(root: Path, stages: list[str]) -> list[str]:
    """Those of `stages` that `dvc status` lists (the others are up to date: no process for them).
    If status fails, all of them: each one's own `dvc repro` then says what is wrong."""
    done = subprocess.run([*dvc_command(), "status", "--json", *stages], cwd=root,
                          capture_output=True, text=True)
    try:
        listed = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        listed = None
    return stages if listed is None else [s for s in stages if s in listed]


def init_tracking(root: Path) -> None:
    """Create the MLflow store, its experiment and this pipeline run's parent run once, before
    parallel stages could each create one (two parents, or two writers of a new SQLite file)."""
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    if not (params.get("train") or {}).get("mlflow", True):
        return
    sys.path.insert(0, str(root))
    from personality import common

    common.init_pipeline_tracking()


class Lanes:
    """Runs stages as `dvc --wait-for-lock repro --single-item <stage>`, at most `jobs` at once,
    each in its own process group (so that a signal reaches it and its stage's command)."""

    def __init__(self, root: Path, stages: list[str], jobs: int):
        self.root, self.jobs = root, jobs
        self.waiting = deque(stages)
        self.running: dict[str, tuple[subprocess.Popen, float]] = {}
        self.done: dict[str, float] = {}  # stage: seconds
        self.failed: list[str] = []

    def start_next(self) -> None:
        while self.waiting and len(self.running) < self.jobs and not self.failed:
            stage = self.waiting.popleft()
            proc = spawn(self.root, ["--wait-for-lock", "repro", "--single-item", stage],
                         log=self.root / LOG_DIR / f"{stage}.log")
            self.running[stage] = (proc, time.perf_counter())

    def reap(self) -> list[str]:
        """Stages that finished since the last call."""
        finished = []
        for stage, (proc, t0) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[stage]
            self.done[stage] = time.perf_counter() - t0
            if proc.returncode != 0:
                self.failed.append(stage)
            finished.append(stage)
        return finished

    def stop(self) -> None:
        """Interrupt every running stage (the others were never started)."""
        interrupt([proc for proc, _ in self.running.values()])
        self.running.clear()


def ran(root: Path, stage: str) -> bool:
    """Whether DVC ran the stage's command (not "didn't change, skipping")."""
    return f"Running stage '{stage}'" in (root / LOG_DIR / f"{stage}.log").read_text(
        errors="replace")


def run_parallel(root: Path, stages: list[str], jobs: int) -> list[str]:
    """Run `stages` on `jobs` lanes with a progress bar; returns the failed stages."""
    from tqdm import tqdm

    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    seconds = read_seconds(root)
    lanes = Lanes(root, longest_first(stages, seconds), jobs)
    print(f"Running {len(stages)} stage{'s' * (len(stages) != 1)}, {jobs} at a time: "
          f"{', '.join(lanes.waiting)}",
          flush=True)  # bench/pipeline.py times this part from this line
    with tqdm(total=len(stages), desc=f"trainings, {jobs} at a time", unit="stage") as bar:
        try:
            while lanes.waiting or lanes.running:
                lanes.start_next()
                if not lanes.running:
                    break  # a failure left stages waiting: they are not started
                if bar.postfix != ", ".join(lanes.running):  # one line per change in a log
                    bar.set_postfix_str(", ".join(lanes.running), refresh=True)
                time.sleep(0.5)
                check_stop()
                for stage in lanes.reap():
                    report_stage(root, lanes, stage, bar, seconds)
        finally:
            lanes.stop()  # after a signal or an error here: nothing is left running
            (root / SECONDS_FILE).write_text(json.dumps(seconds, indent=1, sort_keys=True))
    return lanes.failed


def report_stage(root: Path, lanes: Lanes, stage: str, bar, seconds: dict[str, float]) -> None:
    """One line for a finished stage; its seconds kept for the next run's order if it ran."""
    state = ("FAILED" if stage in lanes.failed else
             "ran" if ran(root, stage) else "up to date")
    bar.write(f"{stage}: {state} ({lanes.done[stage]:.0f} s)")
    if state == "ran":
        seconds[stage] = round(lanes.done[stage], 1)
    bar.update()


def report_failures(root: Path, failed: list[str]) -> None:
    for stage in failed:
        log = root / LOG_DIR / f"{stage}.log"
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"\nstage {stage} failed; its output: {log}\n" + "\n".join(tail), file=sys.stderr)


def dvc_repro(root: Path, *targets: str) -> None:
    """`dvc repro [targets]`, its output on this terminal; exits with its code if it fails."""
    proc = spawn(root, ["repro", *targets])
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            check_stop()
    finally:
        interrupt([proc])  # nothing to do unless a signal came
    if proc.returncode != 0:
        sys.exit(exit_code(proc.returncode))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=0,
                        help="trainings at once (default: cores / train.threads; 1: dvc repro)")
    parser.add_argument("--dry", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    root = Path.cwd()
    jobs = args.jobs or default_jobs(root)
    upstream, parallel = plan(root)
    order = longest_first(parallel, read_seconds(root))
    if args.dry:
        print("dvc repro" if jobs <= 1 or len(parallel) <= 1 else
              f"1. dvc repro {' '.join(upstream)}\n2. those of these that dvc status lists, "
              f"{jobs} at a time: {' '.join(order)}\n3. dvc repro")
        return
    sys.stdout.reconfigure(line_buffering=True)  # in order with the children's lines in a pipe
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _record_signal)
    try:
        run_all(root, upstream, parallel, jobs)
    except Interrupted:
        print("interrupted: no stage left running; `make run` or `dvc repro` goes on from here",
              file=sys.stderr)
        sys.exit(130)


def run_all(root: Path, upstream: list[str], parallel: list[str], jobs: int) -> None:
    if jobs <= 1 or len(parallel) <= 1:
        dvc_repro(root)
        return
    if upstream:
        dvc_repro(root, *upstream)
    to_run = changed(root, parallel)
    if to_run:
        init_tracking(root)
    failed = run_parallel(root, to_run, jobs) if to_run else []
    if failed:
        report_failures(root, failed)
        sys.exit(1)
    dvc_repro(root)


if __name__ == "__main__":
    main()
