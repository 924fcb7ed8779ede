"""Video-level metrics for Big-Five predictions: regression scores, PerFeX's 5-bin view, baselines.

Pure numpy (no torch, no sklearn at run time), so `evaluate`, `retrain` and the predict CLI share
one definition. Arrays are `(n_videos, 5)`, columns in `personality.schemas.TRAITS` order (O, C, E, A, N),
scores in [0, 1]. Argument order follows sklearn: `y_true` first, then `y_pred`.

    from models.metrics import regression_metrics, bin_metrics, baseline_metrics

    m = regression_metrics(y_true, y_pred)           # {"O": {"acc", "mae", "mse", "pcc", "ccc", "r2"},
                                                      #  ..., "mean": {...}}
    b = bin_metrics(y_true, y_pred, proba=proba)     # {"O": {"accuracy", "precision", "recall",
                                                      #  "auc"}, ..., "mean": {...}}
    base = baseline_metrics(train_targets, y_true)   # the same dict for the train-mean predictor
    atomic_write_json("metrics/test.json", json_safe({"model": m, "baseline": base}))

Definitions (per trait, on the rows whose target is not NaN):

- ACC = 1 - MAE (ChaLearn First Impressions). A constant scores ~0.88-0.89 there: always report it
  beside `baseline_metrics`, and read CCC / R² for skill.
- PCC: Pearson's r. NaN when either side is constant or fewer than 2 rows (undefined; scipy agrees).
- CCC: Lin's concordance, population (ddof=0) moments:
  2 cov / (var_true + var_pred + (mean_true - mean_pred)²). A constant prediction scores 0 (cov = 0),
  which is why the train-mean baseline has CCC 0 but a NaN PCC. NaN only when both sides are the
  same constant (0/0) or there is no labelled row.
- R² = 1 - SS_res / SS_tot. NaN when the target is constant (sklearn returns 0 or 1 there instead).
- 5-bin view: bin = floor(4p) clipped to 0-4 (PerFeX; for Likert-derived p = (L - 1) / 4 the bin is
  exactly L - 1). Accuracy, macro precision / recall with sklearn's semantics (labels = those present
  in y_true or y_pred, zero_division=0), one-vs-rest macro AUC from per-bin probabilities
  `(n, 5 traits, 5 bins)`, averaged over the bins that occur in y_true (sklearn refuses a bin that
  does not occur; we skip it; NaN when fewer than 2 bins occur).

"mean" is the plain mean over traits: a NaN in one trait makes the mean NaN, so an undefined metric
is never averaged away silently. Values are Python floats; `json_safe` turns NaN into null for
strict JSON readers (Python's json, DVC and MLflow accept NaN as is).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from personality.ccc import ccc as concordance
from personality.schemas import TRAITS

__all__ = [
    "MetricsError", "N_BINS", "to_bins", "bin_values",
    "mae", "acc", "mse", "pcc", "ccc", "r2",
    "accuracy", "macro_precision", "macro_recall", "roc_auc_ovr",
    "regression_metrics", "bin_metrics",
    "train_mean_baseline", "baseline_metrics", "majority_class_accuracy", "split_scores",
    "json_safe", "null_acc",
]

N_BINS = 5
REGRESSION_KEYS = ("acc", "mae", "mse", "pcc", "ccc", "r2")
BIN_KEYS = ("accuracy", "precision", "recall", "auc")


class MetricsError(ValueError):
    """Inputs that cannot be scored (wrong shape, NaN predictions). The message names the problem."""


# --------------------------------------------------------------------------------------------------
# input checks


def _as_matrix(a: Any, name: str, n_traits: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_traits:
        raise MetricsError(f"{name} must have shape (n_videos, {n_traits}), got {arr.shape}")
    return arr


def _pair(y_true: Any, y_pred: Any, n_traits: int) -> tuple[np.ndarray, np.ndarray]:
    t = _as_matrix(y_true, "y_true", n_traits)
    p = _as_matrix(y_pred, "y_pred", n_traits)
    if t.shape != p.shape:
        raise MetricsError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    return t, p


def _vectors(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-D float arrays with the rows of NaN targets dropped. A NaN prediction for a labelled row
    is a model fault, not missing data: refuse it rather than score around it."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1:
        raise MetricsError(f"expected 1-D arrays, got y_true {t.shape} and y_pred {p.shape}")
    if t.shape != p.shape:
        raise MetricsError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    keep = ~np.isnan(t)
    t, p = t[keep], p[keep]
    if not np.all(np.isfinite(p)):
        bad = int(np.flatnonzero(~np.isfinite(p))[0])
        raise MetricsError(f"y_pred is not finite ({p[bad]}) at labelled row {bad}")
    return t, p


# --------------------------------------------------------------------------------------------------
# regression metrics on one trait (1-D arrays)


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error over rows with a target; NaN when none."""
    t, p = _vectors(y_true, y_pred)
    return float(np.mean(np.abs(p - t))) if t.size else math.nan


