"""Real-dataset sources on small fixtures written in the exact official formats, and hostile
inputs: a pickle that tries to run code, a label path with `../`, a CSV missing a trait column."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personality import datasets, datasets_au
from personality.common import BaseParams, StageInputError, read_artifact
from personality.csv_tables import read_table
from stages.ingest import IngestParams, run
from personality.schemas import AU_INTENSITY, TRAITS
from tests.conftest import real_fixture, write_video


# --------------------------------------------------------------------------------------------------
# a pickle the way Python 2's cPickle wrote it (protocol 2, byte strings, memo puts)


def py2_pickle(obj) -> bytes:
    """Serialise dict / str / float / int as Python 2.7 `pickle.dump(obj, f, 2)` did: str as
    SHORT_BINSTRING/BINSTRING (bytes, not unicode), floats as BINFLOAT, BINPUT after containers."""
    out = bytearray(b"\x80\x02")
    memo = [0]

    def put():
        out.extend(b"q" + bytes([memo[0] % 256]))
        memo[0] += 1

    def emit(x):
        if isinstance(x, dict):
            out.extend(b"}")
            put()
            if x:
                out.extend(b"(")
                for k, v in x.items():
                    emit(k)
                    emit(v)
                out.extend(b"u")
        elif isinstance(x, str):
            data = x.encode("latin1")
            if len(data) < 256:
                out.extend(b"U" + bytes([len(data)]) + data)
            else:
                out.extend(b"T" + struct.pack("<i", len(data)) + data)
            put()
        elif isinstance(x, float):
            out.extend(b"G" + struct.pack(">d", x))
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        else:
            raise TypeError(type(x))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def chalearn_annotations(videos: dict[str, float]) -> dict:
    traits = ["extraversion", "neuroticism", "agreeableness", "conscientiousness", "interview",
              "openness"]
    return {t: {v: round(base + 0.01 * k, 6) for v, base in videos.items()}
            for k, t in enumerate(traits)}


def test_py2_pickle_roundtrip(tmp_path):
    path = tmp_path / "a.pkl"
    path.write_bytes(py2_pickle(chalearn_annotations({"abc.001.mp4": 0.5})))
    data = datasets.load_data_pickle(path)
    assert data["openness"]["abc.001.mp4"] == pytest.approx(0.55)


def test_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "annotation_training.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(StageInputError, match=r"annotation_training.pkl: refused to load: the "
                                              r"pickle asks for os.system"):
        datasets.read_chalearn_annotations(evil)
    assert not marker.exists()
    import pickle

    reduce_evil = tmp_path / "b.pkl"
    reduce_evil.write_bytes(pickle.dumps({"openness": shutil.rmtree}, protocol=2))
    with pytest.raises(StageInputError, match="refused to load.*shutil"):
        datasets.load_data_pickle(reduce_evil)
    (tmp_path / "c.pkl").write_bytes(b"\x80\x02}q\x00(U\x03abc")  # truncated
    with pytest.raises(StageInputError, match="c.pkl: not a readable pickle"):
        datasets.load_data_pickle(tmp_path / "c.pkl")


def test_annotation_content_errors(tmp_path):
    path = tmp_path / "ann.pkl"
    path.write_bytes(py2_pickle({"openness": {"a.001.mp4": 0.5}}))
    with pytest.raises(StageInputError, match="missing trait.*conscientiousness"):
        datasets.read_chalearn_annotations(path)
    # one bad video is left out, named; the others stay
    bad = chalearn_annotations({"a.001.mp4": 0.5, "b.001.mp4": 0.5, "c.001.mp4": 0.5,
                                "d.001.mp4": 0.5})
    bad["openness"]["a.001.mp4"] = 1.7
    bad["neuroticism"]["b.001.mp4"] = float("nan")
    del bad["agreeableness"]["c.001.mp4"]
    path.write_bytes(py2_pickle(bad))
    labels, problems = datasets.read_chalearn_annotations(path)
    assert list(labels) == ["d.001.mp4"] and len(labels["d.001.mp4"]) == 5
    assert any(r"openness[a.001.mp4] = 1.7 is outside" in p for p in problems)
    assert any("neuroticism[b.001.mp4] = nan is outside" in p for p in problems)
    assert any("c.001.mp4 has no agreeableness score" in p for p in problems)
    assert all(p.startswith(f"{path}: ") for p in problems) and len(problems) == 3


def _numpy_scalar_pickle(videos: dict[str, float], module: str, py2_str: bool = False) -> bytes:
    """Built like the official annotation files: plain floats per trait, numpy.float64 values
    under 'interview' (numpy.core.multiarray.scalar(dtype('f8'), <8 bytes>) in the file; with
    `py2_str` the 8 bytes are a Python 2 str, SHORT_BINSTRING, as there)."""
    import pickle

    data = chalearn_annotations(videos)
    data["interview"] = {k: np.float64(v) for k, v in data["interview"].items()}
    raw = pickle.dumps(data, protocol=3)
    for spelling in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        raw = raw.replace(spelling, module.encode())
    return raw.replace(b"C\x08", b"U\x08") if py2_str else raw


@pytest.mark.parametrize("module, py2_str", [("numpy.core.multiarray", True),
                                             ("numpy.core.multiarray", False),
                                             ("numpy._core.multiarray", False)])
def test_official_annotation_files_with_numpy_scalars_load(tmp_path, module, py2_str):
    path = tmp_path / "annotation_training.pkl"
    path.write_bytes(_numpy_scalar_pickle({"abc.001.mp4": 0.5}, module, py2_str))
    data = datasets.load_data_pickle(path)
    assert type(data["interview"]["abc.001.mp4"]) is float
    assert data["interview"]["abc.001.mp4"] == pytest.approx(0.54)
    labels, problems = datasets.read_chalearn_annotations(path)
    assert labels["abc.001.mp4"]["O"] == pytest.approx(0.55) and not problems


def test_numpy_globals_beyond_numeric_scalars_are_refused(tmp_path):
    import pickle

    obj = tmp_path / "object_dtype.pkl"  # an object-dtype scalar would rebuild any object
    obj.write_bytes(pickle.dumps({"openness": np.array([None], dtype=object)[0:1]}, protocol=2))
    with pytest.raises(StageInputError, match="refused to load"):
        datasets.load_data_pickle(obj)
    raw = _numpy_scalar_pickle({"abc.001.mp4": 0.5}, "numpy.core.multiarray")
    sneaky = tmp_path / "sneaky.pkl"
    sneaky.write_bytes(raw.replace(b"f8", b"O8"))
    with pytest.raises(StageInputError, match="not a plain numeric dtype"):
        datasets.load_data_pickle(sneaky)


@pytest.fixture
def chalearn(tmp_path):
    root = tmp_path / "chalearn"
    layout = {"train/training80_01": ["AAAAAAAAAAA.001.mp4", "AAAAAAAAAAA.002.mp4",
                                      "BBBBBBBBBBB.001.mp4", "FFFFFFFFFFF.001.mp4"],
              "validation/validation80_01": ["CCCCCCCCCCC.001.mp4"],
              "test/test80_01": ["DDDDDDDDDDD.004.mp4", "DDDDDDDDDDD.005.mp4"]}
    for folder, names in layout.items():
        for name in names:
            write_video(root / folder / name, n_frames=6)
    labels = {"training": {"AAAAAAAAAAA.001.mp4": 0.3, "AAAAAAAAAAA.002.mp4": 0.35,
                           "BBBBBBBBBBB.001.mp4": 0.6, "EEEEEEEEEEE.001.mp4": 0.5},
              "validation": {"CCCCCCCCCCC.001.mp4": 0.4},
              "test": {"DDDDDDDDDDD.004.mp4": 0.7, "DDDDDDDDDDD.005.mp4": 0.71}}
    for split, videos in labels.items():
        (root / f"annotation_{split}.pkl").write_bytes(py2_pickle(chalearn_annotations(videos)))
    return root


def _ingest(tmp_path, **kw) -> dict:
    # adapter fixtures hold 1-3 subjects: no split is required to be filled here
    return run(IngestParams(**{"required_splits": [], **kw}), BaseParams(seed=5, workers=1),
               root=tmp_path)


def test_chalearn16_official_split(chalearn, tmp_path):
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(chalearn), split_mode="official"))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert sorted(m.index) == ["AAAAAAAAAAA.001", "AAAAAAAAAAA.002", "BBBBBBBBBBB.001",
                               "CCCCCCCCCCC.001", "DDDDDDDDDDD.004", "DDDDDDDDDDD.005"]
    assert m.loc["AAAAAAAAAAA.002", "subject_id"] == "AAAAAAAAAAA"
    assert m.loc["CCCCCCCCCCC.001", "split"] == "val" and m.loc["DDDDDDDDDDD.004", "split"] == "test"
    # trait order in the pickle is E, N, A, C, interview, O: +0.01 per position
    assert m.loc["AAAAAAAAAAA.001", "E"] == pytest.approx(0.30)
    assert m.loc["AAAAAAAAAAA.001", "O"] == pytest.approx(0.35)
    assert m.loc["AAAAAAAAAAA.001", "C"] == pytest.approx(0.33)
    assert (m["dataset"] == "chalearn16").all() and (m["label_scale"] == "unit").all()
    bad = "\n".join(summary["bad_rows"])
    assert "FFFFFFFFFFF.001.mp4: video has no label" in bad
    assert "label for EEEEEEEEEEE.001.mp4 but no such video" in bad


def test_chalearn16_official_split_is_refused_when_a_channel_crosses_it(chalearn, tmp_path):
    # as on the real data: a validation clip of a channel that also has training clips
    write_video(chalearn / "validation/validation80_01/AAAAAAAAAAA.003.mp4", n_frames=6)
    (chalearn / "annotation_validation.pkl").write_bytes(py2_pickle(chalearn_annotations(
        {"CCCCCCCCCCC.001.mp4": 0.4, "AAAAAAAAAAA.003.mp4": 0.4})))
    with pytest.raises(StageInputError, match=r"split_mode=official: 1 of 4 YouTube videos "
                                              r"\(e.g. AAAAAAAAAAA\).*use split_mode: kfold"):
        _ingest(tmp_path, source="chalearn16",
                chalearn16=datasets.ChaLearnParams(root=str(chalearn), split_mode="official"))
    _ingest(tmp_path, source="chalearn16", chalearn16=datasets.ChaLearnParams(
        root=str(chalearn), n_folds=3))  # the default, kfold: by YouTube video id
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert (m.groupby("subject_id")["split"].nunique() == 1).all() and len(m) == 7


def test_chalearn16_a_clip_name_found_twice_is_reported_not_dropped_silently(chalearn, tmp_path):
    write_video(chalearn / "train/training80_02/AAAAAAAAAAA.001.mp4", n_frames=6)
    summary = _ingest(tmp_path, source="chalearn16", chalearn16=datasets.ChaLearnParams(
        root=str(chalearn), split_mode="official"))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert m.loc["AAAAAAAAAAA.001", "path"].endswith("training80_01/AAAAAAAAAAA.001.mp4")
    assert any("training80_02/AAAAAAAAAAA.001.mp4: a second file named AAAAAAAAAAA.001.mp4"
               in row for row in summary["bad_rows"])


def test_chalearn16_kfold_by_subject(chalearn, tmp_path):
    tests = set()
    for fold in range(3):
        _ingest(tmp_path, source="chalearn16", chalearn16=datasets.ChaLearnParams(
            root=str(chalearn), split_mode="kfold", n_folds=3, fold=fold))
        m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
        assert (m.groupby("subject_id")["split"].nunique() == 1).all()
        tests.add(frozenset(m.loc[m["split"] == "test", "subject_id"]))
    assert len(tests) == 3  # each fold tests other subjects
    with pytest.raises(StageInputError, match="n_folds >= 3"):
        datasets.kfold_splits(["a"], n_folds=2, fold=0, seed=1)


def test_chalearn16_hostile_pickle_stops_the_stage(chalearn, tmp_path):
    (chalearn / "annotation_validation.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(StageInputError, match="annotation_validation.pkl: refused to load"):
        _ingest(tmp_path, source="chalearn16",
                chalearn16=datasets.ChaLearnParams(root=str(chalearn)))
    assert not (tmp_path / "data/manifest.parquet").exists()


@pytest.fixture
def udiva(tmp_path):
    """The release's layout (datasets.udiva_release_splits): val's labels in its unmasked CSV."""
    root = tmp_path / "udiva"
    train, val = (root / s / "metadata" / f"metadata_{s}" for s in ("train", "val"))
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    (train / "parts_train.csv").write_text(
        "ID,AGE,OPENMINDEDNESS_Z,CONSCIENTIOUSNESS_Z,EXTRAVERSION_Z,AGREEABLENESS_Z,"
        "NEGATIVEEMOTIONALITY_Z\n"
        "101,23,0.5,-1.2,1.1,0.0,-0.3\n102,31,-0.4,0.2,-0.9,1.3,0.8\n")
    (train / "sessions_train.csv").write_text(
        "ID,PART.1,PART.2,LANGUAGE\n001080,101,102,EN\n")
    (val / "parts_val_unmasked.csv").write_text(
        "ID,OPENMINDEDNESS_Z,CONSCIENTIOUSNESS_Z,EXTRAVERSION_Z,AGREEABLENESS_Z,"
        "NEGATIVEEMOTIONALITY_Z\n201,0.1,0.2,0.3,0.4,0.5\n")
    (val / "sessions_val.csv").write_text("ID,PART.1,PART.2\n002001,201,999\n")
    task_folder = {"T": "talk", "A": "animals"}
    for session, names in {"train/001080": ["FC1_T", "FC2_T", "FC1_A"],
                           "val/002001": ["FC1_T", "FC2_T"]}.items():
        split, sid = session.split("/")
        for name in names:
            folder = f"{task_folder[name[-1]]}_recordings_{split}"
            write_video(root / split / "recordings" / folder / sid / f"{name}.mp4", n_frames=5)
    return root


def test_udiva(udiva, tmp_path):
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva)))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert sorted(m.index) == ["001080_FC1_T", "001080_FC2_T", "002001_FC1_T"]  # task T only
    assert m.loc["001080_FC2_T", "subject_id"] == "102"
    assert m.loc["001080_FC1_T", "C"] == pytest.approx(-1.2)  # z-scores, not [0, 1]
    assert (m["label_scale"] == "z").all()
    assert m.loc["002001_FC1_T", "split"] == "val"
    assert any("participant 999 has no row" in p for p in summary["bad_rows"])
    _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva),
                                                                 tasks=["T", "A"]))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert "001080_FC1_A" in set(m["video_id"])


def test_udiva_missing_trait_column(udiva, tmp_path):
    path = udiva / "train/metadata/metadata_train/parts_train.csv"
    path.write_text(path.read_text().replace("AGREEABLENESS_Z", "AGREEABLE"))
    with pytest.raises(StageInputError, match="parts_train.csv: missing column.*AGREEABLENESS_Z"):
        _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva)))


def perfex_csv(path: Path, n_frames=(5, 4)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seq, n in enumerate(n_frames):
        traits = rng.uniform(0, 1, 5).round(3)
        for f in range(n):
            row = {"ID": seq, "File": f"vid{seq:02d}.00{seq}.mp4", "Word": "hello",
                   **{f"vi_{k}": rng.random() for k in range(1, 6)},
                   "happy": rng.random(), "sad": rng.random()}
            row.update({au: round(float(rng.uniform(0, 5)), 2) for au in AU_INTENSITY})
            row.update({au.replace("_r", "_c"): int(rng.integers(0, 2)) for au in AU_INTENSITY})
            row.update(dict(zip(["extroversion", "neuroticism", "agreeableness",
                                 "conscientiousness", "openness"], traits)))
            rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def test_perfex(tmp_path):
    src = perfex_csv(tmp_path / "perfex.csv")
    (tmp_path / "retrain.csv").write_text(
        "ID,rater,extroversion,neuroticism,agreeableness,conscientiousness,openness\n"
        "0,r1,4,2,5,3,3\n0,r2,5,1,4,3,2\n1,r1,2,3,3,4,4\n")
    _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(
        csv=str(tmp_path / "perfex.csv"), retrain_csv=str(tmp_path / "retrain.csv")))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert sorted(m.index) == ["perfex_0", "perfex_1"]
    assert m.loc["perfex_0", "E"] == pytest.approx(src.loc[0, "extroversion"])
    assert m.loc["perfex_1", "duration_s"] == pytest.approx(4 / 30)
    assert not m["has_audio"].any()
    aus = read_artifact("source_aus", path=tmp_path / "data/source_aus")
    seq0 = aus[aus["video_id"] == "perfex_0"].sort_values("frame_idx")
    np.testing.assert_allclose(seq0[list(AU_INTENSITY)].to_numpy(),
                               src.loc[src["ID"] == 0, list(AU_INTENSITY)].to_numpy())
    study = read_artifact("user_study", path=tmp_path / "data/user_study.parquet")
    assert len(study) == 3 and study["E"].tolist() == [4.0, 5.0, 2.0]


def test_perfex_retraining_file_in_perfexs_own_per_frame_layout(tmp_path):
    """PerFeX's retrain_final.csv is per frame (ID, File, AUxx_r, traits in [0, 1]), numbered
    apart from the long CSV: it was read as one rating per row and joined on ID, so each frame
    became a rating by an invented rater, on whichever clip of the long CSV had that ID. Clips
    are matched by File now; a rated clip the long CSV lacks becomes an unlabelled sequence."""
    src = perfex_csv(tmp_path / "perfex.csv")
    study = perfex_csv(tmp_path / "retrain.csv", n_frames=(5, 6))
    study["File"] = study["File"].map({"vid00.000.mp4": "vid01.001.mp4",  # long CSV's ID 1
                                       "vid01.001.mp4": "new09.009.mp4"})
    study.drop(columns=["Word", "happy", "sad", *[f"vi_{k}" for k in range(1, 6)]]).to_csv(
        tmp_path / "retrain.csv", index=False)
    _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(
        csv=str(tmp_path / "perfex.csv"), retrain_csv=str(tmp_path / "retrain.csv")))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert sorted(m.index) == ["perfex_0", "perfex_1", "perfex_study_1"]
    assert m.loc["perfex_study_1", "subject_id"] == "new09" and m.loc["perfex_study_1", TRAITS
                                                                      ].isna().all()
    assert m.loc["perfex_1", "E"] == pytest.approx(src.loc[src["ID"] == 1, "extroversion"].iloc[0])
    rated = read_artifact("user_study", path=tmp_path / "data/user_study.parquet")
    assert rated["video_id"].tolist() == ["perfex_1", "perfex_study_1"]  # one row per clip
    assert rated["rater_id"].tolist() == ["study", "study"]
    first = study[study["ID"] == 0].iloc[0]
    assert rated.loc[0, "E"] == pytest.approx(1 + 4 * first["extroversion"])
    aus = read_artifact("source_aus", path=tmp_path / "data/source_aus")
    new = aus[aus["video_id"] == "perfex_study_1"].sort_values("frame_idx")
    np.testing.assert_allclose(new[list(AU_INTENSITY)].to_numpy(),
                               study.loc[study["ID"] == 1, list(AU_INTENSITY)].to_numpy())


def test_perfex_missing_trait_column(tmp_path):
    df = perfex_csv(tmp_path / "perfex.csv").drop(columns="openness")
    df.to_csv(tmp_path / "perfex.csv", index=False)
    with pytest.raises(StageInputError, match="perfex.csv: missing column.*openness"):
        _ingest(tmp_path, source="perfex",
                perfex=datasets_au.PerfexParams(csv=str(tmp_path / "perfex.csv")))


def newer_openface_csv(path: Path) -> pd.DataFrame:
    """OpenFace 2.2 layout: `face_id`, spaces after commas, two faces, a failed frame."""
    rows = []
    for frame in range(1, 5):
        for face in (0, 1):
            row = {"frame": frame, "face_id": face, "timestamp": (frame - 1) / 30,
                   "confidence": 0.98, "success": 0 if (face == 0 and frame == 3) else 1,
                   "gaze_angle_x": 0.1}
            row.update({au: (0.0 if row["success"] == 0 else frame + face * 0.5 + k / 10)
                        for k, au in enumerate(AU_INTENSITY)})
            row.update({au.replace("_r", "_c"): 1.0 for au in AU_INTENSITY})
            rows.append(row)
    df = pd.DataFrame(rows)
    path.write_text(", ".join(df.columns) + "\n" + "\n".join(
        ", ".join(str(v) for v in r) for r in df.itertuples(index=False)) + "\n")
    return df


def test_openface_csv_source(tmp_path):
    ds = tmp_path / "of"
    ds.mkdir()
    newer_openface_csv(ds / "two_faces.csv")
    (ds / "labels.csv").write_text("file,O,C,E,A,N,subject\n"
                                   "two_faces.csv,0.1,0.2,0.3,0.4,0.5,s1\n"
                                   "../escape.csv,0.1,0.2,0.3,0.4,0.5,s2\n"
                                   "absent.csv,0.1,0.2,0.3,0.4,0.5,s3\n")
    summary = _ingest(tmp_path, source="openface_csv",
                      openface_csv=datasets_au.OpenFaceParams(labels=str(ds / "labels.csv")))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert m["video_id"].tolist() == ["two_faces.csv"]  # the path with its extension: unique
    bad = "\n".join(summary["bad_rows"])
    assert "row 3 (../escape.csv): ../escape.csv: path escapes the dataset root" in bad
    assert "row 4 (absent.csv): OpenFace CSV" in bad
    aus = read_artifact("source_aus", path=tmp_path / "data/source_aus").sort_values("frame_idx")
    # face 1 has 4 successful frames, face 0 only 3: face 1 is kept
    assert aus["AU01_r"].tolist() == [1.5, 2.5, 3.5, 4.5]
    assert aus["t"].tolist() == pytest.approx([0, 1 / 30, 2 / 30, 3 / 30])


def test_openface_failed_frames_are_nan(tmp_path):
    df = newer_openface_csv(tmp_path / "x.csv")
    df = df[df["face_id"] == 0]
    df.drop(columns="face_id").to_csv(tmp_path / "y.csv", index=False)
    table, facts = datasets_au.read_openface_csv(tmp_path / "y.csv")
    assert table["success"].tolist() == [True, True, False, True]
    assert np.isnan(table.loc[2, "AU12_r"]) and table.loc[1, "AU01_r"] == 2.0
    assert facts["n_faces"] == 1


def test_real_openface_csv_values(tmp_path):
    """The real OpenFace 2.0 output reads into the AU schema with the file's 17 AU values."""
    path = real_fixture("OpenFace_Test.csv")
    raw = pd.read_csv(path, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    table, facts = datasets_au.read_openface_csv(path)
    assert len(table) == len(raw) == 100
    ok = raw["success"].to_numpy() == 1
    np.testing.assert_array_equal(table[list(AU_INTENSITY)].to_numpy()[ok],
                                  raw[list(AU_INTENSITY)].to_numpy()[ok])
    assert np.isnan(table[list(AU_INTENSITY)].to_numpy()[~ok]).all()
    assert table["t"].tolist() == pytest.approx(raw["timestamp"].tolist())


def test_params_sections_parse():
    """The committed params.yaml holds an options block for every source."""
    from personality.common import load_params

    root = Path(__file__).resolve().parents[1]
    p = load_params("ingest", IngestParams, path=root / "params.yaml")
    assert p.chalearn16.split_mode == "kfold" and p.udiva.tasks == ["T"]
    assert set(p.udiva.splits) == {"train", "val", "test"}
    import yaml

    raw = yaml.safe_load((root / "params.yaml").read_text())["ingest"]
    assert {"synthetic", "folder", "chalearn16", "udiva", "perfex", "openface_csv"} <= set(raw)


def test_au_only_source_flows_through_the_front_end(tmp_path, caplog):
    """perfex has no video: frames, faces and audio skip it, aus passes its sequences through
    (and says so: its log line named the mediapipe backend, which read nothing)."""
    from stages import audio, aus, faces, frames

    src = perfex_csv(tmp_path / "perfex.csv")
    _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(csv=str(tmp_path / "perfex.csv")))
    base = BaseParams(seed=5, workers=1)
    assert frames.run(frames.FramesParams(), base, root=tmp_path)["n_videos"] == 0
    faces.run(faces.FacesParams(), base, root=tmp_path)
    audio.run(audio.AudioParams(), base, root=tmp_path)
    with caplog.at_level("INFO", logger="aus"):
        summary = aus.run(aus.AusParams(), base, root=tmp_path)
    assert summary["n_frames"] == 9 and summary["n_failed"] == 0
    assert "aus (the dataset's own AUs): 9 frames" in caplog.text
    table = read_artifact("aus", path=tmp_path / "data/aus")
    seq1 = table[table["video_id"] == "perfex_1"].sort_values("frame_idx")
    np.testing.assert_allclose(seq1[list(AU_INTENSITY)].to_numpy(),
                               src.loc[src["ID"] == 1, list(AU_INTENSITY)].to_numpy())
    np.testing.assert_array_equal(seq1["AU12_c"].to_numpy(),
                                  src.loc[src["ID"] == 1, "AU12_c"].to_numpy())


