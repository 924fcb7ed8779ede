"""The chalearn16 and udiva readers on the layouts the real releases ship in (an audit of the
ingest readers against the distributed datasets): each test failed before its fix, but for two
guards: the legacy UDIVA layout still reads, and zips left beside what they extracted to are not
reported (the second half of that test, an unreadable zip reported, failed before).

    pytest tests/test_ingest_real_layouts.py

Videos are copies of tests/fixtures/single_face.mp4. Layouts:
  - ChaLearn First Impressions V2: zip-in-zip; train-N.zip holds training80_01.zip ..., which
    extract to train/train-N/training80_XX/<YouTube video id>.NNN.mp4 (validation, test alike);
  - UDIVA v0.5, per split: <split>/metadata/metadata_<split>/{parts,sessions}_<split>.csv, the
    val / test labels only in parts_<split>_unmasked.csv (parts_<split>.csv masks them), and one
    folder per task: <split>/recordings/<task>_recordings_<split>/<6-digit session>/FC1_T.mp4.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from personality import datasets
from personality.common import BaseParams, StageInputError, read_artifact
from stages import inputs
from stages.ingest import IngestParams, run
from tests.conftest import real_fixture
from tests.test_datasets import chalearn_annotations, py2_pickle


def _ingest(tmp_path, **kw) -> dict:
    # a few subjects per fixture: no split is required to be filled
    return run(IngestParams(**{"required_splits": [], **kw}), BaseParams(seed=5, workers=1),
               root=tmp_path)


def _manifest(tmp_path) -> pd.DataFrame:
    return read_artifact("manifest", path=tmp_path / "data/manifest.parquet")


def _clip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return shutil.copyfile(real_fixture("single_face.mp4"), path)


# --------------------------------------------------------------------------------------------------
# ChaLearn First Impressions V2 (C1)

CHALEARN = {  # inner zip (relative to root, without .zip) -> its clips
    "train/train-1/training80_01": ["AAAAAAAAAAA.001.mp4", "BBBBBBBBBBB.001.mp4"],
    "train/train-2/training80_02": ["CCCCCCCCCCC.001.mp4"],
    "validation/val-1/validation80_01": ["DDDDDDDDDDD.001.mp4"],
    "test/test-1/test80_01": ["EEEEEEEEEEE.001.mp4"],
}
PICKLES = {"train": "annotation_training.pkl", "validation": "annotation_validation.pkl",
           "test": "annotation_test.pkl"}


def _chalearn(tmp_path, packed: set[str], keep_zips: bool = False) -> Path:
    """The release with the inner zips in `packed` left as zips, the others extracted (and
    their zips left beside the folder they extracted to, with `keep_zips`)."""
    root = tmp_path / "chalearn"
    scores: dict[str, dict[str, float]] = {}
    for inner, names in CHALEARN.items():
        for k, name in enumerate(names):
            scores.setdefault(inner.split("/")[0], {})[name] = 0.4 + 0.1 * k
            clip = _clip(root / inner / name)
            if inner in packed or keep_zips:
                with zipfile.ZipFile(root / f"{inner}.zip", "a") as z:
                    z.write(clip, name)  # flat, as the release's inner zips hold their clips
        if inner in packed:
            shutil.rmtree(root / inner)
    for folder, pickle in PICKLES.items():
        (root / pickle).write_bytes(py2_pickle(chalearn_annotations(scores[folder])))
    return root


def test_chalearn16_inner_zips_not_extracted_stop_the_stage_naming_them(tmp_path):
    # it stopped on "no usable video or sequence" and one "no such video" line per label
    root = _chalearn(tmp_path, packed=set(CHALEARN))
    with pytest.raises(StageInputError) as err:
        _ingest(tmp_path, source="chalearn16",
                chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    msg = str(err.value)
    assert msg == (f"4 archives not extracted under {root}, e.g. "
                   f"{root}/train/train-1/training80_01.zip: extract them (unzip, with the "
                   "password that comes with access)")
    assert not (tmp_path / "data/manifest.parquet").exists()


def test_chalearn16_partly_extracted_reports_the_zips_left_and_goes_on(tmp_path):
    # training80_02.zip's clips were lost with only a "no such video" line per clip
    root = _chalearn(tmp_path, packed={"train/train-2/training80_02"})
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert sorted(_manifest(tmp_path)["video_id"]) == [
        "AAAAAAAAAAA.001", "BBBBBBBBBBB.001", "DDDDDDDDDDD.001", "EEEEEEEEEEE.001"]
    assert summary["bad_rows"][0] == (
        f"1 archive not extracted under {root}/train, e.g. {root}/train/train-2/training80_02.zip"
        ": extract them (unzip, with the password that comes with access)")
    assert f"label for CCCCCCCCCCC.001.mp4 but no such video under {root}/train" in \
        summary["bad_rows"][1]
    assert summary["n_bad_rows"] == 2


def test_chalearn16_zips_left_beside_what_they_extracted_to_are_not_reported(tmp_path):
    """Not a finding, a guard on its fix: `unzip` leaves the archive in place, beside a folder
    of its name or (unzipped where it lies) beside its clips; neither is "not extracted"."""
    root = _chalearn(tmp_path, packed=set(), keep_zips=True)
    val = root / "validation/val-1"
    for clip in (val / "validation80_01").iterdir():
        clip.rename(val / clip.name)  # validation80_01.zip unzipped where it lies
    (val / "validation80_01").rmdir()
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert len(_manifest(tmp_path)) == 5 and summary["n_bad_rows"] == 0
    # a zip that cannot be read is no proof of anything: reported
    (root / "test/test-1/test80_02.zip").write_bytes(b"not a zip")
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert summary["bad_rows"] == [f"1 archive not extracted under {root}/test, e.g. "
                                   f"{root}/test/test-1/test80_02.zip: extract them (unzip, "
                                   "with the password that comes with access)"]


def test_chalearn16_an_outer_zip_unzipped_in_place_is_extracted_an_empty_folder_is_not(tmp_path):
    """From the review: the outer train-1.zip lists only inner zips, which are there (so it
    was extracted), but was reported for ever; an inner zip beside an empty folder of its name
    (a failed unzip: a wrong password) was taken as extracted, and its clips lost silently."""
    root = _chalearn(tmp_path, packed=set(), keep_zips=True)
    with zipfile.ZipFile(root / "train/train-1.zip", "w") as outer:
        outer.write(root / "train/train-1/training80_01.zip", "training80_01.zip")
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert summary["n_bad_rows"] == 0
    shutil.rmtree(root / "train/train-2/training80_02")
    (root / "train/train-2/training80_02").mkdir()  # what a failed unzip leaves
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert summary["bad_rows"][0].startswith(
        f"1 archive not extracted under {root}/train, e.g. {root}/train/train-2/training80_02.zip")


def test_a_named_pipe_or_a_symlink_out_named_zip_is_not_opened_as_an_archive(tmp_path):
    """From the security review: a named pipe called stuck.zip under a split folder hung ingest
    for ever (zipfile's open waits for a writer), and a .zip symlinked out of the dataset had
    its listing read. Neither is an archive of the release: both are left alone."""
    import os
    import threading

    from personality.archives import unextracted_zips

    root = _chalearn(tmp_path, packed={"train/train-2/training80_02"})
    train = root / "train"
    os.mkfifo(train / "stuck.zip")
    with zipfile.ZipFile(tmp_path / "outside.zip", "w") as z:
        z.writestr("elsewhere.mp4", b"x")
    (train / "out.zip").symlink_to(tmp_path / "outside.zip")
    found: list = []
    worker = threading.Thread(target=lambda: found.append(unextracted_zips(train, set())),
                              daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # release the blocked open (a writer arrives, then leaves)
        os.close(os.open(train / "stuck.zip", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("unextracted_zips blocked on a named pipe called stuck.zip")
    assert found == [[train / "train-2/training80_02.zip"]]


# --------------------------------------------------------------------------------------------------
# UDIVA v0.5 (U1-U4)

Z = "OPENMINDEDNESS_Z,CONSCIENTIOUSNESS_Z,EXTRAVERSION_Z,AGREEABLENESS_Z,NEGATIVEEMOTIONALITY_Z"
# the release's CSVs, as in the audit's mock (IDs plain integers, sessions zero-padded)
UDIVA_CSVS = {
    "train/metadata/metadata_train/parts_train.csv":
        f"ID,AGE,GENDER,SESSION1,SESSION2,{Z}\n2,29,F,002003,,0.5,-1.2,1.1,0.0,-0.3\n"
        "3,28,F,002003,,-0.4,0.2,-0.9,1.3,0.8\n55,23,M,055128,,0.1,0.1,0.1,0.1,0.1\n"
        "128,55,F,055128,,0.2,0.2,0.2,0.2,0.2\n",
    "train/metadata/metadata_train/sessions_train.csv":
        "ID,PART.1,PART.2,LANGUAGE,KNOWN,TALK_ORDER,ANIMALS_ORDER\n002003,2,3,ES,True,1,2\n"
        "055128,55,128,ES,False,2,1\n",
    "val/metadata/metadata_val/parts_val.csv": "ID,AGE,GENDER,SESSION1\n8,33,F,008105\n"
                                               "105,25,M,008105\n",  # masked: no trait column
    "val/metadata/metadata_val/parts_val_unmasked.csv":
        f"ID,AGE,GENDER,SESSION1,{Z}\n8,33,F,008105,0.3,0.3,0.3,0.3,0.3\n"
        "105,25,M,008105,0.4,0.4,0.4,0.4,0.4\n",
    "val/metadata/metadata_val/sessions_val.csv": "ID,PART.1,PART.2,LANGUAGE,KNOWN\n"
                                                  "008105,8,105,ES,False\n",
    "test/metadata/metadata_test/parts_test.csv":  # masked: trait columns empty
        f"ID,AGE,GENDER,SESSION1,{Z}\n10,22,F,010011,,,,,\n11,22,M,010011,,,,,\n",
    "test/metadata/metadata_test/parts_test_unmasked.csv":
        f"ID,AGE,GENDER,SESSION1,{Z}\n10,22,F,010011,0.5,0.5,0.5,0.5,0.5\n"
        "11,22,M,010011,0.6,0.6,0.6,0.6,0.6\n",
    "test/metadata/metadata_test/sessions_test.csv": "ID,PART.1,PART.2,LANGUAGE,KNOWN\n"
                                                     "010011,10,11,ES,True\n",
}
UDIVA_SESSIONS = {"train": ["002003", "055128"], "val": ["008105"], "test": ["010011"]}


def _release_splits(task_folder: str = "", **parts: str) -> dict:
    """ingest.udiva.splits for the release's layout, written out here (not imported) so that a
    test reads the same before and after the fix. `parts` replaces a split's parts CSV;
    `task_folder` ("talk") points `recordings` at that task's folder of session folders, a
    setting the reader took before: the tests of the other findings then test only theirs."""
    out = {}
    for split in ("train", "val", "test"):
        meta = f"{split}/metadata/metadata_{split}"
        name = parts.get(split, "parts_train.csv" if split == "train"
                         else f"parts_{split}_unmasked.csv")
        recordings = f"{split}/recordings" + (f"/{task_folder}_recordings_{split}"
                                              if task_folder else "")
        out[split] = {"parts": f"{meta}/{name}", "sessions": f"{meta}/sessions_{split}.csv",
                      "recordings": recordings}
    return out


def _talk(root: Path) -> datasets.UdivaParams:
    return datasets.UdivaParams(root=str(root), splits=_release_splits("talk"))


@pytest.fixture
def udiva(tmp_path) -> Path:
    root = tmp_path / "udiva_v05"
    for rel, text in UDIVA_CSVS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for split, sessions in UDIVA_SESSIONS.items():
        for session in sessions:
            for folder, task in (("talk", "T"), ("animals", "A")):
                for part in (1, 2):
                    _clip(root / split / "recordings" / f"{folder}_recordings_{split}" /
                          session / f"FC{part}_{task}.mp4")
    return root


def test_udiva_defaults_read_the_release_layout_and_unmasked_labels(udiva, tmp_path):
    # the defaults (metadata/parts_train.csv, recordings/train) matched no real layout
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva)))
    m = _manifest(tmp_path).set_index("video_id")
    assert sorted(m.index) == ["002003_FC1_T", "002003_FC2_T", "008105_FC1_T", "008105_FC2_T",
                               "010011_FC1_T", "010011_FC2_T", "055128_FC1_T", "055128_FC2_T"]
    assert m["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert m.loc["008105_FC2_T", "subject_id"] == "105" and m.loc["008105_FC2_T", "O"] == 0.4
    assert m.loc["010011_FC1_T", "N"] == 0.5 and m.loc["002003_FC1_T", "C"] == -1.2
    assert m.loc["002003_FC1_T", "path"].endswith(
        "train/recordings/talk_recordings_train/002003/FC1_T.mp4")
    assert summary["n_bad_rows"] == 0


def test_udiva_with_no_split_found_names_the_files_looked_for(tmp_path):
    # every split absent: "no usable video or sequence", the absences only INFO logs
    root = tmp_path / "udiva_v05"
    root.mkdir()
    with pytest.raises(StageInputError) as err:
        _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(root)))
    msg = str(err.value)
    assert "\n" not in msg and "no usable video" not in msg
    assert f"no participants CSV found under {root}: looked for " in msg
    for rel in ("train/metadata/metadata_train/parts_train.csv",
                "val/metadata/metadata_val/parts_val_unmasked.csv",
                "test/metadata/metadata_test/parts_test_unmasked.csv"):
        assert str(root / rel) in msg


def test_udiva_split_with_sessions_but_no_parts_csv_is_reported(udiva, tmp_path):
    # an older download without parts_val_unmasked.csv: the val split vanished silently
    (udiva / "val/metadata/metadata_val/parts_val_unmasked.csv").unlink()
    summary = _ingest(tmp_path, source="udiva", udiva=_talk(udiva))
    assert set(_manifest(tmp_path)["split"]) == {"train", "test"}
    meta = udiva / "val/metadata/metadata_val"
    assert summary["bad_rows"] == [f"{meta}/parts_val_unmasked.csv: not found, but "
                                   f"{meta}/sessions_val.csv is: the val split is left out"]


@pytest.mark.parametrize("split", ["val", "test"])  # val: no trait column; test: all empty
def test_udiva_masked_parts_csv_is_one_clear_error(udiva, tmp_path, split):
    # val: "missing column(s) ..."; test: one "not a finite number" line per participant
    splits = _release_splits("talk", **{split: f"parts_{split}.csv"})
    with pytest.raises(StageInputError) as err:
        _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva),
                                                                     splits=splits))
    path = udiva / f"{split}/metadata/metadata_{split}/parts_{split}.csv"
    assert str(err.value) == (f"labels are masked in {path} (its trait z-score columns are "
                              f"missing or empty): use parts_{split}_unmasked.csv "
                              f"(ingest.udiva.splits.{split}.parts)")


def test_udiva_two_tasks_are_found_in_their_own_folders(udiva, tmp_path):
    # one `recordings` folder per split held one task: tasks [T, A] found A nowhere (the
    # talk folder: A reported missing; the recordings/ folder: every session not found)
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(
        root=str(udiva), tasks=["T", "A"], splits=_release_splits()))
    m = _manifest(tmp_path).set_index("video_id")
    assert len(m) == 16 and summary["n_bad_rows"] == 0
    assert m.loc["055128_FC2_A", "path"].endswith(
        "train/recordings/animals_recordings_train/055128/FC2_A.mp4")
    assert m.loc["055128_FC2_A", "subject_id"] == "128"
    # a task missing from one session is still named
    (udiva / "val/recordings/animals_recordings_val/008105/FC1_A.mp4").unlink()
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(
        root=str(udiva), tasks=["T", "A"], splits=_release_splits()))
    assert len(_manifest(tmp_path)) == 15
    assert summary["bad_rows"] == [
        f"{udiva}/val/recordings/animals_recordings_val/008105, "
        f"{udiva}/val/recordings/talk_recordings_val/008105: no recording FC1_A.mp4 of "
        "participant 8 (session 008105)"]


def test_udiva_a_folder_of_session_folders_still_reads(tmp_path):
    """The layout the reader took before (recordings/<split>/<session>/), given in params."""
    root = tmp_path / "udiva"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata/parts_train.csv").write_text(
        UDIVA_CSVS["train/metadata/metadata_train/parts_train.csv"])
    (root / "metadata/sessions_train.csv").write_text(
        UDIVA_CSVS["train/metadata/metadata_train/sessions_train.csv"])
    for session in UDIVA_SESSIONS["train"]:
        for part in (1, 2):
            _clip(root / "recordings/train" / session / f"FC{part}_T.mp4")
    splits = {"train": {"parts": "metadata/parts_train.csv",
                        "sessions": "metadata/sessions_train.csv", "recordings": "recordings/train"}}
    summary = _ingest(tmp_path, source="udiva",
                      udiva=datasets.UdivaParams(root=str(root), splits=splits))
    assert len(_manifest(tmp_path)) == 4 and summary["n_bad_rows"] == 0


def test_udiva_session_ids_without_zero_padding_find_their_folders(udiva, tmp_path):
    # `2003` (a CSV saved by a spreadsheet) missed the folder 002003: every session not found
    sessions = udiva / "train/metadata/metadata_train/sessions_train.csv"
    _ingest(tmp_path, source="udiva", udiva=_talk(udiva))
    padded = _manifest(tmp_path)
    sessions.write_text(sessions.read_text().replace("002003,", "2003,")
                        .replace("055128,", "55128,"))
    summary = _ingest(tmp_path, source="udiva", udiva=_talk(udiva))
    assert summary["n_bad_rows"] == 0
    pd.testing.assert_frame_equal(_manifest(tmp_path), padded)  # ids from the folder: the same
    # `2003` beside `002003`: one folder, the second row reported (it aborted on a duplicate id)
    sessions.write_text(sessions.read_text() + "002003,2,3,ES,True,1,2\n")
    summary = _ingest(tmp_path, source="udiva", udiva=_talk(udiva))
    assert len(_manifest(tmp_path)) == 8
    assert summary["bad_rows"] == [f"{sessions} row 4 (session 002003): folder 002003 is row "
                                   "2's already; dropped"]


def test_udiva_fingerprint_follows_the_release_csvs(udiva, tmp_path):
    # inputs hashed <root>/metadata/*.csv only: a corrected label re-ran nothing
    params = {"source": "udiva", "udiva": {"root": str(udiva)}}
    first = inputs.fingerprint(params, tmp_path)
    key = "udiva_v05/val/metadata/metadata_val/parts_val_unmasked.csv"
    assert "sha256" in first["files"][key]
    labels = udiva / key.split("/", 1)[1]
    labels.write_text(labels.read_text().replace("0.3,0.3", "0.9,0.3"))
    assert inputs.fingerprint(params, tmp_path)["files"][key] != first["files"][key]


# --------------------------------------------------------------------------------------------------
# split / recordings folders linked to another disk (the user's layout, not a label file's path)


def test_chalearn16_split_folders_linked_to_another_disk_are_read_and_fingerprinted(tmp_path):
    # "train: path escapes the dataset root" stopped the stage; the fingerprint saw no video
    disk = _chalearn(tmp_path, packed=set())
    root = tmp_path / "chalearn_links"
    root.mkdir()
    for name in ("train", "validation", "test", *PICKLES.values()):
        (root / name).symlink_to(disk / name)
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert len(_manifest(tmp_path)) == 5 and summary["n_bad_rows"] == 0
    files = inputs.fingerprint({"source": "chalearn16", "chalearn16": {"root": str(root)}},
                               tmp_path)["files"]
    assert sum(key.endswith(".mp4") for key in files) == 5
    # a clip linked out of its split folder and out of the root is still refused
    outside = _clip(tmp_path / "elsewhere" / "FFFFFFFFFFF.001.mp4")
    (disk / "train" / "FFFFFFFFFFF.001.mp4").symlink_to(outside)
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert "FFFFFFFFFFF.001.mp4: path escapes the dataset root" in summary["bad_rows"][0]


def test_udiva_recordings_folder_linked_to_another_disk_is_read(udiva, tmp_path):
    disk = tmp_path / "disk"
    (udiva / "val" / "recordings").rename(disk)
    (udiva / "val" / "recordings").symlink_to(disk)
    summary = _ingest(tmp_path, source="udiva", udiva=datasets.UdivaParams(root=str(udiva)))
    assert _manifest(tmp_path)["split"].value_counts().to_dict() == {
        "train": 4, "val": 2, "test": 2}
    assert summary["n_bad_rows"] == 0
    files = inputs.fingerprint({"source": "udiva", "udiva": {"root": str(udiva)}},
                               tmp_path)["files"]
    assert sum(key.startswith("disk/") for key in files) == 4  # talk and animals, FC1 and FC2


def test_chalearn16_mac_leftovers_beside_the_clips_are_not_clips(tmp_path):
    # a release unzipped on a Mac, or copied from one, holds ._<clip>.mp4 beside every clip and
    # __MACOSX/ copies of them: each was a "video has no label" line (a failed stage with
    # strict: true), one per clip of the release
    root = _chalearn(tmp_path, packed=set())
    for clip in list(root.rglob("*.mp4")):
        (clip.parent / f"._{clip.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
        mac = root / "__MACOSX" / clip.relative_to(root).parent / f"._{clip.name}"
        mac.parent.mkdir(parents=True, exist_ok=True)
        mac.write_bytes(bytes(4096))
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert len(_manifest(tmp_path)) == 5 and summary["n_bad_rows"] == 0, summary["bad_rows"]


# --------------------------------------------------------------------------------------------------
# an extension in upper case (`X.003.MP4`: a Windows copy, some unpackers)


def test_chalearn16_clips_with_an_upper_case_extension_are_found_and_labelled(tmp_path):
    # rglob("*.mp4") and the clip pattern were case-sensitive: each such clip was missing
    # ("label for X.001.mp4 but no such video") and its inner zip reported "not extracted"
    root = _chalearn(tmp_path, packed=set(), keep_zips=True)  # the zips list X.001.mp4
    for clip, ext in (("train/train-1/training80_01/AAAAAAAAAAA.001", "MP4"),
                      ("validation/val-1/validation80_01/DDDDDDDDDDD.001", "Mp4")):
        (root / f"{clip}.mp4").rename(root / f"{clip}.{ext}")
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert summary["n_bad_rows"] == 0, summary["bad_rows"]
    m = _manifest(tmp_path).set_index("video_id")
    assert sorted(m.index) == ["AAAAAAAAAAA.001", "BBBBBBBBBBB.001", "CCCCCCCCCCC.001",
                               "DDDDDDDDDDD.001", "EEEEEEEEEEE.001"]
    assert m.loc["AAAAAAAAAAA.001", "path"].endswith("training80_01/AAAAAAAAAAA.001.MP4")
    assert m.loc["AAAAAAAAAAA.001", "subject_id"] == "AAAAAAAAAAA"
    assert m.loc["DDDDDDDDDDD.001", "split"] == "val"
    assert m.loc["AAAAAAAAAAA.001", "E"] == pytest.approx(0.4)  # its label, found by key
    # the subject (what kfold splits by) is the YouTube id whatever the extension's case
    assert datasets.chalearn_subject("J4GQm9j0JZ0.003.MP4") == "J4GQm9j0JZ0"


def test_chalearn16_one_clip_under_two_extension_cases_is_refused_naming_both(tmp_path):
    # with any case accepted, X.001.mp4 beside X.001.MP4 must not silently become one of them
    root = _chalearn(tmp_path, packed=set())
    folder = root / "train/train-1/training80_01"
    shutil.copyfile(folder / "AAAAAAAAAAA.001.mp4", folder / "AAAAAAAAAAA.001.MP4")
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert "AAAAAAAAAAA.001" not in set(_manifest(tmp_path)["video_id"])
    assert summary["bad_rows"] == [
        f"{folder}/AAAAAAAAAAA.001.MP4 and {folder}/AAAAAAAAAAA.001.mp4: one clip "
        "AAAAAAAAAAA.001.mp4 under two spellings of its extension; both left out (which one its "
        "label means is unknown): remove or rename one"]


def test_folder_labels_find_a_clip_whose_extension_is_in_another_case(tmp_path):
    # a labels CSV written where case does not matter (Windows) says a.mp4 for a.MP4: every such
    # row was "video file ... not found", and the fingerprint did not follow the file
    from stages.ingest import read_labels_csv

    for name in ("a.MP4", "b.mp4", "c.MP4", "c.Mp4"):
        _clip(tmp_path / "clips" / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("video,O,C,E,A,N\n" + "".join(f"clips/{n},.5,.5,.5,.5,.5\n"
                                                     for n in ("a.mp4", "b.MP4", "c.mp4")))
    rows, problems = read_labels_csv(labels)
    assert [p.name for p in rows["abs_path"]] == ["a.MP4", "b.mp4"]
    clips = tmp_path.resolve() / "clips"
    assert problems == [f"{labels} row 4 (clips/c.mp4): clips/c.mp4 is not there, but "
                        f"{clips}/c.MP4 and {clips}/c.Mp4 are: they differ from it only in the "
                        "case of the extension, so which one is meant is unknown; rename one"]
    files = inputs.fingerprint({"source": "folder", "folder": {"labels": str(labels)}},
                               tmp_path)["files"]
    assert "size" in files["clips/a.MP4"] and "size" in files["clips/b.mp4"]


def test_chalearn16_clips_not_named_by_their_youtube_id_are_said_to_be_subjects_of_their_own(
        tmp_path):
    # the subject (what kfold splits by) is the YouTube id of `<id>.NNN.mp4`; a clip renamed
    # otherwise (AAAAAAAAAAA_001.mp4) fell back on its own name without a word: two clips of one
    # YouTube video could land in train and test, and the test scores were optimistic
    root = _chalearn(tmp_path, packed=set())
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), n_folds=3))
    assert not any("its own subject" in w for w in summary.get("warnings", []))
    pickles = {}
    for inner, names in CHALEARN.items():
        for k, name in enumerate(names):
            renamed = name.replace(".001", "_001")
            (root / inner / name).rename(root / inner / renamed)
            pickles.setdefault(inner.split("/")[0], {})[renamed] = 0.4 + 0.1 * k
    for folder, pickle in PICKLES.items():
        (root / pickle).write_bytes(py2_pickle(chalearn_annotations(pickles[folder])))
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), n_folds=3))
    m = _manifest(tmp_path)
    assert len(m) == 5 and (m["subject_id"] == m["video_id"]).all()
    said = [w for w in summary.get("warnings", []) if "its own subject" in w]
    assert said and "chalearn16" in said[0] and "<YouTube id>.NNN.mp4" in said[0], summary