def acc(y_true: Any, y_pred: Any) -> float:
    """ChaLearn's accuracy, 1 - MAE."""
    return 1.0 - mae(y_true, y_pred)


def mse(y_true: Any, y_pred: Any) -> float:
    t, p = _vectors(y_true, y_pred)
    return float(np.mean((p - t) ** 2)) if t.size else math.nan


def pcc(y_true: Any, y_pred: Any) -> float:
    """Pearson's r; NaN when either side is constant or fewer than 2 rows (r is undefined)."""
    t, p = _vectors(y_true, y_pred)
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:  # exact test: the mean of equal floats
        return math.nan                                  # can differ from them in the last bit
    dt, dp = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(np.sum(dt * dt)) * float(np.sum(dp * dp)))
    if denom == 0.0:
        return math.nan
    # clip: rounding can push |r| a hair past 1 for perfectly (anti-)correlated inputs
    return float(np.clip(np.sum(dt * dp) / denom, -1.0, 1.0))


def ccc(y_true: Any, y_pred: Any) -> float:
    """Lin's concordance correlation coefficient with population (ddof=0) moments.

    0 for a constant prediction of a varying target; NaN when both are constant (0/0) or empty.
    """
    return concordance(*_vectors(y_true, y_pred))  # personality/ccc.py: the one definition


