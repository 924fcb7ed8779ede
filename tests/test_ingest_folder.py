"""The `folder` source: a directory of videos and a labels CSV. Bad rows are reported by name and
the good ones kept; a malformed CSV fails with a message naming the file and row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from personality.common import BaseParams, StageInputError, read_artifact
from stages.ingest import FolderParams, IngestParams, read_labels_csv, run
from tests.conftest import write_video


@pytest.fixture
def folder(tmp_path):
    ds = tmp_path / "ds"
    for name in ("a1", "a2", "b1", "c1", "d1", "e1"):
        write_video(ds / "clips" / f"{name}.mp4", audio=name != "c1")
    (ds / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return ds


def _run(tmp_path, csv: Path, required_splits=("train", "val", "test"), **kw):
    params = IngestParams(source="folder", required_splits=list(required_splits),
                          folder=FolderParams(labels=str(csv) if str(csv) != "." else "", **kw))
    return run(params, BaseParams(seed=3, workers=1), root=tmp_path)


def test_good_and_bad_rows(folder, tmp_path):
    csv = folder / "labels.csv"
    csv.write_text(
        "video,O,C,E,A,N,subject\n"
        "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,alice\n"
        "clips/a2.mp4, 0.6,0.7,0.8,0.9,1.0,alice\n"
        "clips/b1.mp4,0.5,0.5,0.5,0.5,0.5,bob\n"
        "clips/c1.mp4,,,,,,carol\n"             # unlabelled: kept, NaN traits; no audio track
        "clips/d1.mp4,0.5,abc,0.5,0.5,0.5,dan\n"  # not a number
        "clips/e1.mp4,0.5,0.5,1.5,0.5,0.5,eve\n"  # outside [0, 1]
        "clips/missing.mp4,0.5,0.5,0.5,0.5,0.5,fay\n"
        "clips/a1.mp4,0.5,0.5,0.5,0.5,0.5,alice\n"  # duplicate
        "../outside.mp4,0.5,0.5,0.5,0.5,0.5,gil\n"  # escapes the dataset root
        "clips/broken.mp4,0.5,0.5,0.5,0.5,0.5,hal\n"  # undecodable
        "clips,0.5,0.5,0.5,0.5,0.5,ida\n"  # a folder
    )
    # four subjects, one unlabelled: it may be the only one a split gets, which the default
    # required_splits refuses (test_datasets_review.py); the rows are what this test reads
    summary = _run(tmp_path, csv, required_splits=())
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert sorted(m["video_id"]) == ["clips%2Fa1.mp4", "clips%2Fa2.mp4", "clips%2Fb1.mp4", "clips%2Fc1.mp4"]
    assert m.set_index("video_id").loc["clips%2Fa2.mp4", "O"] == pytest.approx(0.6)
    assert np.isnan(m.set_index("video_id").loc["clips%2Fc1.mp4", "O"])
    assert not m.set_index("video_id").loc["clips%2Fc1.mp4", "has_audio"]
    assert m.set_index("video_id").loc["clips%2Fa1.mp4", "has_audio"]
    assert m.set_index("video_id").loc["clips%2Fa1.mp4", "duration_s"] == pytest.approx(0.4, abs=0.05)
    assert (m.groupby("subject_id")["split"].nunique() == 1).all()
    bad = "\n".join(summary["bad_rows"])
    assert summary["n_bad_rows"] == 7
    assert "row 6 (clips/d1.mp4): label C='abc' is not a number" in bad
    assert "row 7 (clips/e1.mp4): label E=1.5 is outside [0, 1]" in bad
    assert "row 8 (clips/missing.mp4): video file" in bad and "not found" in bad
    assert "row 9 (clips/a1.mp4): duplicate video" in bad
    assert "row 10 (../outside.mp4): path '../outside.mp4' escapes the dataset root" in bad
    assert "row 11 (clips/broken.mp4): " in bad and "cannot be opened as media: FFmpeg found " \
        "no readable container in it (not a video file, or one cut off" in bad  # not its errno
    assert "row 12 (clips): video file" in bad and "is a folder, not a file" in bad
    report = json.loads((tmp_path / "metrics/ingest.json").read_text())
    assert report["n_bad_rows"] == 7 and report["n_videos"] == 4


def test_videos_are_probed_in_a_worker_and_one_that_ends_it_is_a_bad_row(folder, tmp_path,
                                                                         monkeypatch):
    """The probe decodes each video's first frame: a file that crashed FFmpeg ended the whole
    ingest stage, in its own process. Now a worker reads it (video_io.probe here would raise),
    and a file that ends the worker twice is one bad row naming it; the others go on."""
    from personality import probing, video_io

    def not_here(path):
        raise AssertionError("the video was probed in the stage's own process")

    monkeypatch.setattr(video_io, "probe", not_here)  # the worker imports its own
    real = probing.map_jobs

    def crashing_on_b1(fn, jobs, **kwargs):
        if jobs[0].name == "b1.mp4":
            return [kwargs["on_lost"](jobs[0], "the worker process running it died twice "
                                               "(signal 11)")]
        return real(fn, jobs, **kwargs)

    monkeypatch.setattr(probing, "map_jobs", crashing_on_b1)
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,subject\n" + "".join(
        f"clips/{name}.mp4,0.5,0.5,0.5,0.5,0.5,{name}\n" for name in ("a1", "a2", "b1", "d1")))
    summary = _run(tmp_path, csv, required_splits=())
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert sorted(m["video_id"]) == ["clips%2Fa1.mp4", "clips%2Fa2.mp4", "clips%2Fd1.mp4"]
    assert m["duration_s"].to_numpy() == pytest.approx(0.4, abs=0.05)
    [bad] = summary["bad_rows"]
    assert "row 4 (clips/b1.mp4): " in bad and "b1.mp4: reading it ended the worker that read " \
        "it (the worker process running it died twice (signal 11)); not read" in bad


def test_the_probe_worker_outlives_bad_files_and_names_them_as_given(tmp_path):
    """A file that is no video is an answer, not a failed job: two failed jobs in a row ended
    the kept worker (predict's warm front-end worker too: its next clip paid the whole set-up
    again). And the message names the file as given, not a symlink's target (DVC's cache)."""
    from personality.probing import WorkerProbe

    blob = tmp_path / "blob_7f3a9c"
    blob.write_text("not a video")
    (tmp_path / "my_interview.mp4").symlink_to(blob)
    good = write_video(tmp_path / "good.mp4")
    with WorkerProbe() as probe:
        assert probe(good)["has_audio"]
        pids = probe.workers.pids()
        for _ in range(3):
            with pytest.raises(StageInputError, match=r"my_interview\.mp4: cannot be opened"):
                probe(tmp_path / "my_interview.mp4")
        assert probe(good)["has_audio"] and probe.workers.pids() == pids


def test_a_labels_file_with_a_header_only_says_so(folder, tmp_path):
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N\n")
    with pytest.raises(StageInputError, match="no usable video: the folder source lists none"):
        _run(tmp_path, csv)


def test_strict_mode_fails_naming_the_row(folder, tmp_path):
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N\nclips/a1.mp4,0.1,0.2,0.3,0.4,0.5\n"
                   "clips/b1.mp4,0.1,0.2,x,0.4,0.5\n")
    with pytest.raises(StageInputError, match=r"labels.csv row 3 \(clips/b1.mp4\): label E='x'"):
        _run(tmp_path, csv, strict=True)
    assert not (tmp_path / "data/manifest.parquet").exists()  # nothing half-written


@pytest.mark.parametrize("text, message", [
    ("video,O,C,E,A\nclips/a1.mp4,1,1,1,1\n", "missing column(s) N"),
    ("", "not a readable CSV"),
    ("video,O,C,E,A,N,O\nclips/a1.mp4,.5,.5,.5,.5,.5,.9\n", "column(s) O given twice"),
    ('video,O,C,E,A,N\n"clips/a1.mp4,0.1,0.2,0.3,0.4,0.5\n', "not a readable CSV"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a readable CSV"),  # binary
    ("video,O,C,E,A,N\nclips/a1.mp4,.5,.5,.5,.5,.5\n".encode("utf-16"), "not a readable CSV"),
    # Excel in a European locale: ';' and decimal commas
    ("video;O;C;E;A;N\nclips/a1.mp4;0,5;0,5;0,5;0,5;0,5\n", "one column split by ';': save it "
                                                            "as comma-separated"),
    ("video\tO\tC\tE\tA\tN\nclips/a1.mp4\t.5\t.5\t.5\t.5\t.5\n", "split by tab"),
])
def test_malformed_csv(folder, text, message):
    csv = folder / "labels.csv"
    csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(StageInputError) as err:
        read_labels_csv(csv)
    assert str(csv) in str(err.value) and message in str(err.value)


def test_given_splits_are_kept_and_others_assigned_by_subject(folder, tmp_path):
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,subject,split\n"
                   "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,alice,test\n"
                   "clips/a2.mp4,0.1,0.2,0.3,0.4,0.5,alice,\n"
                   "clips/b1.mp4,0.1,0.2,0.3,0.4,0.5,bob,\n"
                   "clips/d1.mp4,0.1,0.2,0.3,0.4,0.5,dan,\n"
                   "clips/e1.mp4,0.1,0.2,0.3,0.4,0.5,eve,\n")
    _run(tmp_path, csv)
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert m.loc["clips%2Fa1.mp4", "split"] == "test" and m.loc["clips%2Fa2.mp4", "split"] == "test"
    assert set(m["split"]) <= {"train", "val", "test"}
    csv.write_text("video,O,C,E,A,N,subject,split\n"
                   "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,alice,test\n"
                   "clips/a2.mp4,0.1,0.2,0.3,0.4,0.5,alice,train\n")
    with pytest.raises(StageInputError, match="alice appear in more than one split"):
        _run(tmp_path, csv)


def test_subject_and_split_columns_are_read_in_any_case(folder, tmp_path):
    """A header `Subject`, `Split` (Excel's habit) was ignored without a word: every video its
    own subject (alice's two clips could land in train and test) and the given split redrawn."""
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,Subject,SPLIT\n"
                   "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,alice,test\n"
                   "clips/a2.mp4,0.1,0.2,0.3,0.4,0.5,alice,\n"
                   "clips/b1.mp4,0.1,0.2,0.3,0.4,0.5,bob,\n"
                   "clips/d1.mp4,0.1,0.2,0.3,0.4,0.5,dan,\n"
                   "clips/e1.mp4,0.1,0.2,0.3,0.4,0.5,eve,\n")
    summary = _run(tmp_path, csv)
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("video_id")
    assert m.loc["clips%2Fa2.mp4", "subject_id"] == "alice"
    assert m.loc["clips%2Fa1.mp4", "split"] == m.loc["clips%2Fa2.mp4", "split"] == "test"
    assert m.loc["clips%2Fa1.mp4", "O"] == pytest.approx(0.1)
    assert not any("its own subject" in w for w in summary.get("warnings", []))
    csv.write_text("Video,o,C,E,A,N\nclips/a1.mp4,0.1,0.2,0.3,0.4,0.5\n")  # required ones too
    assert read_labels_csv(csv)[0][["video", "O"]].to_dict("records") == [
        {"video": "clips/a1.mp4", "O": 0.1}]
    csv.write_text("video,O,C,E,A,N,Subject,subject\nclips/a1.mp4,0.1,0.2,0.3,0.4,0.5,a,a\n")
    with pytest.raises(StageInputError, match="column.s. subject given twice"):
        read_labels_csv(csv)


def test_labels_without_subjects_are_said_to_give_optimistic_scores(folder, tmp_path, caplog):
    """No subject column: each video is its own subject, so one person's clips can be split
    between train and test. The stage says so (log and metrics/ingest.json), and not when the
    labels give subjects."""
    csv = folder / "labels.csv"
    rows = [f"clips/{n}.mp4,0.1,0.2,0.3,0.4,0.5" for n in ("a1", "a2", "b1", "d1", "e1")]
    csv.write_text("video,O,C,E,A,N\n" + "\n".join(rows) + "\n")
    summary = _run(tmp_path, csv)
    assert "its own subject" in summary["warnings"][0] and "optimistic" in summary["warnings"][0]
    assert "its own subject" in caplog.text
    on_disk = json.loads((tmp_path / "metrics" / "ingest.json").read_text())
    assert on_disk["warnings"] == summary["warnings"]
    csv.write_text("video,O,C,E,A,N,subject\n"
                   + "\n".join(f"{r},{r[6]}" for r in rows) + "\n")  # a, a, b, d, e
    again = _run(tmp_path, csv).get("warnings", [])  # 4 subjects: val and test get 1 each
    assert not any("its own subject" in w for w in again) and "labelled subject(s)" in again[0]
    # some subject cells left empty: those clips were their own subjects without a word
    csv.write_text("video,O,C,E,A,N,subject\n" + "\n".join(
        f"{r},{'' if r[6] == 'a' else r[6]}" for r in rows) + "\n")  # a1, a2: no subject
    partly = _run(tmp_path, csv)["warnings"]
    assert "folder: 2 of 5 videos have no subject (e.g. clips%2Fa1.mp4)" in partly[0]


def test_kfold_refuses_labels_that_bring_their_own_split(folder, tmp_path):
    """A given split would be kept by every fold: the folds would all test the same people."""
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,subject,split\n"
                   "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,alice,test\n"
                   "clips/b1.mp4,0.1,0.2,0.3,0.4,0.5,bob,\n"
                   "clips/d1.mp4,0.1,0.2,0.3,0.4,0.5,dan,\n"
                   "clips/e1.mp4,0.1,0.2,0.3,0.4,0.5,eve,\n")
    params = IngestParams(source="folder", folder=FolderParams(labels=str(csv)),
                          split_mode="kfold", n_folds=3)
    with pytest.raises(StageInputError, match=r"labels.csv: ingest.split_mode=kfold decides .* "
                                              r"1 clip\(s\) of 1 subject\(s\) come with one"):
        run(params, BaseParams(seed=3, workers=1), root=tmp_path)
    assert not (tmp_path / "data/manifest.parquet").exists()  # refused before writing anything
    csv.write_text(csv.read_text().replace("alice,test", "alice,"))
    run(params, BaseParams(seed=3, workers=1), root=tmp_path)  # empty split column: folds decide
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert (m.groupby("split")["subject_id"].nunique() >= 1).all() and len(set(m["split"])) == 3


