"""Video decoding and frame sampling shared by the frames / faces / aus / audio stages and predict.

Nothing here runs on its own; `python -m pytest tests/test_frames.py` exercises it.

- `probe` / `iter_frames`: decode any media container FFmpeg reads (H.264, HEVC, VP9, MJPEG, ...)
  with PyAV (common.open_media: not FFmpeg's playlists, lists or protocols, which open the files
  they name past the dataset-root checks), one frame in memory at a time, honouring variable
  frame rate (times come from each frame's pts) and rotation metadata (the display matrix),
  sampling by rate or a fixed count per video.
Their Parquet artifacts, one row group per video, are personality/video_shards.py's.
Per-video work runs through personality/executor.py (`map_jobs`), not here.
One file because probing, the packet scans, the extent checks and decoding share its container
helpers (`_open`, `_scan_packets`, the stream clock); what a file's bytes hide is container_end's.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from personality.common import StageInputError, check_frame_size, open_media
from personality.container_end import cut_short, missing_stretches
from personality.frame_sampling import (FrameClock, FrameSampler, PlannedPicker, SamplingPicker,
                                         clock_may_jump, nominal_rate)

__all__ = ["VideoInfo", "probe", "mux_mono_audio", "iter_frames", "target_size", "sample_indices",
           "stream_extent", "ends_short", "cut_container_s", "encode_jpeg", "decode_jpeg"]


# --------------------------------------------------------------------------------------------------
# decoding


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What one video stream says about itself (display orientation: after rotation)."""

    codec: str
    width: int  # displayed width, after rotation
    height: int
    rotation: int  # degrees counter-clockwise the display matrix applies (0, 90, 180, -90)
    fps: float  # average rate; nan when the container does not say
    duration_s: float  # declared, else measured by a packet scan (WebM / MKV); nan when unknown
    n_frames: int  # as the container reports it (0 when unknown): a hint, never trusted
    has_audio: bool = False  # the container holds an audio stream


