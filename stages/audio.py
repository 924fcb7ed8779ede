"""audio: demux each video's sound track, resample it to 16 kHz mono and describe it with librosa
(and, when asked, openSMILE's eGeMAPS / ComParE functionals).

    python -m stages.audio       # reads params.yaml:base.workers,audio; data/manifest.parquet,
                                 # data/videos -> data/audio/part-*.parquet

Per video: PyAV demuxes the first audio stream and resamples it (FFmpeg's swresample, through
`av.AudioResampler`) to `audio.sr` Hz mono float32, then (`audio.align_to_frames`, default true)
puts it on the frames' clock (personality/clip_clock.py): the container's timestamps say where
the audio's second 0 lies on the frames' t; a track that starts 0.3 s after the picture (a phone
or webcam recording) gets 0.3 s of leading zeros (digital silence), one that starts 0.3 s before
it loses its first 0.3 s, so that t below is the frames', faces' and AUs' t. When the timestamps
do not say (or there is no video stream) the track stays as decoded. librosa then computes, on
one time grid of `audio.hop_s` (10 ms) with centred frames (frame i is centred on t = i * hop_s):

    logmel    (T, n_mels)      power mel spectrogram in dB re 1.0 (no top_db clipping)
    mfcc      (T, 3 * n_mfcc)  MFCC of that log-mel, then its delta and delta-delta
    f0        (T,)             Hz; librosa.yin (default) or librosa.pyin; NaN on unvoiced frames
    voicing   (T,)             0..1; yin: the normalised cross-correlation of the frame with
                               itself one yin period later (voicing_strength); pyin: its voiced
                               probability
    rms       (T,)             librosa.feature.rms (linear amplitude, window `win_s`)
    centroid  (T,)             librosa.feature.spectral_centroid, Hz
    flatness  (T,)             librosa.feature.spectral_flatness
    zcr       (T,)             librosa.feature.zero_crossing_rate (window `win_s`)

A frame is *active* when its RMS is above `silence_db` dBFS, *voiced* when it is active and its
voicing is above `voicing_threshold` and yin's f0 is not stuck at an end of [f0_min, f0_max]
(pyin: its voiced flag). A clip whose active share is below `min_active_frac` is `silent`.
The silent flag, the functionals (fn_*, from the first frame centred at or after the audio's
start) and openSMILE's describe the recorded audio: a late track's leading silence is the
alignment's, not the speaker's, so it counts in no share or mean (the per-window lists and the
wave keep it: they are on the frames' clock). An early track's dropped start is in nothing.

Output: data/audio/, a folder of Parquet shards (`rows_per_shard` rows each), ONE ROW PER VIDEO of
the manifest, in manifest order:

    video_id str, has_audio bool, silent bool, error str ("" when fine)
    sr int, hop_s float, n_frames int (T), n_mels int, n_mfcc int
    duration_s float   seconds of the track on the frames' clock (its leading silence
                       included, its dropped start not), capped at max_feature_seconds
    audio_offset_s float  the shift applied, in seconds: > 0 that much leading silence, < 0 that
                       much dropped, 0 none needed; NaN when not shifted (no audio stream, the
                       timestamps do not say, no video stream, or align_to_frames false)
    logmel   list<float32>  T * n_mels values, time-major: np.reshape(v, (n_frames, n_mels))
    mfcc     list<float32>  T * 3 * n_mfcc, time-major: reshape (n_frames, 3 * n_mfcc); columns are
                            [c_0 .. c_{n-1}, delta c_0 .., delta-delta c_0 ..]
    f0, voicing, rms, centroid, flatness, zcr   list<float32> of length T
    wave     list<int16> (wave_format int16) or list<float32> (float32): the resampled wave, cut or
             zero-padded to exactly round(max_seconds * sr) samples; empty when wave_format none
    wave_scale float  multiply `wave` by it for float amplitude (1/32767 or 1.0)
    n_samples int     how many leading samples of `wave` are the track (a late one's leading
                      silence included; the rest is padding)
    fn_*     float    per-video functionals (below)

Functionals, each `fn_<stream>_<stat>` with stat in mean, std (population), p<q> for q in
`percentiles`: streams rms_db (20 log10 rms), centroid, flatness, zcr, voicing (all frames),
f0 (voiced frames only), logmel_<kk> (kk = 00 .. n_mels-1), mfcc_<kk>, mfcc_d_<kk>, mfcc_dd_<kk>.
Scalars: fn_active_frac, fn_voiced_frac, fn_voiced_onsets_per_s (voiced runs per second).

openSMILE (`audio.feature_sets`, default [librosa]; personality/smile.py): `egemaps` adds the 88
eGeMAPSv02 functionals as `egemaps_<official name>` (e.g. egemaps_F0semitoneFrom27.5Hz_sma3nz_amean)
and `compare` the 6373 ComParE_2016 ones as `compare_<name>`, computed by
`opensmile.Smile(...).process_signal` on the same decoded wave (no second decode), one extractor
per worker. Without `librosa` the per-window lists are empty (n_frames 0) and no fn_* column is
written (the wave is still stored). An openSMILE failure marks the row like a librosa one (error
names the video's file, NaN features).

Videos with no audio stream (has_audio=false), silent clips (silent=true), unreadable files and
too-short tracks (error set, logged by name) get NaN functionals (fn_* and openSMILE's) and
empty per-window lists (n_frames 0); the stage goes on. Silent and too-short clips keep their
wave; the others get an all-zero wave (n_samples 0). metrics/audio.json counts them and names
each: `failed` (a list of {video_id, error}), `no_audio`, `silent`; and, only when some clip has
one, `shifted` ({video_id, audio_offset_s}: the tracks put on the frames' clock by a non-zero
shift) and `offset_unknown` ({video_id, why}: tracks left as decoded).

Parallel: personality/executor.py's executor (`base.workers` local processes, one thread each, or
the Dask cluster PERSONALITY_CLUSTER names: same bytes either way); each worker pays librosa's
numba JIT (or its cache load) and openSMILE's set-up once, in `warm_up`, before its first clip.
docs/audio.md has the measurements.

One file because every audio feature of the stage is computed from one decoded wave per video
in one pass; the sections follow the output columns.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd

from personality import schemas, smile
from personality.clip_clock import align_wave, audio_offset_s
from personality.frame_sampling import clock_may_jump, is_clock_jump
from personality.executor import map_jobs, time_limit_s
from personality.video_io import cut_container_s, ends_short
from personality.common import (ArtifactWriter, BaseParams, ParamsError, StageInputError,
                                atomic_write_json, by_video, get_logger, open_media, progress,
                                read_artifact, repo_root, run_stage)

log = get_logger("audio")

STREAMS = ("rms_db", "centroid", "flatness", "zcr", "voicing", "f0")  # prosody/spectral functionals
WINDOW_COLUMNS = ("logmel", "mfcc", "f0", "voicing", "rms", "centroid", "flatness", "zcr")


@dataclasses.dataclass(frozen=True)
class AudioParams:
    sr: int = 16000  # Hz, mono after resampling
    hop_s: float = 0.010  # time grid of every per-window feature
    win_s: float = 0.025  # analysis window of the STFT, RMS and ZCR
    n_fft: int = 512  # FFT size (>= win_s * sr)
    n_mels: int = 64
    n_mfcc: int = 13  # per frame: 13 MFCC + 13 deltas + 13 delta-deltas
    f0_method: Literal["yin", "pyin"] = "yin"  # pyin is ~10-100x slower (see docs/audio.md)
    f0_min: float = 60.0  # Hz
    f0_max: float = 500.0  # Hz
    f0_frame_s: float = 0.04  # yin/pyin frame: must hold > 1 period of f0_min (2 ideally)
    pyin_hop_s: float = 0.04  # pyin's own (coarser) hop; its output is put on the hop_s grid
    voicing_threshold: float = 0.6  # yin: normalised autocorrelation above this -> voiced
    silence_db: float = -50.0  # dBFS frame RMS at or below which a frame is silence
    min_active_frac: float = 0.05  # fewer active frames than this share -> the clip is silent
    percentiles: list[float] = dataclasses.field(default_factory=lambda: [10.0, 50.0, 90.0])
    max_seconds: float = 15.0  # the stored wave is cut or zero-padded to this
    max_feature_seconds: float = 300.0  # decoding stops here: bounds memory (~0.5 GB at 300 s)
    wave_format: Literal["int16", "float32", "none"] = "int16"
    rows_per_shard: int = 64  # videos per Parquet shard (~1.3 MB a 15 s video)
    # per-video feature sets: librosa (the per-window streams and their fn_* functionals), egemaps
    # (openSMILE eGeMAPSv02 functionals, egemaps_*), compare (ComParE_2016, compare_*)
    feature_sets: list[str] = dataclasses.field(default_factory=lambda: ["librosa"])
    # put the audio on the frames' clock (personality/clip_clock.py): a track that starts 0.3 s
    # after the picture gets 0.3 s of leading silence, one that starts earlier loses what it
    # played before the first frame; false: each stream from its own start (the stage before).
    # params.yaml says true; false here, the behaviour before the key, because a checkpoint
    # keeps the front-end params as written: one trained before the key lacks it, and predict
    # must make its clip's features as its training data was made (unaligned)
    align_to_frames: bool = False

    @property
    def librosa(self) -> bool:
        return "librosa" in self.feature_sets

    @property
    def smile_sets(self) -> tuple[str, ...]:
        """The openSMILE sets asked for, in smile.SETS order (fixed column order)."""
        return tuple(name for name in smile.SETS if name in self.feature_sets)

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_s * self.sr))

    @property
    def win_length(self) -> int:
        return int(round(self.win_s * self.sr))

    @property
    def f0_frame_length(self) -> int:
        return int(round(self.f0_frame_s * self.sr))

    @property
    def wave_length(self) -> int:
        return int(round(self.max_seconds * self.sr))

    def validate(self) -> "AudioParams":
        """Raise ParamsError naming the first bad key."""
        checks = [
            ("sr", self.sr >= 4000, "must be at least 4000"),
            ("hop_s", self.hop_length >= 1, "must be at least one sample"),
            ("win_s", 1 <= self.win_length <= self.n_fft, f"must give 1..n_fft ({self.n_fft}) "
             "samples"),
            ("n_mels", self.n_mels >= 1, "must be positive"),
            ("n_mfcc", 1 <= self.n_mfcc <= self.n_mels, "must be in 1..n_mels"),
            ("f0_min", 0 < self.f0_min < self.f0_max, "must be in (0, f0_max)"),
            ("f0_max", self.f0_max <= self.sr / 2, "must not exceed sr / 2"),
            ("f0_frame_s", self.f0_min > 0 and self.sr / self.f0_min < self.f0_frame_length - 1,
             f"must hold one period of f0_min ({1 / max(self.f0_min, 1e-9):.4f} s)"),
            ("pyin_hop_s", self.pyin_hop_s * self.sr >= 1, "must be at least one sample"),
            ("voicing_threshold", 0 <= self.voicing_threshold <= 1, "must be in [0, 1]"),
            ("min_active_frac", 0 <= self.min_active_frac <= 1, "must be in [0, 1]"),
            ("percentiles", all(0 <= q <= 100 for q in self.percentiles), "must be in [0, 100]"),
            ("max_seconds", self.max_seconds > 0, "must be positive"),
            ("max_feature_seconds", self.max_feature_seconds > 0, "must be positive"),
            ("rows_per_shard", self.rows_per_shard >= 1, "must be positive"),
            ("feature_sets", len(self.feature_sets) == len(set(self.feature_sets)) >= 1 and
             set(self.feature_sets) <= {"librosa", *smile.SETS},
             f"must list some of librosa, {', '.join(smile.SETS)}, each once"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ParamsError(f"audio.{key}: {getattr(self, key)!r} {what}")
        return self


# --------------------------------------------------------------------------------------------------
# demux


MAX_BAD_AUDIO_PACKETS = 50  # more corrupt packets than this and the track counts as unreadable
# The lowest sample rate a track may declare. Resampling multiplies a decoded frame's samples by
# sr / its rate in one allocation: a 10 KB Matroska file holding one 5000-sample frame at a
# declared 1 Hz took 2.3 GB to read (x16000). No recording of speech is sampled this low
# (telephone audio is 8000 Hz), so at most 8x here.
MIN_SOURCE_SR = 2000
# A decoded frame whose own time lies this far past the samples read so far follows a stretch the
# demuxer skipped (Matroska / WebM drops a damaged cluster without an error): silence fills it
GAP_TOLERANCE_S = 0.1


def decode_audio(path: str | os.PathLike, *, sr: int, max_seconds: float,
                 report: dict | None = None) -> np.ndarray | None:
    """The first audio stream of `path`, resampled to `sr` Hz mono float32, shape (n,); at most
    `max_seconds` of it. None when the file has no audio stream. A packet that fails to decode
    (a corrupt stretch) becomes silence of its length, and so does a stretch the demuxer skipped
    (the next frame's time says how long), so the rest keeps its time, up to
    MAX_BAD_AUDIO_PACKETS (logged); raises StageInputError naming the file when it cannot be
    opened, has more bad packets than that, or declares a rate under MIN_SOURCE_SR. `report`,
    when given, receives `bad_packets`, `gap_s` (skipped seconds), the stream's `declared_s`
    (nan when unknown), `source_sr` (its sample rate, Hz; 0 when unknown), `clock_jumps` (an
    MPEG-TS / PS clock restarting: what follows continues the wave) and `format_changes` (the
    rate, layout or format changing mid-stream: each part resampled on its own)."""
    limit = int(math.ceil(max_seconds * sr))  # silence too: a file's times can claim hours
    chunks, bad, gap, report = [], 0, 0, {} if report is None else report
    container = open_media(path)  # StageInputError naming the file
    try:
        with container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            report.update(_stream_facts(path, container, stream, sr))
            resampler, clock = _Resampler(path, sr), _AudioClock(sr, clock_may_jump(container))
            n, seen = 0, 0.0  # samples kept; input seconds read
            for frames in _audio_packets(container, stream, sr):
                if isinstance(frames, int):  # a bad packet: its samples of silence
                    bad += 1
                    if bad > MAX_BAD_AUDIO_PACKETS:
                        raise StageInputError(f"{path}: audio cannot be decoded: more than "
                                              f"{MAX_BAD_AUDIO_PACKETS} corrupt packets")
                    decoded = [np.zeros(min(frames, limit - n), np.float32)]
                    seen += frames / sr
                else:  # (1, k) packed mono -> (k,), after the silence of a skipped stretch
                    skipped = clock.skipped(frames, seen)
                    gap, seen = gap + skipped, seen + skipped / sr + sum(
                        f.samples / f.sample_rate for f in frames)
                    decoded = [np.zeros(min(skipped, limit - n), np.float32)] + [
                        wave for frame in frames for wave in resampler(frame)]
                chunks += decoded
                n += sum(c.size for c in decoded)
                if n >= limit:
                    break
            else:
                chunks += resampler.flush()  # the resampler's delay line
    except StageInputError:  # ours, naming the file already
        raise
    except Exception as exc:  # PyAV raises many kinds (InvalidDataError, OSError, ValueError...)
        raise StageInputError(f"{path}: audio cannot be decoded: {type(exc).__name__}: {exc}"
                              ) from None
    if bad:
        log.warning("%s: %d corrupt audio packet(s) read as silence", path, bad)
    if gap:
        log.warning("%s: %.1f s of audio skipped (a damaged stretch) read as silence", path,
                    gap / sr)
    report.update(bad_packets=bad, gap_s=gap / sr, clock_jumps=clock.jumps,
                  format_changes=resampler.changes)
    y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return np.ascontiguousarray(y[:limit], dtype=np.float32)


def decode_on_frames_clock(path: str | os.PathLike, p: AudioParams, report: dict
                           ) -> tuple[np.ndarray | None, int]:
    """(y, shift): decode_audio's wave of `path` at p.sr, shape (n,), at most max_feature_seconds,
    put on the frames' clock when p.align_to_frames (clip_clock.align_wave: `shift` samples of
    leading silence when the audio starts late, -shift samples dropped when early; 0 when the
    offset is 0 or unknown); (None, 0) without an audio stream. `report` (decode_audio's) also
    receives `decoded_s`, the seconds decoded before the shift, and `audio_offset_s`, the shift
    applied in seconds (nan when none was: the offset unknown or p.align_to_frames off).
    Raises decode_audio's StageInputError."""
    offset = frames_offset_s(path) if p.align_to_frames else None
    # an early track is decoded that much further, so that max_feature_seconds of it remain
    # after the frames' t = 0 (at most twice as far: a file's timestamps can claim anything)
    early = min(max(-(offset or 0.0), 0.0), p.max_feature_seconds)
    y = decode_audio(path, sr=p.sr, max_seconds=p.max_feature_seconds + early, report=report)
    if y is None:
        return None, 0
    report["decoded_s"] = len(y) / p.sr
    y, shift = align_wave(y, offset, sr=p.sr, limit=int(math.ceil(p.max_feature_seconds * p.sr)))
    report["audio_offset_s"] = float("nan") if offset is None else shift / p.sr
    return y, shift


def frames_offset_s(path: str | os.PathLike) -> float | None:
    """clip_clock.audio_offset_s(path), or None (the audio stays as decoded) when it cannot
    say: no video stream to align to (an audio-only file), a file it cannot open (decode_audio
    then names the fault), timestamps it cannot read."""
    try:
        return audio_offset_s(path)
    except StageInputError as exc:
        log.info("%s: audio left on its own clock: %s", path, exc)
    except Exception as exc:  # noqa: BLE001 - PyAV's demux errors come in many kinds
        log.warning("%s: audio left on its own clock: the timestamps cannot be read: %s: %s",
                    path, type(exc).__name__, exc)
    return None


def _stream_facts(path: str | os.PathLike, container, stream, sr: int) -> dict:
    """The audio `stream`'s `declared_s` and `source_sr` (decode_audio's report); StageInputError
    naming `path` when that rate is under MIN_SOURCE_SR (0, unknown, is the decoder's to refuse)."""
    source_sr = int(stream.codec_context.sample_rate or 0)
    if 0 < source_sr < MIN_SOURCE_SR:
        raise StageInputError(f"{path}: the audio stream declares a sample rate of {source_sr} "
                              f"Hz, under the {MIN_SOURCE_SR} Hz of any recording of speech; not "
                              f"read (resampling it to {sr} Hz would multiply its samples "
                              f"{sr / source_sr:g} times)")
    return {"declared_s": _stream_declared_s(container, stream), "source_sr": source_sr}


class _AudioClock:
    """Where each decoded audio frame lies against the input seconds read so far (`seen`,
    counted at the input's rate: the resampler holds a few back): `skipped` gives the samples at
    `sr` of a stretch the demuxer skipped (the frame's own time more than GAP_TOLERANCE_S ahead),
    0 when there is no time. In a format whose clock may jump (`discont`: MPEG-TS / PS) a jump
    (frame_sampling.is_clock_jump, the frames' rule) is no lost audio: a forward one moves the
    origin at once; a backward one when the next frame is behind too (a restarted clock, not one
    bad timestamp, which would have read as a second of silence after it). `jumps` counts them."""

    def __init__(self, sr: int, discont: bool):
        self.sr, self.discont = sr, discont
        self.origin: float | None = None  # the first decoded frame's time
        self.jumps, self.behind = 0, False

    def skipped(self, frames: list, seen: float) -> int:
        t = frames[0].time if frames else None
        if t is None or self.origin is None:
            self.origin = t if self.origin is None else self.origin
            return 0
        ahead = t - self.origin - seen
        if is_clock_jump(ahead, self.discont):
            if ahead > 0 or self.behind:  # a new clock: what follows continues the wave
                self.origin, self.jumps, self.behind = self.origin + ahead, self.jumps + 1, False
            else:
                self.behind = True
            return 0
        self.behind = False
        return int(round(ahead * self.sr)) if ahead > GAP_TOLERANCE_S else 0


class _Resampler:
    """Frames of any rate, layout and format -> float32 mono waves at `sr`, shape (k,). PyAV's
    AudioResampler takes its input's from the first frame and refuses any other; a stream may
    change mid-way (a stereo 44.1 kHz recording joined to a mono 48 kHz one), so a change flushes
    the old one's delay line and starts a new one (`changes` counts them). A frame under
    MIN_SOURCE_SR is refused naming `path`, as a declared one is (_stream_facts)."""

    def __init__(self, path: str | os.PathLike, sr: int):
        self.path, self.sr, self.kind, self.resampler, self.changes = path, sr, None, None, 0

    def __call__(self, frame) -> list[np.ndarray]:
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        waves = []
        if kind != self.kind:
            if 0 < frame.sample_rate < MIN_SOURCE_SR:
                raise StageInputError(f"{self.path}: audio frames at a sample rate of "
                                      f"{frame.sample_rate} Hz, under the {MIN_SOURCE_SR} Hz of "
                                      "any recording of speech; not read")
            import av

            waves, self.changes = self.flush(), self.changes + (self.kind is not None)
            self.kind = kind
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sr)
        return waves + [out.to_ndarray().reshape(-1) for out in self.resampler.resample(frame)]

    def flush(self) -> list[np.ndarray]:
        """What the current resampler still holds, as waves."""
        if self.resampler is None:
            return []
        return [out.to_ndarray().reshape(-1) for out in self.resampler.resample(None)]


