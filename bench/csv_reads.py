"""What reading the project's large CSVs costs: the `inputs` stage on a labels CSV of many rows
(peak resident memory and wall time of its own process, under GNU `/usr/bin/time -v`).

    python bench/csv_reads.py inputs --rows 2000000 --videos 1000
    python bench/csv_reads.py inputs --repo /tmp/old-checkout   # the same file, another commit

The labels CSV is generated (folder source: video, O, C, E, A, N, subject, split; `--videos`
distinct clips, named in turn, none on disk, as a corpus whose clips are elsewhere) and cached in
bench/results/. `--repo` runs another checkout's stages/inputs.py on the same file: run the two
alternately on a busy machine and compare medians. Goal: the stage's peak does not grow with the
rows (a labels CSV of 10 million rows took 6.1 GB when every record was held; one at a time the
interpreter's ~110 MB); it grows with the distinct files named, whose fingerprints it writes.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

INPUTS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from stages import inputs
root = Path(sys.argv[3])
(root / "data").mkdir(parents=True, exist_ok=True)
inputs.run({"source": "folder", "folder": {"labels": sys.argv[2]}}, root)
"""


def labels_csv(rows: int, videos: int) -> Path:
    """A folder-source labels CSV of `rows` rows naming `videos` distinct clips (cached)."""
    path = RESULTS / f"labels_{rows}_{videos}.csv"
    if path.exists():
        return path
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with open(path.with_suffix(".tmp"), "w") as f:
        f.write("video,O,C,E,A,N,subject,split\n")
        for i in range(rows):
            j = i % videos
            traits = ",".join(f"{rng.random():.6f}" for _ in range(5))
            f.write(f"clips/s{j // 10:07d}/v{j:08d}.mp4,{traits},s{j // 10:07d},"
                    f"{'test' if i % 5 == 0 else 'train'}\n")
    path.with_suffix(".tmp").rename(path)
    return path


def time_v(cmd: list[str]) -> dict:
    """Wall seconds and GNU time's maximum resident set size of `cmd` (one process)."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(int(rss.group(1)) / 1000, 1)}


def bench_inputs(rows: int, videos: int, repo: Path) -> dict:
    """The inputs stage of `repo` on the generated labels CSV, in a process of its own."""
    csv = labels_csv(rows, videos)
    with tempfile.TemporaryDirectory() as root:
        result = time_v([sys.executable, "-c", INPUTS, str(repo), str(csv), root])
        n_files = json.loads((Path(root) / "data" / "inputs.json").read_text())["n_files"]
    return {"rows": rows, "videos": videos, "repo": str(repo), "n_files": n_files, **result}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    one = sub.add_parser("inputs", help="the inputs stage on a labels CSV of many rows")
    one.add_argument("--rows", type=int, default=2_000_000)
    one.add_argument("--videos", type=int, default=1000, help="distinct clips the rows name")
    one.add_argument("--repo", type=Path, default=REPO, help="the checkout whose stage runs")
    args = ap.parse_args(argv)
    out = bench_inputs(args.rows, args.videos, args.repo.resolve())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
