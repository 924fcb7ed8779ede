"""README's SLURM recipe (dask-jobqueue): its job script run here as on a node, or through SLURM.

    .venv/bin/python bench/cluster_jobqueue.py             # prints a table, writes
                                                           # bench/results/cluster_jobqueue.json
    .venv/bin/python bench/cluster_jobqueue.py --videos 12 --workers 2
    .venv/bin/python bench/cluster_jobqueue.py --sbatch    # through this machine's SLURM

README ("Running the front-end on a cluster") gives a `cluster.py` for a login node: a
`SLURMCluster` whose job script starts with `cd` to the shared checkout, `export PYTHONPATH=$PWD`
and `source .venv/bin/activate`, then `PERSONALITY_CLUSTER=<its scheduler> dvc repro aus audio`.
Here the same `SLURMCluster(...)` (sized for this machine) writes its job script, and that script
runs with bash in a bare environment (PATH and HOME only; no .pyc written), as sbatch would run
it on a node (its #SBATCH lines are comments to bash). The frames, faces and audio stages then
run on a synthetic dataset through `PERSONALITY_CLUSTER` and, as a reference, with
`base.workers: 1` (the local pool); their artifacts must be the same bytes. Reports how long the
job's workers took to join, each run's wall time, and whether the bytes agree
(tests/test_bench.py runs it on 4 clips). With `--sbatch` the cluster submits the job itself
(`cluster.scale(jobs=1)`, sbatch), as on a login node, and then two more clusters' jobs are
cancelled mid-stage: README's (the stage stops after its wait for a worker) and one of one
worker per job kept by `adapt` (the jobs are replaced; the same bytes). docs/scaling.md gives
a single-node SLURM (Debian's slurm-wlm) to try it on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "results" / "cluster_jobqueue.json"
STAGES = ("frames", "faces", "audio")


def make_dataset(root: Path, n_videos: int) -> Path:
    """The real ingest stage (synthetic source): `n_videos` clips of 4-6 s, 320x240."""
    from personality.common import BaseParams
    from stages.ingest import IngestParams, SyntheticParams, run

    synthetic = SyntheticParams(n_videos=n_videos, n_subjects=max(3, n_videos // 2),
                                min_seconds=4.0, max_seconds=6.0, width=320, height=240)
    run(IngestParams(source="synthetic", split=[0.34, 0.33, 0.33], synthetic=synthetic),
        BaseParams(workers=1), root=root)
    return root


def front_end(src: Path, dst: Path) -> tuple[float, dict[str, str]]:
    """(wall seconds, md5 of every file the three stages wrote) for a copy of `src` in `dst`."""
    from personality.common import BaseParams
    from stages import audio, faces, frames

    (dst / "data").mkdir(parents=True)
    shutil.copy(src / "data" / "clips.parquet", dst / "data")
    shutil.copytree(src / "data" / "videos", dst / "data" / "videos")
    start, base = time.perf_counter(), BaseParams(workers=1)
    frames.run(frames.FramesParams(fps=5), base, root=dst)
    faces.run(faces.FacesParams(), base, root=dst)
    audio.run(audio.AudioParams(), base, root=dst)
    seconds = time.perf_counter() - start
    return seconds, {str(p.relative_to(dst)): hashlib.md5(p.read_bytes()).hexdigest()
                     for name in STAGES for p in sorted((dst / "data" / name).rglob("*"))
                     if p.is_file()}


def readme_cluster(workers: int, **extra):
    """README's SLURMCluster, sized for `workers` one-thread workers on one node."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(cores=workers, processes=workers, memory=f"{4 * workers}GB",
                        walltime="02:00:00",
                        job_script_prologue=[f"cd {REPO}", "export PYTHONPATH=$PWD",
                                             "source .venv/bin/activate"], **extra)


def joined_s(cluster, workers: int) -> float:
    """Seconds until `workers` workers of `cluster` joined its scheduler (its job started)."""
    from distributed import Client

    with Client(cluster.scheduler_address) as client:
        start = time.perf_counter()
        client.wait_for_workers(workers, timeout=300)
        return time.perf_counter() - start


def on_cluster(cluster, src: Path, dst: Path) -> tuple[float, dict[str, str]]:
    """front_end with PERSONALITY_CLUSTER naming `cluster`'s scheduler."""
    os.environ["PERSONALITY_CLUSTER"] = cluster.scheduler_address
    try:
        return front_end(src, dst)
    finally:
        os.environ.pop("PERSONALITY_CLUSTER", None)


def through(cluster, src: Path, work: Path, workers: int) -> dict:
    """The stages on `cluster` once its job's `workers` joined (its job started by the caller)."""
    joined = joined_s(cluster, workers)
    seconds, digests = on_cluster(cluster, src, work / "cluster")
    return {"workers_joined_s": round(joined, 2), "seconds": round(seconds, 2),
            "digests": digests}


def on_the_job_script(src: Path, work: Path, workers: int) -> dict:
    """The stages through README's SLURMCluster, its job script run here by bash."""
    cluster = readme_cluster(workers)
    script = work / "job.sh"
    script.write_text(cluster.job_script())
    node = subprocess.Popen(["bash", str(script)], cwd="/", start_new_session=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
                                 "PYTHONDONTWRITEBYTECODE": "1"})  # no .pyc in the checkout
    try:
        return {"job_script": script.read_text(), **through(cluster, src, work, workers)}
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(60)
        cluster.close()


