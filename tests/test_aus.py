"""aus stage: OpenFace CSV reading (real file and layouts), the mediapipe backend's calibration,
geometry invariances, NaN where no face, the stage end to end on both backends."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import real_fixture
from stages.aus import (AU_RECIPES, AusParams, aus_from_faces, face_frame, geometry_features,
                        read_openface_csv, run)
from personality.common import (BaseParams, StageInputError, check_schema, read_artifact,
                                write_artifact)
from personality.facemodel import BLENDSHAPES
from personality.schemas import AU_INTENSITY, AU_PRESENCE


def test_openface_fixture_reads_exactly():
    path = real_fixture("OpenFace_Test.csv")
    df = read_openface_csv(path, video_id="of")
    raw = pd.read_csv(path, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    check_schema(df, "aus", path)
    assert len(df) == len(raw) == 100
    np.testing.assert_array_equal(df[list(AU_INTENSITY)].to_numpy(),
                                  raw[list(AU_INTENSITY)].to_numpy(float))
    np.testing.assert_array_equal(df[list(AU_PRESENCE)].to_numpy(),
                                  raw[list(AU_PRESENCE)].to_numpy(float))
    assert df["frame_idx"].tolist() == (raw["frame"] - 1).tolist()
    np.testing.assert_allclose(df["t"], raw["timestamp"])
    assert df["success"].all()


def openface_like(*, spaces: bool, face_ids: bool) -> str:
    """A small OpenFace-layout CSV: 4 frames; with face_ids, face 1 succeeds more than face 0."""
    cols = ["frame", *(["face_id"] if face_ids else []), "timestamp", "confidence", "success",
            *AU_INTENSITY, *AU_PRESENCE]
    rows = []
    for frame in range(1, 5):
        for face in ((0, 1) if face_ids else (0,)):
            ok = 1 if (face == 1 or frame == 1 or not face_ids) and frame != 3 else 0
            vals = [frame, *([face] if face_ids else []), (frame - 1) / 25, 0.9 * ok, ok]
            vals += [(0.0 if not ok else round(0.1 * frame + face + k / 100, 2))
                     for k in range(len(AU_INTENSITY))]
            vals += [float(ok) for _ in AU_PRESENCE]
            rows.append(vals)
    sep = ", " if spaces else ","
    return "\n".join([sep.join(cols)] + [sep.join(str(v) for v in r) for r in rows]) + "\n"


@pytest.mark.parametrize("spaces", [True, False])
def test_openface_layouts_mask_failures_and_pick_a_face(tmp_path, spaces):
    path = tmp_path / "clip.csv"
    path.write_text(openface_like(spaces=spaces, face_ids=True))
    df = read_openface_csv(path, video_id="clip")
    assert df["frame_idx"].tolist() == [0, 1, 2, 3]
    assert df["success"].tolist() == [True, True, False, True]  # face 1: most successes
    assert df.loc[2, list(AU_INTENSITY)].isna().all()  # success == 0: NaN, not the file's 0
    assert df.loc[2, list(AU_PRESENCE)].isna().all()
    assert df.loc[0, "AU01_r"] == pytest.approx(1.1)
    first = read_openface_csv(path, video_id="clip", face_id=0)
    assert first["success"].tolist() == [True, False, False, False]
    old = tmp_path / "old.csv"
    old.write_text(openface_like(spaces=spaces, face_ids=False))
    assert read_openface_csv(old, video_id="old")["success"].tolist() == [True, True, False, True]


def test_openface_bad_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("frame, timestamp, AU01_r\n1, 0.0, 0.5\n")
    with pytest.raises(StageInputError, match="AU02_r"):
        read_openface_csv(bad, video_id="bad")



def test_openface_errors_name_the_files_line_after_blank_lines_and_quoted_newlines(tmp_path):
    """A row's number in an OpenFace CSV's message is its line in the file, as every other CSV
    message of the project says it (csv_tables): it was "data row N", pandas' count, which a
    quoted cell over two lines or a blank line set off from what an editor shows."""
    header, *rows = openface_like(spaces=False, face_ids=False).splitlines()
    cells = rows[2].split(",")
    cells[2] = ""  # its confidence
    path = tmp_path / "clip.csv"
    lines = [header + ",note", rows[0] + ',"two\nlines"', "",  # lines 1, 2-3, 4
             rows[1] + ",", "  ", ",".join(cells) + ",", rows[3] + ","]  # 5, 6, 7, 8
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StageInputError) as err:
        read_openface_csv(path, video_id="clip")
    assert str(err.value) == (f"{path}: line 7 has 1 empty cell(s) (a file cut off mid-row?); "
                              "not read")

def _faces_in_a_second_read(path) -> int:
    """The openface_csv source's face count as it was, from a read of its own (the reference)."""
    try:
        n = int(pd.read_csv(path, skipinitialspace=True, usecols=lambda c: c.strip() ==
                            "face_id").iloc[:, 0].nunique())
    except (ValueError, IndexError):
        n = 1
    return max(n, 1)


