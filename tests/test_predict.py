"""The predict CLI on real videos: scores in [0, 1] and both files for a face video; a clear error
and a non-zero exit for a video without a face, without audio, or unreadable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from stages import predict, predict_report
from tests.conftest import real_fixture, write_video


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained but real checkpoints of an AU model and an audio model (seeded). The audio one
    standardises its log-mel on the clip itself (a trained one carries its training split's
    statistics: models/data_audio.py refuses to fit them on a clip that is not a training one)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {}
    for name, inputs, config in (("perfex_cnn", ["aus", "aus_mask"], {}),
                                 ("logmel_cnn", ["logmel"], {"logmel": {"stats_split": ""}})):
        model = build_model(name)
        paths[name] = save_checkpoint(root / name / "best.pt", model=model, model_name=name,
                                      train_mean=[0.5] * 5, inputs=inputs, source_config=config)
    return paths


def test_predict_on_a_face_video(checkpoints, tmp_path, capsys):
    video = real_fixture("single_face.mp4")
    code = predict.main([str(video), "--out", str(tmp_path / "out"),
                         "--model", str(checkpoints["perfex_cnn"])])
    assert code == 0
    result = json.loads((tmp_path / "out" / "prediction.json").read_text())
    scores = np.array([result[t] for t in "OCEAN"])
    assert np.all((scores >= 0) & (scores <= 1))
    assert result["model"] == "perfex_cnn" and result["face_rate"] >= 0.95
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    printed = capsys.readouterr().out
    assert "openness" in printed and "prediction.json" in printed


def test_predict_refuses_a_video_without_face(checkpoints, tmp_path, caplog):
    video = real_fixture("no_face.mp4")
    code = predict.main([str(video), "--out", str(tmp_path / "out"),
                         "--model", str(checkpoints["perfex_cnn"])])
    assert code == 2
    assert "no face was found" in caplog.text and "no_face.mp4" in caplog.text
    assert not (tmp_path / "out" / "prediction.json").exists()


def test_predict_refuses_audio_model_without_audio(checkpoints, tmp_path, caplog, monkeypatch):
    """Before any front-end work: the file's probe already says it has no audio track."""
    from stages import predict_frontend

    def no_front_end(*args, **kwargs):
        raise AssertionError("the front-end ran for a clip the model cannot score")

    monkeypatch.setattr(predict_frontend, "map_jobs", no_front_end)
    monkeypatch.setattr(predict_frontend, "front_end_here", no_front_end)
    video = write_video(tmp_path / "silent_film.mp4", n_frames=10, audio=False)
    code = predict.main([str(video), "--out", str(tmp_path / "out"),
                         "--model", str(checkpoints["logmel_cnn"])])
    assert code == 2 and "no audio track" in caplog.text


def test_predict_refuses_unreadable_file_and_unknown_model(checkpoints, tmp_path, caplog):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    assert predict.main([str(bad), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoints["perfex_cnn"])]) == 2
    assert "broken.mp4" in caplog.text
    assert predict.main([str(bad), "--out", str(tmp_path / "o"), "--model", "no_such_model"]) == 2
    assert "no checkpoint" in caplog.text


def test_predict_refuses_an_audio_file_whose_only_picture_is_cover_art(checkpoints, tmp_path,
                                                                        caplog):
    """A podcast episode or voice memo with artwork: its cover is a one-frame `video` stream
    (disposition attached_pic). Before, predict scored it as a clip, the artwork's face (here
    the fixture photo's) as the speaker's, face_share 1.0 and no warning."""
    import av
    import soundfile as sf
    from PIL import Image

    from personality.video_io import mux_mono_audio

    cover = np.asarray(Image.open(real_fixture("single_face.jpg")).convert("RGB")
                       .resize((286, 280)))
    speech, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="float32")
    podcast = tmp_path / "episode 12.mp3"
    with av.open(str(podcast), "w", format="mp3") as c:
        audio = c.add_stream("mp3", rate=sr, layout="mono")
        art = c.add_stream("mjpeg", rate=1)
        art.width, art.height, art.pix_fmt = 286, 280, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(cover, format="rgb24").reformat(format="yuvj420p")
        for packet in [*art.encode(picture), *art.encode()]:
            c.mux(packet)
        mux_mono_audio(c, audio, speech[:3 * sr], sr)
    with av.open(str(podcast)) as c:  # what the file holds: sound and its artwork
        assert [s.type for s in c.streams] == ["audio", "video"]
    assert predict.main([str(podcast), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoints["perfex_cnn"])]) == 2
    assert "episode 12.mp3: no video stream" in caplog.text and "cover art" in caplog.text
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def model_root(checkpoints, tmp_path_factory):
    """A repo-like root with two trained models where the AU model is best on validation."""
    import shutil

    root = tmp_path_factory.mktemp("root")
    for name, path in checkpoints.items():
        (root / "data" / "models" / name).mkdir(parents=True)
        shutil.copy(path, root / "data" / "models" / name / "best.pt")
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps({
        "selection": {"best": "perfex_cnn", "val": {"perfex_cnn": {"ccc": 0.5},
                                                    "logmel_cnn": {"ccc": 0.3}}},
        # test figures that would pick the other way: the default must not look at them
        "perfex_cnn": {"mean": {"ccc": 0.1}}, "logmel_cnn": {"mean": {"ccc": 0.9}}}))
    return root


