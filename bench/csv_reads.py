"""What reading the project's large CSVs costs: the `inputs` stage on a labels CSV of many rows
(peak resident memory and wall time of its own process, under GNU `/usr/bin/time -v`), and the
openface_csv source's reader on one OpenFace FeatureExtraction CSV (seconds a file).

    python bench/csv_reads.py inputs --rows 2000000 --videos 1000
    python bench/csv_reads.py inputs --repo /tmp/old-checkout   # the same file, another commit
    python bench/csv_reads.py openface --frames 300 9000 --repeats 15

Prints a table and writes bench/results/csv_reads_<inputs|openface>.json.

The labels CSV is generated (folder source: video, O, C, E, A, N, subject, split; `--videos`
distinct clips, named in turn, none on disk, as a corpus whose clips are elsewhere) and cached in
bench/results/. `--repo` runs another checkout's stages/inputs.py on the same file: run the two
alternately on a busy machine and compare medians. Goal: the stage's peak does not grow with the
rows (a labels CSV of 10 million rows took 6.1 GB when every record was held; one at a time the
interpreter's ~110 MB); it grows with the distinct files named, whose fingerprints it writes.

The OpenFace CSV is generated in OpenFace 2.2's full layout (714 columns: frame, face_id,
timestamp, confidence, success, gaze, eye landmarks 2D and 3D, pose, face landmarks 2D and 3D,
shape parameters, AUxx_r, AUxx_c; ", " between cells; one face) and read by
personality.datasets_au.read_openface_csv of `--repo` in a process of its own, `--repeats` times;
the median is printed. Goal: one pandas read a file (a second one only to count the faces took
42 ms a file instead of 34 for 300 frames, 0.46 s instead of 0.32 for 9000).
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
sys.path.insert(0, str(REPO))
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


OPENFACE = """
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from personality.datasets_au import read_openface_csv
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    table, facts = read_openface_csv(Path(sys.argv[2]))
    times.append(time.perf_counter() - t0)
print(json.dumps({"rows": len(table), "n_faces": facts["n_faces"],
                  "median_s": statistics.median(times), "times_s": times}))
"""


def openface_columns() -> list[str]:
    """OpenFace 2.2 FeatureExtraction's 714 columns, in its order."""
    from personality.schemas import AU_INTENSITY, AU_PRESENCE

    eye = [f"eye_lmk_{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(56)]
    face = [f"{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(68)]
    return ["frame", "face_id", "timestamp", "confidence", "success",
            *(f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"), "gaze_angle_x", "gaze_angle_y",
            *eye, *(f"pose_{a}" for a in ("Tx", "Ty", "Tz", "Rx", "Ry", "Rz")), *face,
            "p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty", *(f"p_{i}" for i in range(34)),
            *AU_INTENSITY, *AU_PRESENCE[:-1], "AU28_c", AU_PRESENCE[-1]]  # AU28: presence only


def openface_csv(frames: int) -> Path:
    """A one-face OpenFace CSV of `frames` frames at 30 fps, values as OpenFace prints them."""
    path = RESULTS / f"openface_{frames}.csv"
    if path.exists():
        return path
    RESULTS.mkdir(parents=True, exist_ok=True)
    columns = openface_columns()
    rng = random.Random(0)
    with open(path.with_suffix(".tmp"), "w") as f:
        f.write(", ".join(columns) + "\n")
        for i in range(frames):
            ok = int(rng.random() > 0.02)
            cells = [str(i + 1), "0", f"{i / 30:.3f}", f"{0.98 * ok:g}", str(ok)]
            cells += [f"{rng.uniform(-300, 600):.6g}" for _ in columns[5:-35]]
            cells += [f"{rng.uniform(0, 5) * ok:.2f}" for _ in range(17)]
            cells += [f"{float(rng.random() > 0.5) * ok:.1f}" for _ in range(18)]
            f.write(", ".join(cells) + "\n")
    path.with_suffix(".tmp").rename(path)
    return path


def bench_openface(frames: int, repeats: int, repo: Path) -> dict:
    """Seconds a file of `repo`'s openface_csv reader on a generated CSV of `frames` frames."""
    path = openface_csv(frames)
    done = subprocess.run([sys.executable, "-c", OPENFACE, str(repo), str(path), str(repeats)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"frames": frames, "columns": len(openface_columns()), "repo": str(repo),
            "megabytes": round(path.stat().st_size / 1e6, 1), **out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    one = sub.add_parser("inputs", help="the inputs stage on a labels CSV of many rows")
    one.add_argument("--rows", type=int, default=2_000_000)
    one.add_argument("--videos", type=int, default=1000, help="distinct clips the rows name")
    one.add_argument("--repo", type=Path, default=REPO, help="the checkout whose stage runs")
    two = sub.add_parser("openface", help="the openface_csv source's reader on one OpenFace CSV")
    two.add_argument("--frames", type=int, nargs="+", default=[300, 9000])
    two.add_argument("--repeats", type=int, default=15)
    two.add_argument("--repo", type=Path, default=REPO, help="the checkout whose reader runs")
    args = ap.parse_args(argv)
    if args.what == "inputs":
        rows = [bench_inputs(args.rows, args.videos, args.repo.resolve())]
    else:
        rows = [bench_openface(n, args.repeats, args.repo.resolve()) for n in args.frames]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"csv_reads_{args.what}.json"
    out_path.write_text(json.dumps(rows, indent=2) + "\n")
    import pandas as pd  # the table only

    print(pd.DataFrame(rows).to_string(index=False))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