def _open(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise StageInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise StageInputError(f"{path}: empty file (0 bytes)")
    container = open_media(path)
    try:
        if not any(_moving(vs) for vs in container.streams.video):
            raise StageInputError(f"{path}: no video stream (audio-only or data file" + (
                "; its only picture is cover art)" if container.streams.video else ")"))
        ctx = _video_stream(container).codec_context
        check_frame_size(path, ctx.width, ctx.height)
    except StageInputError:
        container.close()
        raise
    return container


def _moving(stream) -> bool:
    """Whether a video stream is moving pictures, not an attached picture: the cover art of an
    MP3, M4A or MKV (podcast artwork, a thumbnail embedded by a downloader) is a one-frame
    `video` stream that would be scored as the speaker's face."""
    import av

    return not stream.disposition & av.stream.Disposition.attached_pic


def _video_stream(container):
    """The container's first video stream that is not an attached picture (`_open` checked that
    there is one)."""
    return next(vs for vs in container.streams.video if _moving(vs))


def _stream_rotation(stream) -> int:
    """Rotation from the stream's display matrix side data (where the PyAV build exposes it) or
    an old `rotate` tag, in degrees counter-clockwise, snapped to a multiple of 90. PyAV 18 gives
    the display matrix per frame only: `iter_frames` reads it there."""
    rot = 0.0
    try:
        side = getattr(stream, "side_data", None)
        if side is not None and "DISPLAYMATRIX" in side:
            rot = float(side["DISPLAYMATRIX"])
    except Exception:  # side-data APIs differ between PyAV builds: the per-frame value decides
        rot = 0.0
    if not rot:
        tag = (stream.metadata or {}).get("rotate")
        if tag:
            rot = -float(tag)  # the legacy tag is clockwise
    return int(round(rot / 90.0)) * 90 % 360 if rot else 0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Facts about the first video stream of `path`. Raises StageInputError naming the file."""
    container = _open(path)
    try:
        vs = _video_stream(container)
        rotation = _stream_rotation(vs)
        w, h = vs.codec_context.width, vs.codec_context.height
        if not rotation:  # PyAV exposes the display matrix per frame: look at the first one
            try:
                first = next(container.decode(vs), None)
            except Exception:
                first = None
            if first is not None:
                rotation = _frame_rotation(first, 0)
                w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        fps = nominal_rate(vs)
        declared = _declared_s(vs, container)
        info = VideoInfo(codec=vs.codec_context.name, width=int(w), height=int(h),
                         rotation=rotation, fps=fps, duration_s=declared,
                         n_frames=int(vs.frames), has_audio=bool(container.streams.audio))
    finally:
        container.close()
    if np.isfinite(declared):
        return info
    try:  # a WebM / MKV with sound declares no video duration: a video packet scan measures it
        # (+ one frame period); not stream_extent, whose truncation check demuxes every stream
        seconds = _video_end_s(_scan_packets(Path(path))) + (1.0 / fps if fps > 0 else 0.0)
    except StageInputError:  # the decode says what is wrong
        return info
    return dataclasses.replace(info, duration_s=seconds)


def _declared_s(vs, container) -> float:
    """The duration the file declares for video stream `vs` (its own, else the container's when
    the video is all the container holds), in seconds; nan when it does not say. Matroska, WebM
    and FLV give no per-stream duration, and their container's covers an audio track that may
    run past the video: no measure of the video's end. An AVI's is the longer of that and its
    header's frame count at its (constant) rate: a cut AVI's duration is FFmpeg's estimate from
    what is left, while its header still counts every frame. (Elsewhere a count over the
    average rate overshoots a variable-rate stream.)"""
    declared = float("nan")
    if vs.duration is not None and vs.time_base is not None:
        declared = float(vs.duration * vs.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        declared = container.duration / 1_000_000
    if container.format.name == "avi" and vs.frames:
        declared = float(np.fmax(declared, vs.frames / nominal_rate(vs)))  # nan only when both are
    return declared


# A stream that stops more than this short of its declared duration counts as truncated. The
# slack is wide because a whole file's last frame starts one frame period (plus any B-frame or
# edit-list offset) before the declared end; a file cut off mid-data (moov first: the demuxer
# just meets EOF, no error) stops far shorter.
SHORT_SLACK_S, SHORT_SLACK_SHARE = 1.0, 0.10


def ends_short(ends_at_s: float, declared_s: float) -> bool:
    """Whether a stream whose last frame lies at `ends_at_s` falls well short of `declared_s`."""
    if not (declared_s > 0 and np.isfinite(declared_s) and np.isfinite(ends_at_s)):
        return False
    return declared_s - ends_at_s > max(SHORT_SLACK_S, SHORT_SLACK_SHARE * declared_s)


def _pts_seconds(pts: int | None, vs_clock: "FrameClock") -> float:
    """Seconds from the stream's start to `pts` (nan when unknown)."""
    if pts is None or vs_clock.tb is None:
        return float("nan")
    return float((pts - (vs_clock.start or 0)) * vs_clock.tb)


def stream_extent(path: str | os.PathLike) -> tuple[float, float]:
    """(where the video stream's last packet lies, the duration the file declares), seconds from
    the stream's start, from a packet scan alone (no decoding: cheap). `ends_short(*extent)` says
    whether the file looks truncated. Raises StageInputError naming the file, as `probe`."""
    scan = _scan_packets(Path(path))
    ends_at = _video_end_s(scan)
    declared = scan.declared_s if np.isfinite(scan.declared_s) else cut_container_s(path, ends_at)
    return ends_at, declared


def _video_end_s(scan: "_PacketScan") -> float:
    """Where the scanned video stream's last packet lies, seconds from its start (nan: none)."""
    last = max((p for p in scan.pts if p is not None), default=None)
    return _pts_seconds(last, scan.clock)


def cut_container_s(path: str | os.PathLike, reached_s: float = float("nan")) -> float:
    """The duration a file's container declares when every stream stops well short of it
    (`ends_short`: the file was cut off), else nan. For files whose streams declare no duration
    of their own (Matroska, WebM, FLV with sound: `_declared_s` is nan) the container's covers
    them all: a cut leaves every stream short, while a sound track that runs past its video
    reaches it. A demux of every stream, no decoding, unless `reached_s` (where the caller's
    stream ends, from its start) already reaches the container's duration: a whole file, the
    common case. Streams end at their timestamps: Matroska counts its duration from 0, not from
    the first timestamp, so a stream measured from its own (or the file's) start would fall
    short of a whole file whose timestamps start late."""
    container = _open(path)
    try:
        if container.duration is None:
            return float("nan")
        declared, ends_at = container.duration / 1_000_000, float("nan")
        if np.isfinite(reached_s) and not ends_short(reached_s, declared):
            return float("nan")
        # a start below 0 (audio priming) counts from the first timestamp: never later than 0
        ends_at_from = min(container.start_time or 0, 0) / 1_000_000
        try:
            for packet in container.demux():
                tb = packet.stream.time_base
                if packet.pts is not None and tb is not None:
                    end = float((packet.pts + (packet.duration or 0)) * tb) - ends_at_from
                    ends_at = end if not end <= ends_at else ends_at  # nan-safe max
        except Exception:  # a file cut mid-packet: what was read counts
            pass
        return declared if ends_short(ends_at, declared) else float("nan")
    finally:
        container.close()


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down so that max(w, h) <= max_side, keeping the aspect ratio; never up.
    `max_side <= 0` keeps the size. Both sides stay >= 1 and even when scaled (JPEG-friendly)."""
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def sample_indices(n_frames: int, per_video: int) -> np.ndarray:
    """`per_video` evenly spaced frame indices over [0, n_frames) (DeepPersonality's uniform
    sampling: `linspace(0, n - 1, k)` rounded); all frames when there are fewer. Shape (k,)."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_frames <= per_video:
        return np.arange(n_frames, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_frames - 1, per_video)).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class _PacketScan:
    """What demuxing alone tells about a video stream."""

    codec: str
    pts: list  # pts of each shown packet (one per frame), file order; None where there is none
    clock: FrameClock  # a fresh clock of the stream, for times from those pts
    declared_s: float = float("nan")  # the duration the file declares (`_declared_s`)