def _face_ids(header: str, rows: list[str], face_id) -> str:
    """An OpenFace CSV of `rows` (", "-separated) with face_id(row number, cell) for face_id."""
    cells = [r.split(", ") for r in rows]
    return "\n".join([header, *(", ".join([c[0], face_id(i, c[1]), *c[2:]])
                                for i, c in enumerate(cells))]) + "\n"


def test_openface_source_reads_each_csv_once_and_counts_its_faces_as_before(tmp_path,
                                                                             monkeypatch):
    """datasets_au.read_openface_csv (the openface_csv source's) read each file a second time with
    pandas only to count its faces: now one read, the same rows (and csv_span) as the aus stage's
    reader and the same count: two faces, one, none named (no face_id), face_id empty in some or
    every row, the header with spaces or without, and the real OpenFace 2.0 fixture."""
    from personality import datasets_au, openface

    two = openface_like(spaces=True, face_ids=True)
    header, *rows = two.splitlines()
    files = {"two": two, "two_plain": openface_like(spaces=False, face_ids=True),
             "none": openface_like(spaces=True, face_ids=False),
             "one": "\n".join([header, *(r for r in rows if r.split(", ")[1] == "1")]) + "\n",
             "some_empty": _face_ids(header, rows, lambda i, face: "" if i % 4 == 0 else face),
             "all_empty": _face_ids(header, rows[1::2], lambda i, face: "")}
    paths = [tmp_path / f"{name}.csv" for name in files]
    for path, text in zip(paths, files.values()):
        path.write_text(text)
    paths.append(real_fixture("OpenFace_Test.csv"))
    reads = []
    read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: reads.append(a[0]) or read_csv(*a, **k))
    counts = {}
    for path in paths:
        reads.clear()
        table, facts = datasets_au.read_openface_csv(path)
        assert reads == [path], path  # one pandas read of the file
        expected = openface.read_openface_csv(path, video_id="")
        pd.testing.assert_frame_equal(table, expected)
        assert table.attrs == expected.attrs
        counts[path.stem] = facts["n_faces"]
        assert facts["n_faces"] == _faces_in_a_second_read(path), path
    assert counts == {"two": 2, "two_plain": 2, "none": 1, "one": 1, "some_empty": 2,
                      "all_empty": 1, "OpenFace_Test": 1}


def test_openface_backend_stage(tmp_path):
    folder = tmp_path / "openface"
    folder.mkdir()
    (folder / "a.csv").write_text(openface_like(spaces=True, face_ids=False))
    (folder / "b.csv").write_text("frame,timestamp\n1,0\n")  # no AUs: reported, others go on
    good = openface_like(spaces=True, face_ids=False)
    header, first, *rest = good.splitlines(keepends=True)
    (folder / "c.csv").write_text(good + header + "".join(rest))  # two CSVs joined with cat
    (folder / "d.csv").write_text(header + first.replace(", 0.9,", ", nan(ind),", 1)
                                  + "".join(rest))  # a cell that is no number
    (folder / "e.csv").write_text(good[: good.rindex(",")] + "\n")  # cut off mid-row
    _clips(tmp_path, {v: f"videos/{v}.mp4" for v in "abcde"})
    summary = run(AusParams(backend="openface_csv", openface_dir="openface"), BaseParams(),
                  root=tmp_path)
    aus = read_artifact("aus", path=tmp_path / "data" / "aus")
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert set(aus["video_id"]) == {"a"} and list(failed) == ["b", "c", "d", "e"]
    for name in "cd":
        assert f"{name}.csv: malformed OpenFace CSV" in failed[name]
    # the file's line (header line 1), said once: it was "malformed OpenFace CSV:
    # StageInputError: <path>: data row 4 ...", the path twice
    assert failed["e"] == ("openface/e.csv: line 5 has 1 empty cell(s) (a file cut off "
                           "mid-row?); not read")
    # paths under the root are written relative to it: a tracked metrics file is the same in
    # every checkout
    assert failed["e"].startswith("openface/e.csv: ") and str(tmp_path) not in str(summary)


