"""Cue recovery: the visual front-end reads the behaviour the default synthetic dataset plants.

A smaller default dataset (40 clips of the default size and length, 14 subjects, base.seed 1234)
goes through the real ingest -> frames -> faces -> aus stage functions; each visual cue's
documented per-video statistic (personality/cues.py) must follow the clip's latent cue. The
thresholds sit below the 150-clip figures of docs/frontend.md ("Cue recovery") by a margin for
the smaller sample (the sd of r over 40 clips is ~0.05 at r = 0.8, ~0.1 at r = 0.5) and for
MediaPipe's last-bit differences between CPUs. About 2 minutes on 2 cores.

Also: the per-frame ground truth ingest writes (data/synthetic_tracks.parquet) is the renderer's,
the statistics on hand-made rows, and on the real face clip AU12 and AU45 still follow
MediaPipe's smile and blink readings frame by frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import real_fixture
from personality.common import BaseParams, read_artifact
from personality.cues import CUE_STATISTICS, cue_statistics, onsets, recovery

REPO = Path(__file__).resolve().parents[1]
# 40-clip floors (150-clip values in docs/frontend.md: smile 0.85, brow_raise 0.48,
# brow_lower 0.43, blink_rate 0.84, head_motion 0.98)
# (40 clips here gave smile 0.83, brow_raise 0.72, brow_lower 0.23, blink_rate 0.85, head 0.99.)
# The brow floors only guard against a broken or sign-flipped reading: both brow cues stay below
# the goal (0.70 on 150 clips), docs/frontend.md locates the limit per frame.
SUBSET_SEED = 1234  # base.seed of the 40-clip subset (the default's)
FLOORS = {"smile": 0.70, "brow_raise": 0.25, "brow_lower": 0.05, "blink_rate": 0.70,
          "head_motion": 0.90}


@pytest.fixture(scope="module")
def default_subset(tmp_path_factory):
    from personality.common import load_params
    from stages import aus, faces, frames, ingest

    root = tmp_path_factory.mktemp("cues")
    base = BaseParams(seed=SUBSET_SEED, workers=2)
    ingest.run(ingest.IngestParams(synthetic=ingest.SyntheticParams(n_videos=40, n_subjects=14)),
               base, root=root)
    # the front-end exactly as the committed params.yaml sets it (frames.fps among them)
    for stage, cls in ((frames, frames.FramesParams), (faces, faces.FacesParams),
                       (aus, aus.AusParams)):
        stage.run(load_params(stage.__name__.split(".")[-1], cls, path=REPO / "params.yaml"),
                  base, root=root)
    return root


def test_cue_statistics_on_hand_made_rows():
    assert onsets(np.array([0, 0.6, 0.7, 0, 0.5, np.nan, 0.9]), 0.5) == 3
    assert onsets(np.array([0.9, 0.9, 0.1]), 0.5) == 1 and onsets(np.array([]), 0.5) == 0
    t = np.arange(10) / 5.0
    aus = pd.DataFrame({"video_id": "v", "frame_idx": np.arange(10), "t": t, "success": True,
                        "AU01_r": np.r_[np.zeros(8), 2.0, 2.0], "AU04_r": np.linspace(0, 0.9, 10),
                        "AU12_c": np.r_[np.ones(3), np.zeros(7)],
                        "AU45_r": [0, 2, 0, 0, 0, 0, 1, 1, 0, 0]})
    faces = pd.DataFrame({"video_id": "v", "face_found": True, "yaw": np.r_[np.zeros(5), np.ones(5) * 2]})
    st = cue_statistics(aus, faces, {"v": 2.0})
    assert list(st.columns) == list(CUE_STATISTICS)
    row = st.loc["v"]
    assert row["smile"] == pytest.approx(0.3) and row["blink_rate"] == pytest.approx(1.0)
    assert row["brow_raise"] == pytest.approx(0.4) and row["head_motion"] == pytest.approx(1.0)
    assert row["brow_lower"] == pytest.approx(0.72)
    assert cue_statistics(aus, faces).loc["v", "blink_rate"] == pytest.approx(1.0)  # span of t


def test_ground_truth_tracks_are_the_rendered_ones(default_subset):
    from personality.synthetic import UNITS

    tracks = read_artifact("synthetic_tracks", path=default_subset / "data/synthetic_tracks.parquet")
    cues = read_artifact("synthetic_cues", path=default_subset / "data/synthetic_cues.parquet")
    manifest = read_artifact("manifest", path=default_subset / "data/manifest.parquet")
    n = tracks.groupby("video_id").size()
    expected = (manifest.set_index("video_id")["duration_s"] * 25.0).round().astype(int)
    assert (n.reindex(expected.index) == expected).all()
    means = tracks.groupby("video_id")[[f"unit_{u}" for u in UNITS]].apply(lambda d: d.abs().mean())
    got = means.reindex(cues["video_id"]).to_numpy()
    assert np.allclose(got, cues[[f"track_{u}" for u in UNITS]].to_numpy(), atol=1e-3)


def test_every_visual_cue_is_recovered(default_subset):
    aus = read_artifact("aus", path=default_subset / "data/aus")
    faces = read_artifact("faces", path=default_subset / "data/faces",
                          columns=["video_id", "frame_idx", "face_found", "yaw"])
    manifest = read_artifact("manifest", path=default_subset / "data/manifest.parquet")
    cues = read_artifact("synthetic_cues", path=default_subset / "data/synthetic_cues.parquet")
    stats = cue_statistics(aus, faces, manifest.set_index("video_id")["duration_s"])
    r = recovery(stats, cues)
    print("cue recovery, 40 clips:", r.round(3).to_dict())
    low = {k: round(r[k], 3) for k, floor in FLOORS.items() if not r[k] >= floor}
    assert not low, f"cues read below their floors {FLOORS}: {low}"


def test_brows_are_read_frame_by_frame_where_the_face_shows_them(default_subset):
    """Within a clip, AU01 and AU04 follow the rendered brow units on the astronaut's clips (150
    default clips: r 0.82 and 0.55); the pooled cue floors above cannot see a broken brow recipe
    because the other face (glasses on the brows) reads them at 0.24 and 0.40 whatever the
    recipe: docs/frontend.md, "Brows, face by face"."""
    from personality import synthetic as syn

    aus = read_artifact("aus", path=default_subset / "data/aus")
    tracks = pd.read_parquet(default_subset / "data/synthetic_tracks.parquet")
    manifest = read_artifact("manifest", path=default_subset / "data/manifest.parquet")
    names = list(syn.face_photos())  # rig index -> photo name, the renderer's order

    def face_of(subject: str) -> str:  # ingest's appearance draw for subject "syn_s<k>"
        k = int(subject.removeprefix("syn_s"))
        rng = np.random.default_rng([SUBSET_SEED, 2, k])
        return names[syn.draw_appearance(rng, len(names), k).rig]

    faces = manifest.set_index("video_id")["subject_id"].map(face_of)
    frames = aus[aus["success"]].merge(tracks, on=["video_id", "frame_idx"])
    frames = frames[frames["video_id"].map(faces) == "astronaut"]
    assert frames["video_id"].nunique() >= 8

    def within(au: str, unit: str) -> float:
        by = frames.groupby("video_id")
        a, u = frames[au] - by[au].transform("mean"), frames[unit] - by[unit].transform("mean")
        return float(np.corrcoef(a, u)[0, 1])

    r01, r04 = within("AU01_r", "unit_brow_raise"), within("AU04_r", "unit_brow_lower")
    print(f"astronaut, within-clip r: AU01 {r01:.3f}, AU04 {r04:.3f}")
    assert r01 > 0.65 and r04 > 0.35


def test_real_clip_smile_and_blinks_still_read(tmp_path):
    """single_face.mp4 (a real man smiling, 72 frames): every frame through the stages; AU12
    follows mouthSmile, AU45 follows eyeBlink, frame by frame."""
    from stages.aus import AusParams, run
    from test_faces import run_on

    run_on(tmp_path, {"single": real_fixture("single_face.mp4")}, fps=30.0)
    run(AusParams(), BaseParams(), root=tmp_path)
    aus = read_artifact("aus", path=tmp_path / "data/aus")
    faces = read_artifact("faces", path=tmp_path / "data/faces")
    m = aus.merge(faces, on=["video_id", "frame_idx"])
    m = m[m["success"]]

    def r(au: str, *bs: str) -> float:
        return float(np.corrcoef(m[au], m[[f"bs_{b}" for b in bs]].mean(axis=1))[0, 1])

    print("real clip r:", {"AU12": r("AU12_r", "mouthSmileLeft", "mouthSmileRight"),
                           "AU45": r("AU45_r", "eyeBlinkLeft", "eyeBlinkRight"),
                           "AU01": r("AU01_r", "browInnerUp"),
                           "AU04": r("AU04_r", "browDownLeft", "browDownRight")})
    assert r("AU12_r", "mouthSmileLeft", "mouthSmileRight") > 0.8
    assert r("AU45_r", "eyeBlinkLeft", "eyeBlinkRight") > 0.9
    assert m["AU12_r"].max() > 0.5 and m["AU45_r"].max() > 1.0  # he smiles more, and blinks