def test_subject_ids_that_differ_only_in_case_are_refused(folder, tmp_path):
    """'Alice' and 'alice ' would be two subjects, and one person's clips could be split."""
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,subject\n"
                   "clips/a1.mp4,0.1,0.2,0.3,0.4,0.5,Alice\n"
                   "clips/a2.mp4,0.1,0.2,0.3,0.4,0.5,alice\n"
                   "clips/b1.mp4,0.1,0.2,0.3,0.4,0.5,bob\n")
    with pytest.raises(StageInputError, match="subject ids 'Alice' / 'alice' differ only in case"):
        _run(tmp_path, csv)
    # without a subject column each video is its own subject: dup.mp4 / dup.MP4 stay two
    (folder / "clips" / "a1.mp4").rename(folder / "clips" / "dup.mp4")
    (folder / "clips" / "a2.mp4").rename(folder / "clips" / "dup.MP4")
    csv.write_text("video,O,C,E,A,N\nclips/dup.mp4,0.1,0.2,0.3,0.4,0.5\n"
                   "clips/dup.MP4,0.1,0.2,0.3,0.4,0.5\nclips/b1.mp4,0.1,0.2,0.3,0.4,0.5\n")
    _run(tmp_path, csv)


def test_a_replaced_video_changes_the_clips_table_so_the_front_end_runs_again(folder, tmp_path):
    """data/clips.parquet is what frames and audio depend on: a video outside data/videos (not
    tracked by DVC) carries its size and mtime there, so replacing it re-runs the front-end."""
    import os

    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N\nclips/a1.mp4,0.1,0.2,0.3,0.4,0.5\n"
                   "clips/b1.mp4,0.1,0.2,0.3,0.4,0.5\nclips/d1.mp4,0.1,0.2,0.3,0.4,0.5\n")
    _run(tmp_path, csv)
    clips = tmp_path / "data" / "clips.parquet"
    before = clips.read_bytes()
    assert read_artifact("clips", path=clips)["source_stat"].str.match(r"^\d+:\d+$").all()
    write_video(folder / "clips" / "b1.mp4", n_frames=11)  # re-encoded: same name, same length
    os.utime(folder / "clips" / "b1.mp4", ns=(1, 1))
    _run(tmp_path, csv)
    assert clips.read_bytes() != before


