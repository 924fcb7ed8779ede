"""What reading each video's probe in a worker costs (personality/probing.py): ingest's folder,
ChaLearn and UDIVA sources, and predict, read FFmpeg's first look at a file in a worker process, so
that a file that crashes or hangs the decoder costs the worker, not the stage. This times that
against the same probes in this process, on the same files, alternately.

    python bench/probe.py                          # data/videos of a `make run` checkout
    python bench/probe.py --videos /data/clips --limit 500 --rounds 3

Prints a table and writes bench/results/probe.json. Goal: the worker adds a few milliseconds a file
(one round trip to a process started once), small beside a probe's own decode.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def timed(probe, videos: list[Path]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    facts = [probe(v) for v in videos]
    return time.perf_counter() - start, facts


def main(argv: list[str] | None = None) -> dict:
    from personality.probing import WorkerProbe, probe_facts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=REPO / "data" / "videos")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    videos = sorted(p for p in args.videos.rglob("*") if p.suffix.lower() in (".mp4", ".mkv",
                                                                               ".webm", ".avi",
                                                                               ".mov"))
    videos = videos[:args.limit]
    if not videos:
        raise SystemExit(f"no video under {args.videos}: run `make run` first, or give --videos")
    here, there, start_s = [], [], []
    for _ in range(args.rounds):  # alternately: a busy machine slows both alike
        seconds, expected = timed(probe_facts, videos)
        here.append(seconds)
        with WorkerProbe() as probe:
            begun = time.perf_counter()
            probe(videos[0])  # the worker's start (an interpreter, the imports), once
            start_s.append(time.perf_counter() - begun)
            seconds, got = timed(probe, videos)
        there.append(seconds)
        if got != expected:
            raise SystemExit("the worker's probe gave other facts than this process's")
    result = {"videos": len(videos), "folder": str(args.videos), "rounds": args.rounds,
              "in_process_s": statistics.median(here), "worker_s": statistics.median(there),
              "worker_start_s": statistics.median(start_s)}
    result["overhead_ms_per_file"] = 1000 * (result["worker_s"] - result["in_process_s"]) \
        / len(videos)
    print(f"| {len(videos)} videos, median of {args.rounds} | seconds |\n|---|---|")
    print(f"| probes in this process | {result['in_process_s']:.2f} |")
    print(f"| probes in one kept worker | {result['worker_s']:.2f} |")
    print(f"| the worker's start (once) | {result['worker_start_s']:.2f} |")
    print(f"| added per file | {result['overhead_ms_per_file']:.1f} ms |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
