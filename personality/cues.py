"""Per-video statistics of the visual front-end that read the default dataset's latent cues.

One definition, used by the cue-recovery test, docs/frontend.md's table and any per-video
summary (functionals): each synthetic visual cue (personality/synthetic.py: VISUAL_CUES) has one
documented statistic of data/aus and data/faces. On real media the same numbers are ordinary
behavioural descriptors (smile share, blink rate, brow activity, head movement).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# cue -> what its statistic is (docs/frontend.md prints this table)
CUE_STATISTICS = {
    "smile": "share of face frames with AU12_c",
    "brow_raise": "mean of AU01_r minus its 25th percentile (activity above the clip's calm level)",
    "brow_lower": "90th minus 10th percentile of AU04_r",
    "blink_rate": "AU45 onsets (AU45_r rising through 0.5) per second of video",
    "head_motion": "standard deviation of yaw (degrees) over face frames",
}
BLINK_ONSET = 0.5  # AU45_r level whose upward crossings count as blinks


def onsets(x: np.ndarray, threshold: float) -> int:
    """Upward crossings of `threshold` in x (n,), NaN counted as below; a run that starts at the
    first sample counts once."""
    on = np.nan_to_num(np.asarray(x, np.float64), nan=-np.inf) >= threshold
    return int(on[0]) + int((on[1:] & ~on[:-1]).sum()) if len(on) else 0


def _one_video(aus: pd.DataFrame, faces: pd.DataFrame, duration: float) -> dict[str, float]:
    aus = aus.sort_values("frame_idx")
    ok = aus["success"].to_numpy(bool)
    a = aus[ok]
    if not len(a):
        return {c: np.nan for c in CUE_STATISTICS}
    au01, au04 = a["AU01_r"].to_numpy(), a["AU04_r"].to_numpy()
    yaw = faces.loc[faces["face_found"].to_numpy(bool), "yaw"].to_numpy(np.float64)
    return {
        "smile": float(np.nanmean(a["AU12_c"].to_numpy())),
        "brow_raise": float(np.nanmean(au01) - np.nanquantile(au01, 0.25)),
        "brow_lower": float(np.nanquantile(au04, 0.9) - np.nanquantile(au04, 0.1)),
        "blink_rate": onsets(aus["AU45_r"].to_numpy(), BLINK_ONSET) / max(duration, 1e-9),
        "head_motion": float(np.nanstd(yaw)) if len(yaw) > 1 else np.nan,
    }


def cue_statistics(aus: pd.DataFrame, faces: pd.DataFrame,
                   durations: pd.Series | dict | None = None) -> pd.DataFrame:
    """Per video (index video_id), one column per visual cue: the statistic CUE_STATISTICS names.

    `aus`: rows of data/aus; `faces`: rows of data/faces (video_id, face_found, yaw are enough);
    `durations`: seconds per video_id (the manifest's duration_s); without it, the span of `t`
    plus one sampling step."""
    rows = {}
    faces_by = dict(tuple(faces.groupby("video_id", sort=False)))
    for vid, a in aus.groupby("video_id", sort=True):
        if durations is not None:
            duration = float(durations[vid])
        else:
            t = np.sort(a["t"].to_numpy(np.float64))
            duration = float(t[-1] - t[0] + (np.median(np.diff(t)) if len(t) > 1 else 0.0))
        f = faces_by.get(vid, faces.iloc[:0])
        rows[vid] = _one_video(a, f, duration)
    out = pd.DataFrame.from_dict(rows, orient="index", columns=list(CUE_STATISTICS))
    out.index.name = "video_id"
    return out


def recovery(stats: pd.DataFrame, cues: pd.DataFrame) -> pd.Series:
    """Pearson r per cue between `stats` (cue_statistics) and the latent cues (data/
    synthetic_cues.parquet: video_id, cue_<name>), over the videos both have."""
    c = cues.set_index("video_id") if "video_id" in cues.columns else cues
    ids = stats.index.intersection(c.index)
    return pd.Series({k: float(np.corrcoef(stats.loc[ids, k].astype(float),
                                           c.loc[ids, f"cue_{k}"].astype(float))[0, 1])
                      for k in stats.columns if f"cue_{k}" in c.columns}, name="r")