def test_missing_labels_param(tmp_path):
    with pytest.raises(StageInputError, match="ingest.folder.labels"):
        _run(tmp_path, Path(""))


def test_kfold_splits_by_subject_and_covers_every_subject_once_as_test(tmp_path):
    """ingest.split_mode kfold: each fold's test subjects are disjoint, together all subjects;
    the clips index (what the front-end reads) is the same for every fold."""
    from stages.ingest import IngestParams, SyntheticParams, run
    from tests.conftest import TINY_SYNTHETIC

    test_subjects, clips = [], []
    for fold in range(3):
        root = tmp_path / f"fold{fold}"
        params = IngestParams(source="synthetic", split_mode="kfold", n_folds=3, fold=fold,
                              synthetic=SyntheticParams(**{**TINY_SYNTHETIC, "n_videos": 6,
                                                           "n_subjects": 6}))
        run(params, BaseParams(seed=3, workers=1), root=root)
        m = read_artifact("manifest", path=root / "data/manifest.parquet")
        assert (m.groupby("subject_id")["split"].nunique() == 1).all()
        assert set(m["split"]) == {"train", "val", "test"}
        test_subjects.append(set(m.loc[m["split"] == "test", "subject_id"]))
        clips.append((root / "data/clips.parquet").read_bytes())
    assert set.union(*test_subjects) == set(m["subject_id"])
    assert sum(len(s) for s in test_subjects) == m["subject_id"].nunique()
    assert clips[0] == clips[1] == clips[2]