def _audio_packets(container, stream, sr: int) -> Iterator[list | int]:
    """Per packet of `stream`: its decoded frames, or (it failed to decode) the number of
    samples at `sr` it would have held (0 when it gives no duration)."""
    for packet in container.demux(stream):
        try:
            yield packet.decode()
        except Exception:  # noqa: BLE001 - PyAV's decode errors come in many kinds
            seconds = float(packet.duration * packet.time_base) if packet.duration and \
                packet.time_base else 0.0
            yield int(round(seconds * sr))


# --------------------------------------------------------------------------------------------------
# per-window features


def frame_rms_db(y: np.ndarray, p: AudioParams) -> tuple[np.ndarray, np.ndarray]:
    """librosa's RMS per frame (T,) and the same in dBFS (floored at -200 dB)."""
    import librosa

    rms = librosa.feature.rms(y=y, frame_length=p.win_length, hop_length=p.hop_length)[0]
    return rms, 20 * np.log10(np.maximum(rms, 1e-10))


def voicing_strength(y: np.ndarray, f0: np.ndarray, *, sr: int, hop_length: int,
                     window: int) -> np.ndarray:
    """Periodicity of each frame at its f0 estimate, shape (T,) in [0, 1].

    For frame j centred on sample c = j * hop_length and period P = sr / f0[j], the normalised
    cross-correlation (RAPT's NCCF) of a = y[c - W/2 : c + W/2] with the same W samples shifted by
    the period, b = y[c - W/2 + P : ...]: sum(a b) / sqrt(sum(a^2) sum(b^2)), best of P = round(.)
    - 1, + 0, + 1; 1.0 for a perfectly periodic signal, about 0 for noise. y is zero-padded at both
    ends like librosa's centred frames. librosa has no such measure (librosa.yin returns no
    voicing), so this is the one piece of DSP written here. y (n,), f0 (T,), window W samples.
    """
    t = len(f0)
    period = np.rint(sr / np.asarray(f0, np.float64)).astype(np.int64)  # (T,)
    max_lag = int(period.max()) + 1
    half = window // 2
    yp = np.pad(np.asarray(y, np.float32), (half + 1, window + max_lag + 1))
    start = np.arange(t) * hop_length + 1  # (T,) index of a's first sample in yp
    idx = np.arange(window)  # (W,)
    a = yp[start[None, :] + idx[:, None]]  # (W, T)
    b = yp[(start + period - 1)[None, :] + np.arange(window + 2)[:, None]]  # (W + 2, T): P-1..P+1
    cum = np.concatenate([[0.0], np.cumsum(yp.astype(np.float64) ** 2)])  # yp[i:k]: cum[k] - cum[i]
    ea = cum[start + window] - cum[start]  # (T,)
    best = np.zeros(t)
    for k in range(3):  # lag P - 1 + k
        s = start + period - 1 + k
        eb = cum[s + window] - cum[s]
        denom = np.sqrt(ea * eb)
        r = np.einsum("wt,wt->t", a, b[k : k + window]).astype(np.float64)
        best = np.maximum(best, np.where(denom > 1e-12, r / np.maximum(denom, 1e-30), 0.0))
    return np.clip(best, 0.0, 1.0).astype(np.float32)