def slurm_cluster(work: Path, workers_per_job: int):
    """README's SLURMCluster for a real SLURM: its jobs export no variable of this process but
    PYTHONDONTWRITEBYTECODE (a job starts from the user's login environment), so that, as in
    the bash run, the job script's prologue alone makes the project importable on the node."""
    (work / "slurm").mkdir(exist_ok=True)
    return readme_cluster(workers_per_job, log_directory=str(work / "slurm"),
                          job_extra_directives=["--export=PYTHONDONTWRITEBYTECODE=1"])


def on_slurm(src: Path, work: Path, workers: int) -> dict:
    """The stages through README's SLURMCluster: `cluster.scale(jobs=1)` submits its job."""
    cluster = slurm_cluster(work, workers)
    try:
        cluster.scale(jobs=1)
        version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True)
        return {"job_script": cluster.job_script(), "slurm": version.stdout.strip(),
                **through(cluster, src, work, workers)}
    finally:
        cluster.close()  # scancels its job


def cancelled_mid_stage(cluster, workers: int, src: Path, dst: Path, after_s: float = 3.0,
                        wait_s: float = 10.0) -> dict:
    """The stages on `cluster` (its jobs asked for), whose jobs are cancelled (scancel) `after_s`
    into them, as a walltime or a preemption would end them: how the stages end, when, and the
    digests of what they wrote (None unless they finished), the map waiting `wait_s` for a
    worker (PERSONALITY_CLUSTER_NO_WORKER_S; 600 s by default)."""
    os.environ["PERSONALITY_CLUSTER_NO_WORKER_S"] = str(wait_s)
    cancel, digests = None, None
    try:
        joined_s(cluster, workers)
        ids = [job.job_id for job in cluster.workers.values()]  # this cluster's jobs, no other
        cancel = threading.Timer(after_s, subprocess.run, (["scancel", *ids],))
        start = time.perf_counter()
        cancel.start()
        try:
            _, digests = on_cluster(cluster, src, dst)
            ended = "finished"
        except Exception as exc:  # noqa: BLE001 - what the stage raised is the figure
            ended = f"{type(exc).__name__}: {exc}"
        return {"jobs": len(ids), "cancelled_after_s": after_s, "no_worker_s": wait_s,
                "ended": ended, "ended_after_s": round(time.perf_counter() - start, 1),
                "digests": digests}
    finally:
        if cancel is not None:
            cancel.cancel()
        os.environ.pop("PERSONALITY_CLUSTER_NO_WORKER_S", None)
        cluster.close()


def cancellations(src: Path, work: Path, workers: int) -> dict:
    """README's job of `workers` workers (`scale`: an ended job is not replaced), and the
    variant of one worker per job kept at `workers` jobs by `adapt` (dask-jobqueue replaces an
    ended one-worker job), each cancelled mid-stage."""
    scaled = slurm_cluster(work, workers)
    scaled.scale(jobs=1)
    out = {"scaled": cancelled_mid_stage(scaled, workers, src, work / "scaled")}
    adaptive = slurm_cluster(work, 1)
    adaptive.adapt(minimum_jobs=workers, maximum_jobs=workers)
    # its replacement jobs start ~15 s after the loss here: the map waits long enough for them
    out["adaptive"] = cancelled_mid_stage(adaptive, workers, src, work / "adaptive", wait_s=120)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="the job's one-thread workers")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--sbatch", action="store_true",
                    help="submit the job to this machine's SLURM (sbatch) instead of bash")
    args = ap.parse_args(argv)
    import dask_jobqueue  # pinned in requirements.txt

    os.environ.pop("PERSONALITY_CLUSTER", None)
    with tempfile.TemporaryDirectory(prefix="jobqueue-") as tmp:
        work = Path(tmp)
        src = make_dataset(work / "src", args.videos)
        local_s, local = front_end(src, work / "local")
        job = (on_slurm if args.sbatch else on_the_job_script)(src, work, args.workers)
        if args.sbatch:
            job["cancelled"] = cancellations(src, work, args.workers)
            for run in job["cancelled"].values():
                run["same_bytes"] = run.pop("digests") == local
    same = job.pop("digests") == local
    print(f"\n{args.videos} synthetic clips (4-6 s), frames + faces + audio, dask-jobqueue "
          f"{dask_jobqueue.__version__}\n")
    print("| run | wall s | workers joined s | artifacts |\n|---|---|---|---|")
    print(f"| base.workers 1 (local pool) | {local_s:.1f} | - | {len(local)} files |")
    how = f"submitted to {job['slurm']} (sbatch)" if args.sbatch else "run by bash"
    print(f"| README's SLURM job script, {how}, {args.workers} workers | {job['seconds']:.1f} | "
          f"{job['workers_joined_s']:.1f} | {'same bytes' if same else 'DIFFERENT bytes'} |")
    for how, gone in job.get("cancelled", {}).items():
        print(f"\n{how}: {gone['jobs']} job(s) cancelled {gone['cancelled_after_s']:.0f} s into "
              f"the stages, the map waiting up to {gone['no_worker_s']:.0f} s for a worker: "
              f"{gone['ended']} after {gone['ended_after_s']:.1f} s"
              + (", the same bytes" if gone["same_bytes"] else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "videos": args.videos, "workers": args.workers, "local_s": round(local_s, 2),
        "same_bytes": same, "dask_jobqueue": dask_jobqueue.__version__, "sbatch": args.sbatch,
        **job}, indent=2))
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
