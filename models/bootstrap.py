"""Uncertainty of video-level metrics: a bootstrap over *subjects*, and paired model comparisons.

The clips of one person are not independent (same face, same voice), so resampling clips would
make intervals too narrow. Each resample draws as many subjects as the split has, with
replacement, and takes every clip of each drawn subject. Every model is scored on the *same*
resamples, so the difference between two models is paired: "p_better" is the share of resamples
in which one model's mean CCC beats the other's (0.5 = indistinguishable; ties count half).

Four intervals (`method`):
- "fisher_z" (the default): a CCC's interval on Fisher's z scale, atanh, as Lin (1989,
  Biometrics 45:255) gives it, with the standard error from the subject resamples and their bias
  removed: tanh(2 atanh(estimate) - mean atanh(CCC*) -+ t_q sd atanh(CCC*)), t_q Student's
  quantile with S - 1 degrees of freedom for S subjects (the jackknife's count). An MAE gets the
  same on the log scale (it stays positive), a difference of two models' CCCs on its own scale.
  It needs the estimate on all rows.
- "percentile": the resamples' central `level` share. For a CCC above 0 it sits low: CCC is
  biased down in a small sample, and more so in a resample (which repeats subjects).
- "bca": Efron's bias-corrected and accelerated interval (Efron 1987, JASA 82:171; Efron &
  Tibshirani 1993, ch. 14.3): the tails are moved by z0, the normal quantile of the share of
  resamples below the estimate on all clips, and stretched by the acceleration a, the skewness of
  the statistic over a leave-one-*subject*-out jackknife (subjects are the resampling unit).
- "bootstrap_t": the studentised bootstrap (Efron & Tibshirani 1993, ch. 12) on the same scales:
  each resample's deviation from the estimate divided by that resample's own standard error, a
  jackknife over its subject draws (one copy of a drawn subject left out at a time), and the
  estimate's standard error from the jackknife over subjects: f(estimate) - t*(1 - tail) se ..
  f(estimate) - t*(tail) se. It also needs `bootstrap_scores(..., subjects=subjects)`, which
  scores every resample S more times. A resample of one person drawn again and again has a
  standard error of 0 and an unbounded pivot; where such resamples reach the tail (2-4
  subjects, or a trait labelled for few of them) there is no interval (NaN). In the bench's
  simulations, with heavy-tailed traits it covers the mean CCC of a model better than fisher_z,
  at 1.1-1.5x its width with 8 subjects (docs/evaluation.md).
Every method but percentile needs `bootstrap_scores(..., jackknife=subject_jackknife(subjects))`.
bench/interval_coverage.py measures them on simulated splits like the default one: with 8
subjects, a nominal 95% interval of the mean CCC covers a true CCC of 0 / 0.31 / 0.62 / 0.74 in
0.92 / 0.66 / 0.43 / 0.31 of splits (percentile), 0.84 / 0.77 / 0.58 / 0.48 (BCa) and
0.91 / 0.91 / 0.94 / 0.94 (fisher_z; 0.85 / 0.85 / 0.90 / 0.91 with the normal quantile in
place of t); with 34 subjects fisher_z gives 0.92-0.96.

    from models.bootstrap import subject_resamples, subject_jackknife, bootstrap_scores, paired

    rows = subject_resamples(subject_ids, n_boot=1000, seed=1234)    # list of (m_b,) row indices
    s = bootstrap_scores(y_true, {"a": pred_a, "b": pred_b}, rows,   # {"a": {"ccc": (B, 5), ...,
                         jackknife=subject_jackknife(subject_ids))   #  "point", "jack"}}
    ci = model_uncertainty(s["a"], "OCEAN")                           # {"O": {"ccc": [lo, hi]}}
    cmp = paired(s["a"], s["b"])                                      # {"p_better", "delta_ccc"}

Arrays: y_true and predictions are (n_videos, 5) in TRAITS order; a NaN target (or a NaN
prediction: a video the model has no input for) drops that row for that trait only. Compare two
models on the clips both predict (`common_clips`): otherwise the difference is not paired.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

from models.metrics import ccc, mae

__all__ = ["subject_resamples", "subject_jackknife", "bootstrap_scores", "interval",
           "acceleration", "paired", "model_uncertainty", "common_clips", "subjects_for",
           "METHODS", "DEFAULT_METHOD", "SCALES"]

METRICS = ("ccc", "mae")
METHODS = ("fisher_z", "percentile", "bca", "bootstrap_t")
DEFAULT_METHOD = "fisher_z"  # covers best at 8 subjects: bench/interval_coverage.py
R_MAX = 1.0 - 1e-9  # |CCC| is clipped below 1 before atanh (a perfect resample is finite on z)
_NORMAL = NormalDist()
TIE = 1e-9  # statistics closer than this are equal: the same sums in another order differ in bits


def subject_resamples(subjects: Sequence, *, n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` cluster-bootstrap resamples of row indices: subjects drawn with replacement, all
    rows of each drawn subject taken. subjects: (n,) the subject of each row."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    uniq, inverse = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    return [np.concatenate([rows_of[k] for k in draw]) for draw in draws]


def subject_jackknife(subjects: Sequence) -> list[np.ndarray]:
    """Leave-one-subject-out row indices: one (n - n_k,) array per subject k (subject_resamples'
    order), every row but subject k's. subjects: (n,) the subject of each row."""
    uniq, inverse = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    return [np.flatnonzero(inverse != k) for k in range(len(uniq))]


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
                     resamples: list[np.ndarray], *, jackknife: list[np.ndarray] | None = None,
                     subjects: Sequence | None = None) -> dict[str, dict]:
    """Per model, per resample and trait: {"model": {"ccc": (B, 5), "mae": (B, 5)}}. With
    `jackknife` (subject_jackknife's rows) also what a BCa interval needs: "point" {"ccc": (5,),
    "mae": (5,)} on every row and "jack" {"ccc": (S, 5), "mae": (S, 5)}, one row per left-out
    subject. With `subjects` (the rows' subjects, as given to subject_resamples) also what a
    bootstrap-t interval needs: "within" {"ccc": (B, S, 5), "mae": (B, S, 5)}, each resample
    scored with one copy of subject k left out (NaN where k was not drawn), and "drawn" (B, S),
    how often each resample drew each subject."""
    out = {}
    for name, y_pred in predictions.items():
        per = [_scores(y_true[rows], y_pred[rows]) for rows in resamples]
        out[name] = {m: np.stack([p[m] for p in per]) for m in METRICS}
        if jackknife is not None:
            out[name]["point"] = _scores(y_true, y_pred)
            jack = [_scores(y_true[rows], y_pred[rows]) for rows in jackknife]
            out[name]["jack"] = {m: np.stack([p[m] for p in jack]) for m in METRICS}
        if subjects is not None:
            out[name]["within"], out[name]["drawn"] = _within(y_true, y_pred, resamples,
                                                              subjects)
    return out