def _delta_width(n_frames: int) -> int:
    """librosa.feature.delta's width: 9, or the largest odd number <= n_frames for short clips."""
    return max(3, min(9, n_frames if n_frames % 2 else n_frames - 1))


def frame_features(y: np.ndarray, p: AudioParams) -> dict[str, np.ndarray]:
    """Every per-window feature of the float32 wave y (n,), all on the hop_s grid, T frames.

    Returns logmel (n_mels, T), mfcc / mfcc_d / mfcc_dd (n_mfcc, T), and (T,) vectors f0 (NaN
    where unvoiced), voicing, voiced (bool), active (bool), rms, rms_db, centroid, flatness, zcr.
    Needs len(y) >= f0_frame_length samples.
    """
    import librosa

    sr, hop = p.sr, p.hop_length
    spec = np.abs(librosa.stft(y, n_fft=p.n_fft, hop_length=hop, win_length=p.win_length))  # (F, T)
    power = spec ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=p.n_mels)  # (n_mels, T)
    logmel = librosa.power_to_db(mel, ref=1.0, top_db=None)
    mfcc = librosa.feature.mfcc(S=logmel, sr=sr, n_mfcc=p.n_mfcc)  # (n_mfcc, T)
    t = logmel.shape[1]
    width = _delta_width(t)
    mfcc_d = librosa.feature.delta(mfcc, width=width, order=1)
    mfcc_dd = librosa.feature.delta(mfcc, width=width, order=2)
    rms, rms_db = frame_rms_db(y, p)
    centroid = librosa.feature.spectral_centroid(S=spec, sr=sr, n_fft=p.n_fft)[0]
    flatness = librosa.feature.spectral_flatness(S=spec)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=p.win_length, hop_length=hop)[0]
    active = rms_db > p.silence_db

    if p.f0_method == "yin":
        f0 = librosa.yin(y, fmin=p.f0_min, fmax=p.f0_max, sr=sr, frame_length=p.f0_frame_length,
                         hop_length=hop)
        voicing = voicing_strength(y, f0, sr=sr, hop_length=hop, window=p.f0_frame_length)
        # yin falls back to its search bounds when it finds no period inside them: not voiced
        inside = (f0 > p.f0_min * 1.03) & (f0 < p.f0_max / 1.03)  # half a semitone in
        voiced = (voicing > p.voicing_threshold) & inside
    else:
        f0, voiced, voicing = pyin_on_grid(y, p, t)
    f0, voicing, voiced = _fit(f0, t), _fit(voicing, t), _fit(voiced, t)
    voiced = voiced & active
    f0 = np.where(voiced, f0, np.nan)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return {"logmel": f32(logmel), "mfcc": f32(mfcc), "mfcc_d": f32(mfcc_d),
            "mfcc_dd": f32(mfcc_dd), "f0": f32(f0), "voicing": f32(voicing), "voiced": voiced,
            "active": active, "rms": f32(rms), "rms_db": f32(rms_db), "centroid": f32(centroid),
            "flatness": f32(flatness), "zcr": f32(zcr)}


