"""predict's batch mode on real videos: a folder of 5 clips (nested folders, one broken file, a
non-video file beside them) gives predictions.csv with 5 rows, 4 scored and 1 with its error,
one report PNG per scored clip, exit code 0 (1 with --strict); the batch's scores are the
single-video path's."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from stages import predict, predict_batch
from tests.conftest import real_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def au_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "perfex_cnn" / "best.pt"
    return save_checkpoint(path, model=build_model("perfex_cnn"), model_name="perfex_cnn",
                           train_mean=[0.5] * 5, inputs=["aus", "aus_mask"])


@pytest.fixture
def folder(tmp_path):
    """5 videos: 4 copies of the face clip in nested folders (one with an upper-case extension),
    one broken file; and a text file that is not a video."""
    root = tmp_path / "clips"
    for i in range(4):
        sub = root / f"session{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_fixture("single_face.mp4"), sub / f"clip{i}{'.MP4' if i == 3 else '.mp4'}")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.txt").write_text("not a video")
    return root


def test_collect_videos_recurses_and_keeps_video_extensions(folder, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    videos = predict.collect_videos([folder, folder / "session0" / "clip0.mp4", tmp_path / "empty"])
    assert len(videos) == 5 and all(v.suffix.lower() == ".mp4" for v in videos)
    assert f"{tmp_path / 'empty'}: no video" in caplog.text  # a name that gives no row is told
    assert predict.batch_ids([folder / "a" / "x.mp4", folder / "b" / "x.mp4"]) == ["x", "x_2"]


def test_stems_that_differ_only_in_case_get_reports_of_their_own():
    """day1/Interview.MOV and day2/interview.mp4: before, ids Interview and interview, whose
    reports Interview.png and interview.png are one file on macOS's and Windows's default file
    systems: the second replaced the first, and both rows named it."""
    ids = predict.batch_ids([Path("day1/Interview.MOV"), Path("day2/interview.mp4"),
                             Path("day3/INTERVIEW_2.mp4")])
    assert ids == ["Interview", "interview_2", "INTERVIEW_2_2"]
    assert len({i.casefold() for i in ids}) == 3


def test_collect_videos_leaves_out_what_a_mac_leaves_beside_the_clips(folder):
    # AppleDouble files (._clip0.mp4, and __MACOSX/ copies) were each a failed row of a batch
    (folder / "session0" / "._clip0.mp4").write_bytes(bytes(4096))
    (folder / "__MACOSX" / "session0").mkdir(parents=True)
    (folder / "__MACOSX" / "session0" / "._clip0.mp4").write_bytes(bytes(4096))
    videos = predict.collect_videos([folder])
    assert len(videos) == 5 and not any(v.name.startswith("._") for v in videos)
    named = folder / "session0" / "._clip0.mp4"  # named on its own: taken as given (its row)
    assert predict.collect_videos([named]) == [named]


def test_batch_on_a_folder_with_a_broken_clip(folder, au_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = predict.main([str(folder), "--out", str(out), "--model", str(au_checkpoint),
                         "--jobs", "2"])
    assert code == 0
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(table) == 5
    failed = table[table["error"] != ""]
    assert list(failed["video_id"]) == ["broken"] and "broken.mp4" in failed["error"].iloc[0]
    scored = table[table["error"] == ""]
    assert len(scored) == 4 and set(scored["model"]) == {"perfex_cnn"}
    scores = scored[list("OCEAN")].to_numpy(float)  # (4, 5)
    assert np.all((scores >= 0) & (scores <= 1))
    single = predict.predict_video(real_fixture("single_face.mp4"), model=str(au_checkpoint),
                                   work=tmp_path)
    want = np.array([single[t] for t in "OCEAN"])
    assert np.abs(scores - want).max() <= 1e-4  # every copy scores as the single-video path
    assert (scored["face_share"].astype(float) > 0.9).all()
    for report in scored["report"]:
        assert open(report, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "4 of 5 videos scored" in capsys.readouterr().out


def test_strict_batch_fails_when_a_clip_fails(tmp_path, au_checkpoint):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"junk")
    missing = tmp_path / "missing.mp4"
    args = [str(bad), str(missing), "--out", str(tmp_path / "out"), "--model", str(au_checkpoint),
            "--jobs", "1"]
    assert predict.main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert len(table) == 2 and (table["error"] != "").all() and "no such file" in table["error"][1]
    assert predict.main([*args, "--strict"]) == 1


def test_batch_refuses_an_unknown_model_and_an_empty_folder(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert predict.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no video" in caplog.text
    clip = real_fixture("single_face.mp4")
    assert predict.main([str(clip), str(clip.parent), "--out", str(tmp_path / "o"),
                         "--model", "no_such_model"]) == 2
    assert "no checkpoint" in caplog.text


def _aliases(tmp_path):
    """good.mp4, a symlink to it and a hard link to it: three names of one file."""
    root = tmp_path / "aliases"
    root.mkdir()
    shutil.copy(real_fixture("single_face.mp4"), root / "good.mp4")
    (root / "good_a.mp4").symlink_to("good.mp4")
    (root / "good_h.mp4").hardlink_to(root / "good.mp4")
    return root


def test_every_name_of_one_file_is_a_video_of_its_own(tmp_path, caplog):
    """Review finding: a second name of a file (an alias symlink) was dropped, with no row."""
    root = _aliases(tmp_path)
    names = [root / n for n in ("good.mp4", "good_a.mp4", "good_h.mp4")]
    assert predict.collect_videos([root]) == names
    assert predict.collect_videos([root, root / "good_a.mp4", root / ".." / root.name]) == names
    assert "good_a.mp4 is the same file as" in caplog.text
    from stages.predict_batch import same_files

    assert same_files([*names, root / "missing.mp4"]) == {1: 0, 2: 0}


def test_batch_gives_a_row_to_every_name_of_one_file(tmp_path, au_checkpoint):
    root = _aliases(tmp_path)
    out = tmp_path / "out"
    assert predict.main([str(root), "--out", str(out), "--model", str(au_checkpoint),
                         "--jobs", "1", "--no-explain"]) == 0
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert table["video_id"].tolist() == ["good", "good_a", "good_h"]
    assert (table["error"] == "").all()
    scores = table[list("OCEAN")].to_numpy(float)  # (3, 5): one file, the same scores
    assert np.abs(scores - scores[0]).max() <= 1e-6


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, caplog,
                                                                            monkeypatch):
    """A batch scored every video, then died with a traceback writing predictions.csv (one
    video: it scored, then threw the scores away): the folder is checked first now."""
    clip = str(real_fixture("single_face.mp4"))
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file, not a folder")
    scored = []
    monkeypatch.setattr(predict, "predict_video", lambda *a, **k: scored.append(a))
    for videos in ([clip], [clip, clip + ".copy"]):
        caplog.clear()
        assert predict.main([*videos, "--out", str(blocker / "sub")]) == 2
        assert f"{blocker} is not a folder" in caplog.text
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert predict.main([clip, "--out", str(tmp_path / "gone" / "sub")]) == 2
    assert "is a broken link" in caplog.text
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    assert predict.main([clip, "--out", str(tmp_path / "ro")]) == 2
    assert "cannot write in" in caplog.text and "Permission denied" in caplog.text
    assert not scored and not (tmp_path / "ro").exists()


def test_a_report_that_cannot_be_written_keeps_the_videos_scores(au_checkpoint, tmp_path,
                                                                  monkeypatch):
    def disk_full(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict, "write_report", disk_full)
    row = predict.score_row(real_fixture("single_face.mp4"), tmp_path / "clip.png",
                            str(au_checkpoint), None)
    assert row["error"] == "" and row["report"] == "" and 0 <= row["O"] <= 1
    assert "no report: " in row["warnings"] and "No space left" in row["warnings"]


def test_a_batch_stopped_midway_leaves_the_rows_it_scored_and_no_earlier_table(
        tmp_path, monkeypatch):
    """Ctrl-C after the first video: predictions.csv holds that video's row and says the others
    were not scored; an earlier run's table (another model's scores) is gone, not left beside
    this run's reports."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("video,O\nold.mp4,0.9\n")
    videos = [tmp_path / f"clip{i}.mp4" for i in range(3)]

    def first_then_ctrl_c(jobs, workers):
        yield 0, {"video": str(jobs[0][0]), "video_id": "clip0", "report": "", "O": 0.25,
                  "model": "m", "error": ""}
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "_score_rows", first_then_ctrl_c)  # within TABLE_EVERY_S
    with pytest.raises(KeyboardInterrupt):
        predict.predict_batch(videos, out)
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table["video_id"]) == ["clip0", "clip1", "clip2"]
    assert float(table["O"][0]) == 0.25
    assert list(table["error"]) == ["", *[predict_batch.NOT_SCORED] * 2]


