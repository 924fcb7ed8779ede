"""Prediction intervals for one clip's scores: split-conformal, from a model's validation residuals.

    half = half_widths(y_val, pred_val, level=0.95)   # (5,): |residual| quantile per trait
    lo, hi = pred - half, pred + half                 # a new clip's interval, per trait
    inside = coverage(y_test, pred_test, half)        # {trait: share of test scores inside}
    # with the test subjects' resamples and jackknife (models/bootstrap.py) also "mean_ci"
    inside = coverage(y_test, pred_test, half, resamples=subject_resamples(subjects, n_boot=1000,
                      seed=1), jackknife=subject_jackknife(subjects))

The test MAE says how far a model's scores are from the labels *on average*; a user scoring one
clip wants a range that holds its true score with a stated probability. Split-conformal
prediction (Vovk et al. 2005; Lei et al. 2018, "Distribution-free predictive inference for
regression") gives one with no model assumption: the ceil((n + 1) * level)-th smallest absolute
residual of n held-out clips is a half-width that holds a new clip's score with probability at
least `level`, if the new clip is exchangeable with them. The held-out clips are validation's
(never test: test only checks the coverage). Three caveats, which the test coverage measures:
clips of one person are not exchangeable with each other (the residuals come in subject
clusters); validation also chose the model; and for the deep models it chose their epoch (early
stopping), so their validation residuals may be smaller than a new clip's. On the default data
(2026-12-06) the 80% intervals held 73-78% of test scores for the PerFeX models and hrnet_face,
82-86% for logmel_cnn and bimodal_resnet (early-stopped too) and 83-87% for the closed-form
models, the lowest intervals' upper ends at 0.80: a hint, not a measured effect. Calibrating on
subjects that early stopping did not see would remove it; with 8 validation subjects, halves of
4 would make both choices noisier. With fewer than level / (1 - level) clips
(19 at 0.95), ceil((n + 1) * level) > n: no finite half-width (None).

evaluate writes each model's half-widths under selection.val.<model>.interval_half_width (from
its val predictions) and their test coverage under <model>.prediction_interval; results.md
prints both; predict quotes a clip's interval when evaluate measured that very checkpoint.
The coverage is a share of a few people's scores, so it carries its own interval, from the same
resamples of the split's subjects as every other interval (models/bootstrap.py's fisher_z method
on the share's own scale, whatever evaluate.interval is: the bias-corrected t with subjects - 1
degrees of freedom).
"""
from __future__ import annotations

import math

import numpy as np

from models.bootstrap import interval
from personality.schemas import TRAITS

__all__ = ["half_widths", "coverage", "interval_entry", "interval_table"]


def half_widths(y_true: np.ndarray, y_pred: np.ndarray, level: float) -> list[float | None]:
    """Per trait the split-conformal half-width at `level` from the rows (n, 5) with a label
    (NaN labels or predictions left out of that trait); None where too few rows give one."""
    out: list[float | None] = []
    for j in range(y_true.shape[1]):
        residual = np.abs(y_true[:, j] - y_pred[:, j])
        residual = np.sort(residual[np.isfinite(residual)])
        k = math.ceil((len(residual) + 1) * level)  # the k-th smallest, 1-based
        out.append(float(residual[k - 1]) if 0 < k <= len(residual) else None)
    return out


def coverage(y_true: np.ndarray, y_pred: np.ndarray, half: list[float | None], *,
             resamples: list[np.ndarray] | None = None,
             jackknife: list[np.ndarray] | None = None, level: float = 0.95) -> dict:
    """{trait: share of labelled rows whose label is within `half` of the prediction, "mean": over
    every labelled (row, trait) pair, "n": their count}; None where a trait has no half-width.
    With `resamples` and `jackknife` (row indices of a bootstrap over subjects and of leaving
    each subject out: models.bootstrap.subject_resamples / subject_jackknife) also "mean_ci",
    the mean share's interval at `level` ([None, None] with one subject)."""
    out: dict = {}
    hits = np.zeros(y_true.shape, bool)  # (n, 5) label inside its prediction interval
    scored = np.zeros(y_true.shape, bool)  # (n, 5) a (row, trait) pair with a half-width
    for j, t in enumerate(TRAITS):
        keep = np.isfinite(y_true[:, j]) & np.isfinite(y_pred[:, j])
        if half[j] is None or not keep.any():
            out[t] = None
            continue
        scored[:, j] = keep
        hits[keep, j] = np.abs(y_true[keep, j] - y_pred[keep, j]) <= half[j]
        out[t] = float(hits[keep, j].mean())
    total = int(scored.sum())
    out["mean"] = int(hits.sum()) / total if total else None
    out["n"] = total
    if resamples is not None and jackknife is not None:
        out["mean_ci"] = _share_interval(hits.sum(axis=1), scored.sum(axis=1), resamples,
                                         jackknife, level)
    return out