def _fit(x: np.ndarray, t: int) -> np.ndarray:
    """Cut or edge-pad a (T',) vector to (t,): librosa's frame counts agree, this is a guard."""
    if len(x) >= t:
        return x[:t]
    return np.pad(x, (0, t - len(x)), mode="edge")


def pyin_on_grid(y: np.ndarray, p: AudioParams, t: int) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """librosa.pyin on its own hop `pyin_hop_s`, put on the hop_s grid of t frames: f0 and the
    voiced flag by nearest frame, the voiced probability linearly."""
    import librosa

    hop = max(1, int(round(p.pyin_hop_s * p.sr)))
    f0, flag, prob = librosa.pyin(y, fmin=p.f0_min, fmax=p.f0_max, sr=p.sr,
                                  frame_length=p.f0_frame_length, hop_length=hop)
    src = np.arange(len(f0)) * hop  # sample index of each pyin frame centre
    dst = np.arange(t) * p.hop_length
    nearest = np.clip(np.rint(dst / hop).astype(np.int64), 0, len(f0) - 1)
    return f0[nearest], flag[nearest], np.interp(dst, src, prob)


# --------------------------------------------------------------------------------------------------
# functionals


def _stat_names(p: AudioParams) -> list[str]:
    return ["mean", "std", *(f"p{q:g}" for q in p.percentiles)]


