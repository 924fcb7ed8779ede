"""Where a clip's audio starts on its frames' clock: the seconds between the frames' t = 0 and the
audio features' second 0, both read from the container's presentation timestamps.

    offset = audio_offset_s("phone.mp4")   # 0.3: the audio's second 0 is the frames' t = 0.3

The frames (personality/video_io.py, `iter_frames`) time each frame from the video stream's start
(`FrameClock`: its start_time, else its first frame), and so do the faces and AUs made from them;
the audio stage (stages/audio.py, `decode_audio`) puts sample 0 at its first decoded frame (less
the silence of any undecodable packets before it). A phone or webcam recording whose sound starts
0.3 s after its picture has its audio's second 0 at the frames' t = 0.3; the test fixtures and
the synthetic generator's clips have 0 (an MP4's encoder priming is cut by its edit list, which
the decoder honours). Neither stage shifts its features by it: predict records
it (prediction.json's `audio_offset_s`) and draws the audio on the frames' clock
(stages/predict_report.py). `python -m pytest tests/test_predict_clock.py` exercises it.
"""
from __future__ import annotations

import os

from personality.frame_sampling import FrameClock
# the same video stream as the frames stage's (not an MP3's cover art), opened with its checks
from personality.video_io import _open, _video_stream

__all__ = ["audio_offset_s"]

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
