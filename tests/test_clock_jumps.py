"""MPEG-TS recordings joined end to end (`cat a.ts b.ts > c.ts`, HLS segments, a broadcast splice):
the file's clock restarts or jumps, and its audio may change rate and layout at the join. The frames
and the audio must still lie on one timeline, each part after the one before it, and nothing may be
lost. Real H.264 + AAC / MP2 transport streams written with PyAV.

    python -m pytest -q tests/test_clock_jumps.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personality.container_end import clock_parts, missing_stretches
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


def test_clock_parts_split_at_jumps_not_at_b_frame_reordering():
    """Decode order with B-frames (I P B B ...) steps back a few frames: one clock. A restart
    (back by 2 s) and a jump past DISCONTINUITY_S split it; a 1 s hole stays a missing stretch."""
    presentation = np.arange(100) * 0.04
    decode_order = presentation.reshape(-1, 4)[:, [0, 3, 1, 2]].reshape(-1)
    assert len(clock_parts(decode_order)) == 1
    restarted = np.concatenate([decode_order, decode_order[:50]])
    assert [len(p) for p in clock_parts(restarted)] == [100, 50]
    jumped = np.concatenate([decode_order, decode_order + 30.0])
    assert [len(p) for p in clock_parts(jumped)] == [100, 100]
    pts = (np.concatenate([decode_order, decode_order + 5.0]) * 90000).astype(np.int64)
    assert missing_stretches(list(pts), 1 / 90000, discont=True)["gaps"] == 1
    assert missing_stretches(list((jumped * 90000).astype(np.int64)), 1 / 90000,
                             discont=True) == {}