def _scan_packets(path: Path, only: tuple[str, ...] | None = None) -> _PacketScan | None:
    """Demux (no decoding) the video stream's packets. None, without demuxing, when `only` names
    codecs and the stream's is not one of them. Raises StageInputError naming the file when it
    cannot be opened or demuxed."""
    container = _open(path)
    try:
        vs = _video_stream(container)
        if only is not None and vs.codec_context.name not in only:
            return None
        clock = FrameClock(vs)
        # an edit list's discarded packets (encoder priming) are decoded but never shown: not frames
        pts = [packet.pts for packet in container.demux(vs)
               if packet.size and not packet.is_discard]
        return _PacketScan(vs.codec_context.name, pts, clock, _declared_s(vs, container))
    except Exception as exc:
        raise StageInputError(f"{path}: cannot be demuxed: {exc}") from None
    finally:
        container.close()


def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation (multiple of 90) to an (H, W, C) image."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def iter_frames(path: str | os.PathLike, *, fps: float | None = None, per_video: int | None = None,
                max_side: int = 0, pixel_format: str = "rgb24", threads: int = 1,
                max_errors: int = 50, report: dict | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode `path` and yield the sampled frames as `(frame_idx, t, image)`.

    frame_idx: 0-based index of the frame in presentation order over the whole stream.
    t: seconds since the stream's start, from the frame's own pts (variable frame rate safe).
    image: (H, W, 3) uint8 in `pixel_format` ("rgb24" or "bgr24"), rotated for display and
        resized so that max(H, W) <= max_side.

    Sampling: `fps` keeps the first frame at or after each tick 0, 1/fps, 2/fps, ...; `per_video`
    keeps that many evenly spaced frames (a cheap packet scan counts them first); neither keeps all.
    Only kept frames are converted and resized, so the cost of skipped frames is the decode alone;
    for H.264 and HEVC a packet scan finds the kept frames first and the decoder skips the
    others that no frame refers to (`_skip_plan`: same frames, same indices and times).

    Corrupt packets are skipped (up to `max_errors`); a file that breaks off yields what it had.
    `report` (a dict), when given, receives `rotation`, `decoded` (frames the decoder produced),
    `errors`, `truncated` (the demuxer failed, too many corrupt packets, the stream stops well
    short of its declared duration: `ends_short`, or the bytes stop where no whole file of its
    kind does: `cut`, container_end.cut_short's words), `ends_at_s` and `declared_s` (where its
    last frame lies, the duration the file declares; nan both where the clock jumps),
    container_end.missing_stretches', and `clock_jumps` where an MPEG-TS / PS clock restarts or
    jumps (joined recordings: the frames after it continue the timeline, frame_sampling).
    Raises StageInputError naming the file when it cannot be opened or holds no video stream.
    """
    path = Path(path)
    keep, scan = _sampling_scan(path, fps, per_video)
    report = report if report is not None else {}
    report.update(rotation=0, decoded=0, errors=0, truncated=False)
    plan = _skip_plan(scan, fps, keep)
    container = _open(path)
    try:
        vs = _video_stream(container)
        vs.codec_context.thread_count = max(1, threads)
        stream_rot = _stream_rotation(vs)
        pick = PlannedPicker(plan) if plan is not None else SamplingPicker(vs, keep, fps)
        # the packet scan saw every packet; a decode that stops at the plan's last frame did not
        last_pts = max((p for p in scan.pts if p is not None), default=None) if scan else None
        seen_pts: list[int] = []  # every demuxed packet's, decoded or skipped
        for frames in _decoded_packets(container, vs, report, max_errors, seen_pts, plan):
            for frame in frames:
                report["decoded"] += 1
                if frame.pts is not None and (last_pts is None or frame.pts > last_pts):
                    last_pts = frame.pts
                kept = pick(frame)  # (frame_idx, t) of a kept frame, else None
                if kept is not None:
                    yield (*kept, _display_image(frame, stream_rot, max_side, pixel_format,
                                                 report))
            if pick.done:
                break
        if not report["truncated"]:
            report["errors"] += pick.missing  # kept frames the decoder never returned
        _report_extent(report, path, container, vs, seen_pts, last_pts, pick)
    finally:
        container.close()


def _report_extent(report: dict, path: Path, container, vs, seen_pts: list[int],
                   last_pts: int | None, pick) -> None:
    """iter_frames' `report` on what the stream covers, after its decode: the stretches missing,
    the clock's jumps, where it ends against its declared length, a cut file. A clock that may
    jump is read on the frames' own times (`pick`'s clock: never a plan's picker there)."""
    jumps = 0
    if clock_may_jump(container):
        report.update(missing_stretches(pick.times, 1.0))
        jumps = pick.clock.jumps
    else:
        report.update(missing_stretches(seen_pts, vs.time_base))
    if jumps:  # the declared length and the last pts span several clocks: nothing to fall short of
        report["clock_jumps"] = jumps
        _check_extent(report, float("nan"), float("nan"))
    else:
        declared, ends_at = _declared_s(vs, container), _pts_seconds(last_pts, FrameClock(vs))
        _check_extent(report, ends_at,
                      declared if np.isfinite(declared) else cut_container_s(path, ends_at))
    if not report["truncated"] and (cut := cut_short(path)):  # no length to fall short of
        report.update(truncated=True, cut=cut)