def _share_interval(inside: np.ndarray, counted: np.ndarray, resamples: list[np.ndarray],
                    jackknife: list[np.ndarray], level: float) -> list[float | None]:
    """The interval of sum(inside) / sum(counted) (both (n,) per row) from its values on the
    resamples' and the jackknife's rows (fisher_z's bias-corrected t, whatever
    evaluate.interval is: a share needs no BCa or studentised pivot), clipped to [0, 1];
    [None, None] where there is none (one subject, or no scored row). When every person's own
    share is the same the resamples do not spread and the interval has no width: the
    bootstrap sees between-person differences only."""
    def share(rows: np.ndarray) -> float:
        n = counted[rows].sum()
        return float(inside[rows].sum() / n) if n else float("nan")

    estimate = share(np.arange(len(inside)))
    if not math.isfinite(estimate):
        return [None, None]
    # the people with a scored row: leaving out one whose own share equals the estimate does
    # not move it, so the jackknife alone would undercount them (and the t's degrees of freedom)
    people = sum(counted[rows].sum() < counted.sum() for rows in jackknife)
    lo, hi = interval(np.array([share(r) for r in resamples]), level=level, method="fisher_z",
                      estimate=estimate, jackknife=np.array([share(r) for r in jackknife]),
                      scale="identity", n_subjects=int(people))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [None, None]
    return [max(lo, 0.0), min(hi, 1.0)]


def interval_entry(val_figures: dict, y_true: np.ndarray, y_pred: np.ndarray, *,
                   in_sample: bool = False, **uncertainty) -> dict | None:
    """A model's `prediction_interval` entry on the scored split: the half-widths its val
    figures carry (`interval_half_width`, at `interval_level`) and their coverage of (y_true,
    y_pred) (n, 5), with its interval given `uncertainty` (coverage's resamples, jackknife,
    level); None without half-widths. `in_sample` (evaluate.split is val, the clips the
    half-widths came from): no coverage, which would hold by construction."""
    half = val_figures.get("interval_half_width")
    if not half:
        return None
    return {"level": val_figures.get("interval_level"), "from": "val residuals (split-conformal)",
            "n_val": val_figures.get("interval_n_val"), "half_width": dict(zip(TRAITS, half)),
            "coverage": None if in_sample else coverage(y_true, y_pred, half, **uncertainty)}


def interval_table(report: dict, models: list[str], split: str) -> list[str]:
    """results.md's table of each model's prediction interval: per trait ± its half-width, and
    the share of the split's labelled scores inside; [] when no model has one."""
    rows = [(m, (report.get(m) or {}).get("prediction_interval")) for m in models]
    rows = [(m, e) for m, e in rows if e]
    if not rows:
        return []
    level = round(100 * rows[0][1]["level"])
    ci_level = ((report.get(rows[0][0]) or {}).get("ci") or {}).get("level")
    of_share = f" [its {ci_level:.0%} interval over subjects]" if ci_level else ""

    def cell(value) -> str:
        return "n/a" if value is None else f"±{value:.3f}"

    def share(cov: dict | None) -> str:
        if cov is None:
            return "n/a: the half-widths' own clips"
        mean = cov.get("mean")
        lo, hi = cov.get("mean_ci") or (None, None)
        ci = "" if lo is None or hi is None else f" [{100 * lo:.0f}, {100 * hi:.0f}]"
        return "n/a" if mean is None else f"{100 * mean:.0f}%{ci} of {cov.get('n')}"

    return ["", f"{level}% prediction interval of one clip's score (± the half-width, split-conformal "
                f"on each model's val residuals) and the share of {split} scores inside it{of_share}:", "",
            f"| model | {' | '.join(TRAITS)} | {split} scores inside |",
            "|---|" + "---|" * (len(TRAITS) + 1),
            *(f"| {m} | " + " | ".join(cell(e["half_width"][t]) for t in TRAITS)
              + f" | {share(e['coverage'])} |" for m, e in rows)]