def test_chalearn16_video_symlinked_out_of_the_dataset_is_skipped_and_reported(chalearn,
                                                                              tmp_path):
    """A video symlink inside the dataset folder that points outside it is not ingested (it
    was: `evil.001 -> outside/secret.mp4`), and is named as a bad item; strict fails."""
    secret = tmp_path / "outside" / "secret.mp4"
    write_video(secret, n_frames=6)
    evil = chalearn / "train" / "training80_01" / "GGGGGGGGGGG.001.mp4"
    evil.symlink_to(secret)
    labels = chalearn_annotations({"AAAAAAAAAAA.001.mp4": 0.3, "AAAAAAAAAAA.002.mp4": 0.35,
                                   "BBBBBBBBBBB.001.mp4": 0.6, "FFFFFFFFFFF.001.mp4": 0.5,
                                   "GGGGGGGGGGG.001.mp4": 0.4})
    (chalearn / "annotation_training.pkl").write_bytes(py2_pickle(labels))
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(chalearn)))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert "GGGGGGGGGGG.001" not in set(m["video_id"]) and "outside" not in "".join(m["path"])
    assert any(f"{evil}: path escapes the dataset root" in b for b in summary["bad_rows"])
    with pytest.raises(StageInputError, match="GGGGGGGGGGG.001.mp4: path escapes the dataset"):
        _ingest(tmp_path, source="chalearn16", strict=True,
                chalearn16=datasets.ChaLearnParams(root=str(chalearn)))


