"""The audio stage: demux + resample with PyAV, librosa features, functionals, the stored layout.

    .venv/bin/python -m pytest -q tests/test_audio.py
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import real_fixture
from stages import audio
from stages.audio import AudioParams
from personality.common import BaseParams, ParamsError, read_artifact
from personality.video_io import mux_mono_audio

SR = 16000
P = AudioParams()


def mux(path: Path, y: np.ndarray | None, sr: int = SR, *, seconds: float | None = None) -> Path:
    """Write an mp4 with a tiny H.264 picture (64x64, 5 fps) and, when y is given, y as AAC mono."""
    import av

    seconds = seconds if seconds is not None else len(y) / sr
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=5)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        astream = None
        if y is not None:
            astream = out.add_stream("aac", rate=sr, layout="mono")
        for i in range(max(1, int(seconds * 5))):
            img = np.full((64, 64, 3), (i * 7) % 255, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if astream is not None:
            mux_mono_audio(out, astream, y, sr)
    return path


def vowel(rng: np.random.Generator, f0: float, seconds: float, sr: int = SR) -> np.ndarray:
    """A steady harmonic tone (8 harmonics, -6 dB/octave) at f0 Hz, faint noise; (n,) float32."""
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9))
    return (0.1 * y / np.abs(y).max() + 1e-3 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def speech_mp4(tmp_path_factory) -> Path:
    """The real LibriVox read speech (7 s, 16 kHz) muxed as AAC into a small video."""
    import soundfile as sf

    y, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="float32")
    return mux(tmp_path_factory.mktemp("speech") / "speech.mp4", y, sr)


def make_root(tmp_path: Path, videos: dict[str, Path | str]) -> Path:
    """A repo-like folder whose manifest lists `videos` (id -> path)."""
    from stages.ingest import write_manifest

    rows = [{"video_id": vid, "path": str(path), "split": "train", "subject_id": vid,
             "dataset": "test", **{t: 0.5 for t in "OCEAN"}, "duration_s": 1.0, "fps": 5.0,
             "has_audio": True} for vid, path in videos.items()]
    write_manifest(pd.DataFrame(rows), tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# real speech and a near-silent real track


def test_real_speech_gives_adult_f0_and_voiced_frames(speech_mp4):
    row = audio.process_video("speech", speech_mp4, P)
    assert row["has_audio"] and not row["silent"] and row["error"] == ""
    f0 = np.asarray(row["f0"])
    voiced = f0[~np.isnan(f0)]
    assert row["fn_voiced_frac"] > 0.3
    assert np.isclose(row["fn_voiced_frac"], len(voiced) / row["n_frames"])
    assert 70 <= np.median(voiced) <= 400
    assert np.mean((voiced >= 70) & (voiced <= 400)) > 0.9  # octave slips stay rare
    assert 70 <= row["fn_f0_p50"] <= 400


def test_near_silent_track_has_no_voicing():
    path = real_fixture("single_face.mp4")  # AAC track, 44.1 kHz stereo, peak -37 dBFS
    row = audio.process_video("quiet", path, P)
    assert row["has_audio"] and row["error"] == ""
    assert row["silent"] or row["fn_voiced_frac"] < 0.05
    if row["silent"]:
        assert np.isnan(row["fn_rms_db_mean"]) and row["n_frames"] == 0
        assert row["n_samples"] > 0  # the wave is kept
    # with the energy gate off, the periodicity measure alone must still call it unvoiced
    ungated = dataclasses.replace(P, silence_db=-200.0, min_active_frac=0.0)
    row = audio.process_video("quiet", path, ungated)
    assert not row["silent"] and row["n_frames"] > 200
    assert row["fn_voiced_frac"] < 0.05


# --------------------------------------------------------------------------------------------------
# the features are librosa's


def test_features_equal_librosa_on_the_same_samples(speech_mp4):
    import librosa

    y = audio.decode_audio(speech_mp4, sr=SR, max_seconds=3.0)
    assert y.dtype == np.float32 and len(y) == 3 * SR
    feats = audio.frame_features(y, P)
    kw = dict(hop_length=160)
    S = np.abs(librosa.stft(y, n_fft=512, win_length=400, **kw))
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=512, win_length=400, n_mels=64, **kw)
    logmel = librosa.power_to_db(mel, ref=1.0, top_db=None)
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=13)
    expected = {
        "logmel": logmel, "mfcc": mfcc,
        "mfcc_d": librosa.feature.delta(mfcc), "mfcc_dd": librosa.feature.delta(mfcc, order=2),
        "rms": librosa.feature.rms(y=y, frame_length=400, **kw)[0],
        "centroid": librosa.feature.spectral_centroid(S=S, sr=SR, n_fft=512)[0],
        "flatness": librosa.feature.spectral_flatness(y=y, n_fft=512, win_length=400, **kw)[0],
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=400, **kw)[0],
    }
    t = 1 + len(y) // 160
    for name, want in expected.items():
        assert feats[name].shape[-1] == t, name
        np.testing.assert_allclose(feats[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
    f0 = librosa.yin(y, fmin=60, fmax=500, sr=SR, frame_length=640, **kw)
    voiced = feats["voiced"]
    assert voiced.any()
    np.testing.assert_allclose(feats["f0"][voiced], f0[voiced], rtol=1e-5)
    assert np.isnan(feats["f0"][~voiced]).all()


def test_row_layout_round_trips_through_parquet(speech_mp4, tmp_path):
    p = dataclasses.replace(P, max_seconds=2.0)
    y = audio.decode_audio(speech_mp4, sr=SR, max_seconds=3.0)
    feats = audio.frame_features(y, p)
    row = audio._row("speech", p, has_audio=True, y=y, feats=feats)
    pd.DataFrame([row]).to_parquet(tmp_path / "a.parquet", index=False)
    back = pd.read_parquet(tmp_path / "a.parquet").iloc[0]
    t = back["n_frames"]
    assert t == feats["rms"].shape[0] and back["hop_s"] == 0.01 and back["sr"] == SR
    np.testing.assert_array_equal(np.reshape(back["logmel"], (t, back["n_mels"])),
                                  feats["logmel"].T)
    mfcc = np.reshape(back["mfcc"], (t, 3 * back["n_mfcc"]))
    np.testing.assert_array_equal(mfcc[:, :13], feats["mfcc"].T)
    np.testing.assert_array_equal(mfcc[:, 26:], feats["mfcc_dd"].T)
    np.testing.assert_array_equal(np.isnan(back["f0"]), np.isnan(feats["f0"]))
    # the wave: exactly max_seconds long, int16, back to the samples within one quantum
    wave = np.asarray(back["wave"])
    assert wave.dtype == np.int16 and len(wave) == 2 * SR and back["n_samples"] == 2 * SR
    np.testing.assert_allclose(wave * back["wave_scale"], y[: 2 * SR], atol=1 / 32767)
    # functionals are the per-window values summarised
    rms_db = 20 * np.log10(np.maximum(back["rms"].astype(np.float64), 1e-10))
    assert np.isclose(back["fn_rms_db_mean"], rms_db.mean(), rtol=1e-5)
    f0 = back["f0"][~np.isnan(back["f0"])]
    assert np.isclose(back["fn_f0_p50"], np.median(f0.astype(np.float64)), rtol=1e-5)
    assert np.isclose(back["fn_logmel_03_std"], feats["logmel"][3].astype(np.float64).std())


def test_wave_is_padded_and_cut():
    p = dataclasses.replace(P, max_seconds=0.5)
    short = np.full(1000, 0.5, np.float32)
    wave, scale, n = audio._wave_column(short, p)
    assert len(wave) == 8000 and n == 1000 and not wave[1000:].any()
    assert np.isclose(wave[0] * scale, 0.5, atol=1e-4)
    wave, _, n = audio._wave_column(np.ones(20000, np.float32), p)
    assert len(wave) == 8000 and n == 8000 and wave.max() == 32767
    wave, scale, _ = audio._wave_column(short, dataclasses.replace(p, wave_format="float32"))
    assert wave.dtype == np.float32 and scale == 1.0


# --------------------------------------------------------------------------------------------------
# properties on synthetic signals (seeded)


def test_yin_finds_a_steady_tone_and_noise_is_unvoiced(rng):
    row_feats = audio.frame_features(vowel(rng, 150.0, 1.0), P)
    inner = slice(5, -5)  # the zero-padded edges are not periodic
    assert np.nanmedian(row_feats["f0"]) == pytest.approx(150, rel=0.02)
    assert row_feats["voiced"][inner].all() and (row_feats["voicing"][inner] > 0.95).all()
    noise = (0.05 * rng.standard_normal(SR)).astype(np.float32)
    assert audio.frame_features(noise, P)["voiced"].mean() < 0.05


def test_pyin_option_puts_its_output_on_the_same_grid(rng):
    p = dataclasses.replace(P, f0_method="pyin", pyin_hop_s=0.04)
    feats = audio.frame_features(vowel(rng, 200.0, 1.0), p)
    t = 1 + SR // 160
    assert feats["f0"].shape == (t,) and feats["voicing"].shape == (t,)
    assert np.nanmedian(feats["f0"]) == pytest.approx(200, rel=0.03)
    assert feats["voiced"].mean() > 0.8


def test_bad_params_name_the_key():
    with pytest.raises(ParamsError, match="audio.f0_frame_s"):
        dataclasses.replace(P, f0_min=20.0).validate()  # 50 ms period does not fit a 40 ms frame
    with pytest.raises(ParamsError, match="audio.win_s"):
        dataclasses.replace(P, win_s=0.05).validate()  # 800 samples > n_fft 512


# --------------------------------------------------------------------------------------------------
# bad inputs never stop the stage


def test_no_audio_track_gives_a_flagged_nan_row(tmp_path):
    row = audio.process_video("mute", mux(tmp_path / "mute.mp4", None, seconds=1.0), P)
    assert not row["has_audio"] and row["error"] == "" and row["n_frames"] == 0
    assert np.isnan(row["fn_rms_db_mean"]) and np.isnan(row["fn_voiced_frac"])
    assert len(row["logmel"]) == 0 and row["n_samples"] == 0 and not np.any(row["wave"])


def test_corrupt_and_missing_files_are_reported_and_the_others_go_on(tmp_path, rng, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = mux(videos / "good.mp4", vowel(rng, 120.0, 1.5))
    broken = videos / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(4000))
    mute = mux(videos / "mute.mp4", None, seconds=1.0)
    root = make_root(tmp_path, {"good": good, "broken": broken, "gone": videos / "gone.mp4",
                                "mute": mute})
    p = dataclasses.replace(P, max_seconds=2.0)
    with caplog.at_level(logging.WARNING, logger="audio"):
        summary = audio.run(p, BaseParams(workers=1), root=root)
    assert summary["n_videos"] == 4 and summary["n_errors"] == 2 and summary["n_no_audio"] == 1
    assert "broken.mp4" in caplog.text and "gone.mp4" in caplog.text
    table = read_artifact("audio", path=root / "data" / "audio").set_index("video_id")
    assert list(table.index) == ["good", "broken", "gone", "mute"]
    assert "broken.mp4" in table.loc["broken", "error"] and not table.loc["broken", "has_audio"]
    assert np.isnan(table.loc["broken", "fn_rms_db_mean"])
    assert table.loc["good", "error"] == "" and table.loc["good", "fn_voiced_frac"] > 0.5
    assert table.loc["good", "fn_f0_p50"] == pytest.approx(120, rel=0.03)
    # every video the audio of which could not be used is named in the stage's metrics file
    import json

    named = json.loads((root / "metrics" / "audio.json").read_text())
    failed = {row["video_id"]: row["error"] for row in named["failed"]}
    assert [row["video_id"] for row in named["failed"]] == ["broken", "gone"]
    assert "broken.mp4" in failed["broken"]
    assert named["no_audio"] == ["mute"] and named["n_errors"] == 2 and "wall_s" not in named


# --------------------------------------------------------------------------------------------------
# the stage on the tiny synthetic dataset, two spawned workers


def damaged_copy(src, dst):
    """`src` with every 50th byte flipped in 30-50% of the file, written to `dst`."""
    data = bytearray(src.read_bytes())
    for i in range(int(len(data) * 0.3), int(len(data) * 0.5), 50):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_a_corrupt_stretch_costs_its_seconds_not_the_whole_track(tmp_path, caplog):
    """A clip whose middle is damaged (bytes flipped in 30-50% of the file): the packets that no
    longer decode are read as silence of their length, the rest of the track keeps its samples
    and its time (the whole track was refused before, and the clip scored without its voice);
    too many bad packets still refuse it, naming the file."""
    src = real_fixture("no_face.mp4")
    damaged = damaged_copy(src, tmp_path / "damaged.mp4")
    clean = audio.decode_audio(src, sr=16000, max_seconds=600)
    with caplog.at_level(logging.WARNING):
        y = audio.decode_audio(damaged, sr=16000, max_seconds=600)
    assert abs(len(y) - len(clean)) <= 16  # a millisecond: the time axis holds
    assert "corrupt audio packet(s) read as silence" in caplog.text and "damaged.mp4" in caplog.text
    head = int(0.2 * len(clean))  # before the damage: the same samples
    assert np.allclose(y[:head], clean[:head], atol=1e-6)
    assert np.corrcoef(y[-head:], clean[-head:])[0, 1] > 0.99  # after it, in time (to ~1e-3)
    p = AudioParams()
    notes = audio.process_video("damaged", damaged, p)["notes"]  # metrics/audio.json: warnings
    assert len(notes) == 1 and notes[0].endswith("corrupt audio packet(s) read as silence")
    assert "notes" not in audio.process_video("clean", src, p)
    with pytest.raises(audio.StageInputError, match="damaged.mp4: .*more than 2 corrupt"):
        audio.MAX_BAD_AUDIO_PACKETS, saved = 2, audio.MAX_BAD_AUDIO_PACKETS
        try:
            audio.decode_audio(damaged, sr=16000, max_seconds=600)
        finally:
            audio.MAX_BAD_AUDIO_PACKETS = saved


def test_a_stretch_the_demuxer_skips_is_silence_and_the_rest_keeps_its_time(tmp_path):
    """A WebM (Matroska) damaged in the middle: the demuxer drops the damaged cluster without an
    error, so no packet fails to decode; the track came back 3.3 s long of 4 s, its end moved
    forward in time, and neither metrics/audio.json nor predict said a word. Now the stretch is
    silence of its length (the next frame's own time says how long), and named."""
    from test_frames import write_webm_with_opus

    clean_path = write_webm_with_opus(tmp_path / "clean.webm", n=100)  # 4 s
    damaged = damaged_copy(clean_path, tmp_path / "damaged.webm")
    clean = audio.decode_audio(clean_path, sr=16000, max_seconds=600)
    report: dict = {}
    y = audio.decode_audio(damaged, sr=16000, max_seconds=600, report=report)
    assert abs(len(y) - len(clean)) <= 0.05 * 16000, (len(y), len(clean))
    assert report["gap_s"] > 0.3 and report["bad_packets"] == 0
    # the last 0.5 s is where it belongs in time, to a millisecond (Matroska's timestamps are
    # whole milliseconds: the gap is known to that)
    end, tail = min(len(y), len(clean)) - 16, 8000
    assert max(np.corrcoef(y[end - tail:end], clean[end - tail + lag:end + lag])[0, 1]
               for lag in range(-16, 17)) > 0.99
    notes = audio.process_video("damaged", damaged, AudioParams())["notes"]
    assert any("s of audio skipped (a damaged stretch) read as silence" in n for n in notes)
    assert "notes" not in audio.process_video("clean", clean_path, AudioParams())


def test_a_track_cut_short_is_named_as_such(monkeypatch):
    """The frames stage flags a file whose data end before its declared length; the audio stage
    kept the short wave without a word."""
    rng = np.random.default_rng(0)

    def cut_short(path, *, sr, max_seconds, report=None):
        report.update(declared_s=20.0, bad_packets=0)
        return (0.1 * rng.standard_normal(2 * sr)).astype(np.float32)

    monkeypatch.setattr(audio, "decode_audio", cut_short)
    row = audio.process_video("cut", "cut.mp4", AudioParams())
    assert row["notes"] == ["the audio ends at 2.0 s of its declared 20.0 s: the file looks "
                            "truncated"]


def _avi_with_sound(path, seconds=6, codec="pcm_s16le"):
    """An AVI of `seconds` of black 64x48 video at 25 fps and a 440 Hz tone at 16 kHz."""
    import av

    sr = 16000
    with av.open(str(path), "w", format="avi") as out:
        vs = out.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        st = out.add_stream(codec, rate=sr)
        st.layout = "mono"
        for i in range(seconds * 25):  # video, then sound: the muxer interleaves by time
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        t = np.arange(seconds * sr) / sr
        wave = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for start in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="s16",
                                               layout="mono")
            chunk.sample_rate = sr
            out.mux(st.encode(chunk))
        out.mux(st.encode())
    return path


