"""augment: PerFeX's AU-sequence augmentation, on the TRAIN split only.

    python -m stages.augment         # reads params.yaml:base.seed,augment, data/manifest.parquet,
                                     # data/aus -> data/augmented, metrics/augment.json

PerFeX (data_augmentation.py) adds to each clip one decimated copy (every 2nd row, one phase), one
copy shifted by 5 frames and non-overlapping 100-frame windows of the original series. Its published
code does so BEFORE splitting, so windows of a test clip end up in training; here the split comes
from the manifest (decided at ingest, by subject) and only `split == "train"` clips are augmented:
validation and test clips are never touched, and every augmented sequence keeps its source clip's
`video_id`. This stage is after PerFeX, not a copy of it: it crosses every phase of every factor
with every shift and cuts windows from all of them (PerFeX windows the original series only, keeps
one phase, and keeps the decimated and shifted copies whole), keeps a long enough tail as a window
(PerFeX drops it), and adds noisy copies (step 4), which PerFeX does not have (`copies: 0` turns
them off). docs/training.md has the comparison.

Per train clip (AUs in `personality.schemas.AU_INTENSITY` order, NaN where no face, kept NaN):
1. decimation: for every factor f in `decimate`, the f phases x[p::f] (f = 1: the clip itself);
2. shift: for every s in `shifts`, the sequence delayed by s steps with the first value repeated
   (edge padding), same length;
3. windows: non-overlapping windows of `window` steps from the start; a shorter sequence stays one
   window; a trailing remainder of at least `min_tail * window` steps is a window of its own;
4. copies: beside each clean window, `copies` noisy ones: a random crop keeping a share in
   [crop_min, 1] of the steps, every AU scaled by one factor in [1 - scale, 1 + scale], Gaussian
   noise of std `noise_std` (AU units), clipped to 0-5.
Everything random derives from `base.seed` and the clip's id, so a clip's sequences do not change
when other clips come or go.

Defaults for `frames.fps = 8` (a default clip has 48-80 AU frames): PerFeX's recipe is taken to
be at 30 fps (clips under 700 frames; a 2x-decimated copy at 15 fps; 100-frame windows of the
30 fps series = 3.3 s; a 5-frame = 0.17 s shift; its code states no frame rate). At 8 fps a
48-step window is 6 s, longer than PerFeX's, and a 1-step shift 0.125 s; decimation by 2 (4 fps)
is kept as a coarser view. Use `window: 100, shifts: [0, 5]` for 30 fps OpenFace input.

Output data/augmented/ (Parquet shards): video_id, aug_id ("d<f>p<phase>s<shift>w<window>c<copy>"),
frame_idx (step within the sequence), t (the source frame's time), AU01_r ... AU45_r.
"""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (ArtifactWriter, BaseParams, StageInputError, atomic_write_json,
                           get_logger, progress, read_artifact, repo_root, run_stage)
from personality.schemas import AU_INTENSITY

log = get_logger("augment")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    decimate: list[int] = dataclasses.field(default_factory=lambda: [1, 2])  # factors; f phases each
    shifts: list[int] = dataclasses.field(default_factory=lambda: [0, 1])  # steps, edge-padded
    window: int = 30  # steps per window (6 s at 5 fps; PerFeX: 100 frames, 3.3 s at 30 fps)
    min_tail: float = 0.5  # keep a trailing remainder of >= this share of a window
    copies: int = 2  # noisy copies per clean window
    noise_std: float = 0.05  # Gaussian noise, AU intensity units (0-5 scale)
    scale: float = 0.1  # intensity scaling factor drawn from [1 - scale, 1 + scale]
    crop_min: float = 0.8  # random crop keeps a share in [crop_min, 1] of a window's steps
    rows_per_shard: int = 50000


def check_params(p: AugmentParams) -> None:
    if not p.decimate or any(f < 1 for f in p.decimate):
        raise StageInputError(f"augment.decimate: {p.decimate} must be factors >= 1")
    if not p.shifts or any(s < 0 for s in p.shifts):
        raise StageInputError(f"augment.shifts: {p.shifts} must be steps >= 0")
    if p.window < 1:
        raise StageInputError(f"augment.window: {p.window} must be >= 1")
    if not 0 < p.min_tail <= 1:
        raise StageInputError(f"augment.min_tail: {p.min_tail} must be in (0, 1]")
    if p.copies < 0 or p.noise_std < 0 or not 0 <= p.scale < 1:
        raise StageInputError("augment: copies and noise_std must be >= 0, scale in [0, 1)")
    if not 0 < p.crop_min <= 1:
        raise StageInputError(f"augment.crop_min: {p.crop_min} must be in (0, 1]")


# --------------------------------------------------------------------------------------------------
# pure functions on one clip: x (T, 17) float, t (T,) seconds


def shift_edge(x: np.ndarray, s: int) -> np.ndarray:
    """Delay by s steps, repeating the first row: out[i] = x[max(i - s, 0)]. Same length."""
    if s <= 0 or len(x) == 0:
        return x
    idx = np.maximum(np.arange(len(x)) - s, 0)
    return x[idx]