def test_a_table_rewrite_that_fails_midway_costs_the_batch_nothing(tmp_path, monkeypatch,
                                                                     caplog):
    """A full disk at a rewrite while the batch runs: logged, tried again, every video scored
    (it stopped the batch, and dropped the videos not yet done)."""
    out = tmp_path / "out"
    out.mkdir()
    videos = [tmp_path / f"clip{i}.mp4" for i in range(4)]

    def rows(jobs, workers):
        for i, job in enumerate(jobs):
            yield i, {"video": str(job[0]), "video_id": job[1].stem, "report": "", "O": 0.5,
                      "model": "m", "error": ""}

    real, calls = predict_batch.atomic_write_text, []

    def full_on_the_second(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(predict, "_score_rows", rows)
    monkeypatch.setattr(predict_batch, "TABLE_EVERY_S", 0.0)
    monkeypatch.setattr(predict_batch, "atomic_write_text", full_on_the_second)
    table = predict.predict_batch(videos, out)
    assert list(table["error"]) == [""] * 4 and "tried again later" in caplog.text
    assert list(pd.read_csv(out / "predictions.csv", keep_default_na=False)["error"]) == [""] * 4


def test_a_missing_video_is_refused_before_any_worker_starts(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(predict, "start_front_end_worker",
                        lambda: pytest.fail("a worker started for a file that is not there"))
    assert predict.main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.mp4: no such file" in caplog.text


def test_ctrl_c_is_one_line_and_exit_code_130(tmp_path, caplog, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "_single", interrupted)
    assert predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o")]) \
        == 130
    assert "interrupted (Ctrl-C)" in caplog.text


def test_a_pipe_is_not_called_a_missing_file(tmp_path):
    import os

    from personality.common import StageInputError

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(StageInputError, match="not a regular file"):
        predict.predict_video(fifo)
    with pytest.raises(StageInputError, match="is a folder"):
        predict.predict_video(tmp_path)


def test_a_name_that_is_not_utf8_is_a_row_of_its_own_and_the_batch_goes_on(tmp_path,
                                                                             au_checkpoint):
    """A Latin-1 name (b'caf\\xe9.mp4') used to stop the whole batch with a UnicodeEncodeError
    when the table was built, and a single predict with a traceback; a carriage return in a name
    split its row in two. Now each is a row that names it, beside the good clip's scores."""
    import os

    from personality.common import StageInputError

    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(real_fixture("single_face.mp4"), folder / "good.mp4")
    latin = os.fsdecode(bytes(folder) + b"/caf\xe9.mp4")
    shutil.copy(real_fixture("single_face.mp4"), latin)
    (folder / "cr\rname.mp4").write_bytes(b"not a video")
    with pytest.raises(StageInputError, match=r"caf\\xe9\.mp4: the file name .* not valid UTF-8"):
        predict.predict_video(Path(latin))
    table = predict.predict_batch(predict_batch.collect_videos([folder]), tmp_path / "out",
                                  model=str(au_checkpoint), explain=False)
    read = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert len(read) == 3 and read["video"].tolist() == table["video"].tolist()
    rows = {Path(v).name: r for v, r in zip(read["video"], read.to_dict("records"))}
    assert set(rows) == {"caf\\xe9.mp4", "cr\\rname.mp4", "good.mp4"}
    assert "not valid UTF-8" in rows["caf\\xe9.mp4"]["error"]
    assert rows["cr\\rname.mp4"]["error"] and not rows["good.mp4"]["error"]
    assert 0 <= float(rows["good.mp4"]["O"]) <= 1
