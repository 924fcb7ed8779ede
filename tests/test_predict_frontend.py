"""predict's front end (stages/predict_frontend.py): a clip's whole front end runs in one worker
that is kept for the next clip and gives what the stages give in this process; a worker lost on a
clip costs that clip a rerun with one worker per stage, never predict.

    pytest tests/test_predict_frontend.py
"""
from __future__ import annotations

import logging
import os
import signal

import pandas as pd
import pytest

from personality.common import ParamsError, StageInputError, read_artifact
from stages import predict_frontend
from tests.conftest import real_fixture

CLIP = "single_face.mp4"


def _functionals(work) -> pd.DataFrame:
    return read_artifact("functionals", path=work / "data" / "functionals")


def _kill_own_worker(job: tuple) -> dict:
    """_front_end_job's double: a crash inside MediaPipe or a decoder, every time it runs."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    """The clip's front end with every stage in this process (PERSONALITY_CLUSTER=inline)."""
    work = tmp_path_factory.mktemp("inline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONALITY_CLUSTER", "inline")
        facts = predict_frontend.run_front_end(real_fixture(CLIP), work)
    return facts, _functionals(work)


def test_clips_in_a_row_share_one_kept_worker_and_match_this_process(tmp_path, inline_run):
    facts, table = inline_run
    seen = []
    for k in range(2):
        got = predict_frontend.run_front_end(real_fixture(CLIP), tmp_path / f"w{k}")
        seen.append(predict_frontend.FRONT_END_WORKER.pids())
        assert got == facts
        pd.testing.assert_frame_equal(_functionals(tmp_path / f"w{k}"), table)
    assert seen[0] == seen[1] and seen[0] and os.getpid() not in seen[0]


def test_a_lost_worker_costs_the_clip_a_rerun_with_a_worker_per_stage(tmp_path, inline_run,
                                                                      monkeypatch, caplog):
    facts, table = inline_run
    monkeypatch.setattr(predict_frontend, "_front_end_job", _kill_own_worker)
    with caplog.at_level(logging.WARNING, logger="predict"):
        got = predict_frontend.run_front_end(real_fixture(CLIP), tmp_path / "w")
    assert got == facts
    pd.testing.assert_frame_equal(_functionals(tmp_path / "w"), table)
    assert "the front end's worker was lost (the worker process running it died twice" \
        in caplog.text


def test_a_file_that_is_no_video_is_named_by_the_probe_in_the_worker(tmp_path, monkeypatch):
    """The probe decodes the file's first frame: in the front-end's worker, never in this
    process (a served model's: a file that crashed FFmpeg there ended the server), and before
    any of the front-end's work."""
    from personality import probing, video_io

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    monkeypatch.setattr(predict_frontend, "map_jobs", None)  # the front-end's: a TypeError

    def not_here(path):
        raise AssertionError("the video was probed in this process")

    monkeypatch.setattr(video_io, "probe", not_here)  # the worker imports its own
    with pytest.raises(StageInputError, match="notes.mp4: cannot be opened as media"):
        predict_frontend.run_front_end(bad, tmp_path / "w")
    lost = [{"lost": "the worker process running it died twice (signal 11)"}]
    monkeypatch.setattr(probing, "map_jobs", lambda *a, **k: lost)
    with pytest.raises(StageInputError, match="notes.mp4: reading it ended the worker that "
                                              r"read it \(the worker process running it died"):
        predict_frontend.run_front_end(bad, tmp_path / "w")


def test_the_kept_worker_reads_the_params_file_this_process_names(tmp_path, monkeypatch,
                                                                  inline_run):
    """A worker started while this process sat in another folder (a server's chdir) still
    reads the repository's params.yaml: the path travels with each clip, resolved here."""
    repo = os.getcwd()
    predict_frontend.FRONT_END_WORKER.close()
    monkeypatch.chdir(tmp_path)
    predict_frontend.FRONT_END_WORKER.pool(1)  # started here: no params.yaml in this folder
    monkeypatch.chdir(repo)
    got = predict_frontend.run_front_end(real_fixture(CLIP), tmp_path / "w")
    assert got == inline_run[0]