def _stats(x: np.ndarray, p: AudioParams) -> np.ndarray:
    """(k, T) -> (k, 2 + len(percentiles)): mean, population std, percentiles; NaN when T == 0."""
    k = x.shape[0]
    if x.shape[1] == 0:
        return np.full((k, 2 + len(p.percentiles)), np.nan)
    x = x.astype(np.float64)
    cols = [x.mean(axis=1), x.std(axis=1)]
    if p.percentiles:
        cols.extend(np.percentile(x, list(p.percentiles), axis=1))  # (Q, k)
    return np.stack(cols, axis=1)


def functionals(feats: dict[str, np.ndarray] | None, p: AudioParams) -> dict[str, float]:
    """Per-video functionals {"fn_<stream>_<stat>": value}; `feats` None -> the same keys, NaN."""
    t = 0 if feats is None else feats["rms"].shape[0]
    empty = np.zeros((1, 0))
    names = _stat_names(p)
    out: dict[str, float] = {}

    def add(prefix: str, rows: list[str], matrix: np.ndarray) -> None:
        table = _stats(matrix, p)  # (k, S)
        for i, row in enumerate(rows):
            for j, stat in enumerate(names):
                out[f"fn_{prefix}{row}_{stat}"] = float(table[i, j])

    for stream in STREAMS:
        if feats is None:
            x = empty
        elif stream == "f0":
            x = feats["f0"][feats["voiced"]][None, :]  # voiced frames only
        else:
            x = feats[stream][None, :]
        add(stream, [""], x)
    for key, k in (("logmel", p.n_mels), ("mfcc", p.n_mfcc), ("mfcc_d", p.n_mfcc),
                   ("mfcc_dd", p.n_mfcc)):
        add(key + "_", [f"{i:02d}" for i in range(k)],
            np.zeros((k, 0)) if feats is None else feats[key])
    if feats is None or t == 0:
        out.update(fn_active_frac=np.nan, fn_voiced_frac=np.nan, fn_voiced_onsets_per_s=np.nan)
    else:
        voiced = feats["voiced"].astype(np.int8)
        onsets = int(voiced[0]) + int((np.diff(voiced) == 1).sum())
        out.update(fn_active_frac=float(feats["active"].mean()),
                   fn_voiced_frac=float(voiced.mean()),
                   fn_voiced_onsets_per_s=onsets / (t * p.hop_s))
    return out