def _sampling_scan(path: Path, fps: float | None, per_video: int | None
                   ) -> tuple[np.ndarray | None, _PacketScan | None]:
    """(the frame indices `per_video` keeps, the packet scan made to plan the decode: the whole
    stream's for `per_video`, `_skippable_scan`'s for `fps`, else None)."""
    if fps is not None and fps <= 0:
        raise StageInputError(f"frames.fps: {fps} must be > 0")
    if per_video is not None:
        if per_video < 1:
            raise StageInputError(f"frames.per_video: {per_video} must be >= 1")
        scan = _scan_packets(path)
        return sample_indices(len(scan.pts), per_video), scan
    return None, _skippable_scan(path) if fps else None


def _check_extent(report: dict, ends_at_s: float, declared_s: float) -> None:
    """Record where the stream ended against its declared duration; mark `truncated` when it
    stops well short: a file cut off mid-data (moov first) ends at EOF with no demuxer error,
    so nothing else notices."""
    report.update(ends_at_s=round(ends_at_s, 3), declared_s=round(declared_s, 3))
    if ends_short(ends_at_s, declared_s):
        report["truncated"] = True


# Decoders that honour skip_frame = NONREF packet by packet: frames no other frame refers to (most
# B-frames of a YouTube-style H.264 file, ~40% of all) are then not decoded at all
SKIPPABLE_CODECS = ("h264", "hevc")


def _skippable_scan(path: Path) -> _PacketScan | None:
    """The packet scan `_skip_plan` needs: None for a codec that cannot skip frames (no demuxing)
    or when the scan fails (the full decode then reports what is wrong)."""
    try:
        return _scan_packets(path, only=SKIPPABLE_CODECS)
    except StageInputError:
        return None