def test_a_checkpoint_whose_front_end_params_this_version_cannot_read_says_so(tmp_path):
    """A checkpoint trained before a front-end key was renamed: one error that names the key
    and says the checkpoint is the cause, from the worker as from this process."""
    old = {"faces": {"old_margin": 0.2}}  # a key this version's FacesParams does not have
    with pytest.raises(ParamsError, match=r"checkpoint keeps front-end params this version "
                       r"cannot read \(faces.old_margin: unknown key.*retrain it"):
        predict_frontend.run_front_end(real_fixture(CLIP), tmp_path / "w", frontend=old)


def test_a_checkpoint_never_names_the_files_and_folders_predict_reads(tmp_path):
    """A checkpoint is an untrusted file: front-end fields that name a file, folder or URL (the
    face model, the OpenFace CSV folder) come from this machine's params, never from it (a
    tampered one made predict fetch a URL, hash /etc/passwd and score a clip from CSVs outside
    the data root); every other value it keeps is checked before any work, naming it."""
    params = tmp_path / "params.yaml"
    params.write_text("faces:\n  model_path: ''\naus:\n  openface_dir: data/openface\n")
    ckpt = tmp_path / "evil" / "best.pt"
    stored = {"faces": {"model_path": "http://127.0.0.1:8765/evil.task", "margin": 0.1},
              "aus": {"backend": "openface_csv", "openface_dir": "../../../tmp/evil"},
              "frames": {"fps": 5.0}}
    frontend = predict_frontend.checked_frontend(stored, params, ckpt)
    assert frontend["faces"]["model_path"] == ""  # this machine's
    assert frontend["aus"] == {"backend": "openface_csv", "openface_dir": "data/openface"}
    assert frontend["frames"] == {"fps": 5.0} and stored["faces"]["model_path"].startswith("http")
    with pytest.raises(ParamsError, match=r"evil/best.pt: frames.fps"):
        predict_frontend.checked_frontend({"frames": {"fps": -5.0}}, params, ckpt)
    with pytest.raises(ParamsError, match=r"evil/best.pt: audio.f0_min"):  # the class's own
        predict_frontend.checked_frontend({"audio": {"f0_min": 0.0}}, params, ckpt)  # checks
    assert predict_frontend.checked_frontend({"faces": {"margin": 0.1}}, params, ckpt)[
        "faces"]["model_path"] == ""  # set from this machine's even when the checkpoint lacks it
    with pytest.raises(ParamsError, match=r"evil/best.pt: its front-end params are not"):
        predict_frontend.checked_frontend({"frames": [1, 2]}, params, ckpt)
    assert predict_frontend.checked_frontend(None, params, ckpt) is None
    params.write_text("faces:\n  model_path: ''\n")  # OpenFace AUs, and no folder of them here
    with pytest.raises(ParamsError, match=r"evil/best.pt: aus.openface_dir: set it"):
        predict_frontend.checked_frontend(stored, params, ckpt)


