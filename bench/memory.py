"""Peak memory of the front-end on a long clip: a 10-minute 1080p video through frames, faces,
aus and audio, each stage in its own process under `/usr/bin/time -v`, then `predict` on it.

    python bench/memory.py                 # prints a table, writes bench/results/memory.json
    python bench/memory.py --minutes 2     # a shorter clip

The clip: 15 s of the synthetic renderer at 1920x1080, 25 fps, H.264 + AAC (one talking face),
repeated by remuxing its packets (no re-encode) up to the length asked; cached in bench/results/.
Each stage runs with one worker: a spawned process (a per-video stage runs its videos in a worker
even at `workers: 1`, so that a crash costs one video), whose maximum resident set size is what one
worker of the stage needs for this video ("Maximum resident set size" of GNU time: the largest
process's). `predict` runs the whole front-end (in a worker process of its own) and the best model
on validation (it needs a trained pipeline: make run). Every step's peak over its whole process
tree is sampled too, every 0.5 s (psutil: the sum of the processes' resident sets, and of their
proportional set sizes, which count a shared page once).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/frontend.py

RESULTS = REPO / "bench" / "results"
W, H, FPS, PIECE_S = 1920, 1080, 25.0, 15.0
STAGES = ("frames", "faces", "aus", "audio")


def repeat_clip(piece: Path, out: Path, copies: int) -> Path:
    """`copies` x `piece` in one file: its packets muxed again with shifted times (no
    re-encode; every copy starts on the piece's first key frame)."""
    import av

    with av.open(str(piece)) as src:
        kept = [s for s in src.streams if s.type in ("video", "audio")]
        packets = [(p.stream.index, bytes(p), p.pts, p.dts, p.duration, p.is_keyframe, p.time_base)
                   for p in src.demux(*kept) if p.dts is not None]
        with av.open(str(out), "w") as dst:
            streams = {s.index: dst.add_stream_from_template(s) for s in kept}
            span = {i: _span([pts for j, _, pts, *_ in packets if j == i]) for i in streams}
            for k in range(copies):
                for i, data, pts, dts, dur, key, time_base in packets:
                    packet = av.Packet(data)
                    packet.stream, packet.time_base = streams[i], time_base
                    packet.pts, packet.dts = pts + k * span[i], dts + k * span[i]
                    packet.duration, packet.is_keyframe = dur, key
                    dst.mux(packet)
    return out


def _span(pts: list[int]) -> int:
    """A stream's length in its time base: first to last timestamp plus one step (packets may
    carry no duration), so that copy k + 1 starts one step after copy k ends."""
    ordered = np.sort(np.asarray(pts))
    return int(ordered[-1] - ordered[0] + np.median(np.diff(ordered)))


def long_clip(minutes: float) -> Path:
    out = RESULTS / f"long_{minutes:g}min_1080p.mp4"
    if out.exists():
        return out
    RESULTS.mkdir(parents=True, exist_ok=True)
    from frontend import make_clip  # bench/frontend.py: the same renderer, at 1080p here

    piece = make_clip(RESULTS / "long_piece_1080p.mp4", PIECE_S, FPS, W, H)
    tmp = out.with_suffix(".part.mp4")
    repeat_clip(piece, tmp, int(round(minutes * 60 / PIECE_S)))
    return tmp.replace(out)


def run_stage(name: str, root: Path) -> None:
    """One stage on the clip under `root`, one worker (this process)."""
    from personality.common import BaseParams, load_params
    from stages import audio, aus, faces, frames

    module = {"frames": frames, "faces": faces, "aus": aus, "audio": audio}[name]
    cls = {"frames": frames.FramesParams, "faces": faces.FacesParams, "aus": aus.AusParams,
           "audio": audio.AudioParams}[name]
    module.run(load_params(name, cls, REPO / "params.yaml"), BaseParams(workers=1), root=root)


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under GNU time -v: wall seconds, the maximum resident set size of its largest
    process (GNU time's, exact) and the peak of the whole process tree's memory (sampled:
    predict's front end runs in a worker process beside predict's own)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=REPO, stderr=err,
                                stdout=subprocess.DEVNULL, text=True)
        tree = sample_tree_memory(proc)
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024, 1),
            **tree}


def sample_tree_memory(proc: subprocess.Popen, every_s: float = 0.5) -> dict:
    """Until `proc` (GNU time) exits: the largest sum, over the processes it started, of their
    resident sets (shared library pages counted in each) and of their proportional set sizes
    (shared pages split between the processes sharing them: what the tree costs), in MiB, and
    the most processes seen at once. A peak shorter than `every_s` can be missed."""
    import psutil

    peak_rss = peak_pss = most = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        rss = pss = alive = 0
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                info = child.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, pss, alive = rss + info.rss, pss + info.pss, alive + 1
        peak_rss, peak_pss, most = max(peak_rss, rss), max(peak_pss, pss), max(most, alive)
        time.sleep(every_s)
    mib = 1024 * 1024
    return {"tree_peak_rss_mib": round(peak_rss / mib, 1),
            "tree_peak_pss_mib": round(peak_pss / mib, 1), "tree_processes": most}


def manifest_for(clip: Path, root: Path) -> None:
    import pandas as pd

    from personality.schemas import TRAITS
    from stages.ingest import probe_video, write_manifest

    facts = probe_video(clip)
    write_manifest(pd.DataFrame([{
        "video_id": "long", "path": str(clip), "split": "test", "subject_id": "long",
        "dataset": "bench", **{t: np.nan for t in TRAITS}, **facts, "label_scale": "unit"}]), root)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", nargs="+", default=[*STAGES, "predict"],
                    choices=[*STAGES, "predict"], help="default: all (rows of an earlier run of "
                    "the other steps are kept from bench/results/memory.json)")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child's mode
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args.root)
    clip = long_clip(args.minutes)
    saved = RESULTS / "memory.json"
    earlier = json.loads(saved.read_text()) if saved.exists() else {}
    rows, runs = earlier.get("rows", {}), earlier.get("runs", [])
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        root = Path(tmp)
        manifest_for(clip, root)
        for step in args.steps:
            cmd = ([sys.executable, "-m", "stages.predict", str(clip), "--out",
                    str(root / "predict")] if step == "predict" else
                   [sys.executable, __file__, "--stage", step, "--root", str(root)])
            rows[step] = {**timed(cmd), "load_average_after": round(os.getloadavg()[0], 1)}
            print(step, rows[step], flush=True)
            runs.append({"step": step, "minutes": args.minutes,
                         "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **rows[step]})
    result = {"clip": {"minutes": args.minutes, "width": W, "height": H, "fps": FPS,
                       "bytes": clip.stat().st_size}, "rows": rows,
              "runs": runs}  # every step's every run, oldest first: `rows` keeps the newest
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2))
    print("| step | wall s | peak RSS MiB, largest process | processes | tree peak: RSS sum | "
          "PSS sum |\n|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']} | {row['peak_rss_mib']} | "
              f"{row.get('tree_processes', '')} | {row.get('tree_peak_rss_mib', '')} | "
              f"{row.get('tree_peak_pss_mib', '')} |")


if __name__ == "__main__":
    main()