def subjects_for(method: str, subjects: Sequence) -> Sequence | None:
    """bootstrap_scores' `subjects` for an interval `method`: the rows' subjects when it is
    "bootstrap_t" (each resample scored S more times), else None (not needed: spared)."""
    return subjects if method == "bootstrap_t" else None


def _within(y_true: np.ndarray, y_pred: np.ndarray, resamples: list[np.ndarray],
            subjects: Sequence) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each resample's leave-one-draw-out scores ({metric: (B, S, 5)}, NaN for a subject not
    drawn) and draw counts (B, S). Copies of a drawn subject leave out the same rows, so each
    drawn subject is scored once and counts as often as it was drawn."""
    uniq, inverse = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(uniq))  # (S,) rows per subject
    within = {m: np.full((len(resamples), len(uniq), y_true.shape[1]), np.nan) for m in METRICS}
    drawn = np.zeros((len(resamples), len(uniq)), dtype=np.int64)
    for b, rows in enumerate(resamples):
        owner = inverse[rows]  # (m_b,) subject of each drawn row
        drawn[b] = np.bincount(owner, minlength=len(uniq)) // sizes
        for k in np.flatnonzero(drawn[b]):
            keep = np.ones(len(rows), dtype=bool)
            keep[np.flatnonzero(owner == k)[:sizes[k]]] = False  # one copy of subject k
            scored = _scores(y_true[rows[keep]], y_pred[rows[keep]])
            for m in METRICS:
                within[m][b, k] = scored[m]
    return within, drawn


def interval(samples: np.ndarray, *, level: float = 0.95, method: str = "percentile",
             estimate: float | None = None, jackknife: np.ndarray | None = None,
             scale: str = "identity",
             within: tuple[np.ndarray, np.ndarray] | None = None,
             n_subjects: int | None = None) -> list[float]:
    """The `level` interval of a statistic from its (B,) bootstrap samples (NaN resamples
    ignored): the samples' central share ("percentile"); Efron's BCa ("bca"), which needs the
    statistic on all rows (`estimate`) and on each leave-one-subject-out set (`jackknife`, (S,));
    "fisher_z", which needs `estimate` and reads the subject count S off `jackknife` (the
    subjects whose leaving out moves it; `n_subjects` where that count is known otherwise: a
    share moves not when a subject's own share equals it): the bias-corrected t interval on
    `scale` ("atanh" for a CCC, "log" for an error, "identity" for a difference); or "bootstrap_t", which needs `estimate`, `jackknife` and `within`: the
    statistic on each resample's leave-one-draw-out sets and the draw counts, both (B, S).
    A jackknife of one subject gives NaN: every resample is that person, no interval. So does a
    jackknife with a NaN: leaving that subject out left nothing to score, so the statistic rests
    on them alone (a trait labelled for one subject; the mean over traits with it)."""
    if method not in METHODS:
        raise ValueError(f"interval method must be one of {METHODS}, got {method!r}")
    if jackknife is not None and (len(jackknife) < 2 or np.isnan(jackknife).any()):
        # one person: every resample that scores it repeats them, a zero-width interval
        return [float("nan"), float("nan")]
    if method == "bootstrap_t":
        if estimate is None or jackknife is None or within is None:
            raise ValueError("a 'bootstrap_t' interval needs the estimate, the jackknife and each "
                             "resample's own (bootstrap_scores(..., jackknife=..., "
                             "subjects=subjects))")
        return _studentised(np.asarray(samples, np.float64), float(estimate),
                            np.asarray(jackknife, np.float64), within, level, scale)
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return [float("nan"), float("nan")]
    tail = (1.0 - level) / 2.0
    tails = (tail, 1.0 - tail)
    if method == "fisher_z":
        if estimate is None:
            raise ValueError("a 'fisher_z' interval needs the estimate on all rows "
                             "(bootstrap_scores(..., jackknife=subject_jackknife(subjects)))")
        if not math.isfinite(estimate):
            return [float("nan"), float("nan")]
        # the people the statistic rests on: leaving out a subject with no scored row (a trait
        # they have no label for, clips a model has no prediction for) leaves it unchanged, to
        # the bit (the same rows, in the same order); counting them gave too narrow a t
        subjects = (n_subjects if n_subjects is not None else
                    0 if jackknife is None else int(np.sum(np.asarray(jackknife) != estimate)))
        if subjects == 1:  # it rests on one person: no spread between people to measure
            return [float("nan"), float("nan")]
        return _corrected_t(finite, float(estimate), tail, subjects, scale)
    if method == "bca":
        if estimate is None or jackknife is None:
            raise ValueError("a 'bca' interval needs the estimate on all rows and the jackknife "
                             "(bootstrap_scores(..., jackknife=subject_jackknife(subjects)))")
        tails = _bca_tails(finite, float(estimate), np.asarray(jackknife, np.float64), tail)
    lo, hi = np.quantile(finite, tails)  # linear interpolation, as np.percentile and scipy
    return [float(lo), float(hi)]


# scale -> (forward, back): atanh is Fisher's z (|CCC| clipped below 1 first), log keeps an error
# positive; a scale a value cannot take (an error of exactly 0) falls back to identity
SCALES = {"atanh": (lambda x: np.arctanh(np.clip(x, -R_MAX, R_MAX)), np.tanh),
          "log": (np.log, np.exp), "identity": (lambda x: x, lambda x: x)}


def _corrected_t(finite: np.ndarray, estimate: float, tail: float, subjects: int,
                 scale: str) -> list[float]:
    """On the transformed scale: centre 2 f(estimate) - mean f(resamples) (the resamples' bias
    removed), half-width t sd f(resamples) with Student's t for `subjects` - 1 degrees of freedom
    (the SE rests on that many people: 2.36 for 8, 12.71 for 2; the normal's 1.96 only when the
    count is unknown); mapped back. For a CCC on atanh this is Lin's (1989) Fisher-z interval."""
    if scale not in SCALES:
        raise ValueError(f"interval scale must be one of {sorted(SCALES)}, got {scale!r}")
    if np.ptp(finite) <= TIE and abs(float(finite[0]) - estimate) <= TIE:
        return [estimate, estimate]  # no spread (a perfect model: CCC 1 in every resample)
    if scale == "log" and (estimate <= 0.0 or finite.min() <= 0.0):
        lo, hi = _corrected_t(finite, estimate, tail, subjects, "identity")
        return [max(lo, 0.0), max(hi, 0.0)]
    forward, back = SCALES[scale]
    z = forward(finite)
    centre = 2.0 * float(forward(np.float64(estimate))) - float(z.mean())
    if subjects >= 2:  # two people: 1 degree of freedom (a 1.96 here covered 75%, not 95%)
        from scipy.stats import t as student_t

        quantile = float(student_t.ppf(1.0 - tail, subjects - 1))
    else:
        quantile = -_NORMAL.inv_cdf(tail)
    half = quantile * float(z.std())
    return [float(back(centre - half)), float(back(centre + half))]


def _studentised(samples: np.ndarray, estimate: float, jackknife: np.ndarray,
                 within: tuple[np.ndarray, np.ndarray], level: float, scale: str) -> list[float]:
    """The bootstrap-t interval on `scale`: samples (B,), jackknife (S,), within = (values
    (B, S), draws (B, S)). No interval (NaN) where the pivots' tail is unbounded: a share of
    resamples over `1 - level` / 2 whose own standard error is 0 (one person drawn again and
    again: with 2-3 subjects, or a trait labelled for few of them)."""
    if scale not in SCALES:
        raise ValueError(f"interval scale must be one of {sorted(SCALES)}, got {scale!r}")
    values, drawn = np.asarray(within[0], np.float64), np.asarray(within[1], np.float64)
    finite = samples[np.isfinite(samples)]
    if not finite.size or not math.isfinite(estimate):
        return [float("nan"), float("nan")]
    if np.ptp(finite) <= TIE and abs(float(finite[0]) - estimate) <= TIE:
        return [estimate, estimate]  # no spread (a perfect model: CCC 1 in every resample)
    seen = np.r_[finite, values[np.isfinite(values)], jackknife[np.isfinite(jackknife)]]
    if scale == "log" and (estimate <= 0.0 or seen.min() <= 0.0):
        lo, hi = _studentised(samples, estimate, jackknife, within, level, "identity")
        return [max(lo, 0.0), max(hi, 0.0)]  # an error of 0 somewhere: log cannot take it
    forward, back = SCALES[scale]
    jack = forward(jackknife[np.isfinite(jackknife)])
    if jack.size < 2:
        return [float("nan"), float("nan")]
    se = float(_jackknife_se(jack[None], np.ones((1, jack.size)))[0])
    z = float(forward(np.float64(estimate)))
    pivots = np.sort(_pivots(forward(samples) - z, _own_se(forward, values, drawn), se))
    tail = (1.0 - level) / 2.0
    high, low = _quantile(pivots, 1.0 - tail), _quantile(pivots, tail)
    if not (math.isfinite(high) and math.isfinite(low)):  # an unbounded tail (tanh would call
        return [float("nan"), float("nan")]               # it -1 or 1): no honest interval
    with np.errstate(over="ignore"):
        ends = [float(back(z - high * se)), float(back(z - low * se))]
    # an end past what the scale can hold (exp of a huge pivot): no interval either
    return ends if all(map(math.isfinite, ends)) else [float("nan"), float("nan")]


def _quantile(ordered: np.ndarray, q: float) -> float:
    """np.quantile's linear interpolation of sorted values that may hold +-inf: infinite where
    the position falls on or beside an infinite value (numpy's would be NaN from inf - inf)."""
    if not ordered.size:
        return math.nan
    position = (ordered.size - 1) * q
    i = int(math.floor(position))
    a, b, frac = ordered[i], ordered[min(i + 1, ordered.size - 1)], position - i
    if frac == 0.0 or a == b:
        return float(a)
    if not (math.isfinite(a) and math.isfinite(b)):
        return float(a if math.isinf(a) else b)
    return float(a + frac * (b - a))


def _own_se(forward, values: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """(B,) each resample's jackknife standard error on the transformed scale, over its draws
    whose leave-out value exists (a trait unlabelled without them: NaN), weighted by how often
    each subject was drawn; 0 with fewer than two such draws."""
    inner = forward(np.where(drawn > 0, values, np.nan))  # (B, S)
    counted = np.where(np.isfinite(inner), drawn, 0.0)
    return _jackknife_se(np.where(counted > 0, inner, 0.0), counted)


def _jackknife_se(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,) the jackknife standard error sqrt((n - 1) / n sum (v - mean)^2) of each row of
    values (B, S), value s counted counts[b, s] times (n = a row's count); 0 under two."""
    n = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = (counts * values).sum(axis=1) / n
        spread = (counts * (values - centre[:, None]) ** 2).sum(axis=1)
        return np.where(n >= 2, np.sqrt((n - 1) / n * spread), 0.0)


def _pivots(deviation: np.ndarray, own_se: np.ndarray, se: float) -> np.ndarray:
    """(f(resample) - f(estimate)) / own_se over the resamples whose statistic exists; a
    standard error at float-noise level (<= 1e-8 se) counts as 0, its pivot +-inf (0 when the
    resample equals the estimate), so that such resamples widen the tails instead of vanishing."""
    ok = np.isfinite(deviation)
    deviation, own_se = deviation[ok], own_se[ok]
    flat = ~(own_se > 1e-8 * se)  # NaN too
    unbounded = np.where(deviation == 0.0, 0.0, np.copysign(np.inf, deviation))
    return np.where(flat, unbounded, deviation / np.where(flat, 1.0, own_se))


def _bca_tails(finite: np.ndarray, estimate: float, jackknife: np.ndarray,
               tail: float) -> tuple[float, float]:
    """The BCa interval's two quantile levels (Efron & Tibshirani 1993, eq. 14.10)."""
    if not math.isfinite(estimate) or np.ptp(finite) <= TIE:
        # no estimate to centre on, or no spread to correct: nothing moves the tails
        return tail, 1.0 - tail
    n = finite.size
    below = _share_below(finite, np.full(n, estimate))
    # every resample on one side of the estimate: z0 as far out as n resamples can tell, not
    # infinite (which would put both ends of the interval on one extreme resample)
    z0 = _NORMAL.inv_cdf(min(max(below, 0.5 / n), 1.0 - 0.5 / n))
    a = acceleration(jackknife)
    return _adjusted(z0, a, _NORMAL.inv_cdf(tail)), _adjusted(z0, a, _NORMAL.inv_cdf(1.0 - tail))


def _adjusted(z0: float, a: float, z: float) -> float:
    """BCa's quantile level for the normal quantile z: Phi(z0 + (z0 + z) / (1 - a (z0 + z)))."""
    s = z0 + z
    denominator = 1.0 - a * s
    if denominator <= 0.0:
        # past the formula's pole (an extreme acceleration): its limit from below, the far end
        return 1.0 if s > 0 else 0.0
    return _NORMAL.cdf(z0 + s / denominator)


def acceleration(jackknife: np.ndarray) -> float:
    """BCa's acceleration from the statistic's (S,) leave-one-subject-out values: sum(d^3) /
    (6 sum(d^2)^1.5), d = mean - value. A left-out subject whose set has no value (NaN: e.g. the
    trait is then unlabelled or a prediction constant) is left out of it; fewer than 3 values,
    or all equal, give 0 (no skewness to estimate)."""
    theta = np.asarray(jackknife, dtype=np.float64)
    theta = theta[np.isfinite(theta)]
    # all equal up to float noise: a ratio of two noise terms would be an arbitrary number
    if theta.size < 3 or np.ptp(theta) <= TIE * max(1.0, float(np.abs(theta).max())):
        return 0.0
    d = theta.mean() - theta
    return float(np.sum(d ** 3) / (6.0 * np.sum(d ** 2) ** 1.5))


def common_clips(pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Two models' (n, 5) predictions on the (video, trait) cells both predict, NaN elsewhere, and
    how many videos both predict: scored on the same clips, their difference is paired."""
    both = ~np.isnan(pred_a) & ~np.isnan(pred_b)
    return (np.where(both, pred_a, np.nan), np.where(both, pred_b, np.nan),
            int(both.any(axis=1).sum()))


def _within_of(sample: dict, metric: str, j: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """bootstrap-t's (values (B, S), draws (B, S)) of `metric` for trait column j, or of the mean
    over traits (j None); None when `sample` was scored without `subjects`."""
    if "within" not in sample:
        return None
    values = sample["within"][metric]  # (B, S, 5)
    return (values.mean(axis=2) if j is None else values[:, :, j]), sample["drawn"]


def _bca_inputs(sample: dict, metric: str, j: int | None) -> tuple[float | None, np.ndarray | None]:
    """(estimate, jackknife) of `metric` for trait column j, or of the mean over traits (j None);
    (None, None) when `sample` was scored without a jackknife."""
    if "point" not in sample or "jack" not in sample:
        return None, None
    point, jack = sample["point"][metric], sample["jack"][metric]
    if j is None:
        return float(np.mean(point)), jack.mean(axis=1)
    return float(point[j]), jack[:, j]


def paired(a: dict, b: dict, *, level: float = 0.95, method: str = DEFAULT_METHOD) -> dict:
    """Model a against model b on the same resamples (score both on the same clips:
    common_clips), by mean CCC over traits: {"p_better": share of resamples with a > b (ties
    half), "delta_ccc": [lo, hi] of a - b, "p_lower_mae": share with a's mean MAE below b's};
    with a jackknife in both, "delta_ccc_point": a - b on all rows."""
    ca, cb = a["ccc"].mean(axis=1), b["ccc"].mean(axis=1)  # (B,)
    ok = np.isfinite(ca) & np.isfinite(cb)
    ma, mb = a["mae"].mean(axis=1), b["mae"].mean(axis=1)
    (pa, ja), (pb, jb) = _bca_inputs(a, "ccc", None), _bca_inputs(b, "ccc", None)
    both = pa is not None and pb is not None
    point = {"delta_ccc_point": pa - pb} if both else {}
    if not ok.any():
        return {"p_better": float("nan"), "delta_ccc": [float("nan")] * 2,
                "p_lower_mae": float("nan"), **point}
    fine = np.isfinite(ma) & np.isfinite(mb)  # a NaN resample is no vote either way
    wins = _share_below(cb[ok], ca[ok])
    lower = _share_below(ma[fine], mb[fine]) if fine.any() else float("nan")
    wa, wb = _within_of(a, "ccc", None), _within_of(b, "ccc", None)
    delta = interval(ca - cb, level=level, method=method, estimate=pa - pb if both else None,
                     jackknife=ja - jb if both else None,
                     within=(wa[0] - wb[0], wa[1]) if wa is not None and wb is not None else None)
    delta = [min(max(end, -2.0), 2.0) for end in delta]  # a difference of two CCCs (NaN stays)
    return {"p_better": float(wins), "delta_ccc": delta, "p_lower_mae": float(lower), **point}


def _share_below(x: np.ndarray, y: np.ndarray) -> float:
    """Share of resamples with x < y, a tie counting half. Values within TIE tie: the same
    predictions summed in another order (a model against its own refit) differ in the last bits,
    and those bits must not decide a "better in" share."""
    tie = np.isclose(x, y, rtol=0.0, atol=TIE)
    return float(np.mean((x < y) & ~tie) + 0.5 * np.mean(tie))


def model_uncertainty(samples: dict, traits: Sequence[str], *, level: float = 0.95,
                      method: str = DEFAULT_METHOD) -> dict:
    """Intervals of one model's bootstrap samples: {trait: {"ccc": [lo, hi], "mae": [lo, hi]},
    ..., "mean": {...}} (all but "percentile" need bootstrap_scores' jackknife, "bootstrap_t"
    its `subjects` too)."""
    def one(metric: str, j: int | None) -> list[float]:
        values = samples[metric].mean(axis=1) if j is None else samples[metric][:, j]
        estimate, jack = _bca_inputs(samples, metric, j)
        return interval(values, level=level, method=method, estimate=estimate, jackknife=jack,
                        scale="atanh" if metric == "ccc" else "log",
                        within=_within_of(samples, metric, j))

    out = {t: {m: one(m, j) for m in METRICS} for j, t in enumerate(traits)}
    out["mean"] = {m: one(m, None) for m in METRICS}
    return out