# --------------------------------------------------------------------------------------------------
# ids that cannot collide, labels all or nothing, no empty split


def _folder(tmp_path, names: list[str], labels: dict[str, str] | None = None) -> Path:
    rows = ["video,O,C,E,A,N,subject"]
    for i, name in enumerate(names):
        write_video(tmp_path / name, n_frames=5)
        rows.append(f"{name},{(labels or {}).get(name, '0.5,0.5,0.5,0.5,0.5')},s{i}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.mark.parametrize("pair", [("dup.mp4", "dup.MP4"), ("a/b.mp4", "a__b.mp4"),
                                  ("x.mp4", "x.mkv")])
def test_paths_that_differ_get_ids_that_differ(tmp_path, pair):
    csv = _folder(tmp_path, [*pair, "c1.mp4", "c2.mp4", "c3.mp4"])
    run(IngestParams(source="folder", folder=FolderParams(labels=str(csv))),
        BaseParams(seed=1, workers=1), root=tmp_path)
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet")
    assert m["video_id"].is_unique and len(m) == 5
    from urllib.parse import unquote

    assert {unquote(v) for v in m["video_id"]} >= set(pair)  # reversible


def test_ids_that_collide_anyway_are_an_error_naming_both():
    from personality.datasets import check_unique_ids

    with pytest.raises(StageInputError, match="a.mp4.*b.mp4"):
        check_unique_ids([{"video_id": "v", "path": "a.mp4"}, {"video_id": "v", "path": "b.mp4"}],
                         "labels.csv")


