"""Where a clip's audio starts on its frames' clock: the seconds between the frames' t = 0 and the
audio's second 0, both read from the container's presentation timestamps; and the decoded wave
put on that clock.

    offset = audio_offset_s("phone.mp4")   # 0.3: the audio's second 0 is the frames' t = 0.3
    y, shift = align_wave(y, offset, sr=16000, limit=n)  # 4800 zeros first: y[4800] is t = 0.3

The frames (personality/video_io.py, `iter_frames`) time each frame from the video stream's start
(`FrameClock`: its start_time, else its first frame), and so do the faces and AUs made from them;
the audio stage's decoder (stages/audio.py, `decode_audio`) puts sample 0 at its first decoded
frame (less the silence of any undecodable packets before it). A phone or webcam recording whose
sound starts 0.3 s after its picture has its audio's second 0 at the frames' t = 0.3; the test
fixtures and the synthetic generator's clips have 0 (an MP4's encoder priming is cut by its edit
list, which the decoder honours). The audio stage (`audio.align_to_frames`, default true) puts
every audio feature on the frames' clock with `align_wave` (0.3 s of leading digital silence for
that phone clip; an early track loses what it played before the first frame) and records the
shift (data/audio's `audio_offset_s`); predict records the offset itself (prediction.json's
`audio_offset_s`). `python -m pytest tests/test_predict_clock.py tests/test_audio_clock.py`
exercises both.
"""
from __future__ import annotations

import os

import numpy as np

from personality.frame_sampling import FrameClock
# the same video stream as the frames stage's (not an MP3's cover art), opened with its checks
from personality.video_io import _open, _video_stream

__all__ = ["audio_offset_s", "align_wave"]

# packets read before giving up on a first decodable one (decode_audio allows 50 bad ones)
MAX_PACKETS = 64
# the video packets whose smallest pts is the first frame's when the stream declares no start
# (B-frames come out of decode order by a few frames at most)
REORDER_PACKETS = 16


def audio_offset_s(path: str | os.PathLike) -> float | None:
    """Seconds from the frames' t = 0 to the audio stage's sample 0 of `path` (positive: the
    audio starts later than the video); None when the file has no audio stream or its
    timestamps do not say. Reads a few packets of each stream: cheap. Raises StageInputError
    naming the file when it cannot be opened (personality.video_io's checks)."""
    with _open(path) as container:  # a file the frames stage refuses: the same error
        if not container.streams.audio:
            return None
        video = _video_origin_s(container)
        audio = _first_sample_s(container, container.streams.audio[0])
    return None if video is None or audio is None else audio - video


def _video_origin_s(container) -> float | None:
    """The frames' t = 0 in presentation seconds: FrameClock's origin, the video stream's
    declared start, else its first frame's pts."""
    vs = _video_stream(container)
    clock = FrameClock(vs)
    if clock.tb is None:
        return None
    if clock.start is not None:
        return float(clock.start * clock.tb)
    pts = [p.pts for _, p in zip(range(REORDER_PACKETS), container.demux(vs))
           if p.pts is not None]
    return float(min(pts) * clock.tb) if pts else None


def _first_sample_s(container, stream) -> float | None:
    """Where decode_audio's sample 0 lies, in presentation seconds: its first decoded frame's
    time, less the seconds of the undecodable packets before it (decode_audio reads those as
    silence); the stream's declared start when nothing decodes in MAX_PACKETS packets."""
    silence = 0.0
    for _, packet in zip(range(MAX_PACKETS), container.demux(stream)):
        try:
            frames = packet.decode()
        except Exception:  # noqa: BLE001 - PyAV's decode errors come in many kinds
            if packet.duration and packet.time_base:
                silence += float(packet.duration * packet.time_base)
            continue
        if frames:
            return None if frames[0].time is None else frames[0].time - silence
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def align_wave(y: np.ndarray, offset_s: float | None, *, sr: int, limit: int
               ) -> tuple[np.ndarray, int]:
    """(y', shift): the wave `y` (n,), whose sample 0 is the audio's second 0, put on the frames'
    clock (y' sample 0 at the frames' t = 0), at most `limit` samples long. shift =
    round(offset_s * sr): a late track (shift > 0) gets that many zeros in front (digital
    silence: no sound was recorded while the picture ran), an early one (shift < 0) loses its
    first -shift samples (played before the first frame). `offset_s` None or not finite (the
    timestamps do not say) leaves y as decoded: shift 0. The zeros are at most `limit` (a file's
    timestamps can claim hours of offset); y' is y itself (no copy) when shift is 0."""
    if offset_s is None or not np.isfinite(offset_s):
        return y[:limit], 0
    shift = int(round(offset_s * sr))
    if shift > 0:
        lead = min(shift, limit)
        return np.concatenate([np.zeros(lead, y.dtype), y[:limit - lead]]), shift
    return y[-shift:][:limit], shift
