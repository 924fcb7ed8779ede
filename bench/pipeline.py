"""How long `make run`'s pipeline takes: scripts/repro.py (every stage) in a fresh clone of HEAD.

    .venv/bin/python bench/pipeline.py           # ~10-15 min on 2 cores; needs `make install`
    .venv/bin/python bench/pipeline.py --keep    # keep the clone (its path is printed)

What a newcomer's `make run` does after the install: a `git clone` of the committed HEAD (your
uncommitted changes are not in it) into a temporary folder, then `make run`'s command there,
scripts/repro.py (`dvc repro`, with the trainings two at a time on 2 cores), every stage from
scratch with this environment's .venv, its numba cache and the installed face model; `--jobs 1`
times a plain `dvc repro` instead. The clone has its own DVC cache and mlflow.db: nothing in this
checkout changes. Each stage's seconds come from the moment DVC announces it ("Running stage
'x':") to the next announcement; the trainings run side by side count from scripts/repro.py's
"Running N stages" line to the next announcement, and each one's own seconds (which overlap) are
listed apart.

This machine's speed moves by up to ~1.8x within a day (docs/scaling.md, How long `make run`
takes), so the bench also times a fixed reference workload (a small CNN's training steps on one
torch thread) before and after: compare runs by their reference seconds before comparing their
totals.

Prints a table and writes bench/results/pipeline.json; the goal (issue #13) is 10 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 600.0
RUNNING = re.compile(r"Running stage '([^']+)'")
PARALLEL = re.compile(r"^Running \d+ stages?, \d+ at a time")  # scripts/repro.py, step 2
LANE_DONE = re.compile(r"^(\S+): (ran|up to date|FAILED) \((\d+) s\)")  # one parallel stage
# the README's grouping of stages, in pipeline order
GROUPS = (("ingest", ("inputs", "ingest")),
          ("front-end", ("audio", "frames", "faces", "aus", "augment", "functionals")),
          ("trainings", ("train@",)),
          ("retrain", ("retrain",)),
          ("deploy + evaluate + register", ("deploy", "evaluate", "register")),
          ("explain", ("explain",)))


def stage_seconds(events: list[tuple[float, str]], end: float) -> dict[str, float]:
    """{stage: seconds} from (time, stage) announcements in order; the last runs until `end`; a
    stage announced twice (inputs, which runs on every repro) sums its two spans."""
    times = [t for t, _ in events] + [end]
    out: dict[str, float] = {}
    for i, (t, name) in enumerate(events):
        out[name] = out.get(name, 0.0) + times[i + 1] - t
    return out


def group_seconds(stages: dict[str, float]) -> dict[str, float]:
    """Seconds per README group (a stage in no group is its own row)."""
    out: dict[str, float] = {}
    for name, seconds in stages.items():
        group = next((g for g, members in GROUPS
                      if any(name == m or (m.endswith("@") and name.startswith(m))
                             for m in members)), name)
        out[group] = out.get(group, 0.0) + seconds
    return out


def reference_seconds(steps: int = 40) -> float:
    """A fixed CPU workload: training steps of a small CNN on one torch thread, in a child
    process (this one's thread settings stay untouched)."""
    code = (
        "import time, torch\n"
        "torch.set_num_threads(1); torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),\n"
        "    torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),\n"
        "    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))\n"
        "opt = torch.optim.SGD(net.parameters(), lr=0.01)\n"
        "x = torch.randn(32, 3, 64, 64)\n"
        "t0 = time.perf_counter()\n"
        f"for _ in range({steps}):\n"
        "    loss = net(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()\n"
        "print(time.perf_counter() - t0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 3)


def announcement(line: str) -> tuple[str, str] | None:
    """("event", stage) for a stage that starts (the side-by-side trainings as one event,
    "train@ (side by side)"), ("lane", "<stage> <seconds>") for one of them that ended."""
    if match := RUNNING.search(line):
        return "event", match.group(1)
    if PARALLEL.search(line):
        return "event", "train@ (side by side)"
    if (match := LANE_DONE.search(line)) and match.group(2) == "ran":
        return "lane", f"{match.group(1)} {match.group(3)}"
    return None


def repro_in_clone(clone: Path, jobs: int) -> tuple[list[tuple[float, str]], float, dict]:
    """scripts/repro.py in `clone`, streaming its output: the stage announcements (seconds since
    the start, stage), the seconds at the end and {stage: seconds} of the side-by-side ones. A
    failed run raises with its last lines."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NUMBA_CACHE_DIR": str(ROOT / ".numba_cache"), "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DVC_ROOT", None)  # set inside `dvc exp run`: the clone's stages would log here
    events: list[tuple[float, str]] = []
    lanes: dict[str, float] = {}
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "scripts/repro.py", "--jobs", str(jobs)], cwd=clone,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as proc:
        tail: deque[str] = deque(maxlen=40)  # the last lines, for the error of a failed repro
        for line in proc.stdout:
            for part in line.split("\r"):  # tqdm's bar redraws itself with carriage returns
                found = announcement(part.strip())
                if found and found[0] == "event":
                    events.append((time.perf_counter() - t0, found[1]))
                    print(f"{events[-1][0]:7.1f} s  {found[1]}", flush=True)
                elif found:
                    stage, seconds = found[1].split()
                    lanes[stage] = float(seconds)
            tail.append(line)
    end = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/repro.py failed in {clone} (exit {proc.returncode}):\n"
                           + "".join(tail))
    return events, end, lanes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    parser.add_argument("--jobs", type=int, default=0,
                        help="scripts/repro.py --jobs (default: its own; 1: plain dvc repro)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    before = reference_seconds()
    workdir = Path(tempfile.mkdtemp(prefix="pipeline_bench_"))
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        events, end, lanes = repro_in_clone(clone, args.jobs)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    after = reference_seconds()
    stages = stage_seconds(events, end)
    groups = group_seconds(stages)
    report = {"commit": commit, "started": started, "total_s": round(end, 1),
              "groups_s": {g: round(s, 1) for g, s in groups.items()},
              "stages_s": {n: round(s, 1) for n, s in stages.items()},
              "side_by_side_s": lanes, "jobs": args.jobs or "default",
              "reference_s": {"before": before, "after": after},
              "goal_s": GOAL_SECONDS, "met": end <= GOAL_SECONDS,
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}}
    print("\n| part | seconds | minutes |\n|---|---:|---:|")
    for group, seconds in groups.items():
        print(f"| {group} | {seconds:.0f} | {seconds / 60:.1f} |")
    print(f"| **total** | **{end:.0f}** | **{end / 60:.1f}** |\n")
    if lanes:
        print("side by side (each one's own seconds): "
              + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in lanes.items()))
    print(f"Goal <= {GOAL_SECONDS / 60:.0f} min: {'met' if report['met'] else 'not met'}. "
          f"Reference workload: {before:.2f} s before, {after:.2f} s after (commit {commit[:8]}"
          f"{'; clone kept at ' + str(clone) if args.keep else ''}).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