def test_partial_labels_are_a_bad_row(tmp_path):
    csv = _folder(tmp_path, ["p.mp4", "q.mp4", "r.mp4", "s.mp4"], {"p.mp4": "0.4,,,,"})
    summary = run(IngestParams(source="folder", folder=FolderParams(labels=str(csv))),
                  BaseParams(seed=1, workers=1), root=tmp_path)
    assert summary["n_videos"] == 3
    assert any("p.mp4" in p and "C, E, A, N empty" in p for p in summary["bad_rows"])


def test_a_split_left_empty_is_refused_before_anything_is_written(tmp_path):
    from stages.ingest import SyntheticParams
    from tests.conftest import TINY_SYNTHETIC

    params = IngestParams(source="synthetic", synthetic=SyntheticParams(
        **{**TINY_SYNTHETIC, "n_videos": 2, "n_subjects": 1}))
    with pytest.raises(StageInputError, match="would be empty"):
        run(params, BaseParams(seed=1, workers=1), root=tmp_path)
    assert not (tmp_path / "data" / "manifest.parquet").exists()


@pytest.mark.parametrize("odd, message", [
    ("clips/loop1.mp4", "clips/loop1.mp4: a symlink loop"),
    ("clips/a\x00.mp4", "the path holds a NUL byte"),
    ("clips/" + "x" * 300 + ".mp4", "File name too long"),
])
def test_a_path_the_file_system_cannot_take_is_a_bad_row(tmp_path, odd, message):
    """A symlink loop, a NUL byte, a 300-character name: that row is reported, the good one
    stays (each used to crash the whole stage: RuntimeError, ValueError, OSError)."""
    ds = tmp_path / "ds"
    write_video(ds / "clips" / "a.mp4")
    (ds / "clips" / "loop1.mp4").symlink_to("loop2.mp4")
    (ds / "clips" / "loop2.mp4").symlink_to("loop1.mp4")
    (ds / "labels.csv").write_text("video,O,C,E,A,N\nclips/a.mp4,.5,.5,.5,.5,.5\n"
                                   f"{odd},.5,.5,.5,.5,.5\n")
    rows, problems = read_labels_csv(ds / "labels.csv")
    assert rows["video"].tolist() == ["clips/a.mp4"]
    assert len(problems) == 1 and "labels.csv row 3" in problems[0] and message in problems[0]


