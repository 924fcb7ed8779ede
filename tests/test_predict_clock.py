"""The audio and the frames on one clock: a recording whose sound starts 0.3 s after its picture
(common in phone and webcam files) has its audio's second 0 at the frames' t = 0.3. The audio
stage puts its features on the frames' clock (0.3 s of leading silence: tests/test_audio_clock.py;
the default data has no offset, so they stay as they are); predict records the offset
(prediction.json's `audio_offset_s`, `audio_aligned`) and draws the audio occlusion strip on the
features' seconds, which are the AU timeline's, shifting it only for features that were not
aligned. Real clips, muxed here with PyAV: the
single_face fixture's frames with real speech (librivox) starting late. The report's time axes fit
the clip: the strip's last window ends where the audio does, a 0.12 s clip's axes end at 0.12 s."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from personality.clip_clock import audio_offset_s
from personality.schemas import TRAITS
from personality.video_io import iter_frames
from tests.conftest import real_fixture, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000


def mux_clip(path, *, audio_at_s: float = 0.0, video_at_s: float = 0.0, faces: bool = False,
             seconds: float = 2.4):
    """An MKV of H.264 video (the single_face fixture's frames, else grey ramps at 25 fps) and
    16 kHz PCM speech, each stream's first timestamp where asked: MKV keeps them in ms, and PCM
    has no encoder priming, so the offset is exactly `audio_at_s - video_at_s`."""
    import av
    import soundfile as sf

    speech, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="int16")
    assert sr == SR
    with av.open(str(path), "w") as out:
        fps = 30 if faces else 25
        v = out.add_stream("libx264", rate=Fraction(fps))
        (v.width, v.height), v.pix_fmt = (640, 360) if faces else (64, 48), "yuv420p"
        a = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        for i, image in enumerate(_images(faces, seconds)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.time_base = Fraction(1, fps)
            frame.pts = i + int(round(video_at_s * fps))
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        wave = speech[: int(seconds * SR)]
        for i in range(0, len(wave), 1024):
            sound = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="s16",
                                               layout="mono")
            sound.sample_rate, sound.time_base = SR, Fraction(1, SR)
            sound.pts = i + int(round(audio_at_s * SR))
            for packet in a.encode(sound):
                out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    return path


def _images(faces: bool, seconds: float):
    """(H, W, 3) uint8 frames: the single_face fixture's (30 fps), else 25 fps grey ramps."""
    if not faces:
        return [np.full((48, 64, 3), i * 9 % 255, np.uint8) for i in range(int(seconds * 25))]
    import av

    with av.open(str(real_fixture("single_face.mp4"))) as src:
        return [f.to_ndarray(format="rgb24") for f in src.decode(video=0)][:int(seconds * 30)]


def test_the_offset_is_where_the_audio_starts_on_the_frames_clock(tmp_path):
    late = mux_clip(tmp_path / "late.mkv", audio_at_s=0.3)
    assert audio_offset_s(late) == pytest.approx(0.3, abs=1e-9)
    first_t = next(iter_frames(late))[1]
    assert first_t == 0.0  # the frames' t = 0 is the video's start; the audio's, 0.3 s on
    early = mux_clip(tmp_path / "early.mkv", video_at_s=0.3)
    # libx264's B-frame delay moves the first picture by up to a frame (MKV keeps pts)
    assert audio_offset_s(early) == pytest.approx(-0.3, abs=0.041)
    assert next(iter_frames(early))[1] == 0.0
    # the fixtures and the synthetic generator's mux (AAC with its priming cut): no offset
    assert audio_offset_s(real_fixture("single_face.mp4")) == 0.0
    assert audio_offset_s(write_video(tmp_path / "tone.mp4", n_frames=10)) == 0.0
    assert audio_offset_s(write_video(tmp_path / "mute.mp4", n_frames=10, audio=False)) is None


@pytest.fixture(scope="module")
def logmel_checkpoint(tmp_path_factory):
    """An untrained, seeded log-mel model (its statistics fitted on the clip itself)."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "logmel_cnn" / "best.pt",
                           model=build_model("logmel_cnn"), model_name="logmel_cnn",
                           train_mean=[0.5] * 5, inputs=["logmel"],
                           source_config={"logmel": {"stats_split": ""}})


def test_prediction_and_report_put_the_audio_where_it_plays(logmel_checkpoint, tmp_path,
                                                            monkeypatch):
    """A face clip whose speech starts 0.3 s late: prediction.json records the offset; the
    features start with its 0.3 s of silence, so the occlusion windows' starts are the frames'
    0, 1, 2 (the first second holds 0.3 s of silence), not shifted again (0.3, 1.3, 2.3 before
    the features were aligned), and the report draws the strip from 0 to where the audio ends
    (2.7) under the AU timeline, on one time axis, and says why."""
    from stages import predict, predict_report

    clip = mux_clip(tmp_path / "phone.mkv", audio_at_s=0.3, faces=True)
    assert predict.main([str(clip), "--out", str(tmp_path / "out"), "--model",
                         str(logmel_checkpoint)]) == 0
    result = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert result["audio_offset_s"] == pytest.approx(0.3) and result["audio_aligned"] is True
    part = result["explanation"]["audio_occlusion"]["logmel"]
    windows = len(part["delta"][0])
    assert windows >= 2 and part["audio_offset_s"] == result["audio_offset_s"]
    assert part["audio_aligned"] is True
    assert part["seconds"] == pytest.approx(part["window_s"] * np.arange(windows))

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    again = predict.predict_video(clip, model=str(logmel_checkpoint), work=tmp_path)
    assert all(again[t] == result[t] for t in TRAITS)
    predict_report.draw_report(again, tmp_path / "unused.png")
    axes = {ax.get_title().split(" (")[0]: ax for ax in figures[0].axes}
    au, strip = axes["Action Units"], axes["audio occlusion"]
    # the windows from the frames' t = 0 to where the audio ends: 0.3 s of silence, then 2.4 s
    # of speech, to 2.7; its third window 0.7 s wide
    assert part["audio_s"] == pytest.approx(2.7)
    assert strip_edges(strip) == pytest.approx([0.0, 1.0, 2.0, 2.7])
    assert au.get_xlim() == strip.get_xlim() == pytest.approx((0.0, 2.7))
    assert ("the audio starts 0.30 s after the video: the features (and this strip) start with "
            "that much silence") in strip.get_title()
    assert "score with that second (the last one 0.70 s) muted" in strip.get_title()


def test_timestamps_that_cannot_be_read_leave_the_audio_unshifted_and_predict_on(
        tmp_path, monkeypatch):
    """A container whose timestamps PyAV cannot read: the audio stage leaves the track as
    decoded (frames_offset_s: None), and predict's front end, which read the offset again
    unguarded, failed the clip on the same error; it now reports the offset as unknown. All in
    this process (front_end_here, PERSONALITY_CLUSTER=inline: workers would not see the patch)."""
    from stages.ingest import probe_video
    from stages.predict_frontend import front_end_here
    from tests.conftest import REPO

    def unreadable(path):
        raise RuntimeError("unreadable timestamps")

    monkeypatch.setenv("PERSONALITY_CLUSTER", "inline")  # the stages' work in this process too
    monkeypatch.setattr("personality.clip_clock.audio_offset_s", unreadable)
    monkeypatch.setattr("stages.audio.audio_offset_s", unreadable)
    clip = mux_clip(tmp_path / "phone.mkv", audio_at_s=0.3, faces=True)
    out = front_end_here(clip, tmp_path / "work", REPO / "params.yaml", None, probe_video(clip))
    assert out["audio_offset_s"] is None and out["audio_aligned"] is False
    assert "audio_shift_s" not in out and not out["audio_silent"]
    # and readable ones: the shift the features were given, from the audio stage's row
    monkeypatch.undo()
    out = front_end_here(clip, tmp_path / "again", REPO / "params.yaml", None, probe_video(clip))
    assert out["audio_offset_s"] == pytest.approx(0.3) and out["audio_aligned"] is True


def test_no_offset_no_note_and_the_strip_starts_at_zero():
    """A clip without an offset (the default data's): the windows start at 0, no title note.
    Features that were not aligned (audio.align_to_frames off) are shifted to where they play."""
    from stages import predict_report

    def part_of(seconds, offset, aligned, key="logmel"):
        explanation = {"audio_occlusion": {key: {"seconds": seconds, "window_s": 1.0}}}
        return predict_report.on_frames_clock(explanation, offset, aligned=aligned)[
            "audio_occlusion"][key]

    part = part_of([0.0, 1.0], 0.0, True)
    assert part["seconds"] == [0.0, 1.0] and predict_report._offset_note(part) == ""
    assert part_of([0.0], None, False, key="wave")["seconds"] == [0.0]
    assert part_of([0.0, 1.0], 0.3, True)["seconds"] == [0.0, 1.0]  # aligned: never twice
    unaligned = part_of([0.0, 1.0], 0.3, False)
    assert unaligned["seconds"] == [0.3, 1.3]
    assert "drawn where it plays" in predict_report._offset_note(unaligned)
    early = {"seconds": [-0.25], "audio_offset_s": -0.25}
    assert "starts 0.25 s before the video" in predict_report._offset_note(early)
    early_aligned = predict_report._offset_note(part_of([0.0], -0.25, True))
    assert "before the video: the features leave that much out" in early_aligned


def strip_edges(strip) -> list[float]:
    """The x edges of the occlusion strip's cells (its QuadMesh)."""
    [mesh] = strip.collections
    return mesh.get_coordinates()[0, :, 0].tolist()


def report_axes(result: dict, monkeypatch, tmp_path) -> dict:
    """{panel title (before ' ('): axes} of the report drawn for `result`."""
    from stages import predict_report

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    predict_report.draw_report(result, tmp_path / "unused.png")
    return {ax.get_title().split(" (")[0]: ax for ax in figures[-1].axes}


def test_a_clip_shorter_than_a_second_gets_axes_that_fit_it(monkeypatch, tmp_path):
    """0.1 s of speech under 0.12 s of picture (3 frames at 25 fps; one sampled at 8 fps, at 0):
    the AU timeline and the occlusion strip drew 0-1 s, the strip's one window a full second
    and the AUs' only frame no line at all; now both end with the clip, the frame a dot."""
    from stages import predict
    from tests.test_short_audio import speech_clip

    clip = speech_clip(tmp_path / "short.mkv", SR // 10)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m" / "best.pt", model=build_model("logmel_cnn"),
                           model_name="logmel_cnn", train_mean=[0.5] * 5, inputs=["logmel"],
                           source_config={"logmel": {"stats_split": "", "eval_mode": "full"}})
    result = predict.predict_video(clip, model=str(ckpt), work=tmp_path)
    part = result["explanation"]["audio_occlusion"]["logmel"]
    assert part["audio_s"] == pytest.approx(0.10)  # 11 frames centred on 0, 0.01, ..., 0.10
    axes = report_axes(result, monkeypatch, tmp_path)
    au, strip = axes["Action Units"], axes["audio occlusion"]
    assert strip_edges(strip) == pytest.approx([0.0, 0.10])
    assert au.get_xlim() == strip.get_xlim() == pytest.approx((0.0, result["duration_s"]))
    assert result["duration_s"] == pytest.approx(0.12)
    assert all(line.get_marker() == "o" for line in au.get_lines())  # one frame: dots


def test_the_last_window_ends_with_the_audio_whatever_the_clock(monkeypatch):
    """audio_s is a length: the edges run from the first (shifted) start to start + audio_s;
    a result written before it was recorded keeps whole windows."""
    from models.explain import _audio_seconds
    from personality.explain_plots import occlusion_edges

    assert _audio_seconds("wave", 38_400, 1 / SR) == pytest.approx(2.4)
    assert _audio_seconds("logmel", 241, 0.01) == pytest.approx(2.4)  # frames centred on i hop
    late = {"seconds": [0.3, 1.3, 2.3], "window_s": 1.0, "audio_s": 2.4}
    assert occlusion_edges(late, 3) == pytest.approx([0.3, 1.3, 2.3, 2.7])
    older = {"seconds": [0.0, 1.0], "window_s": 1.0}
    assert occlusion_edges(older, 2) == pytest.approx([0.0, 1.0, 2.0])
    tail = {"seconds": [0.0, 1.0], "window_s": 1.0, "audio_s": 2.05}  # a tail joins the last
    assert occlusion_edges(tail, 2) == pytest.approx([0.0, 1.0, 2.05])


def test_the_strips_title_says_when_the_last_window_is_not_a_second():
    """Its title said "that second muted" under a 0.4 s or 1.05 s last column too."""
    from stages.predict_report import _muted_words

    def words(audio_s, n, window_s=1.0):
        return _muted_words({"seconds": list(np.arange(n) * window_s), "window_s": window_s,
                             "audio_s": audio_s, "delta": [[0.0] * n] * 5})

    assert words(3.0, 3) == "that second"
    assert words(2.4, 3) == "that second (the last one 0.40 s)"
    assert words(2.05, 2) == "that second (the last one 1.05 s)"
    assert words(2.0, 4, window_s=0.5) == "that 0.5 s window"
    assert words(None, 2) == "that second"  # a result written before audio_s: whole windows


def test_the_au_panel_never_blames_an_audio_only_model(monkeypatch, tmp_path):
    """The front-end computes AUs for every model, so an audio model's report has its clip's AU
    timeline (test_prediction_and_report_put_the_audio_where_it_plays: logmel_cnn); without
    AU rows the panel said "(audio-only model)", whatever the model. It says what is missing."""
    result = {"video": "x.mp4", "model": "hrnet_face", **dict.fromkeys(TRAITS, 0.5)}
    texts = [t.get_text() for ax in report_axes({**result, "_report": {}}, monkeypatch,
                                                tmp_path).values() for t in ax.texts]
    assert "no AU timeline: no AUs for this clip" in texts
    assert not [t for t in texts if "audio-only" in t]
    faceless = {"t": np.array([0.0, 0.125]), "aus": {"AU12_r": np.array([np.nan, np.nan])}}
    texts = [t.get_text() for ax in report_axes({**result, "_report": faceless}, monkeypatch,
                                                tmp_path).values() for t in ax.texts]
    assert "no AU timeline: no face in any sampled frame" in texts
