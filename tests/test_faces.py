"""faces stage: geometry helpers, real faces (fixtures), no face, several faces, the stage end to end."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import real_fixture
from personality.common import BaseParams, StageInputError, check_schema, read_artifact
from personality.facemodel import BLENDSHAPES, find_task_file, head_pose_deg
from stages.faces import (LEFT_EYE, RIGHT_EYE, FacesParams, align_matrix, faces_of_video,
                          select_face)
from stages.frames import FramesParams
from stages.frames import run as run_frames
from stages.faces import run as run_faces
from personality.video_io import decode_jpeg, encode_jpeg
from test_frames import manifest_for


def fake_landmarks(angle_deg: float, *, cx: float = 100, cy: float = 80, scale: float = 40
                   ) -> np.ndarray:
    """(478, 3) points on a disc, eyes at (+-scale/2, 0) about (cx, cy), rotated by angle."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (478, 3)) * [scale, scale * 1.2, 1]
    for i in RIGHT_EYE:
        pts[i, :2] = (-scale / 2, 0)
    for i in LEFT_EYE:
        pts[i, :2] = (scale / 2, 0)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts[:, :2] = pts[:, :2] @ rot.T + (cx, cy)
    return pts.astype(np.float32)


@pytest.mark.parametrize("angle", [-30.0, 0.0, 25.0])
def test_align_matrix_levels_the_eyes_and_frames_the_face(angle):
    pts = fake_landmarks(angle)
    m = align_matrix(pts, size=112, margin=0.2)
    mapped = np.c_[pts[:, :2], np.ones(len(pts))] @ m.T  # (478, 2) crop pixels
    eyes_r, eyes_l = mapped[list(RIGHT_EYE)].mean(0), mapped[list(LEFT_EYE)].mean(0)
    assert abs(eyes_r[1] - eyes_l[1]) < 1e-6 and eyes_r[0] < eyes_l[0]
    assert mapped.min() > 0 and mapped.max() < 112  # the margin keeps every landmark inside


def test_select_face_policies():
    boxes = [(0, 0, 10, 10), (50, 50, 30, 30), (95, 95, 12, 12)]
    assert select_face(boxes, [0.9, 0.5, 0.6], how="largest", width=200, height=200) == 1
    assert select_face(boxes, [0.9, 0.5, 0.6], how="confident", width=200, height=200) == 0
    assert select_face(boxes, [0.9, 0.5, 0.6], how="central", width=200, height=200) == 2


def test_select_face_keeps_the_previous_frames_face_unless_clearly_beaten():
    """Two faces of about the same size: the rule alone swapped them from frame to frame."""
    left, right = (10, 10, 100, 100), (300, 12, 102, 102)  # right is 4% larger
    kw = dict(how="largest", width=500, height=200)
    assert select_face([left, right], [0.9, 0.9], **kw) == 1  # no previous face: the rule
    assert select_face([left, right], [0.9, 0.9], previous=(12, 9, 100, 101), **kw) == 0
    assert select_face([left, right], [0.9, 0.9], previous=(299, 12, 101, 100), **kw) == 1
    bigger = (300, 12, 160, 160)  # clearly larger now: it takes over
    assert select_face([left, bigger], [0.9, 0.9], previous=(12, 9, 100, 101), **kw) == 1
    # the previous face is gone (no overlap): the rule again
    assert select_face([left, right], [0.9, 0.9], previous=(200, 100, 50, 50), **kw) == 1
    assert select_face([left, right], [0.9, 0.5], how="confident", width=500, height=200,
                       previous=(299, 12, 101, 100)) == 0  # 0.9 vs 0.5: clearly beaten


def test_two_faces_of_about_the_same_size_do_not_swap_between_frames():
    """Two people side by side, each in turn a few pixels larger (a talk show, a video call): the
    kept face alternated between them, so one video's AU series, head pose and crops mixed two
    people (single_face.mp4 beside its mirror image, through the stage: 14 swaps in 39 frames)."""
    import cv2

    face = cv2.imread(str(real_fixture("single_face.jpg")))

    def canvas(left: int, right: int) -> np.ndarray:
        c = np.full((420, 860, 3), 90, np.uint8)
        c[10:10 + left, 10:10 + left] = cv2.resize(face, (left, left))
        c[10:10 + right, 440:440 + right] = cv2.resize(face[:, ::-1], (right, right))
        return c

    images = [canvas(380, 395) if k % 2 else canvas(395, 380) for k in range(6)]
    df = faces_of_video(frames_rows(images), params=FacesParams())
    assert (df["n_faces"] == 2).all()
    assert (df["box_x"] < 430).all(), df["box_x"].tolist()  # the first frame's (larger) face


