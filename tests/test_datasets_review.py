"""Review findings on the UDIVA, PerFeX and OpenFace CSV sources, and on k-fold splits for the
sources that bring their own: each test failed before its fix.

    pytest tests/test_datasets_review.py

The rule they hold the adapters to: a bad row is reported by file and row and dropped, the other
rows go on; nothing is lost or relabelled silently; splits are by subject.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personality import datasets, datasets_au
from personality.common import BaseParams, StageInputError, read_artifact
from personality.csv_tables import read_table
from personality.schemas import AU_INTENSITY
from stages.ingest import IngestParams, run
from tests.conftest import write_video
from tests.test_datasets import chalearn_annotations, newer_openface_csv, perfex_csv, py2_pickle


def _ingest(tmp_path, **kw) -> dict:
    # fixtures of a few subjects: no split is required to be filled
    return run(IngestParams(**{"required_splits": [], **kw}), BaseParams(seed=5, workers=1),
               root=tmp_path)


def _manifest(tmp_path) -> pd.DataFrame:
    return read_artifact("manifest", path=tmp_path / "data/manifest.parquet")


def _bad(summary: dict) -> str:
    return "\n".join(summary["bad_rows"])


# --------------------------------------------------------------------------------------------------
# PerFeX: the subject from `File` (F6)


def test_perfex_subject_from_windows_path_and_upper_case_extension(tmp_path):
    # PerFeX was made on Windows: POSIX reads `C:\FI\train\x.002.mp4` as one name, and `.MP4`
    # missed the pattern; both gave a subject of their own to one YouTube id
    df = perfex_csv(tmp_path / "p.csv", n_frames=(3, 3, 3, 3))
    for seq, file in enumerate(["abcdefghijk.001.mp4", r"C:\FI\train\abcdefghijk.002.mp4",
                                "abcdefghijk.003.MP4", "FI/train/notaclip.mp4"]):
        df.loc[df["ID"] == seq, "File"] = file
    df.to_csv(tmp_path / "p.csv", index=False)
    summary = _ingest(tmp_path, source="perfex",
                      perfex=datasets_au.PerfexParams(csv=str(tmp_path / "p.csv")))
    m = _manifest(tmp_path)
    assert sorted(m["video_id"]) == ["perfex_0", "perfex_1", "perfex_2"]
    assert set(m["subject_id"]) == {"abcdefghijk"}
    # a name the pattern cannot read is reported, not given a made-up subject
    assert "(ID 3, row 11): File 'FI/train/notaclip.mp4' is not a ChaLearn clip name" in \
        _bad(summary)


def test_perfex_windows_paths_do_not_put_one_youtube_id_in_two_splits(tmp_path):
    rows = []
    for k in range(30):
        yt = f"yt{k:09d}"
        for j, file in enumerate([f"{yt}.001.mp4", rf"D:\data\{yt}.002.mp4"]):
            rows.append({"ID": 2 * k + j, "File": file, "openness": .5, "conscientiousness": .5,
                         "extroversion": .5, "agreeableness": .5, "neuroticism": .5,
                         **{au: 1.0 for au in AU_INTENSITY}})
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(csv=str(tmp_path / "p.csv")))
    m = _manifest(tmp_path)
    youtube = m["video_id"].str.removeprefix("perfex_").astype(int) // 2
    assert m["subject_id"].nunique() == 30
    assert (m.groupby(youtube)["split"].nunique() == 1).all()


# --------------------------------------------------------------------------------------------------
# PerFeX: labels and ratings (F14)


def test_perfex_empty_or_nan_trait_is_a_bad_row(tmp_path):
    # pd.to_numeric reads "" and "nan" as NaN: they became NaN labels in the manifest
    df = perfex_csv(tmp_path / "p.csv", n_frames=(3, 3, 3))
    df["openness"] = df["openness"].astype(object)
    df.loc[df["ID"] == 1, "openness"] = ""
    df.loc[df["ID"] == 2, "neuroticism"] = float("nan")
    df.to_csv(tmp_path / "p.csv", index=False)
    summary = _ingest(tmp_path, source="perfex",
                      perfex=datasets_au.PerfexParams(csv=str(tmp_path / "p.csv")))
    m = _manifest(tmp_path)
    assert m["video_id"].tolist() == ["perfex_0"] and not m[list("OCEAN")].isna().any().any()
    assert "(ID 1, row 5): trait(s) openness empty or nan" in _bad(summary)
    assert "(ID 2, row 8): trait(s) neuroticism empty or nan" in _bad(summary)


def test_perfex_ratings_of_whole_numbers_are_likert(tmp_path):
    # the scale was guessed from max <= 1: a file of all-1 ratings became all 5s
    p = tmp_path / "r.csv"
    p.write_text("ID,rater,extroversion,neuroticism,agreeableness,conscientiousness,openness\n"
                 "0,r1,1,1,1,1,1\n")
    assert datasets_au.read_perfex_ratings(p)["E"].tolist() == [1.0]
    # a fraction says [0, 1]; an explicit scale overrides the guess
    p.write_text("ID,extroversion,neuroticism,agreeableness,conscientiousness,openness\n"
                 "0,0.5,1,1,1,1\n")
    assert datasets_au.read_perfex_ratings(p)["E"].tolist() == [3.0]
    p.write_text("ID,extroversion,neuroticism,agreeableness,conscientiousness,openness\n"
                 "0,1,1,1,0,1\n")
    assert datasets_au.read_perfex_ratings(p, scale="unit")["C"].tolist() == [1.0]
    with pytest.raises(StageInputError, match="row 2 .*outside Likert 1-5 .*rating_scale: unit"):
        datasets_au.read_perfex_ratings(p)


def test_perfex_missing_rating_is_reported_not_fatal(tmp_path):
    # one missing rating aborted the whole ingest
    perfex_csv(tmp_path / "p.csv")
    (tmp_path / "r.csv").write_text(
        "ID,rater,extroversion,neuroticism,agreeableness,conscientiousness,openness\n"
        "0,r1,4,2,5,3,3\n0,r2,5,,4,3,2\n1,r1,2,3,3,4,4\n")
    summary = _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(
        csv=str(tmp_path / "p.csv"), retrain_csv=str(tmp_path / "r.csv")))
    study = read_artifact("user_study", path=tmp_path / "data/user_study.parquet")
    assert study["rater_id"].tolist() == ["r1", "r1"] and study["E"].tolist() == [4.0, 2.0]
    assert "r.csv row 3 (ID 0): rating(s) neuroticism missing or not a number" in _bad(summary)


# --------------------------------------------------------------------------------------------------
# UDIVA (F7, F8, F9)


UDIVA_META = "train/metadata/metadata_train"
UDIVA_TALK = "train/recordings/talk_recordings_train"


def _udiva(tmp_path, parts: str, names=("FC1_T.mp4", "FC2_T.mp4"), sessions="001080,101,102\n"):
    root = tmp_path / "udiva"  # the release's layout, train only
    (root / UDIVA_META).mkdir(parents=True)
    (root / UDIVA_META / "parts_train.csv").write_text(
        "ID,OPENMINDEDNESS_Z,CONSCIENTIOUSNESS_Z,EXTRAVERSION_Z,AGREEABLENESS_Z,"
        "NEGATIVEEMOTIONALITY_Z\n" + parts)
    (root / UDIVA_META / "sessions_train.csv").write_text("ID,PART.1,PART.2\n" + sessions)
    for name in names:
        write_video(root / UDIVA_TALK / "001080" / name, n_frames=5)
    return root


def test_udiva_participant_on_two_differing_rows_is_dropped_and_reported(tmp_path):
    # the last row silently overwrote the first: which z-scores are right is unknown
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,0.1,0.1\n"
                            "101,-2.0,-2.0,-2.0,-2.0,-2.0\n102,0.1,0.1,0.1,0.1,0.1\n")
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    m = _manifest(tmp_path)
    assert m["subject_id"].tolist() == ["102"]  # an identical repeat is harmless: kept
    bad = _bad(summary)
    assert "parts_train.csv rows 2 and 4: participant 101 has two different rows" in bad
    assert "FC1_T.mp4: participant 101 dropped: two different rows" in bad
    assert summary["n_bad_rows"] == 2


def test_udiva_nan_zscore_is_a_bad_row(tmp_path):
    # float("nan") parses: a NaN label reached the manifest
    root = _udiva(tmp_path, "101,nan,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,inf,0.1\n")
    with pytest.raises(StageInputError, match="no usable video") as err:
        _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    assert "parts_train.csv row 2 (participant 101): a trait z-score is not a finite" in \
        str(err.value)
    assert "row 3 (participant 102): a trait z-score is not a finite" in str(err.value)


def test_udiva_upper_case_extension_counts_and_a_missing_recording_is_reported(tmp_path):
    # rglob("*.mp4") missed FC2_T.MP4, and nothing said participant 102 had no recording
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,0.1,0.1\n"
                            "103,0.2,0.2,0.2,0.2,0.2\n104,0.3,0.3,0.3,0.3,0.3\n",
                  names=("FC1_T.mp4", "FC2_T.MP4"), sessions="001080,101,102\n001081,103,104\n")
    write_video(root / UDIVA_TALK / "001081/FC1_T.mp4", n_frames=5)
    (root / UDIVA_META / "parts_train.csv").write_text(
        (root / UDIVA_META / "parts_train.csv").read_text() + "105,0.3,0.3,0.3,0.3,0.3\n")
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    assert sorted(_manifest(tmp_path)["video_id"]) == ["001080_FC1_T", "001080_FC2_T",
                                                       "001081_FC1_T"]
    bad = _bad(summary)
    assert "001081: no recording FC2_T.mp4 of participant 104 (session 001081)" in bad
    assert "participant 105 is in no session" in bad
    assert summary["n_bad_rows"] == 2


def test_udiva_recordings_unpacked_in_lower_case_count(tmp_path):
    # the pattern FC<part>_<task> was case-sensitive: fc1_t.mp4 (a release unpacked lower-cased)
    # was "no recording FC1_T.mp4 of participant 101"
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,0.1,0.1\n",
                  names=("fc1_t.mp4", "Fc2_t.MP4"))
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    assert summary["n_bad_rows"] == 0, summary["bad_rows"]
    m = _manifest(tmp_path).set_index("video_id")  # ids keep the file's own stem
    assert m["subject_id"].to_dict() == {"001080_Fc2_t": "102", "001080_fc1_t": "101"}


def test_udiva_second_recording_of_one_participant_is_reported_not_fatal(tmp_path):
    # the same name in a subfolder gives one video_id: the duplicate id aborted the ingest
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,0.1,0.1\n",
                  names=("FC1_T.mp4", "copy/FC1_T.mp4", "FC2_T.mp4"))
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    m = _manifest(tmp_path).set_index("video_id")
    assert m.loc["001080_FC1_T", "path"].endswith("001080/FC1_T.mp4") and len(m) == 2
    assert "copy/FC1_T.mp4: a second recording FC1_T of session 001080" in _bad(summary)


@pytest.mark.parametrize("names", [("FC1_T.mp4", "FC1_T.MP4"), ("FC1_T.mp4", "fc1_t.mp4")])
def test_udiva_one_recording_under_two_spellings_is_refused_naming_both(tmp_path, names):
    # as ChaLearn's X.001.mp4 beside X.001.MP4: the first file found was kept (FC1_T.MP4, as
    # sorted), as if it were surely the recording
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n102,0.1,0.1,0.1,0.1,0.1\n",
                  names=(*names, "FC2_T.mp4"))
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    assert _manifest(tmp_path)["subject_id"].tolist() == ["102"]
    folder = root / UDIVA_TALK / "001080"
    first, second = sorted(names)
    assert summary["bad_rows"] == [
        f"{folder}/{first} and {folder}/{second}: one recording FC1_T of session 001080 under "
        "two spellings of its name; both left out (which one is the recording is unknown): "
        "remove or rename one"]


# --------------------------------------------------------------------------------------------------
# ingest.split_mode=kfold on sources with their own split (F10)


def test_ingest_kfold_is_refused_for_sources_with_their_own_split(tmp_path):
    # finish_splits keeps the rows' fixed split: every fold of `make cv` was the same split
    root = tmp_path / "cl"
    write_video(root / "train/t1/AAAAAAAAAAA.001.mp4", n_frames=5)
    (root / "annotation_training.pkl").write_bytes(py2_pickle(chalearn_annotations(
        {"AAAAAAAAAAA.001.mp4": 0.5})))
    with pytest.raises(StageInputError, match="kfold does not apply to source chalearn16.*"
                                              "ingest.chalearn16.split_mode.*chalearn16.fold"):
        _ingest(tmp_path, source="chalearn16", split_mode="kfold", n_folds=3, fold=1,
                chalearn16=datasets.ChaLearnParams(root=str(root)))
    with pytest.raises(StageInputError, match="source udiva.*ingest.udiva.splits"):
        _ingest(tmp_path, source="udiva", split_mode="kfold",
                udiva=datasets.UdivaParams(root=str(_udiva(tmp_path, ""))))


def test_cv_script_says_which_sources_it_folds():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import cv

    assert "chalearn16" in cv.__doc__ and "udiva" in cv.__doc__


# --------------------------------------------------------------------------------------------------
# OpenFace CSVs: the labels CSV (F11, F12, F13)


def _openface(tmp_path, rows: str):
    ds = tmp_path / "of"
    ds.mkdir(exist_ok=True)
    for name in ("a.csv", "b.csv", "c.csv"):
        newer_openface_csv(ds / name)
    (ds / "labels.csv").write_text("file,O,C,E,A,N,subject,split\n" + rows)
    return datasets_au.OpenFaceParams(labels=str(ds / "labels.csv"))


def test_openface_split_is_lower_cased_and_checked(tmp_path):
    # `Train` and `validation` passed through, and every filter on "train" dropped them
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,Train\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,s2,validation\n"
                                 "c.csv,0.1,0.2,0.3,0.4,0.5,s3,dev\n")
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params)
    assert _manifest(tmp_path).set_index("video_id")["split"].to_dict() == {
        "a.csv": "train", "b.csv": "val"}
    assert "row 4 (c.csv): split 'dev' is not one of train, val, test" in _bad(summary)


def test_openface_labels_columns_are_read_in_any_case(tmp_path):
    # `Subject` / `Split` were ignored: a.csv and b.csv, one person, were two subjects
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,test\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,s1,\n"
                                 "c.csv,0.1,0.2,0.3,0.4,0.5,s3,\n")
    labels = Path(params.labels)
    labels.write_text(labels.read_text().replace("file,O,C,E,A,N,subject,split",
                                                 "file,O,C,E,A,N,Subject,Split"))
    _ingest(tmp_path, source="openface_csv", openface_csv=params)
    m = _manifest(tmp_path).set_index("video_id")
    assert m.loc["b.csv", "subject_id"] == "s1" and m.loc["b.csv", "split"] == "test"
    labels.write_text(labels.read_text().replace("file,O,C,E,A,N", "File,O,C,E,A,n"))
    _ingest(tmp_path, source="openface_csv", openface_csv=params)  # required ones too
    assert _manifest(tmp_path).set_index("video_id").loc["a.csv", "N"] == pytest.approx(0.5)
    labels.write_text("file,O,C,E,A,N,subject,Subject\na.csv,0.1,0.2,0.3,0.4,0.5,s1,s1\n")
    with pytest.raises(StageInputError, match="column.s. subject given twice"):
        _ingest(tmp_path, source="openface_csv", openface_csv=params)
    # an exact repeat, which pandas renames (subject, subject.1): the second was never read
    labels.write_text("file,O,C,E,A,N,subject,subject\na.csv,0.1,0.2,0.3,0.4,0.5,s1,s2\n")
    with pytest.raises(StageInputError, match="column.s. subject given twice"):
        _ingest(tmp_path, source="openface_csv", openface_csv=params)


@pytest.mark.parametrize("source", ["openface_csv", "udiva"])
def test_a_first_row_with_an_extra_field_fails_the_file_not_shifts_its_columns(tmp_path, source):
    # pandas took the first cell of such a row as the index of every row and shifted the columns
    # one to the left; the stage then crashed on `row {index + 2}`: TypeError, no file named
    if source == "openface_csv":
        params = {"openface_csv": _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,,note\n"
                                                      "b.csv,0.1,0.2,0.3,0.4,0.5,s2,\n")}
        bad = Path(params["openface_csv"].labels)
    else:
        root = _udiva(tmp_path, "")
        bad = root / UDIVA_META / "parts_train.csv"
        bad.write_text("ID,AGE,COUNTRY," + ",".join(datasets.UDIVA_TRAITS) + "\n"
                       "101,25,Spain, Madrid,0.1,0.2,0.3,0.4,0.5\n102,31,Italy,1,1,1,1,1\n")
        params = {"udiva": datasets.UdivaParams(root=str(root))}
    with pytest.raises(StageInputError, match="first row has more fields than its header"
                       ) as err:
        _ingest(tmp_path, source=source, **params)
    assert str(bad) in str(err.value)


def test_openface_file_written_with_backslashes_is_found(tmp_path):
    # `sub\d.csv` (a labels CSV written on Windows): "OpenFace CSV .../sub\d.csv not found"
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,\n"
                                 "sub\\d.csv,0.1,0.2,0.3,0.4,0.5,s2,\n")
    (Path(params.labels).parent / "sub").mkdir()
    newer_openface_csv(Path(params.labels).parent / "sub" / "d.csv")
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params)
    assert summary["n_bad_rows"] == 0 and summary["n_videos"] == 2


def test_openface_partial_or_nan_labels_are_bad_rows(tmp_path):
    # the folder source's rule, now shared: all five labels or none, `nan` is no label
    params = _openface(tmp_path, "a.csv,0.1,,,,,s1,\nb.csv,nan,0.2,0.3,0.4,0.5,s2,\n"
                                 "c.csv,,,,,,s3,\n")
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params)
    m = _manifest(tmp_path)
    assert m["video_id"].tolist() == ["c.csv"] and m[list("OCEAN")].isna().all().all()
    bad = _bad(summary)
    assert "row 2 (a.csv): labels O given but C, E, A, N empty" in bad
    assert "row 3 (b.csv): label O=nan is outside [0, 1]" in bad


def test_a_required_split_of_unlabelled_clips_only_is_refused(tmp_path):
    # test held one subject whose clips had no labels: ingest passed, train scored "test CCC
    # 0.000 [0.000, 0.000]" over no labelled clip
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,train\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,s2,val\n"
                                 "c.csv,,,,,,s3,test\n")
    with pytest.raises(StageInputError, match=r"split\(s\) test hold no labelled video \(1 "
                       r"unlabelled clip\(s\) of 1 subject\(s\)\)"):
        _ingest(tmp_path, source="openface_csv", openface_csv=params,
                required_splits=["train", "val", "test"])
    assert not (tmp_path / "data/manifest.parquet").exists()  # refused before any write
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params,
                      required_splits=["train", "val"])  # a deploy-only test split may be asked
    assert summary["n_test"] == 1
    # val's one labelled subject: its scores will have no interval; said before any training
    assert summary["warnings"] == [
        "split val holds 1 labelled subject(s): its CCC rests on so few people that its 95% "
        "interval over subjects says little (none with one); 3 or more give one worth reading"]


def test_openface_one_file_under_two_spellings_is_one_sequence(tmp_path):
    # a.csv and x/../a.csv landed in two splits; an exact repeat aborted the whole ingest
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,,train\n"
                                 "x/../a.csv,0.1,0.2,0.3,0.4,0.5,,test\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,,val\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,,val\n")
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params)
    assert sorted(_manifest(tmp_path)["video_id"]) == ["a.csv", "b.csv"]
    bad = _bad(summary)
    assert "row 3 (x/../a.csv): duplicate:" in bad and "the file of row 2 already" in bad
    assert "row 5 (b.csv): duplicate:" in bad and summary["n_bad_rows"] == 2


def test_folder_source_shares_the_split_rule(tmp_path):
    # one rule for both labels CSVs: `Validation` is val in the folder source too
    row = {"video": "v.mp4", **{t: "0.5" for t in "OCEAN"}, "split": " Validation "}
    assert datasets_au.row_split(row) == "val"
    assert datasets_au.row_labels(row)["O"] == 0.5


# --------------------------------------------------------------------------------------------------
# row numbers are the file's lines: pandas skips blank lines, and `row {i + 2}` counted its rows


def test_read_table_indexes_each_row_by_the_line_it_starts_on(tmp_path):
    # property over seeded random files: blank lines (empty, spaces, tabs: pandas skips them),
    # rows of empty cells (`,`, `""`: rows to pandas), quoted cells over two lines, CRLF or LF
    rng = np.random.default_rng(7)
    blanks, empties = ["", "   ", "\t", " \t "], [",", '""', '  ""']
    for trial in range(40):
        newline = "\r\n" if trial % 2 else "\n"
        text, line, want = ["id,note"], 1, []  # want: (line, id) of each row pandas reads
        for k in range(int(rng.integers(1, 12))):
            kind = int(rng.integers(0, 4))
            line += 1
            if kind == 0:
                text.append(blanks[rng.integers(len(blanks))])
            elif kind == 1:
                text.append(empties[rng.integers(len(empties))])
                want.append((line, ""))
            else:
                text.append(f'{k},"two{newline}lines"' if kind == 2 else f"{k},one")
                want.append((line, str(k)))
                line += kind == 2  # the record's second line
        path = tmp_path / f"lines_{trial}.csv"
        path.write_bytes((newline.join(text) + newline).encode())
        df = read_table(path, ["id"])
        assert list(zip(df.index, df["id"])) == want, text


def test_udiva_rows_named_in_problems_are_the_csv_lines_after_blank_lines(tmp_path):
    # parts: participant 102's nan is on line 5 (two blank lines above it), said "row 3"; sessions:
    # the second row of folder 001080 is on line 4, said "row 3"
    root = _udiva(tmp_path, "101,0.5,0.5,0.5,0.5,0.5\n\n  \n102,nan,0.1,0.1,0.1,0.1\n",
                  sessions="001080,101,102\n\n1080,101,102\n")
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    bad = _bad(summary)
    assert "parts_train.csv row 5 (participant 102): a trait z-score is not a finite" in bad
    assert "FC2_T.mp4: participant 102 dropped: row 5 of" in bad
    assert "sessions_train.csv row 4 (session 1080): folder 001080 is row 2's already" in bad


def test_perfex_rows_named_in_problems_are_the_csv_lines_after_blank_lines(tmp_path):
    # a sequence's first frame and a rating after blank lines were named by pandas' row count
    df = perfex_csv(tmp_path / "p.csv", n_frames=(2, 2))
    df["openness"] = df["openness"].astype(object)
    df.loc[df["ID"] == 1, "openness"] = ""
    lines = df.to_csv(index=False).splitlines()
    (tmp_path / "p.csv").write_text("\n".join(lines[:3] + ["", ""] + lines[3:]) + "\n")
    (tmp_path / "r.csv").write_text(
        "ID,rater,extroversion,neuroticism,agreeableness,conscientiousness,openness\n\n"
        "0,r1,4,2,5,3,3\n\n\n0,r2,5,,4,3,2\n")
    summary = _ingest(tmp_path, source="perfex", perfex=datasets_au.PerfexParams(
        csv=str(tmp_path / "p.csv"), retrain_csv=str(tmp_path / "r.csv")))
    assert "p.csv (ID 1, row 6): trait(s) openness empty or nan" in _bad(summary)
    assert "r.csv row 6 (ID 0): rating(s) neuroticism missing or not a number" in _bad(summary)


def test_openface_rows_named_in_problems_are_the_csv_lines_after_blank_lines(tmp_path):
    params = _openface(tmp_path, "a.csv,0.1,0.2,0.3,0.4,0.5,s1,train\n\n\n"
                                 "b.csv,0.1,0.2,0.3,0.4,0.5,s2,dev\n\n"
                                 "a.csv,0.1,0.2,0.3,0.4,0.5,s1,\n")
    summary = _ingest(tmp_path, source="openface_csv", openface_csv=params)
    assert "labels.csv row 5 (b.csv): split 'dev' is not one of" in _bad(summary)
    assert "labels.csv row 7 (a.csv): duplicate: " in _bad(summary)
    assert "is the file of row 2 already" in _bad(summary)