def window_starts(n: int, window: int, min_tail: float) -> list[tuple[int, int]]:
    """(start, stop) of non-overlapping windows over n steps; n <= window gives one window."""
    if n <= window:
        return [(0, n)] if n > 0 else []
    spans = [(s, s + window) for s in range(0, n - window + 1, window)]
    rest = n - spans[-1][1]
    if rest > 0 and rest >= min_tail * window:
        spans.append((spans[-1][1], n))
    return spans


def perturb(x: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> tuple[np.ndarray, slice]:
    """A noisy copy of one window: random crop, per-sequence scaling, Gaussian noise, clip 0-5.
    Returns the values and the slice of the window it kept. NaN stays NaN."""
    n = len(x)
    keep = max(1, int(round(n * rng.uniform(p.crop_min, 1.0))))
    start = int(rng.integers(0, n - keep + 1))
    y = x[start:start + keep] * rng.uniform(1 - p.scale, 1 + p.scale)
    y = y + rng.normal(0.0, p.noise_std, size=y.shape) if p.noise_std > 0 else y
    return np.clip(y, 0.0, 5.0), slice(start, start + keep)


def augment_clip(x: np.ndarray, t: np.ndarray, p: AugmentParams,
                 rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every augmented sequence of one clip: [(aug_id, values (L, 17), t (L,)), ...]."""
    out = []
    for f in sorted(set(p.decimate)):
        for phase in range(f):
            xd, td = x[phase::f], t[phase::f]
            for s in sorted(set(p.shifts)):
                xs, ts = shift_edge(xd, s), shift_edge(td, s)
                for w, (a, b) in enumerate(window_starts(len(xs), p.window, p.min_tail)):
                    base = f"d{f}p{phase}s{s}w{w}"
                    out.append((f"{base}c0", xs[a:b], ts[a:b]))
                    for c in range(1, p.copies + 1):
                        y, kept = perturb(xs[a:b], rng, p)
                        out.append((f"{base}c{c}", y, ts[a:b][kept]))
    return out


def clip_rng(seed: int, video_id: str) -> np.random.Generator:
    """The clip's own generator: from base.seed and a stable hash of its id."""
    return np.random.default_rng([seed, 11, zlib.crc32(video_id.encode())])


# --------------------------------------------------------------------------------------------------
# stage


def run(params: AugmentParams, base: BaseParams, root: Path | None = None) -> dict:
    """data/aus of the manifest's train clips -> data/augmented under `root`; returns the summary
    written to metrics/augment.json."""
    root = root or repo_root()
    check_params(params)
    manifest = read_artifact("manifest", path=root / schemas.ARTIFACTS["manifest"].path)
    train_ids = set(manifest.loc[manifest["split"] == "train", "video_id"])
    aus = read_artifact("aus", path=root / schemas.ARTIFACTS["aus"].path)
    aus = aus[aus["video_id"].isin(train_ids)].sort_values(["video_id", "frame_idx"],
                                                           kind="stable")
    missing = sorted(train_ids - set(aus["video_id"]))
    if missing:
        log.warning("%d train clips have no AU frames (e.g. %s); skipped", len(missing),
                    missing[0])
    n_seq = n_rows = 0
    groups = list(aus.groupby("video_id", sort=True))
    with ArtifactWriter("augmented", path=root / schemas.ARTIFACTS["augmented"].path,
                        rows_per_shard=params.rows_per_shard) as out, \
            progress(total=len(groups), desc="augment", unit="clip") as bar:
        for vid, df in groups:
            x = df[list(AU_INTENSITY)].to_numpy(np.float64)  # (T, 17)
            t = df["t"].to_numpy(np.float64)  # (T,)
            seqs = augment_clip(x, t, params, clip_rng(base.seed, vid))
            frames = []
            for aug_id, values, times in seqs:
                frames.append(pd.DataFrame({
                    "video_id": vid, "aug_id": aug_id,
                    "frame_idx": np.arange(len(values), dtype=np.int64), "t": times,
                    **{a: values[:, k] for k, a in enumerate(AU_INTENSITY)}}))
            if frames:
                table = pd.concat(frames, ignore_index=True)
                out.write(table)
                n_rows += len(table)
                n_seq += len(seqs)
            bar.update(1)
    summary = {"n_train_clips": len(groups), "n_missing_clips": len(missing),
               "n_sequences": n_seq, "n_rows": n_rows,
               "sequences_per_clip": round(n_seq / len(groups), 2) if groups else 0.0}
    atomic_write_json(root / "metrics" / "augment.json", summary)
    log.info("augment: %d train clips -> %d sequences (%d rows)", len(groups), n_seq, n_rows)
    return summary


def main(argv: list[str] | None = None) -> None:
    run_stage("augment", AugmentParams, run)  # a bad param: one line naming it, exit 2


if __name__ == "__main__":
    main()