def r2(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot; NaN for a constant (or absent) target."""
    t, p = _vectors(y_true, y_pred)
    if t.size == 0:
        return math.nan
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((t - p) ** 2)) / ss_tot


_REGRESSION_FNS = {"acc": acc, "mae": mae, "mse": mse, "pcc": pcc, "ccc": ccc, "r2": r2}


def regression_metrics(y_true: Any, y_pred: Any, *,
                       traits: Sequence[str] = TRAITS) -> dict[str, dict[str, float]]:
    """ACC, MAE, MSE, PCC, CCC, R² per trait and their mean over traits.

    y_true, y_pred: (n_videos, len(traits)); NaN targets drop that row for that trait only.
    Returns {trait: {"acc", "mae", "mse", "pcc", "ccc", "r2"}, ..., "mean": {...}}.
    """
    t, p = _pair(y_true, y_pred, len(traits))
    out: dict[str, dict[str, float]] = {}
    for j, trait in enumerate(traits):
        try:
            out[trait] = {k: fn(t[:, j], p[:, j]) for k, fn in _REGRESSION_FNS.items()}
        except MetricsError as exc:
            raise MetricsError(f"trait {trait}: {exc}") from None
    out["mean"] = _mean_over(out, traits, REGRESSION_KEYS)
    return out


def _mean_over(per_trait: dict, traits: Sequence[str], keys: Sequence[str]) -> dict[str, float]:
    # a plain mean, not nanmean: an undefined trait metric must show, not shrink the average
    return {k: float(np.mean([per_trait[tr][k] for tr in traits])) for k in keys}


# --------------------------------------------------------------------------------------------------
# PerFeX's 5-bin view


def to_bins(p: Any) -> np.ndarray:
    """PerFeX's classes: floor(4p) clipped to 0-4, any shape; int64. NaN is not allowed here."""
    arr = np.asarray(p, dtype=np.float64)
    if np.isnan(arr).any():
        raise MetricsError("to_bins got NaN scores; drop unlabelled rows first")
    return np.clip(np.floor(4.0 * arr), 0, N_BINS - 1).astype(np.int64)


def bin_values() -> np.ndarray:
    """The [0, 1] score each bin stands for: the middle of the interval that `to_bins` maps to it.

    floor(4p) gives bin k for p in [k/4, (k+1)/4), so bins 0-3 stand for (k + 0.5) / 4 and bin 4 (only
    p = 1) for 1.0. These round-trip, `to_bins(bin_values()) == [0, 1, 2, 3, 4]`, which the classification
    head's decoding relies on. ((k + 0.5) / 5 would not: bin 3 would decode to 0.7, i.e. bin 2.)
    """
    return np.array([0.125, 0.375, 0.625, 0.875, 1.0])


def _labels_1d(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricsError(f"{name} must be 1-D class labels, got shape {arr.shape}")
    return arr.astype(np.int64)


def accuracy(y_true_bins: Any, y_pred_bins: Any) -> float:
    t, p = _labels_1d(y_true_bins, "y_true"), _labels_1d(y_pred_bins, "y_pred")
    if t.shape != p.shape:
        raise MetricsError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    return float(np.mean(t == p)) if t.size else math.nan


def _macro(y_true_bins: Any, y_pred_bins: Any, which: str) -> float:
    t, p = _labels_1d(y_true_bins, "y_true"), _labels_1d(y_pred_bins, "y_pred")
    if t.shape != p.shape:
        raise MetricsError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    if t.size == 0:
        return math.nan
    scores = []
    for label in np.union1d(t, p):  # sklearn's default labels: present in either side
        tp = np.sum((p == label) & (t == label))
        denom = np.sum(p == label) if which == "precision" else np.sum(t == label)
        scores.append(tp / denom if denom else 0.0)  # zero_division=0
    return float(np.mean(scores))


def macro_precision(y_true_bins: Any, y_pred_bins: Any) -> float:
    """sklearn `precision_score(average="macro", zero_division=0)` on integer labels."""
    return _macro(y_true_bins, y_pred_bins, "precision")


def macro_recall(y_true_bins: Any, y_pred_bins: Any) -> float:
    """sklearn `recall_score(average="macro", zero_division=0)` on integer labels."""
    return _macro(y_true_bins, y_pred_bins, "recall")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (scipy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    # Mann-Whitney: AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg);
    # average ranks count a tie between a positive and a negative as one half
    n_pos = int(is_pos.sum())
    n_neg = is_pos.size - n_pos
    ranks = _average_ranks(score)
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true_bins: Any, proba: Any) -> float:
    """Macro one-vs-rest ROC AUC. y_true_bins: (n,) ints in 0..K-1; proba: (n, K) per-bin scores.

    Bins absent from y_true have no AUC and are skipped (sklearn raises there); NaN when fewer than
    two bins occur. Equals sklearn's `roc_auc_score(multi_class="ovr", average="macro")` when every
    bin occurs.
    """
    t = _labels_1d(y_true_bins, "y_true")
    s = np.asarray(proba, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise MetricsError(f"proba must have shape ({t.shape[0]}, n_bins), got {s.shape}")
    if t.size and (t.min() < 0 or t.max() >= s.shape[1]):
        raise MetricsError(f"y_true has a bin outside 0..{s.shape[1] - 1}: {t.min()}..{t.max()}")
    present = np.unique(t)
    if present.size < 2:
        return math.nan
    return float(np.mean([_binary_auc(t == k, s[:, k]) for k in present]))


def bin_metrics(y_true: Any, y_pred: Any, *, proba: Any = None,
                traits: Sequence[str] = TRAITS) -> dict[str, dict[str, float]]:
    """PerFeX's 5-bin view of [0, 1] scores: accuracy, macro precision / recall, OvR AUC.

    y_true, y_pred: (n_videos, len(traits)) scores in [0, 1], binned by `to_bins`.
    proba: optional (n_videos, len(traits), 5) per-bin probabilities; "auc" is NaN without it.
    NaN targets drop that row for that trait. Returns {trait: {"accuracy", "precision", "recall",
    "auc"}, ..., "mean": {...}}.
    """
    t, p = _pair(y_true, y_pred, len(traits))
    s = None
    if proba is not None:
        s = np.asarray(proba, dtype=np.float64)
        if s.shape != (t.shape[0], len(traits), N_BINS):
            raise MetricsError(f"proba must have shape ({t.shape[0]}, {len(traits)}, {N_BINS}), "
                               f"got {s.shape}")
    out: dict[str, dict[str, float]] = {}
    for j, trait in enumerate(traits):
        keep = ~np.isnan(t[:, j])
        if not np.all(np.isfinite(p[keep, j])):
            raise MetricsError(f"trait {trait}: y_pred is not finite at a labelled row")
        tb, pb = to_bins(t[keep, j]), to_bins(p[keep, j])
        out[trait] = {
            "accuracy": accuracy(tb, pb),
            "precision": macro_precision(tb, pb),
            "recall": macro_recall(tb, pb),
            "auc": roc_auc_ovr(tb, s[keep, j, :]) if s is not None else math.nan,
        }
    out["mean"] = _mean_over(out, traits, BIN_KEYS)
    return out


# --------------------------------------------------------------------------------------------------
# baselines


def train_mean_baseline(train_targets: Any, n_rows: int, *,
                        traits: Sequence[str] = TRAITS) -> np.ndarray:
    """(n_rows, len(traits)): every row predicts the per-trait mean of the train targets (NaN-aware).

    A trait with no train label at all cannot have a baseline: MetricsError names it.
    """
    tr = _as_matrix(train_targets, "train_targets", len(traits))
    counts = np.sum(~np.isnan(tr), axis=0)
    if np.any(counts == 0):
        raise MetricsError(f"no train labels for trait {traits[int(np.flatnonzero(counts == 0)[0])]}")
    means = np.nansum(tr, axis=0) / counts
    return np.tile(means, (int(n_rows), 1))


def baseline_metrics(train_targets: Any, y_true: Any, *,
                     traits: Sequence[str] = TRAITS) -> dict[str, dict[str, float]]:
    """`regression_metrics` of the train-mean predictor on y_true: the floor a model must beat.
    Its PCC is NaN (constant prediction) and its CCC 0 by definition."""
    t = _as_matrix(y_true, "y_true", len(traits))
    return regression_metrics(t, train_mean_baseline(train_targets, t.shape[0], traits=traits),
                              traits=traits)


def majority_class_accuracy(train_targets: Any, y_true: Any, *,
                            traits: Sequence[str] = TRAITS) -> dict[str, dict[str, float]]:
    """The 5-bin baseline: predict each trait's most frequent train bin (ties -> the lower bin).

    Returns {trait: {"accuracy", "majority_bin"}, ..., "mean": {"accuracy"}}.
    """
    tr = _as_matrix(train_targets, "train_targets", len(traits))
    t = _as_matrix(y_true, "y_true", len(traits))
    out: dict[str, dict[str, float]] = {}
    for j, trait in enumerate(traits):
        train_bins = to_bins(tr[~np.isnan(tr[:, j]), j])
        if train_bins.size == 0:
            raise MetricsError(f"no train labels for trait {trait}")
        majority = int(np.argmax(np.bincount(train_bins, minlength=N_BINS)))  # argmax: first max
        test_bins = to_bins(t[~np.isnan(t[:, j]), j])
        out[trait] = {"accuracy": float(np.mean(test_bins == majority)) if test_bins.size
                      else math.nan, "majority_bin": majority}
    out["mean"] = _mean_over(out, traits, ("accuracy",))
    return out


def split_scores(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None,
                 train_targets: np.ndarray | None) -> dict:
    """One split's metrics (train's metrics/train/<name>.json): the model's, beside the
    train-mean / majority-bin baselines ({} for them without `train_targets`: a baseline from
    other labels would be no baseline). {} for a split without labels."""
    if len(y_true) == 0 or np.isnan(y_true).all():
        return {}
    reg = regression_metrics(y_true, y_pred)
    bins = bin_metrics(y_true, y_pred, proba=proba)
    baseline = {}
    if train_targets is not None:  # only labelled train rows (rows are labelled all or none)
        train_targets = train_targets[~np.isnan(train_targets).any(axis=1)]
    if train_targets is not None and len(train_targets):
        base = baseline_metrics(train_targets, y_true)
        baseline = {**{k: base["mean"][k] for k in ("ccc", "mae", "acc", "mse", "r2")},
                    "bin_accuracy": majority_class_accuracy(train_targets,
                                                            y_true)["mean"]["accuracy"]}
    return {
        "n": int(len(y_true)),
        "model": {**reg["mean"], **{f"ccc_{t}": reg[t]["ccc"] for t in TRAITS},
                  "bin_accuracy": bins["mean"]["accuracy"], "bin_precision": bins["mean"]["precision"],
                  "bin_recall": bins["mean"]["recall"], "bin_auc": bins["mean"]["auc"]},
        "baseline": baseline,
        "per_trait": {t: {**reg[t], "bin_accuracy": bins[t]["accuracy"]} for t in TRAITS},
    }


def json_safe(obj: Any) -> Any:
    """A copy of nested dicts / lists with NaN and ±inf as None and numpy scalars as Python ones,
    for strict JSON consumers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def null_acc(metrics: dict) -> None:
    """ACC set to NaN (null in the JSON) in every trait's and the mean's figures of `metrics`:
    on z-scored labels 1 - MAE means nothing (stages/evaluate.py)."""
    for value in metrics.values():
        if isinstance(value, dict) and "acc" in value:
            value["acc"] = math.nan