def test_head_pose_of_identity_is_zero():
    assert head_pose_deg(np.eye(4)) == pytest.approx((0.0, 0.0, 0.0))
    a = math.radians(20)  # a pure roll about z
    m = np.eye(4)
    m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    assert head_pose_deg(m) == pytest.approx((0.0, 0.0, 20.0))


def test_model_bundle_is_hash_checked(tmp_path):
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not the model")
    with pytest.raises(StageInputError, match="sha256"):
        find_task_file(str(fake))
    assert find_task_file().stat().st_size == 3_758_596  # the official file, found offline


def frames_rows(images: list[np.ndarray], video_id: str = "v", fps: float = 5.0) -> pd.DataFrame:
    return pd.DataFrame({"video_id": video_id, "frame_idx": np.arange(len(images)),
                         "t": np.arange(len(images)) / fps,
                         "width": [im.shape[1] for im in images],
                         "height": [im.shape[0] for im in images],
                         "jpeg": [encode_jpeg(im) for im in images]})


def test_several_faces_keep_the_largest_and_count():
    import cv2

    face = cv2.imread(str(real_fixture("single_face.jpg")))  # (562, 572, 3) BGR
    small = cv2.resize(face, (286, 281))  # smaller faces are below BlazeFace short-range's reach
    canvas = np.full((400, 800, 3), 90, np.uint8)
    canvas[20:20 + 375, 380:380 + 382] = cv2.resize(face, (382, 375))
    canvas[50:50 + 281, 20:20 + 286] = small
    df = faces_of_video(frames_rows([canvas] * 3), params=FacesParams(num_faces=3))
    assert df["face_found"].all()
    assert (df["n_faces"] == 2).all()
    assert (df["box_x"] > 300).all()  # the big face, on the right
    assert (df["box_w"] > 100).all()  # the small face measures ~90 px


def run_on(tmp_path, videos: dict, *, fps: float = 5.0, workers: int = 1):
    manifest_for(tmp_path, videos)
    run_frames(FramesParams(fps=fps), BaseParams(workers=workers), root=tmp_path)
    summary = run_faces(FacesParams(), BaseParams(workers=workers), root=tmp_path)
    return summary, read_artifact("faces", path=tmp_path / "data" / "faces")


def test_real_face_and_no_face_fixtures(tmp_path):
    videos = {"single": real_fixture("single_face.mp4"), "none": real_fixture("no_face.mp4")}
    summary, faces = run_on(tmp_path, videos, fps=30.0)  # every frame of the real clips
    frames = read_artifact("frames", path=tmp_path / "data" / "frames")
    assert len(faces) == len(frames)  # every frame keeps its row, face or not
    single = faces[faces["video_id"] == "single"]
    none = faces[faces["video_id"] == "none"]
    assert len(single) == 72 and single["face_found"].mean() >= 0.95
    assert len(none) > 0 and not none["face_found"].any()
    assert (none["n_faces"] == 0).all() and none["yaw"].isna().all()
    assert none["landmarks"].isna().all() and none["crop"].isna().all()
    assert summary["videos_without_face"] == ["none"]
    # a list with its count (a map would be one `dvc metrics show` column per video)
    assert summary["videos_below_95pct"] == [{"video_id": "none", "face_rate": 0.0}]
    assert summary["n_videos_below_95pct"] == 1
    got = single[single["face_found"]]
    assert got["landmarks"].map(len).eq(478 * 3).all()
    bs = got[[f"bs_{n}" for n in BLENDSHAPES]].to_numpy()
    assert np.isfinite(bs).all() and bs.min() >= 0 and bs.max() <= 1
    assert got["bs_mouthSmileLeft"].mean() > 0.3  # the man smiles
    assert got["confidence"].gt(0.5).mean() > 0.9
    assert got["yaw"].abs().lt(45).all()
    crop = decode_jpeg(got["crop"].iloc[0])
    assert crop.shape == (112, 112, 3)
    assert got["crop"].map(len).mean() < 8000  # modest rows
    lm = np.asarray(got["landmarks"].iloc[0]).reshape(478, 3)
    x, y, w, h = got[["box_x", "box_y", "box_w", "box_h"]].iloc[0]
    assert lm[:, 0].min() == pytest.approx(x, abs=1e-3) and 0 < w < 640 and 0 < h < 360
    check_schema(faces, "faces", "test")


def test_stage_on_tiny_dataset(tiny_dataset, tmp_path):
    manifest = read_artifact("manifest", path=tiny_dataset / "data" / "manifest.parquet")
    videos = {r.video_id: tiny_dataset / r.path for r in manifest.itertuples()}
    summary, faces = run_on(tmp_path, videos, fps=3.0, workers=2)
    assert summary["n_failed"] == 0 and set(faces["video_id"]) == set(videos)
    assert faces["face_found"].mean() > 0.9  # the synthetic clips always show a face
    assert faces.groupby("video_id")["t"].apply(lambda t: t.is_monotonic_increasing).all()