def _clips(root, paths: dict[str, str], duration_s: float = 0.16) -> None:
    """data/clips.parquet listing `paths` ({video_id: video path}), as ingest writes it; their
    length that of openface_like's 4 frames at 25 fps."""
    write_artifact("clips", pd.DataFrame({
        "video_id": list(paths), "path": list(paths.values()), "dataset": "folder",
        "duration_s": duration_s, "fps": 25.0, "has_audio": False, "source_stat": ""}),
        path=root / "data" / "clips.parquet")


def test_openface_csvs_named_as_openface_names_them_are_found(tmp_path, caplog):
    """The folder source's ids are escaped relative paths (`clips%2Falice.mp4`), and
    FeatureExtraction names its CSV after the video (`alice.csv`), flat or in a mirrored tree
    (`002003/FC1_T.csv`): each video gets its own CSV, a name two videos share is not guessed,
    a video without one is named, and a CSV that is no video's is left unread."""
    folder = tmp_path / "of"
    good = openface_like(spaces=True, face_ids=False)
    for name in ("alice.csv", "by_id%2Fbob.mp4.csv", "002003/FC1_T.csv", "002004/FC1_T.csv",
                 "shared.csv", "nobodys.csv", "rel/dan.csv", "x.csv"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(good)
    _clips(tmp_path, {"clips%2Falice.mp4": "/data/corpus/clips/alice.mp4",
                      "by_id%2Fbob.mp4": "/data/corpus/by_id/bob.mp4",
                      "002003_FC1_T": "/data/udiva/002003/FC1_T.mp4",
                      "002004_FC1_T": "/data/udiva/002004/FC1_T.mp4",
                      "a%2Fshared.mp4": "a/shared.mp4", "b%2Fshared.mp4": "b/shared.mp4",
                      "carol.mp4": "/data/corpus/carol.mp4", "perfex_1": "",
                      # a relative path's top folder counts: mirrored/ holds rel/dan.csv
                      "rel%2Fdan.mp4": "rel/dan.mp4",
                      # x's own <video_id>.csv is also y's OpenFace name: neither gets it
                      "x": "videos/p.mp4", "y": "other/x.mp4"})
    summary = run(AusParams(backend="openface_csv", openface_dir="of"), BaseParams(),
                  root=tmp_path)
    aus = read_artifact("aus", path=tmp_path / "data" / "aus")
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert set(aus["video_id"]) == {"clips%2Falice.mp4", "by_id%2Fbob.mp4", "002003_FC1_T",
                                    "002004_FC1_T", "rel%2Fdan.mp4"}
    assert sorted(failed) == ["a%2Fshared.mp4", "b%2Fshared.mp4", "carol.mp4", "x", "y"]
    assert "2 videos could own it" in failed["a%2Fshared.mp4"]
    assert "no OpenFace CSV" in failed["carol.mp4"] and "carol.csv" in failed["carol.mp4"]
    assert "5 video(s) without their OpenFace CSV" in caplog.text  # in the log, not only the file


def test_openface_csvs_matching_no_video_fail_the_stage_naming_both_sides(tmp_path):
    (tmp_path / "of").mkdir()
    (tmp_path / "of" / "x.csv").write_text(openface_like(spaces=True, face_ids=False))
    _clips(tmp_path, {"clips%2Falice.mp4": "clips/alice.mp4"})
    with pytest.raises(StageInputError, match=r"no OpenFace CSV matches any of the 1 videos.*"
                                              r"alice.csv.*the folder holds x.csv"):
        run(AusParams(backend="openface_csv", openface_dir="of"), BaseParams(), root=tmp_path)


def test_an_openface_csv_of_another_length_than_its_video_is_refused(tmp_path):
    """A CSV that covers 4 s of a 12 s video is some other video's (nothing checked it: its AUs
    went in as this one's); one that agrees by its timestamps or by its frame count is read."""
    folder = tmp_path / "of"
    folder.mkdir()
    header, *rows = openface_like(spaces=True, face_ids=False).splitlines(keepends=True)
    frames = [r.split(",") for r in rows * 25]  # 100 frames: 4 s at 25 fps
    for k, cells in enumerate(frames):
        cells[0], cells[1] = str(k + 1), f" {k / 25:.2f}"
    text = header + "".join(",".join(c) for c in frames)
    for name in ("long", "short", "rerated"):
        (folder / f"{name}.csv").write_text(text)
    _clips(tmp_path, {"long": "v/long.mp4", "short": "v/short.mp4", "rerated": "v/rerated.mp4"},
           duration_s=4.0)
    clips = read_artifact("clips", path=tmp_path / "data" / "clips.parquet")
    clips.loc[clips["video_id"] == "long", "duration_s"] = 12.0
    clips.loc[clips["video_id"] == "rerated", "fps"] = 30.0  # re-encoded: the timestamps agree
    write_artifact("clips", clips, path=tmp_path / "data" / "clips.parquet")
    summary = run(AusParams(backend="openface_csv", openface_dir="of"), BaseParams(),
                  root=tmp_path)
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert list(failed) == ["long"]
    assert failed["long"].startswith("of/long.csv: covers 4.0 s (100 frames) but its video is "
                                     "12.0 s long: is it this video's OpenFace CSV?")
    assert set(read_artifact("aus", path=tmp_path / "data" / "aus")["video_id"]) == {
        "short", "rerated"}


def test_a_multi_face_csv_whose_kept_face_leaves_early_keeps_the_videos_length(tmp_path):
    """FaceLandmarkVidMulti writes rows per face: the kept face (most successful frames) may leave
    before the video ends; the CSV as a whole still covers the video and is not refused."""
    rows = []
    for frame in range(1, 101):  # 4 s at 25 fps: face 0 throughout, mostly failed
        rows.append({"frame": frame, "face_id": 0, "timestamp": (frame - 1) / 25,
                     "confidence": 0.9, "success": int(frame % 4 == 0)})
        if frame <= 60:  # face 1 leaves at 2.4 s, found in every frame until then: kept
            rows.append({"frame": frame, "face_id": 1, "timestamp": (frame - 1) / 25,
                         "confidence": 0.95, "success": 1})
    table = pd.DataFrame(rows)
    for k, au in enumerate(AU_INTENSITY):
        table[au] = 0.1 * (k % 5)
    (tmp_path / "of").mkdir()
    table.to_csv(tmp_path / "of" / "two.csv", index=False)
    _clips(tmp_path, {"two": "v/two.mp4"}, duration_s=4.0)
    summary = run(AusParams(backend="openface_csv", openface_dir="of"), BaseParams(),
                  root=tmp_path)
    assert summary["n_failed"] == 0, summary["failed"]
    assert len(read_artifact("aus", path=tmp_path / "data" / "aus")) == 60  # face 1's rows


# --------------------------------------------------------------------------------------------------
# mediapipe backend


def test_geometry_is_invariant_to_similarity_transforms(rng):
    lm = rng.normal(size=(1, 478, 3)) * 30 + 200
    a = math.radians(25)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    moved = (lm @ rot.T) * 2.5 + np.array([40.0, -13.0, 5.0])
    np.testing.assert_allclose(face_frame(lm), face_frame(moved), atol=1e-9)
    g1, g2 = geometry_features(lm), geometry_features(moved)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], atol=1e-9)


