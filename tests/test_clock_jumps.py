"""MPEG-TS recordings joined end to end (`cat a.ts b.ts > c.ts`, HLS segments, a broadcast splice):
the file's clock restarts or jumps, and its audio may change rate and layout at the join. The frames
and the audio must still lie on one timeline, each part after the one before it, and nothing may be
lost. Real H.264 + AAC / MP2 transport streams written with PyAV.

    python -m pytest -q tests/test_clock_jumps.py
"""
from __future__ import annotations

import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from personality.frame_sampling import FrameClock
from personality.video_io import iter_frames
from stages import audio, frames

SECONDS, FPS = 2.0, 25


def transport_stream(path: Path, *, start_s: float = 0.0, sr: int = 48000,
                     layout: str = "mono", tone_hz: float = 220.0) -> Path:
    """SECONDS of a 160x120 H.264 picture and an AAC tone, stamped from `start_s`."""
    import av

    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout=layout)
        for i in range(int(SECONDS * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 4 % 255, np.uint8),
                                               format="rgb24")
            frame.pts = i + int(start_s * FPS)
            for packet in v.encode(frame):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        channels = 1 if layout == "mono" else 2
        tone = (0.3 * np.sin(2 * np.pi * tone_hz * np.arange(int(SECONDS * sr)) / sr)
                ).astype(np.float32)
        for i in range(0, tone.size, 1024):
            chunk = np.ascontiguousarray(np.tile(tone[None, i:i + 1024], (channels, 1)))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sr, i + int(start_s * sr)
            for packet in a.encode(frame):
                c.mux(packet)
        for packet in a.encode():
            c.mux(packet)
    return path


def joined(path: Path, *parts: Path) -> Path:
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ts")
    first = transport_stream(d / "first.ts")
    return {
        "reset": joined(d / "reset.ts", first, first),  # the second clock starts where the first did
        "jump": joined(d / "jump.ts", first, transport_stream(d / "late.ts", start_s=30.0)),
        "rate": joined(d / "rate.ts", transport_stream(d / "stereo.ts", sr=44100, layout="stereo"),
                       transport_stream(d / "mono.ts", start_s=SECONDS, sr=16000,
                                        tone_hz=440.0)),
    }


@pytest.mark.parametrize("kind", ["reset", "jump"])
def test_frames_and_audio_of_joined_recordings_share_one_timeline(streams, kind):
    """Before, a clock that restarted squeezed the second recording's frames into microseconds
    (one of its 50 frames kept at 8 fps) while the audio read all of it, and a 28 s jump put the
    second part's frames at t = 30 s, called 26 s of missing video, beside audio at t = 2 s."""
    path = streams[kind]
    df, report = frames.extract_video(video_id=kind, path=str(path),
                                      params=frames.FramesParams(fps=8))
    every = [t for _, t, _ in iter_frames(path)]
    assert len(every) == 2 * SECONDS * FPS and np.all(np.diff(every) > 0.03), every[45:55]
    assert every[-1] == pytest.approx(2 * SECONDS - 1 / FPS, abs=0.02)
    assert len(df) == 2 * SECONDS * 8 and df.t.max() == pytest.approx(every[-1], abs=0.13)
    assert report["clock_jumps"] == 1 and not report.get("gaps") and not report["truncated"]
    row = audio.process_video(kind, path, audio.AudioParams(align_to_frames=True))
    assert not row["error"] and row["duration_s"] == pytest.approx(2 * SECONDS, abs=0.1)
    assert not row.get("notes"), row.get("notes")  # no "the file looks truncated"


def test_a_change_of_rate_and_layout_mid_stream_keeps_the_whole_track(streams):
    """A stereo 44.1 kHz recording joined to a mono 16 kHz one: PyAV's resampler refused every
    frame after the change ("Frame does not match AudioResampler setup"), so the whole track was
    lost (has_audio False). Each part is now resampled on its own, at its own rate: the 440 Hz
    tone of the second part is still 440 Hz."""
    report: dict = {}
    y = audio.decode_audio(streams["rate"], sr=16000, max_seconds=60, report=report)
    # each part's AAC adds its encoder's priming and padding: up to 0.13 s at 16 kHz
    assert report["format_changes"] == 1 and len(y) / 16000 == pytest.approx(2 * SECONDS, abs=0.2)
    for part, hz in ((y[4000:28000], 220.0), (y[36000:60000], 440.0)):
        spectrum = np.abs(np.fft.rfft(part))
        assert np.fft.rfftfreq(part.size, 1 / 16000)[spectrum.argmax()] == pytest.approx(hz, abs=2)
    row = audio.process_video("rate", streams["rate"], audio.AudioParams())
    assert row["has_audio"] and not row["error"]


