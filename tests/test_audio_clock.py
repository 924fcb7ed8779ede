"""The audio stage puts each clip's audio on its frames' clock (audio.align_to_frames): a track
that starts 0.3 s after the picture gets 0.3 s of leading digital silence, one that starts before
it loses what it played before the first frame, so that log-mel frame i, f0 / rms frame i and
wave sample n lie at the frames' t = i * hop_s and n / sr. Real speech (librivox) muxed with PyAV
as 16 kHz PCM in MKV (tests/test_predict_clock.py's mux_clip: no encoder priming, so each clip
decodes to the same samples and only the timestamps differ), through the stage function and
through predict's front end.

    python -m pytest -q tests/test_audio_clock.py
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from personality.common import BaseParams, load_params, load_params_file, read_artifact
from stages import audio, predict_frontend
from stages.audio import AudioParams
from tests.conftest import real_fixture, write_video
from tests.test_predict_clock import mux_clip

SR, HOP = 16000, 160  # 10 ms frames
# librosa features only: the default params' openSMILE sets are not needed here; aligned as
# params.yaml says (the code default is false: a checkpoint from before the key)
P = AudioParams(align_to_frames=True)
LATE, EARLY = 4800, 5120  # samples: 0.3 s late; 0.32 s early (8 frames at 25 fps: 0.3 is none)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """The same 2.4 s of speech under the same 25 fps picture: at the frames' t = 0, 0.3 s after
    it, and 0.32 s before it (the picture starts at 0.32)."""
    d = tmp_path_factory.mktemp("clock")
    return {"zero": mux_clip(d / "zero.mkv"), "late": mux_clip(d / "late.mkv", audio_at_s=0.3),
            "early": mux_clip(d / "early.mkv", video_at_s=0.32)}


@pytest.fixture(scope="module")
def rows(clips) -> dict:
    return {name: audio.process_video(name, path, P) for name, path in clips.items()}


def logmel(row) -> np.ndarray:
    return np.reshape(np.asarray(row["logmel"]), (row["n_frames"], row["n_mels"]))  # (T, 64)


def wave(row) -> np.ndarray:
    return np.asarray(row["wave"])[:row["n_samples"]]  # int16, (n_samples,)


def onset(row) -> int:
    """The first frame whose RMS is above the silence floor: where the sound begins."""
    return int(np.argmax(20 * np.log10(np.maximum(np.asarray(row["rms"]), 1e-10)) > P.silence_db))


def test_a_late_track_starts_with_silence_and_its_features_move_30_frames(rows):
    zero, late = rows["zero"], rows["late"]
    assert zero["audio_offset_s"] == 0.0 and late["audio_offset_s"] == pytest.approx(0.3)
    assert not wave(late)[:LATE].any() and np.array_equal(wave(late)[LATE:], wave(zero))
    m0, m = logmel(zero), logmel(late)
    assert m.shape[0] == m0.shape[0] + 30
    np.testing.assert_allclose(m[30:], m0, atol=1e-3)
    # frames 0-28 end (centre + n_fft / 2) before sample 4800: digital silence, -100 dB
    assert np.allclose(m[:29], -100.0, atol=1e-4) and (m[29] > -99.0).any()
    assert onset(late) == onset(zero) + 30
    for key in ("rms", "f0", "voicing", "zcr"):
        np.testing.assert_allclose(late[key][30:], zero[key], atol=1e-5, err_msg=key)
    assert np.isnan(late["f0"][:30]).all()
    assert late["duration_s"] == pytest.approx(zero["duration_s"] + 0.3)
    # the functionals describe the recording: the alignment's silence is in no share nor mean
    assert late["silent"] == zero["silent"] is False
    for key in ("fn_active_frac", "fn_voiced_frac", "fn_voiced_onsets_per_s", "fn_rms_db_mean",
                "fn_rms_db_p10", "fn_f0_p50", "fn_logmel_10_mean", "fn_mfcc_00_std"):
        assert late[key] == pytest.approx(zero[key], rel=1e-5), key


def test_an_early_track_loses_what_played_before_the_first_frame(rows):
    zero, early = rows["zero"], rows["early"]
    assert early["audio_offset_s"] == pytest.approx(-EARLY / SR)
    assert np.array_equal(wave(early), wave(zero)[EARLY:])
    m0, m = logmel(zero), logmel(early)
    assert m.shape[0] == m0.shape[0] - 32
    # from frame 2 on (frames 0-1 reach back past the cut, into librosa's zero padding)
    np.testing.assert_allclose(m[2:], m0[34:], atol=1e-3)
    np.testing.assert_allclose(early["rms"][2:], zero["rms"][34:], atol=1e-5)
    assert early["duration_s"] == pytest.approx(zero["duration_s"] - EARLY / SR)


def test_a_track_that_ends_before_the_first_frame_is_named(tmp_path):
    """All of the sound plays before the picture starts: nothing is left on the frames' clock,
    and the error says why rather than calling a 2.4 s track too short."""
    row = audio.process_video("before", mux_clip(tmp_path / "b.mkv", video_at_s=3.0), P)
    assert row["audio_offset_s"] == pytest.approx(-3.0) and row["n_frames"] == 0
    assert row["error"].endswith("audio track too short (0.000 s < 0.04 s after the first "
                                 "frame; 3.000 s before it left out)")


def test_off_or_unknown_the_track_is_taken_from_its_own_start(clips, rows, monkeypatch):
    """audio.align_to_frames false, or timestamps that do not say (clip_clock's None): the late
    clip's row is the zero clip's, but for its id, and audio_offset_s is NaN (not shifted)."""
    off = audio.process_video("late", clips["late"], dataclasses.replace(P, align_to_frames=False))
    monkeypatch.setattr(audio, "audio_offset_s", lambda path: None)
    unknown = audio.process_video("late", clips["late"], P)
    for row in (off, unknown):
        assert np.isnan(row["audio_offset_s"])
        for key, value in rows["zero"].items():
            if key not in ("video_id", "audio_offset_s"):
                np.testing.assert_array_equal(row[key], value, err_msg=key)


def test_no_frames_or_no_audio_stream_leaves_nothing_to_align(tmp_path):
    wav = real_fixture("librivox_speech_16k.wav")  # sound only: no frames' clock to put it on
    row = audio.process_video("wav", wav, P)
    assert np.isnan(row["audio_offset_s"]) and not row["error"]
    decoded = audio.decode_audio(wav, sr=SR, max_seconds=P.max_seconds)
    assert row["n_samples"] == len(decoded)
    mute = audio.process_video("mute", write_video(tmp_path / "m.mp4", audio=False), P)
    assert not mute["has_audio"] and np.isnan(mute["audio_offset_s"])


def test_the_stage_records_and_names_each_shift(clips, tmp_path):
    from tests.test_audio import make_root

    root = make_root(tmp_path, {**clips, "wav": real_fixture("librivox_speech_16k.wav")})
    audio.run(P, BaseParams(workers=1), root=root)
    table = read_artifact("audio", path=root / "data" / "audio").set_index("video_id")
    assert table["audio_offset_s"].drop("wav").to_dict() == pytest.approx(
        {"zero": 0.0, "late": 0.3, "early": -0.32})
    assert np.isnan(table.loc["wav", "audio_offset_s"])
    metrics = json.loads((root / "metrics" / "audio.json").read_text())
    assert metrics["shifted"] == [{"video_id": "early", "audio_offset_s": -0.32},
                                  {"video_id": "late", "audio_offset_s": 0.3}]
    assert [r["video_id"] for r in metrics["offset_unknown"]] == ["wav"]


def test_predict_front_end_computes_what_the_stage_computes(clips, tmp_path, monkeypatch):
    """predict's front end runs the audio stage's own function on the clip: the same aligned
    features (the params.yaml ones) and the offset in its facts."""
    monkeypatch.setenv("PERSONALITY_CLUSTER", "inline")
    params = load_params("audio", AudioParams)
    for name, offset in (("late", 0.3), ("early", -0.32)):
        facts = predict_frontend.run_front_end(clips[name], tmp_path / name)
        assert facts["audio_offset_s"] == pytest.approx(offset) and facts["audio_aligned"]
        got = read_artifact("audio", path=tmp_path / name / "data" / "audio").iloc[0]
        # as the stage runs it: the executor gives every job one BLAS thread, and OpenBLAS's
        # threaded sgemm (librosa's mel projection) rounds otherwise on some CPUs (an AMD EPYC
        # Zen 3: 222 of 17344 log-mel values off by up to 7.6e-6)
        with threadpool_limits(1):
            want = audio.process_video(got["video_id"], clips[name], params)
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)
        if name == "late":  # its first 0.3 s: digital silence in the features
            assert not np.asarray(got["wave"])[:LATE].any()
            assert np.allclose(logmel(got)[:29], -100.0, atol=1e-4)


def test_a_track_that_starts_past_max_feature_seconds_says_so(tmp_path):
    """The sound starts 3 s after the picture, the features stop at 2 s (max_feature_seconds):
    nothing of the track is within them, and the error says it starts past that limit instead
    of calling a 2.4 s track too short."""
    clip = mux_clip(tmp_path / "late.mkv", audio_at_s=3.0)
    row = audio.process_video("late", clip, dataclasses.replace(P, max_feature_seconds=2.0))
    assert row["audio_offset_s"] == pytest.approx(3.0) and row["n_frames"] == 0
    assert row["error"].endswith("audio track too short (0.000 s < 0.04 s: it starts 3.000 s "
                                 "after the first frame, at or past audio.max_feature_seconds "
                                 "(2 s), where the features stop)")


def test_a_checkpoint_from_before_the_key_is_scored_unaligned():
    """A checkpoint keeps params.yaml's front-end sections as written when it trained
    (personality.common.frontend_params): one trained before audio.align_to_frames existed lacks
    the key, and its training data took each stream from its own start. predict must make its
    clip's features the same way, not the shifted ones a key it never saw would now default to."""
    old = {k: v for k, v in load_params_file()["audio"].items() if k != "align_to_frames"}
    params_of = predict_frontend.front_end_params(None, {"audio": old})
    assert params_of("audio", AudioParams).align_to_frames is False
    # today's checkpoints keep the key as params.yaml writes it
    assert predict_frontend.front_end_params(None, {"audio": {**old, "align_to_frames": True}})(
        "audio", AudioParams).align_to_frames is True


def test_a_late_recording_with_no_frame_of_the_grid_in_it_is_too_short(monkeypatch):
    """The functionals start at the first frame centred at or after a late track's start. With
    a hop_s over f0_frame_s (0.1 s here), a 0.044 s recording that starts 0.31 s after the first
    frame holds none (frame 3 is centred at 0.3 s, frame 4 at 0.4 s, past its end): its row had
    no error, was not silent, and every fn_* was NaN. It is too short, and says why; starting at
    0.3 s, on frame 3's centre, it has its frame and its functionals."""
    p = dataclasses.replace(P, hop_s=0.1).validate()
    tone = (0.3 * np.sin(2 * np.pi * 150 * np.arange(704) / SR)).astype(np.float32)  # 0.044 s

    def late_by(lead: int):
        def decode(path, params, report):
            report["audio_offset_s"] = lead / SR
            return np.concatenate([np.zeros(lead, np.float32), tone]), lead
        return decode

    monkeypatch.setattr(audio, "decode_on_frames_clock", late_by(4960))
    row = audio.process_video("v", "v.mkv", p)
    assert row["error"] == ("v.mkv: audio track too short (0.044 s < 0.090 s: no frame of the "
                            "0.1 s grid (audio.hop_s) centred in it)")
    monkeypatch.setattr(audio, "decode_on_frames_clock", late_by(4800))
    row = audio.process_video("v", "v.mkv", p)
    assert not row["error"] and row["fn_voiced_frac"] == 1.0 and np.isfinite(row["fn_rms_db_mean"])
