"""Uncertainty of video-level metrics: a bootstrap over *subjects*, and paired model comparisons.

The clips of one person are not independent (same face, same voice), so resampling clips would
make intervals too narrow. Each resample draws as many subjects as the split has, with
replacement, and takes every clip of each drawn subject. Every model is scored on the *same*
resamples, so the difference between two models is paired: "p_better" is the share of resamples
in which one model's mean CCC beats the other's (0.5 = indistinguishable; ties count half).

    from models.bootstrap import subject_resamples, bootstrap_scores, interval, paired

    rows = subject_resamples(subject_ids, n_boot=1000, seed=1234)    # list of (m_b,) row indices
    s = bootstrap_scores(y_true, {"a": pred_a, "b": pred_b}, rows)   # {"a": {"ccc": (B, 5), ...}}
    lo, hi = interval(s["a"]["ccc"].mean(axis=1), level=0.95)       # mean CCC over traits
    cmp = paired(s["a"], s["b"])                                     # {"p_better", "delta_ccc"}

Arrays: y_true and predictions are (n_videos, 5) in TRAITS order; a NaN target (or a NaN
prediction: a video the model has no input for) drops that row for that trait only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from models.metrics import ccc, mae

__all__ = ["subject_resamples", "bootstrap_scores", "interval", "paired", "model_uncertainty"]

METRICS = ("ccc", "mae")


def subject_resamples(subjects: Sequence, *, n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` cluster-bootstrap resamples of row indices: subjects drawn with replacement, all
    rows of each drawn subject taken. subjects: (n,) the subject of each row."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    uniq, inverse = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    return [np.concatenate([rows_of[k] for k in draw]) for draw in draws]


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-trait CCC and MAE of one resample: {"ccc": (5,), "mae": (5,)}."""
    out = {m: np.full(y_true.shape[1], np.nan) for m in METRICS}
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j]) & ~np.isnan(y_pred[:, j])  # NaN pred: no prediction
        if keep.any():
            out["ccc"][j] = ccc(y_true[keep, j], y_pred[keep, j])
            out["mae"][j] = mae(y_true[keep, j], y_pred[keep, j])
    return out


def bootstrap_scores(y_true: np.ndarray, predictions: dict[str, np.ndarray],
                     resamples: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per model, per resample and trait: {"model": {"ccc": (B, 5), "mae": (B, 5)}}."""
    out = {}
    for name, y_pred in predictions.items():
        per = [_scores(y_true[rows], y_pred[rows]) for rows in resamples]
        out[name] = {m: np.stack([p[m] for p in per]) for m in METRICS}
    return out


def interval(samples: np.ndarray, *, level: float = 0.95) -> list[float]:
    """The central `level` percentile interval of (B,) samples (NaN resamples ignored)."""
    tail = (1.0 - level) / 2.0 * 100.0
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, level: float = 0.95) -> dict:
    """Model a against model b on the same resamples, by mean CCC over traits:
    {"p_better": share of resamples with a > b (ties half), "delta_ccc": [lo, hi] of a - b,
     "p_lower_mae": share with a's mean MAE below b's}."""
    ca, cb = a["ccc"].mean(axis=1), b["ccc"].mean(axis=1)  # (B,)
    ok = np.isfinite(ca) & np.isfinite(cb)
    ma, mb = a["mae"].mean(axis=1), b["mae"].mean(axis=1)
    if not ok.any():
        return {"p_better": float("nan"), "delta_ccc": [float("nan")] * 2,
                "p_lower_mae": float("nan")}
    fine = np.isfinite(ma) & np.isfinite(mb)  # a NaN resample is no vote either way
    wins = _share_below(cb[ok], ca[ok])
    lower = _share_below(ma[fine], mb[fine]) if fine.any() else float("nan")
    return {"p_better": float(wins), "delta_ccc": interval(ca - cb, level=level),
            "p_lower_mae": float(lower)}


def _share_below(x: np.ndarray, y: np.ndarray) -> float:
    """Share of resamples with x < y, a tie counting half. Values within 1e-9 tie: the same
    predictions summed in another order (a model against its own refit) differ in the last bits,
    and those bits must not decide a "better in" share."""
    tie = np.isclose(x, y, rtol=0.0, atol=1e-9)
    return float(np.mean((x < y) & ~tie) + 0.5 * np.mean(tie))


def model_uncertainty(samples: dict[str, np.ndarray], traits: Sequence[str], *,
                      level: float = 0.95) -> dict:
    """Intervals of one model's bootstrap samples: {trait: {"ccc": [lo, hi], "mae": [lo, hi]},
    ..., "mean": {...}}."""
    out = {t: {m: interval(samples[m][:, j], level=level) for m in METRICS}
           for j, t in enumerate(traits)}
    out["mean"] = {m: interval(samples[m].mean(axis=1), level=level) for m in METRICS}
    return out