def ts_clock(*, start: float | None = 0.0) -> FrameClock:
    """FrameClock of a 25 fps MPEG-TS video stream (pts in 1/90000 s)."""
    mpegts = types.SimpleNamespace(format=types.SimpleNamespace(flags=0x0200))
    vs = types.SimpleNamespace(time_base=Fraction(1, 90000), average_rate=Fraction(25),
                               guessed_rate=None, base_rate=None, container=mpegts,
                               start_time=None if start is None else int(start * 90000))
    return FrameClock(vs)


def times(clock: FrameClock, seconds: list[float]) -> list[float]:
    return [round(clock(int(round(s * 90000)), i), 3) for i, s in enumerate(seconds)]


def test_one_bad_timestamp_moves_nothing_after_it_and_a_restart_continues_the_timeline():
    """A restart (the second recording from 0) continues one period after the last frame, once
    the frame after it confirms it. One timestamp a second early (a damaged PES header) and
    frames on the old clock after it moved every later frame a second before (a review found
    it: the frames then lay 1 s from their audio); frames before the stream's start (clamped to
    0) are no jump either."""
    steady = [0.04 * i for i in range(10)]
    clock = ts_clock()
    assert times(clock, steady[:5] + [0.0] + steady[6:]) == \
        [0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.32, 0.36] and clock.jumps == 0
    clock = ts_clock()
    assert times(clock, steady[:5] + [20.2] + steady[6:])[6:] == [0.24, 0.28, 0.32, 0.36]
    clock = ts_clock()
    assert times(clock, steady[:5] + steady[:5]) == \
        [0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.32, 0.36] and clock.jumps == 1
    clock = ts_clock()
    assert times(clock, steady[:5] + [s + 30.0 for s in steady[:5]])[5:] == \
        [0.2, 0.24, 0.28, 0.32, 0.36] and clock.jumps == 1
    clock = ts_clock(start=0.2)  # three frames before the start: clamped, then on
    assert times(clock, steady)[:5] == [0.0, 0.0, 0.0, 0.0, 0.0] and clock.jumps == 0
    assert times(clock, [0.4, 0.44]) == [0.2, 0.24]


def audio_frames(at: float, seconds: float = 0.064, sr: int = 16000) -> list:
    return [types.SimpleNamespace(time=at, samples=int(seconds * sr), sample_rate=sr)]


def test_the_audio_clock_takes_a_restart_but_not_one_bad_timestamp():
    """The audio side of the same rule (stages/audio.py _AudioClock): a frame stamped a second
    early, with the next on the old clock, read as a second of silence after it."""
    for stamps, silence, jumps in (
            ([0.0, 0.064, 0.128, -0.872, 0.256, 0.32], 0, 0),  # one bad timestamp
            ([0.0, 0.064, 0.128, 0.0, 0.064, 0.128], 0, 1),  # a restart at 0
            ([0.0, 0.064, 0.128, 0.692, 0.756], 8000, 0)):  # 0.5 s missing: silence
        clock, seen, skipped = audio._AudioClock(16000, discont=True), 0.0, 0
        for at in stamps:
            gap = clock.skipped(audio_frames(at), seen)
            skipped, seen = skipped + gap, seen + gap / 16000 + 0.064
        assert (skipped, clock.jumps) == (silence, jumps), stamps


def test_a_restart_without_repeated_timestamps_decodes_as_a_full_decode(tmp_path):
    """The skip plan sorts packet times: two recordings whose times overlap without repeating
    (the second from 1.74 s, 0.22 s before the first ends: too little for a check on packets in
    decode order to tell from B-frames) were interleaved, 18 frames kept where a full decode
    keeps 20 (a review found it). MPEG-TS and PS decode every frame (presentation order says
    where a clock restarts), and the fps-sampled frames are the full decode's."""
    first = transport_stream(tmp_path / "a.ts")
    path = joined(tmp_path / "offset.ts", first, transport_stream(tmp_path / "b.ts",
                                                                  start_s=SECONDS - 0.26))
    every = [t for _, t, _ in iter_frames(path)]
    report: dict = {}
    sampled = [(i, round(t, 6)) for i, t, _ in iter_frames(path, fps=8, report=report)]
    assert np.all(np.diff(every) > 0.03) and every[-1] == pytest.approx(3.96, abs=0.03)
    ticks, expected = 0.0, []
    for i, t in enumerate(every):  # FrameSampler's rule: the first frame at or after each tick
        if t + 1e-4 >= ticks:
            expected.append((i, round(t, 6)))
            while ticks <= t + 1e-4:
                ticks += 1 / 8
    assert sampled == expected and report["clock_jumps"] == 1