def synthetic_faces(n: int, rng, *, found: np.ndarray | None = None) -> pd.DataFrame:
    """Rows shaped like data/faces: jittered copies of one landmark set, blendshapes at 0.1."""
    base = rng.normal(size=(478, 3)) * 30 + 200
    found = np.ones(n, bool) if found is None else found
    lms = [(base + rng.normal(size=base.shape) * 0.01).reshape(-1).astype(np.float32)
           if f else None for f in found]
    df = pd.DataFrame({"video_id": "v", "frame_idx": np.arange(n), "t": np.arange(n) / 5,
                       "face_found": found, "confidence": np.where(found, 0.9, 0.0),
                       "landmarks": lms})
    for b in BLENDSHAPES:
        df[f"bs_{b}"] = np.where(found, 0.1, np.nan)
    return df


def test_calibration_removes_the_subjects_resting_face(rng):
    faces = synthetic_faces(40, rng)
    faces["bs_browInnerUp"] = 0.45  # a person whose resting brows read high
    faces.loc[30:, "bs_browInnerUp"] = 0.85  # ... raised for a while
    faces.loc[30:, "bs_mouthSmileLeft"] = faces.loc[30:, "bs_mouthSmileRight"] = 0.7
    out = aus_from_faces(faces, params=AusParams())
    assert out.loc[:29, "AU01_r"].max() < 0.2  # the resting level reads as neutral
    assert out.loc[30:, "AU01_r"].min() > 0.8
    # mouthSmile 0.6 above rest at AU12's full scale 1.5 (docs/frontend.md, Cue recovery): 1.2
    assert out.loc[30:, "AU12_r"].min() > 1.0 and out.loc[:29, "AU12_r"].max() < 0.2
    assert (out.loc[30:, "AU12_c"] == 1).all() and (out.loc[:29, "AU12_c"] == 0).all()
    vals = out[list(AU_INTENSITY)].to_numpy()
    assert vals.min() >= 0 and vals.max() <= 5


