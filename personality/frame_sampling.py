"""Which decoded frames the front-end keeps, and their index and time: pure bookkeeping, no decoding.

personality/video_io.py's `iter_frames` asks one picker per video, frame by frame:

    pick = SamplingPicker(stream, keep=None, fps=8.0)  # as frames come out of the decoder
    kept = pick(frame)            # (frame_idx, t) when the frame is kept, else None

`PlannedPicker` keeps the frames a packet scan chose before decoding (so that the decoder may skip
the others); `FrameClock` and `FrameSampler` are the rules both share: time from each frame's pts,
the first frame at or after each 1/fps tick, or listed indices. `python -m pytest
tests/test_frames.py` exercises them.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["FrameClock", "FrameSampler", "SamplingPicker", "PlannedPicker", "nominal_rate",
           "clock_may_jump", "is_clock_jump"]

# MPEG-TS / PS (FFmpeg's AVFMT_TS_DISCONT formats) may reset or jump their clock: a broadcast
# splice, recordings or HLS segments joined end to end (`cat a.ts b.ts > c.ts`). As in FFmpeg, a
# step forward over DISCONTINUITY_S (its -dts_delta_threshold) or back over BACKSTEP_S there starts
# a new clock, and what follows continues where the media before it ended: the frames here, the
# audio in stages/audio.py, so that both stay on one timeline. Other formats keep their clock (a
# step back is one bad timestamp there, clamped, not a reason to move every later frame).
DISCONTINUITY_S = 10.0
BACKSTEP_S = 0.1
_TS_DISCONT = 0x0200  # AVFMT_TS_DISCONT in ContainerFormat.flags


def clock_may_jump(container) -> bool:
    """Whether the opened `container`'s format may reset or jump its clock (MPEG-TS / PS)."""
    return bool(container.format.flags & _TS_DISCONT)


def is_clock_jump(step_s: float, discont: bool) -> bool:
    """Whether a step of `step_s` seconds from one time to the next, in a format whose clock may
    jump (`discont`), is a new clock rather than the media's own time."""
    return discont and (step_s < -BACKSTEP_S or step_s > DISCONTINUITY_S)


def nominal_rate(vs) -> float:
    """A video stream's frame rate in frames per second: its average rate, else the rate FFmpeg
    guesses from the codec, else its base rate; nan when none is given. An average rate that is
    the stream's clock (1 / time_base) beside a different guess is the demuxer's placeholder, not
    a rate: a DV file's is 60000 (its 1/60000 s time base) for frames at 25 or 29.97."""
    clock = 1 / vs.time_base if vs.time_base else None
    guess = vs.guessed_rate or vs.base_rate
    for rate in (vs.average_rate, vs.guessed_rate, vs.base_rate):
        if rate and rate > 0 and not (rate == clock and guess and guess != clock):
            return float(rate)
    return float("nan")


class SamplingPicker:
    """Keeps frames as they come out of the decoder: index by count, time from `FrameClock`."""

    missing = 0

    def __init__(self, vs, keep: np.ndarray | None, fps: float | None):
        self.clock, self.sampler, self.idx = FrameClock(vs), FrameSampler(keep, fps), -1
        # every frame's time, kept or not, where the clock may jump: its gaps are read on them
        self.times: list[float] = []

    def __call__(self, frame) -> tuple[int, float] | None:
        self.idx += 1
        t = self.clock(frame.pts, self.idx)
        if self.clock.discont:
            self.times.append(t)
        return (self.idx, t) if self.sampler.wants(self.idx, t) else None

    @property
    def done(self) -> bool:
        return self.sampler.done


class PlannedPicker:
    """Keeps the frames a packet scan planned (video_io's skip plan: {pts: (frame_idx, t)})."""

    def __init__(self, plan: dict[int, tuple[int, float]]):
        self.plan, self.n_kept = plan, 0

    def __call__(self, frame) -> tuple[int, float] | None:
        kept = self.plan.get(frame.pts)
        self.n_kept += kept is not None
        return kept

    @property
    def done(self) -> bool:
        return self.n_kept == len(self.plan)

    @property
    def missing(self) -> int:
        return len(self.plan) - self.n_kept


class FrameClock:
    """Seconds since the stream's start, per frame: from the frame's pts (variable frame rate
    safe), else the nominal rate; strictly increasing and >= 0 even when pts jump back. Called
    with each frame's pts (None: unknown) and index, in presentation order. Where the format's
    clock may jump (`clock_may_jump`), a jump (`is_clock_jump`) starts a new clock that continues
    one nominal frame period after the last frame, once the next frame confirms it: one bad
    timestamp, followed by frames on the old clock, moves nothing after it. `jumps` counts them."""

    def __init__(self, vs):
        self.tb = vs.time_base
        self.start = vs.start_time
        rate = nominal_rate(vs)
        self.rate = rate if math.isfinite(rate) else 25.0
        container = getattr(vs, "container", None)
        self.discont = container is not None and clock_may_jump(container)
        self.t0: float | None = None
        self.last_t = -math.inf
        self.jumps = 0
        self.begun = False  # a frame at or after the start seen (lead-in ones, clamped: no jump)
        self.pending: tuple[float, float] | None = None  # after a jump: (new t0, last t before)

    def __call__(self, pts: int | None, idx: int) -> float:
        tb = self.tb
        known = pts is not None and tb is not None
        if known:
            raw = float(pts * tb)
        else:  # no timestamps (some raw streams): assume the nominal rate
            raw = idx / self.rate + (self.t0 or 0.0)
        if self.t0 is None:  # origin: the stream's start time, else its first frame
            self.t0 = float(self.start * tb) if self.start is not None and tb is not None else raw
        t = raw - self.t0
        if known and self.discont:
            t = self._across_jumps(raw, t)
        t = max(t, self.last_t + 1e-6 if self.last_t > -math.inf else 0.0)
        self.last_t = t
        return t

    def _across_jumps(self, raw: float, t: float) -> float:
        """`t` (on the current clock) of a frame at `raw` seconds, a jump's frame moved on."""
        if self.pending is not None:  # the frame after a jump: on the new clock, or the old one
            new_t0, before = self.pending
            self.pending = None
            if is_clock_jump(t - before, True):  # not back on the old clock: the new one holds
                self.t0, self.jumps = new_t0, self.jumps + 1
                return raw - new_t0
            return t
        if self.begun and is_clock_jump(t - self.last_t, True):
            moved = self.last_t + 1.0 / self.rate  # where a new clock would put it
            self.pending = (raw - moved, self.last_t)
            return moved
        self.begun = self.begun or t >= 0
        return t


class FrameSampler:
    """Which frames to keep: the listed indices (`keep`), else the first frame at or after each
    tick 0, 1/fps, 2/fps, ... (`fps`), else all."""

    EPS = 1e-4

    def __init__(self, keep: np.ndarray | None, fps: float | None):
        self.keep, self.fps = keep, fps
        self.step = 1.0 / fps if fps else 0.0
        self.next_tick = 0.0
        self.keep_pos = 0

    def wants(self, idx: int, t: float) -> bool:
        if self.keep is not None:
            if self.keep_pos >= len(self.keep) or idx != self.keep[self.keep_pos]:
                return False
            self.keep_pos += 1
        elif self.fps:
            if t + self.EPS < self.next_tick:
                return False
            while self.next_tick <= t + self.EPS:
                self.next_tick += self.step
        return True

    @property
    def done(self) -> bool:
        return self.keep is not None and self.keep_pos >= len(self.keep)
