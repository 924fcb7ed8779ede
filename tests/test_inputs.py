"""The inputs stage: its fingerprint moves when a label or a video the source reads changes, and
only then; `dvc repro` re-ingests exactly then (tests/test_pipeline_sources.py runs the folder
source through DVC)."""
from __future__ import annotations

import os

from stages import inputs
from tests.conftest import write_video


def _dataset(tmp_path):
    write_video(tmp_path / "clips" / "a.mp4", n_frames=5)
    write_video(tmp_path / "clips" / "b.mp4", n_frames=5)
    csv = tmp_path / "labels.csv"
    csv.write_text("video,O,C,E,A,N\nclips/a.mp4,0.5,0.5,0.5,0.5,0.5\n"
                   "clips/b.mp4,0.5,0.5,0.5,0.5,0.5\nclips/gone.mp4,,,,,\n")
    return {"source": "folder", "folder": {"labels": str(csv)}}, csv


def test_fingerprint_follows_labels_and_videos(tmp_path):
    params, csv = _dataset(tmp_path)
    first = inputs.fingerprint(params, tmp_path)
    assert first["n_files"] == 4  # the CSV and the three videos it names
    assert first["files"]["clips/gone.mp4"] == {"missing": True}  # relative to the repository
    assert inputs.fingerprint(params, tmp_path) == first  # nothing changed: same bytes

    csv.write_text(csv.read_text().replace("clips/a.mp4,0.5", "clips/a.mp4,0.9"))
    relabelled = inputs.fingerprint(params, tmp_path)
    assert relabelled != first

    video = tmp_path / "clips" / "b.mp4"
    write_video(video, n_frames=7)  # replaced by another clip
    os.utime(video, ns=(1, 1))
    assert inputs.fingerprint(params, tmp_path)["files"]["clips/b.mp4"] != \
        relabelled["files"]["clips/b.mp4"]


def test_stage_writes_data_inputs_json(tmp_path):
    params, _ = _dataset(tmp_path)
    result = inputs.run(params, root=tmp_path)
    assert (tmp_path / "data" / "inputs.json").is_file() and result["source"] == "folder"
    synthetic = inputs.fingerprint({"source": "synthetic"}, tmp_path)
    assert synthetic["n_files"] == 2 and all("sha256" in e for e in synthetic["files"].values())


def test_the_fingerprint_is_the_same_in_another_checkout(tmp_path):
    """Keys relative to the repository (the packaged face photos by name): a clone elsewhere, or
    a queued experiment's temporary copy, must not re-run ingest for nothing."""
    import shutil

    params, csv = _dataset(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    moved = {"source": "folder", "folder": {"labels": "labels.csv"}}
    one = inputs.fingerprint(moved, tmp_path / "one")
    for name in ("a.mp4", "b.mp4"):  # a copy keeps the file's times, as a checkout's cache does
        st = os.stat(tmp_path / "one" / "clips" / name)
        os.utime(tmp_path / "two" / "clips" / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inputs.fingerprint(moved, tmp_path / "two") == one
    synthetic = inputs.fingerprint({"source": "synthetic"}, tmp_path)
    assert all(k.startswith("synthetic:") for k in synthetic["files"])