def test_no_face_rows_are_nan_not_zero(rng):
    found = np.array([True] * 8 + [False] * 2 + [True] * 5)
    out = aus_from_faces(synthetic_faces(len(found), rng, found=found), params=AusParams())
    assert out["success"].tolist() == found.tolist()
    assert out.loc[~found, list(AU_INTENSITY) + list(AU_PRESENCE)].isna().all().all()
    assert out.loc[found, list(AU_INTENSITY)].notna().all().all()
    all_missing = synthetic_faces(3, rng, found=np.zeros(3, bool))
    assert aus_from_faces(all_missing, params=AusParams())[list(AU_INTENSITY)].isna().all().all()


def test_every_au_has_a_recipe():
    assert set(AU_RECIPES) == set(AU_INTENSITY)
    for recipe in AU_RECIPES.values():
        assert sum(w for _, w, _ in recipe) == pytest.approx(1.0)


def test_mediapipe_backend_on_real_faces(tmp_path):
    from test_faces import run_on

    run_on(tmp_path, {"single": real_fixture("single_face.mp4"),
                      "none": real_fixture("no_face.mp4")}, fps=10.0)
    summary = run(AusParams(), BaseParams(), root=tmp_path)
    aus = read_artifact("aus", path=tmp_path / "data" / "aus")
    faces = read_artifact("faces", path=tmp_path / "data" / "faces", columns=["face_found"])
    assert len(aus) == len(faces) and summary["n_failed"] == 0
    single, none = aus[aus["video_id"] == "single"], aus[aus["video_id"] == "none"]
    assert single["success"].mean() >= 0.95 and not none["success"].any()
    assert none[list(AU_INTENSITY)].isna().all().all()
    ok = single[single["success"]]
    assert ok[list(AU_INTENSITY)].notna().all().all()
    assert ok["AU12_r"].max() > 1.0  # he smiles, more at some moments than at his calmest


def test_stage_end_to_end_on_tiny_dataset(tiny_dataset, tmp_path):
    from test_faces import run_on

    manifest = read_artifact("manifest", path=tiny_dataset / "data" / "manifest.parquet")
    run_on(tmp_path, {r.video_id: tiny_dataset / r.path for r in manifest.itertuples()}, fps=2.0)
    summary = run(AusParams(), BaseParams(), root=tmp_path)
    aus = read_artifact("aus", path=tmp_path / "data" / "aus")
    assert set(aus["video_id"]) == set(manifest["video_id"]) and summary["n_failed"] == 0
    ok = aus[aus["success"]]
    assert len(ok) > 0.9 * len(aus)
    vals = ok[list(AU_INTENSITY)].to_numpy()
    assert np.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= 5