# --------------------------------------------------------------------------------------------------
# one video -> one row


def _wave_column(y: np.ndarray | None, p: AudioParams) -> tuple[np.ndarray, float, int]:
    """(wave, wave_scale, n_samples): y cut or zero-padded to wave_length, in wave_format."""
    if p.wave_format == "none":
        return np.zeros(0, np.int16), 1.0, 0
    n = p.wave_length
    real = 0 if y is None else min(len(y), n)
    wave = np.zeros(n, np.float32)
    if real:
        wave[:real] = y[:real]
    if p.wave_format == "int16":
        return (np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16), 1 / 32767, real)
    return wave, 1.0, real


def _row(video_id: str, p: AudioParams, *, has_audio: bool, silent: bool = False,
         error: str = "", y: np.ndarray | None = None,
         feats: dict[str, np.ndarray] | None = None, extra: dict[str, float] | None = None,
         offset_s: float = float("nan"), lead: int = 0) -> dict:
    """The output row; `extra`: the openSMILE columns (NaN ones for a row without features);
    `offset_s` the shift applied to y (decode_on_frames_clock), `lead` its leading samples of
    alignment silence, which the functionals leave out."""
    t = 0 if feats is None else feats["rms"].shape[0]
    empty = np.zeros(0, np.float32)
    wave, scale, n_samples = _wave_column(y, p)
    row = {"video_id": video_id, "has_audio": has_audio, "silent": silent, "error": error,
           "sr": p.sr, "hop_s": p.hop_length / p.sr, "n_frames": t, "n_mels": p.n_mels,
           "n_mfcc": p.n_mfcc, "duration_s": 0.0 if y is None else len(y) / p.sr,
           "audio_offset_s": offset_s}
    if feats is None:
        row.update({c: empty for c in WINDOW_COLUMNS})
    else:
        row["logmel"] = feats["logmel"].T.reshape(-1)  # (n_mels, T) -> (T, n_mels) -> flat
        row["mfcc"] = np.concatenate([feats["mfcc"], feats["mfcc_d"], feats["mfcc_dd"]]
                                     ).T.reshape(-1)  # (3 n_mfcc, T) -> (T, 3 n_mfcc) -> flat
        row.update({c: feats[c] for c in ("f0", "voicing", "rms", "centroid", "flatness", "zcr")})
    row.update(wave=wave, wave_scale=scale, n_samples=n_samples)
    if p.librosa:  # of the recorded frames: from the first centred at or after the lead
        first = -(-lead // p.hop_length)
        row.update(functionals({k: v[..., first:] for k, v in feats.items()} if t else None, p))
    row.update(extra or {})
    return row


def process_video(video_id: str, path: str | os.PathLike, p: AudioParams,
                  timings: dict[str, float] | None = None) -> dict:
    """One video -> its row (see the module docstring). Never raises for a bad file: the row says
    what went wrong in `error`. `timings`, when given, receives seconds per step (decode, features
    = librosa's, one per openSMILE set, row, total). A track read with damage or cut short gets
    `notes` (not a column: run() puts them under `warnings` in metrics/audio.json)."""
    report: dict = {}
    row = _process(video_id, path, p, timings, report)
    seconds = report.get("decoded_s", row["duration_s"])  # the track's own length, unshifted
    notes = [f"{report['bad_packets']} corrupt audio packet(s) read as silence"] \
        if report.get("bad_packets") else []
    if report.get("gap_s"):
        notes.append(f"{report['gap_s']:.1f} s of audio skipped (a damaged stretch) read as "
                     "silence")
    if row["has_audio"] and 0 < report.get("source_sr", 0) < p.sr:
        # resampled up, its spectrum above the recording's Nyquist is empty: the log-mel's top
        # bands, the centroid and the eGeMAPS slopes read as none of the training clips did
        notes.append(f"the audio was recorded at {report['source_sr']} Hz, under the features' "
                     f"{p.sr} Hz: nothing above {report['source_sr'] / 2000:.1f} kHz, so "
                     "audio scores can extrapolate (telephone audio?)")
    # a restarted MPEG-TS clock: the declared length spans its pts, not the recording
    if row["has_audio"] and not row["error"] and seconds < p.max_feature_seconds - 1.0 and \
            not report.get("clock_jumps"):
        declared = _declared_s(path, report, seconds)  # a failed row says why: no check
        if ends_short(seconds, declared):
            notes.append(f"the audio ends at {seconds:.1f} s of its declared {declared:.1f} s: "
                         "the file looks truncated")
    return {**row, "notes": notes} if notes else row


def _too_short(n: int, lead: int, p: AudioParams) -> str:
    """Why a track of `n` samples, the first `lead` of them a late track's alignment silence, is
    too short for the features ("" when it is not): its recording under f0_frame_s, or (librosa
    features) holding no frame of the hop_s grid, where the functionals start (_row). A hop_s
    over f0_frame_s and a late start can leave a recording between two frames' centres: every
    fn_* of its row was NaN, with no error."""
    if n - lead < p.f0_frame_length:
        return f"{p.f0_frame_s} s"
    to_frame = -(-lead // p.hop_length) * p.hop_length - lead  # to the first centre at or after
    if p.librosa and n - lead < to_frame:
        return (f"{to_frame / p.sr:.3f} s: no frame of the {p.hop_s:g} s grid (audio.hop_s) "
                "centred in it")
    return ""


def _after_first_frame(report: dict, p: AudioParams, at_limit: bool) -> str:
    """What a too-short message adds when the track was cut to the frames' clock: how much of it
    played before the first frame; or, for a late track cut at max_feature_seconds (`at_limit`),
    that it starts at or just before that limit (the recording is not short: the features stop)."""
    offset = report.get("audio_offset_s", 0.0)  # nan (not shifted): neither
    if offset < 0:
        return f" after the first frame; {-offset:.3f} s before it left out"
    if offset > 0 and at_limit:
        limit = p.max_feature_seconds
        where = "at or past" if offset >= limit else f"{limit - offset:.3f} s before"
        return (f": it starts {offset:.3f} s after the first frame, {where} "
                f"audio.max_feature_seconds ({limit:g} s), where the features stop")
    return ""


def _stream_declared_s(container, stream) -> float:
    """The duration an audio stream declares, in seconds (nan when it does not). An AVI's is the
    longer of that and its header's length (`frames`, counted in its time base): a cut AVI's
    stream duration is FFmpeg's estimate from what is left (or absent, for PCM), while the
    header still counts the whole track, as video_io does for the video stream."""
    tb = stream.time_base
    declared = float(stream.duration * tb) if stream.duration and tb else float("nan")
    if container.format.name == "avi" and stream.frames and tb:
        declared = float(np.fmax(declared, float(stream.frames * tb)))
    return declared


def _declared_s(path: str | os.PathLike, report: dict, seconds: float) -> float:
    """The audio stream's declared duration, else (Matroska / WebM: streams declare none) the
    container's when the file was cut off (video_io.cut_container_s; the track's `seconds`
    spare its demux when they reach the container's duration), else nan."""
    declared = report.get("declared_s", float("nan"))
    if np.isfinite(declared):
        return declared
    try:
        return cut_container_s(path, seconds)
    except StageInputError:  # it decoded a moment ago; no second opinion is no warning
        return float("nan")


def _process(video_id: str, path: str | os.PathLike, p: AudioParams,
             timings: dict[str, float] | None, report: dict) -> dict:
    exs = smile.extractors(p.smile_sets)
    blank = smile.nan_functionals(exs)
    t0 = time.perf_counter()
    try:
        y, shift = decode_on_frames_clock(path, p, report)
    except StageInputError as exc:
        return _row(video_id, p, has_audio=False, error=str(exc), extra=blank)
    t1 = time.perf_counter()
    if y is None:
        return _row(video_id, p, has_audio=False, extra=blank)
    # the recorded audio: y after the lead of silence a late track gets (all of y at offset 0);
    # the silent flag, the functionals and openSMILE describe it, not the alignment's zeros
    lead = min(max(shift, 0), len(y))
    recorded = y[lead:]
    row = functools.partial(_row, video_id, p, has_audio=True, y=y, extra=blank,
                            offset_s=report["audio_offset_s"], lead=lead)
    short = _too_short(len(y), lead, p)
    if short:
        # a late track cut at max_feature_seconds (decode_on_frames_clock's limit): say so
        at_limit = len(y) >= int(math.ceil(p.max_feature_seconds * p.sr))
        return row(error=f"{path}: audio track too short ({len(recorded) / p.sr:.3f} s < "
                         f"{short}{_after_first_frame(report, p, at_limit)})")
    _, rms_db = frame_rms_db(recorded, p)
    if float(np.mean(rms_db > p.silence_db)) < p.min_active_frac:
        return row(silent=True)
    try:
        feats = frame_features(y, p) if p.librosa else None
    except Exception as exc:  # a track librosa cannot take (non-finite samples...): mark, go on
        return row(error=f"{path}: features failed: {type(exc).__name__}: {exc}")
    t2 = time.perf_counter()
    steps: dict[str, float] = {}
    try:
        extra = smile.all_functionals(recorded, p.sr, exs, steps)
    except smile.SmileError as exc:
        return row(error=f"{path}: {exc}")
    t3 = time.perf_counter()
    row = row(feats=feats, extra=extra)
    if timings is not None:
        t4 = time.perf_counter()
        timings.update(decode=t1 - t0, features=t2 - t1, **steps, row=t4 - t3, total=t4 - t0)
    return row


# --------------------------------------------------------------------------------------------------
# workers

_PARAMS: AudioParams | None = None


def warm_up(p: AudioParams) -> float:
    """Run the whole feature path once on 1 s of a synthetic vowel, so that numba's JIT (or the
    load of its cache) is paid here, once per process, not on the first clip. Returns seconds."""
    t0 = time.perf_counter()
    n = max(p.sr, 2 * p.f0_frame_length)
    tt = np.arange(n) / p.sr
    y = (0.1 * np.sin(2 * np.pi * 150 * tt) + 0.01 * np.random.default_rng(0).standard_normal(n)
         ).astype(np.float32)
    if p.librosa:
        frame_features(y, p)
    smile.all_functionals(y, p.sr, smile.extractors(p.smile_sets), {})  # openSMILE's set-up
    return time.perf_counter() - t0


def _setup(p: AudioParams) -> None:
    """Once per worker process (personality.executor runs it): the params, then the JIT warm-up."""
    global _PARAMS
    _PARAMS = p
    warm_up(p)


def _work(job: tuple[str, str]) -> dict:
    """Worker entry: never raises for one video (process_video catches what a bad file does; this
    catches the rest), so one video cannot stop the others."""
    assert _PARAMS is not None, "worker not initialised"
    try:
        return process_video(job[0], job[1], _PARAMS)
    except Exception as exc:  # noqa: BLE001 - a bug met on one file is that file's error row
        return failed_row(job, _PARAMS, f"{type(exc).__name__}: {exc}")


def failed_row(job: tuple[str, str], p: AudioParams, why: str) -> dict:
    """The row of a video whose audio could not be read: no audio, `error` naming the file."""
    return _row(job[0], p, has_audio=False, error=f"{job[1]}: {why}",
                extra=smile.nan_functionals(smile.extractors(p.smile_sets)))


@contextlib.contextmanager
def _numba_cache_for_children(root: Path):
    """A persistent numba cache for the local workers (they inherit this environment when they
    start): the JIT is paid once per machine, not once per run."""
    saved = os.environ.get("NUMBA_CACHE_DIR")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / ".numba_cache"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)


def iter_rows(jobs: list[tuple[str, str]], p: AudioParams, workers: int, root: Path,
              durations: dict[str, float] | None = None):
    """Yield one row per job, in job order, from the executor (personality.executor.map_jobs).
    A video that kills its worker twice (FFmpeg crashing on a hostile file), or runs over its
    time limit (600 s + 20 s per second of the clip, `durations`), is an error row naming it;
    the others go on."""
    durations = durations or {}
    with _numba_cache_for_children(root):
        yield from map_jobs(_work, jobs, workers=workers, label=lambda job: job[0],
                            setup=_setup, setup_args=(p,),
                            on_lost=lambda job, why: failed_row(job, p, why),
                            time_limit=lambda job: time_limit_s(durations.get(job[0]), 20.0))


# --------------------------------------------------------------------------------------------------
# stage


def _tally(row: dict, counts: dict, named: dict, p: AudioParams) -> bool:
    """Count and name one row for metrics/audio.json (and log it); pops its `notes`. True when
    the row has features (not failed, silent or without audio)."""
    vid = row["video_id"]
    notes = row.pop("notes", None)  # damaged or cut short: named, not only logged
    if notes:
        named.setdefault("warnings", {})[vid] = "; ".join(notes)
    if row["has_audio"] and p.align_to_frames:  # where the features were put on the frames' clock
        if not np.isfinite(row["audio_offset_s"]):
            named.setdefault("offset_unknown", {})[vid] = (
                "the timestamps do not say where the audio starts on the frames' clock (or "
                "there are no frames): the audio as decoded")
        elif row["audio_offset_s"]:
            named.setdefault("shifted", {})[vid] = row["audio_offset_s"]
    if row["error"]:
        counts["n_errors"] += 1
        named["failed"][vid] = row["error"]
        log.warning("%s: %s", vid, row["error"])
    elif not row["has_audio"]:
        counts["n_no_audio"] += 1
        named["no_audio"].append(vid)
        log.info("%s: no audio stream", vid)
    elif row["silent"]:
        counts["n_silent"] += 1
        named["silent"].append(vid)
        log.info("%s: silent audio track", vid)
    else:
        return True
    return False


def run(params: AudioParams, base: BaseParams, root: Path | None = None) -> dict:
    """Audio features of every manifest video under `root` -> data/audio; returns a summary."""
    root = root or repo_root()
    params.validate()
    manifest = read_artifact("clips", path=root / schemas.ARTIFACTS["clips"].path)
    jobs, durations = [], dict(zip(manifest["video_id"].astype(str), manifest["duration_s"]))
    for vid, rel in zip(manifest["video_id"], manifest["path"]):
        if not rel:  # AU-only sources (perfex, openface_csv) have no video
            continue
        path = Path(rel)
        jobs.append((str(vid), str(path if path.is_absolute() else root / path)))
    log.info("audio of %d videos with %d worker(s), feature sets %s, f0 by %s", len(jobs),
             base.workers, "+".join(params.feature_sets), params.f0_method)
    counts = {"n_videos": len(jobs), "n_no_audio": 0, "n_silent": 0, "n_errors": 0}
    named: dict[str, Any] = {"failed": {}, "no_audio": [], "silent": []}  # metrics/audio.json
    voiced, seconds = [], 0.0
    t0 = time.perf_counter()
    out_path = root / schemas.ARTIFACTS["audio"].path
    batch: list[dict] = []  # one shard's rows: DataFrame(list of dicts) is much cheaper than
    # concatenating one-row frames of ~600 columns
    with ArtifactWriter("audio", path=out_path, rows_per_shard=params.rows_per_shard) as out, \
            progress(total=len(jobs), desc="audio", unit="video") as bar:
        for row in iter_rows(jobs, params, base.workers, root, durations):
            if _tally(row, counts, named, params) and params.librosa:
                voiced.append(row["fn_voiced_frac"])
            seconds += row["duration_s"]
            batch.append(row)
            if len(batch) >= params.rows_per_shard:
                out.write(pd.DataFrame(batch))  # the writer flushes a shard at rows_per_shard
                batch = []
            bar.update(1)
        if batch:
            out.write(pd.DataFrame(batch))
    wall = time.perf_counter() - t0
    summary = {**counts, "audio_hours": round(seconds / 3600, 4),
               "mean_voiced_frac": round(float(np.mean(voiced)), 4) if voiced else None}
    # the timings stay in the log: in the metrics file they would differ on every run
    log.info("audio: %s, %.1f s wall, %s x real time", summary, wall,
             round(seconds / wall, 1) if wall > 0 else None)
    named["failed"] = by_video(named["failed"], "error", root=root)
    # only when a track was damaged or cut short, shifted, or of unknown offset: no key otherwise
    for key, field in (("warnings", "warning"), ("shifted", "audio_offset_s"),
                       ("offset_unknown", "why")):
        if key in named:
            named[key] = by_video(named[key], field, root=root)
    atomic_write_json(root / "metrics" / "audio.json", {**summary, **named})
    return {**summary, **named, "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> None:
    run_stage("audio", AudioParams, run)


if __name__ == "__main__":
    main()