def _skip_plan(scan: _PacketScan | None, fps: float | None,
               keep: np.ndarray | None) -> dict[int, tuple[int, float]] | None:
    """The frames to keep, found from a packet scan before any decoding (`_skippable_scan`, or
    the per_video scan): {pts: (frame_idx, t)}; None when neither `fps` nor `keep` samples.

    Presentation order is the order of the packets' pts, so each frame's index and time (the
    same `FrameClock` and `FrameSampler` as a full decode) are known up front, and the decoder may
    skip the non-reference frames that are not kept. None (decode everything) unless the codec
    honours skipping and every packet has its own pts; also when there is no scan, and for a
    clock that may restart (MPEG-TS / PS: two recordings joined, whose pts sorting would
    interleave; only a decode in presentation order shows where)."""
    if not fps and keep is None:
        return None
    if scan is None or scan.codec not in SKIPPABLE_CODECS or scan.clock.discont:
        return None
    pts = scan.pts
    if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
        return None
    sampler, plan = FrameSampler(keep, fps), {}
    for idx, p in enumerate(sorted(pts)):
        t = scan.clock(p, idx)
        if sampler.wants(idx, t):
            plan[p] = (idx, t)
        if sampler.done:
            break
    return plan


def _decoded_packets(container, vs, report: dict, max_errors: int, seen_pts: list[int],
                     plan: dict | None = None) -> Iterator[list]:
    """The decoded frames of each packet of stream `vs`, a list per packet (every pts into
    `seen_pts`). A packet that fails to decode is skipped and counted (past `max_errors` the file
    counts as truncated); a demuxer failure ends it there (truncated). With a `plan` ({pts: ...}
    of the frames wanted), the decoder skips packets outside it that no frame refers to."""
    demux = container.demux(vs)
    ctx = vs.codec_context
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except Exception:  # the demuxer itself failed: the file breaks off here
            report["truncated"] = True
            return
        seen_pts += [] if packet.pts is None else [packet.pts]
        if plan is not None:  # the flush packet (no pts) must decode: it returns the last frames
            skippable = packet.pts is not None and packet.pts not in plan and not packet.is_discard
            ctx.skip_frame = "NONREF" if skippable else "DEFAULT"
        try:
            frames = packet.decode()
        except Exception:
            report["errors"] += 1
            if report["errors"] > max_errors:
                report["truncated"] = True
                return
            continue
        for frame in frames:  # a new size mid-stream: stop before decoding more of them
            check_frame_size(container.name, frame.width, frame.height)
        yield frames


def _display_image(frame, stream_rot: int, max_side: int, pixel_format: str,
                   report: dict) -> np.ndarray:
    """(H, W, 3) uint8: the frame converted, resized so that max(H, W) <= max_side (only kept
    frames pay for it) and rotated for display."""
    rotation = _frame_rotation(frame, stream_rot)
    report["rotation"] = rotation
    sw, sh = frame.width, frame.height
    dw, dh = (sh, sw) if rotation % 180 else (sw, sh)  # displayed size
    tw, th = target_size(dw, dh, max_side)
    ow, oh = (th, tw) if rotation % 180 else (tw, th)  # size before rotation
    if (ow, oh) != (sw, sh):
        img = frame.to_ndarray(width=ow, height=oh, format=pixel_format, interpolation="AREA")
    else:
        img = frame.to_ndarray(format=pixel_format)
    return _rotate(img, rotation)


def _frame_rotation(frame, stream_rot: int) -> int:
    try:
        rot = frame.rotation
    except Exception:
        rot = 0
    if rot:
        return int(round(rot / 90.0)) * 90 % 360
    return stream_rot


# --------------------------------------------------------------------------------------------------
# JPEG


def mux_mono_audio(container, stream, samples: np.ndarray, sample_rate: int, *,
                   hop: int = 1024) -> None:
    """Encode mono float samples (n,) into an open audio `stream` of `container` (AAC takes
    1024-sample frames) and flush it. Shared by the synthetic generator, the benchmarks and the
    tests that write videos with sound."""
    import av

    samples = np.asarray(samples, np.float32)
    for i in range(0, len(samples), hop):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i : i + hop]),
                                           format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def encode_jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 BGR -> JPEG bytes (OpenCV's libjpeg-turbo)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise StageInputError(f"JPEG encoding failed for an image of shape {bgr.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 BGR."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise StageInputError("undecodable JPEG bytes")
    return img