@pytest.mark.parametrize("codec", ["pcm_s16le", "mp2"])
def test_an_avi_cut_off_has_its_audio_named_truncated(tmp_path, codec):
    """An AVI cut in half: FFmpeg estimates its audio stream's length from what is left (PCM:
    none at all), so the audio stage took the half track as whole while the frames stage
    flagged the video. The header's length of the track (frames x time base) is the declared
    one now; a whole AVI gets no note."""
    whole = _avi_with_sound(tmp_path / "whole.avi", codec=codec)
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    assert "notes" not in audio.process_video("whole", whole, AudioParams())
    notes = audio.process_video("cut", cut, AudioParams())["notes"]
    assert len(notes) == 1 and "of its declared 6.0 s: the file looks truncated" in notes[0]


def test_stage_on_the_tiny_dataset(tiny_dataset, tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("manifest.parquet", "clips.parquet"):
        shutil.copy(tiny_dataset / "data" / name, tmp_path / "data")
    shutil.copytree(tiny_dataset / "data" / "videos", tmp_path / "data" / "videos")
    summary = audio.run(P, BaseParams(workers=2), root=tmp_path)
    manifest = read_artifact("manifest", path=tmp_path / "data" / "manifest.parquet")
    table = read_artifact("audio", path=tmp_path / "data" / "audio")
    assert summary["n_errors"] == 0 and summary["n_silent"] == 0
    assert list(table["video_id"]) == list(manifest["video_id"])  # one row per video, in order
    assert table["has_audio"].all() and (table["error"] == "").all()
    assert (table["fn_voiced_frac"] > 0.3).all()
    assert table["fn_f0_p50"].between(70, 400).all()
    for _, row in table.iterrows():
        t = row["n_frames"]
        assert t == 1 + int(round(row["duration_s"] * SR)) // 160
        assert len(row["logmel"]) == t * 64 and len(row["mfcc"]) == t * 39
        assert all(len(row[c]) == t for c in ("f0", "voicing", "rms", "centroid", "flatness",
                                               "zcr"))
        assert len(row["wave"]) == 15 * SR and row["n_samples"] == int(round(row["duration_s"]
                                                                             * SR))
    fn = [c for c in table.columns if c.startswith("fn_")]
    assert len(fn) == 6 * 5 + (64 + 3 * 13) * 5 + 3
    assert not table[fn].isna().any().any()


def _with_a_timestamp_jump(path: Path, fmt: str, codec: str, jump_s: float) -> Path:
    """2.6 s of a 200 Hz tone at 16 kHz whose second half's packets are stamped `jump_s` later
    (the samples themselves are contiguous), beside a short video stream."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("mpeg4", rate=5)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(codec, rate=16000)
        sound.layout = "mono"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        size, packets = sound.codec_context.frame_size or 1024, []
        resampler = av.AudioResampler(format=sound.codec_context.format.name, layout="mono",
                                      rate=16000)
        for start in range(0, 36 * size, size):
            tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(start, start + size) / 16000)
            frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for part in resampler.resample(frame):
                part.pts = start
                packets += list(sound.encode(part))
        packets += list(sound.encode())
        for i, packet in enumerate(packets):
            if i >= len(packets) // 2:
                shift = int(jump_s / packet.time_base)
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            out.mux(packet)
    return path


def test_a_huge_timestamp_jump_costs_no_more_memory_than_the_cap(tmp_path):
    """A Matroska file whose audio timestamps jump by an hour (a damaged or crafted cluster
    time): the skipped stretch is silence only up to max_seconds. It was allocated whole first
    (an hour at 16 kHz: 230 MB for a 2 s decode; a 26 h jump, ~6 GB, killed the worker)."""
    import tracemalloc

    path = _with_a_timestamp_jump(tmp_path / "jump.mkv", "matroska", "mp2", 3600.0)
    report: dict = {}
    tracemalloc.start()
    try:
        y = audio.decode_audio(path, sr=16000, max_seconds=2.0, report=report)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(y) == 32000 and report["gap_s"] > 3000  # named: the file says an hour is missing
    assert peak < 20e6, peak  # a 2 s decode: a few MB, never the hour's 230 MB


def test_an_mpeg_ts_timestamp_discontinuity_is_no_silence(tmp_path):
    """MPEG-TS (and MPEG-PS) mark timestamp discontinuities as normal (FFmpeg's TS_DISCONT: a
    broadcast splice, HLS segments joined): a jump of 20 s there is no lost audio. It read as
    20 s of silence, so every feature past it came from silence; now the track stays whole, as
    FFmpeg's own tools treat a jump over 10 s in such a format. A short gap is still silence."""
    for jump, silent in ((20.0, False), (0.5, True)):
        path = _with_a_timestamp_jump(tmp_path / f"jump{jump}.ts", "mpegts", "mp2", jump)
        report: dict = {}
        y = audio.decode_audio(path, sr=16000, max_seconds=60, report=report)
        if silent:
            assert 0.4 < report["gap_s"] < 0.6 and 2.9 < len(y) / 16000 < 3.3, report
        else:
            assert report["gap_s"] == 0 and 2.4 < len(y) / 16000 < 2.8, (report, len(y))
            assert np.abs(y[16000:len(y) - 1600]).min(initial=1.0) < 0.3  # tone, not zeros
            windows = y[: len(y) // 800 * 800].reshape(-1, 800)
            assert (np.abs(windows).max(axis=1) > 0.1).all()  # no silent 50 ms anywhere


def test_audio_recorded_under_the_feature_rate_is_named(tmp_path):
    """An 8 kHz (telephone) track is resampled to 16 kHz without a word, though everything above
    4 kHz is empty and the features read as no training clip's did (a functionals model's
    score moved from 0.50 to 0.37 on the same speech). Now a note says so; a 16 kHz or 48 kHz
    track gets none."""
    import av

    speech = audio.decode_audio(real_fixture("librivox_speech_16k.wav"), sr=16000,
                                max_seconds=6)
    for rate in (8000, 48000):
        path = tmp_path / f"speech_{rate}.wav"
        with av.open(str(path), "w") as out:
            st = out.add_stream("pcm_s16le", rate=rate)
            st.layout = "mono"
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            frame = av.AudioFrame.from_ndarray((speech * 32767).astype(np.int16)[None],
                                               format="s16", layout="mono")
            frame.sample_rate = 16000
            for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
                out.mux(st.encode(chunk))
            out.mux(st.encode())
        notes = audio.process_video(f"r{rate}", path, AudioParams()).get("notes", [])
        if rate == 8000:
            assert len(notes) == 1 and "recorded at 8000 Hz" in notes[0] and "4.0 kHz" in notes[0]
        else:
            assert notes == []