# --------------------------------------------------------------------------------------------------
# a row with an extra field is one bad row, not an unreadable file (review finding)


def _extra_field_csv(ds: Path) -> Path:
    """Four good rows around one with a stray comma (7 fields under a 6-column header), the
    first data row also one field too long (pandas' python engine cut that one silently)."""
    for name in ("a", "b", "c"):
        write_video(ds / f"{name}.mp4", n_frames=5)
    csv = ds / "labels.csv"
    csv.write_text("video,O,C,E,A,N\n"
                   "a.mp4,.5,.5,.5,.5,.5,oops\n"
                   "b.mp4,.1,.2,.3,.4,.5\n"
                   "\n"
                   "c.mp4,0,5,.5,.5,.5,.5\n"  # "0,5": a decimal comma
                   "a.mp4,.6,.6,.6,.6,.6\n")
    return csv


def test_a_row_with_an_extra_field_is_a_bad_row_and_the_others_go_on(tmp_path):
    csv = _extra_field_csv(tmp_path / "ds")
    rows, problems = read_labels_csv(csv)
    assert rows["video"].tolist() == ["b.mp4", "a.mp4"]  # a.mp4's good row is no duplicate
    assert rows.set_index("video").loc["a.mp4", "O"] == pytest.approx(0.6)
    assert problems == [f"{csv} row 2 (a.mp4): 7 fields, the header has 6",
                        f"{csv} row 5 (c.mp4): 7 fields, the header has 6"]  # file lines