def test_udiva_video_symlinked_out_of_the_dataset_is_skipped_and_reported(udiva, tmp_path):
    secret = tmp_path / "outside" / "FC1_T.mp4"
    write_video(secret, n_frames=5)
    session = udiva / "val/recordings/talk_recordings_val/002001"
    (session / "FC1_T.mp4").unlink()
    (session / "FC1_T.mp4").symlink_to(secret)
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva)))
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert sorted(m["video_id"]) == ["001080_FC1_T", "001080_FC2_T"]
    assert any(f"{session / 'FC1_T.mp4'}: path escapes the dataset root" in b
               for b in summary["bad_rows"])


def test_openface_csv_paths_the_file_system_cannot_take_are_bad_rows(tmp_path):
    """A symlink loop, a NUL byte, a name too long: each row reported, the good row ingested."""
    ds = tmp_path / "of"
    ds.mkdir()
    newer_openface_csv(ds / "good.csv")
    (ds / "loop1.csv").symlink_to("loop2.csv")
    (ds / "loop2.csv").symlink_to("loop1.csv")
    long_name = "x" * 300 + ".csv"
    (ds / "labels.csv").write_text("file,O,C,E,A,N\ngood.csv,0.1,0.2,0.3,0.4,0.5\n"
                                   "loop1.csv,0.1,0.2,0.3,0.4,0.5\n"
                                   "a\x00.csv,0.1,0.2,0.3,0.4,0.5\n"
                                   f"{long_name},0.1,0.2,0.3,0.4,0.5\n")
    rows, problems, _ = datasets_au.ingest_openface_csv(
        datasets_au.OpenFaceParams(labels=str(ds / "labels.csv")), root=tmp_path)
    assert [r["video_id"] for r in rows] == ["good.csv"]
    assert len(problems) == 3
    assert "row 3 (loop1.csv): loop1.csv: a symlink loop" in problems[0]
    assert "row 4" in problems[1] and "holds a NUL byte" in problems[1]
    assert "row 5" in problems[2] and "File name too long" in problems[2]


def test_a_semicolon_csv_of_a_dataset_says_how_to_fix_it(tmp_path):
    """UDIVA / PerFeX / OpenFace label CSVs saved by a European Excel: ';' and decimal commas."""
    path = tmp_path / "labels.csv"
    path.write_text("file;O;C;E;A;N\nclip.csv;0,5;0,5;0,5;0,5;0,5\n")
    with pytest.raises(StageInputError, match="missing column.*one column split by ';'"):
        read_table(path, ["file", "O"])