def test_relative_machine_paths_are_the_repo_roots_not_the_work_folders(tmp_path):
    """aus.openface_dir is relative to the repo root, where the aus stage reads it under DVC;
    predict runs that stage in its own work folder, and looked there ("/tmp/tmpXXXX/data/
    openface: aus.openface_dir is not a folder", a review found), so no model trained on
    OpenFace CSVs could score a clip. The checkpoint's params or params.yaml's alike, and a
    served model's copy of params.yaml (in MLflow's artifacts) too; an absolute path, none and
    a URL stay as given."""
    from personality.common import repo_root
    from stages import aus, faces

    params = tmp_path / "artifacts" / "params.yaml"  # a copy, as a served model carries
    params.parent.mkdir()
    params.write_text("faces:\n  model_path: models/face.task\n"
                      "aus:\n  backend: openface_csv\n  openface_dir: data/openface\n")
    ckpt = tmp_path / "m" / "best.pt"
    stored = predict_frontend.checked_frontend({"aus": {"backend": "openface_csv"}}, params, ckpt)
    for frontend in (None, stored):
        params_of = predict_frontend.front_end_params(params, frontend)
        assert params_of("aus", aus.AusParams).openface_dir == str(repo_root() / "data/openface")
        assert params_of("faces", faces.FacesParams).model_path == str(
            repo_root() / "models/face.task")
    params.write_text("faces:\n  model_path: https://example.org/face.task\n"
                      "aus:\n  openface_dir: /srv/openface\n")
    params_of = predict_frontend.front_end_params(params, None)
    assert params_of("aus", aus.AusParams).openface_dir == "/srv/openface"
    assert params_of("faces", faces.FacesParams).model_path == "https://example.org/face.task"
    params.write_text("aus:\n  backend: mediapipe\n")
    assert predict_frontend.front_end_params(params, None)("aus", aus.AusParams).openface_dir == ""


def test_a_damaged_audio_track_is_a_warning_of_the_clip(tmp_path, monkeypatch):
    """The audio stage reads a damaged stretch as silence and names it in its metrics; predict
    says it among the clip's warnings (prediction.json and the report) too."""
    from stages.predict_model import clip_warnings

    data = bytearray(real_fixture("no_face.mp4").read_bytes())
    for i in range(int(len(data) * 0.3), int(len(data) * 0.5), 50):
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    monkeypatch.setenv("PERSONALITY_CLUSTER", "inline")
    facts = predict_frontend.run_front_end(damaged, tmp_path / "w")
    assert any(n.endswith("corrupt audio packet(s) read as silence")
               for n in facts["audio_notes"])
    assert set(facts["audio_notes"]) <= set(facts["warnings"]) == set(clip_warnings(facts))


def test_a_clip_with_two_people_says_one_face_per_frame_was_scored(tmp_path, monkeypatch):
    """A phone clip of two people side by side (the fixture's man beside the photo's person,
    whose size wavers as a moving head's does): the faces stage keeps one face per frame
    (faces.select), so the scores may mix the two. Before, only faces_summary's count said
    so; the warnings (prediction.json, the report, predictions.csv) said nothing."""
    from fractions import Fraction

    import av
    import numpy as np
    from PIL import Image

    from stages.predict_model import clip_warnings

    photo = Image.open(real_fixture("single_face.jpg")).convert("RGB")
    clip = tmp_path / "two people.mp4"
    with av.open(str(real_fixture(CLIP))) as src, av.open(str(clip), "w") as out:
        v = out.add_stream("libx264", rate=Fraction(30))
        v.width, v.height, v.pix_fmt = 1006, 360, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            side = int(360 * (1 + 0.08 * np.sin(i / 3))) // 2 * 2
            right = np.zeros((360, 366, 3), np.uint8)
            person = np.asarray(photo.resize((side, side)))[:360, :366]
            right[:person.shape[0], :person.shape[1]] = person
            image = np.concatenate([frame.to_ndarray(format="rgb24"), right], axis=1)
            for packet in v.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    monkeypatch.setenv("PERSONALITY_CLUSTER", "inline")
    facts = predict_frontend.run_front_end(clip, tmp_path / "w")
    several = facts["faces_summary"]["frames_with_several_faces"]
    assert several == facts["n_frames"] > 0
    assert f"more than one face in {several} of the {several} sampled frames" in \
        "; ".join(facts["warnings"])
    assert facts["warnings"] == clip_warnings(facts)
    one = {"face_share": 1.0, "n_frames": 20, "has_audio": True, "voiced_share": 0.5}
    assert clip_warnings({**one, "faces_summary": {"frames_with_several_faces": 1}}) == []