def test_default_model_is_the_best_on_validation_that_the_clip_can_feed(model_root, tmp_path):
    face = predict.predict_video(real_fixture("single_face.mp4"), root=model_root, work=tmp_path)
    assert face["model"] == "perfex_cnn" and "validation" in face["chosen_by"]
    # a landscape clip with a narrator and no face: the best model that reads the voice
    voice = predict.predict_video(real_fixture("no_face.mp4"), root=model_root, work=tmp_path)
    assert voice["model"] == "logmel_cnn"
    assert voice["face_share"] == 0 and voice["has_audio"] and not voice["audio_silent"]
    # the lack that decided the choice is said of the model it passed over; the audio model's
    # own warnings leave the face alone (it never reads it)
    assert voice["warnings"] == ["perfex_cnn ranks higher on validation but cannot score this "
                                 "clip: no face was found in any of its sampled frames"]


def test_a_face_model_s_warnings_say_nothing_of_the_audio(checkpoints, tmp_path):
    """The fixture's AAC track is near silent: for an AU model, which never reads the audio,
    'the audio track is silent: scores can come from the face alone' was noise."""
    face = predict.predict_video(real_fixture("single_face.mp4"),
                                 model=str(checkpoints["perfex_cnn"]), work=tmp_path)
    assert face["has_audio"] and face["audio_silent"]
    assert not [w for w in face["warnings"] if "audio" in w or "voice" in w], face["warnings"]


def test_a_broken_best_checkpoint_is_passed_over_aloud(model_root, tmp_path_factory):
    """The best model on validation has a corrupt checkpoint: the next one the clip can feed
    scores it, and the result says which was passed over and why (before: every video failed)."""
    import shutil

    root = tmp_path_factory.mktemp("broken_best")
    shutil.copytree(model_root, root, dirs_exist_ok=True)
    best = root / "data" / "models" / "perfex_cnn" / "best.pt"
    second = root / "data" / "models" / "second" / "best.pt"  # a face model, second on val
    second.parent.mkdir()
    shutil.copy(best, second)
    import torch

    ckpt = torch.load(second, weights_only=True)
    ckpt["frontend"] = {"frames": {"fps": 4.0}}  # trained on other frames: the front end reruns
    torch.save(ckpt, second)
    evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
    evaluation["selection"]["val"]["second"] = {"ccc": 0.4}
    (root / "metrics" / "evaluate.json").write_text(json.dumps(evaluation))
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    out = predict.predict_video(real_fixture("single_face.mp4"), root=root,
                                work=tmp_path_factory.mktemp("w"))
    assert out["checkpoint"] == str(second)
    assert any("perfex_cnn, better on validation, is unreadable" in w and str(best) in w
               for w in out["warnings"])
    second.write_bytes(b"broken too")  # no model left for the clip: the error says why
    with pytest.raises(predict.StageInputError, match="second, better on validation, is unread"):
        predict.predict_video(real_fixture("single_face.mp4"), root=root,
                              work=tmp_path_factory.mktemp("w2"))


def test_report_shows_the_warnings(model_root, tmp_path, monkeypatch):
    import cv2

    monkeypatch.setattr(predict, "repo_root", lambda: model_root)
    code = predict.main([str(real_fixture("no_face.mp4")), "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert result["face_share"] == 0 and result["warnings"]
    img = cv2.imread(str(tmp_path / "out" / "report.png"))  # BGR
    bottom = img[int(img.shape[0] * 0.85):]
    red = (bottom[..., 2] > 150) & (bottom[..., 1] < 80) & (bottom[..., 0] < 80)
    assert red.sum() > 200  # the warning line is drawn in red under the charts


def test_clip_warnings_in_plain_words():
    assert predict.clip_warnings({"face_share": 0.12, "n_frames": 50, "has_audio": True,
                                  "voiced_share": 0.4}) == [
        "a face in only 12% of the sampled frames: visual scores rest on few frames"]
    cut = predict.clip_warnings({"face_share": 1.0, "has_audio": True, "voiced_share": 0.5,
                                 "audio_cut_at_s": 300.0, "duration_s": 600.0})
    assert cut and "300 s" in cut[0]
    assert predict.clip_warnings({"face_share": 1.0, "has_audio": False})[0].startswith("no audio")


def test_bar_values_clear_the_whiskers():
    """The report writes each score where its error whisker does not cross it: at the foot of a
    tall bar (white), above the whisker of a short one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    scores, errors = [1.0, 0.05, 0.4], [0.12, 0.1, 0.35]
    predict_report._label_bars(ax, scores, errors)
    texts = {t.get_text(): t for t in ax.texts}
    assert set(texts) == {"1.00", "0.05", "0.40"}
    tall, short, wide = texts["1.00"], texts["0.05"], texts["0.40"]
    assert tall.get_position()[1] < 1.0 - 0.12 and tall.get_color() == "white"
    assert short.get_position()[1] > 0.05 + 0.1  # above the whisker's top
    assert wide.get_position()[1] > 0.4 + 0.35  # its whisker reaches the foot: above it
    plt.close(fig)