def test_strict_mode_fails_on_a_row_with_an_extra_field_naming_it(tmp_path):
    csv = _extra_field_csv(tmp_path / "ds")
    with pytest.raises(StageInputError, match=r"labels.csv row 5 \(c.mp4\): 7 fields, the header "
                                              r"has 6"):
        _run(tmp_path, csv, strict=True)
    assert not (tmp_path / "data/manifest.parquet").exists()


def test_an_unclosed_quote_fails_the_file_naming_its_line(tmp_path):
    """An unclosed quote swallows every row after it into one cell: the whole file is refused,
    as before, now naming the line the quote opens on."""
    csv = tmp_path / "labels.csv"
    csv.write_text('video,O,C,E,A,N\na.mp4,.5,.5,.5,.5,.5\n"b.mp4,.5,.5,.5,.5,.5\n'
                   "c.mp4,1,1,1,1,1\n")
    with pytest.raises(StageInputError, match=r"labels.csv: not a readable CSV: line 3: "):
        read_labels_csv(csv)


def test_paths_written_on_windows_or_in_another_unicode_form_find_their_files(folder, tmp_path):
    """`clips\\a1.mp4` (a CSV written on Windows) and a name typed composed (`é`) for a file
    copied from a Mac (decomposed): every such row was "video file <the path shown> not found",
    and the fingerprint stat'ed no file, so a replaced video re-ran nothing."""
    import unicodedata

    from stages import inputs

    mac_name = unicodedata.normalize("NFD", "josé.mp4")
    (folder / "clips" / "b1.mp4").rename(folder / "clips" / mac_name)
    csv = folder / "labels.csv"
    csv.write_text("video,O,C,E,A,N,subject\n"
                   "clips\\a1.mp4,0.1,0.2,0.3,0.4,0.5,alice\n"
                   + unicodedata.normalize("NFC", "clips/josé.mp4,0.1,0.2,0.3,0.4,0.5,jose\n")
                   + "clips/d1.mp4,0.1,0.2,0.3,0.4,0.5,dan\n"
                   "clips/e1.mp4,0.1,0.2,0.3,0.4,0.5,eve\n", encoding="utf-8")
    summary = _run(tmp_path, csv)
    assert summary["n_bad_rows"] == 0 and summary["n_videos"] == 4
    m = read_artifact("manifest", path=tmp_path / "data/manifest.parquet").set_index("subject_id")
    assert m.loc["alice", "path"] == "ds/clips/a1.mp4"
    assert m.loc["jose", "path"] == f"ds/clips/{mac_name}"
    files = inputs.fingerprint({"source": "folder", "folder": {"labels": str(csv)}},
                               tmp_path)["files"]
    assert not [k for k, v in files.items() if v == {"missing": True}]


def test_a_video_named_in_another_encoding_is_a_bad_row(tmp_path):
    """A symlink in the dataset to a Latin-1 name (b'caf\\xe9.mp4'): that row is reported and
    the good one stays (it used to stop ingest with a UnicodeEncodeError)."""
    import os

    ds = tmp_path / "ds"
    write_video(ds / "clips" / "a.mp4")
    latin = os.fsdecode(bytes(ds / "clips") + b"/caf\xe9.mp4")
    write_video(Path(latin))
    (ds / "clips" / "link.mp4").symlink_to(latin)
    (ds / "labels.csv").write_text("video,O,C,E,A,N\nclips/a.mp4,.5,.5,.5,.5,.5\n"
                                   "clips/link.mp4,.5,.5,.5,.5,.5\n")
    rows, problems = read_labels_csv(ds / "labels.csv")
    assert rows["video"].tolist() == ["clips/a.mp4"]
    assert len(problems) == 1 and "row 3 (clips/link.mp4)" in problems[0]
    assert "caf\\xe9.mp4: the file name" in problems[0] and "not valid UTF-8" in problems[0]
