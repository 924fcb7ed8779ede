"""The evaluation report beyond per-model metrics: which model validation chose, how sure each
number is (intervals over subjects, paired comparisons: models/bootstrap.py), the headline summary
and the results table. Pure functions over evaluate.json-shaped dicts; stages/evaluate.py calls
them.

    best = select_best({"m1": {"ccc": 0.3}, "m2": {"ccc": 0.2}})            # "m1"
    add_uncertainty(report, {"m1": (video_ids, y_pred)}, manifest, split="test", n_boot=1000,
                    level=0.95, seed=1234, best=best)                        # adds ci, vs_*
    summary = summary_of(report); table = results_table(report, "test")
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from models.bootstrap import (bootstrap_scores, interval, model_uncertainty, paired,
                              subject_resamples)
from models.metrics import train_mean_baseline
from personality.schemas import TRAITS

__all__ = ["RESERVED", "select_best", "add_uncertainty", "summary_of", "results_table", "fmt",
           "ci_text", "flat_metrics"]

RESERVED = ("baseline", "errors", "selection")  # keys of evaluate.json that are not models


def select_best(val: dict[str, dict]) -> str | None:
    """The model with the highest mean validation CCC (None when no model has one)."""
    finite = {m: v["ccc"] for m, v in val.items() if v.get("ccc") is not None
              and math.isfinite(v["ccc"])}
    return max(finite, key=finite.get) if finite else None


def _spread(scored: tuple[np.ndarray, np.ndarray], video_ids: np.ndarray) -> np.ndarray:
    """A model's (video_ids (m,), y_pred (m, 5)) on `video_ids`: (n, 5), NaN for a video it has
    no prediction for."""
    out = np.full((len(video_ids), len(TRAITS)), np.nan)
    row = {v: i for i, v in enumerate(video_ids)}
    for v, pred in zip(*scored):
        out[row[v]] = pred
    return out


def add_uncertainty(report: dict, predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                    manifest: pd.DataFrame, *, split: str, n_boot: int, level: float, seed: int,
                    best: str | None) -> None:
    """Add to each entry of `report` (models and baseline) `ci`: intervals from a bootstrap over
    the subjects of the scored split, and to each model `vs_baseline` / `vs_best`: paired
    comparisons on the same resamples (models.bootstrap)."""
    labelled = manifest[(manifest["split"] == split)
                        & manifest[list(TRAITS)].notna().any(axis=1)].sort_values("video_id")
    if labelled.empty or "baseline" not in report:
        return
    vids = labelled["video_id"].to_numpy()
    y_true = labelled[list(TRAITS)].to_numpy(np.float64)  # (n, 5)
    train = manifest.loc[manifest["split"] == "train", list(TRAITS)].to_numpy(np.float64)
    preds = {name: _spread(scored, vids) for name, scored in predictions.items()}
    preds["baseline"] = train_mean_baseline(train, len(vids))
    rows = subject_resamples(labelled["subject_id"].to_numpy(), n_boot=n_boot,
                             seed=seed)
    samples = bootstrap_scores(y_true, preds, rows)
    about = {"level": level, "n_boot": n_boot, "resampled": "subjects",
             "n_subjects": int(labelled["subject_id"].nunique())}
    for name, sample in samples.items():
        report[name]["ci"] = {**about, **model_uncertainty(sample, TRAITS, level=level)}
    for name in predictions:
        report[name]["vs_baseline"] = paired(samples[name], samples["baseline"], level=level)
        if best in samples and best != name:
            report[name]["vs_best"] = {"model": best, **paired(samples[name], samples[best],
                                                                level=level)}


def add_split_intervals(figures: dict[str, dict],
                        predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                        manifest: pd.DataFrame, *, split: str, n_boot: int, level: float,
                        seed: int) -> None:
    """Add `ccc_ci` to each model's figures on `split` (e.g. val's, which choose the model): the
    interval of its mean CCC over a bootstrap of that split's subjects."""
    labelled = manifest[(manifest["split"] == split)
                        & manifest[list(TRAITS)].notna().any(axis=1)].sort_values("video_id")
    if labelled.empty or not predictions:
        return
    vids = labelled["video_id"].to_numpy()
    rows = subject_resamples(labelled["subject_id"].to_numpy(), n_boot=n_boot, seed=seed)
    samples = bootstrap_scores(labelled[list(TRAITS)].to_numpy(np.float64),
                               {name: _spread(scored, vids) for name, scored in
                                predictions.items()}, rows)
    for name, sample in samples.items():
        figures[name]["ccc_ci"] = interval(sample["ccc"].mean(axis=1), level=level)


def _val_text(figures: dict) -> str:
    lo, hi = figures.get("ccc_ci") or (None, None)
    if lo is None or not all(map(math.isfinite, (lo, hi))):
        return fmt(figures.get("ccc"))
    return f"{fmt(figures.get('ccc'))} [{fmt(lo)}, {fmt(hi)}]"


def ci_text(entry: dict, metric: str = "ccc") -> str:
    lo, hi = ((entry.get("ci") or {}).get("mean") or {}).get(metric, [None, None])
    value = (entry.get("mean") or {}).get(metric)
    if lo is None or value is None or not all(map(math.isfinite, (value, lo, hi))):
        return fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def results_table(report: dict, split: str) -> str:
    """metrics/results.md: one row per model, best validation CCC first; intervals in brackets;
    a model whose difference to the best-by-validation model is inside the interval says so."""
    selection = report.get("selection") or {}
    val = selection.get("val") or {}
    def val_ccc(m: str) -> float:  # a model without a val score sorts last (0.0 is a score)
        v = val.get(m, {}).get("ccc")
        return -math.inf if v is None or not math.isfinite(v) else v

    models = sorted((m for m in report if m not in RESERVED), key=lambda m: -val_ccc(m))
    level = int(round(100 * ((report.get("baseline") or {}).get("ci") or {}).get("level", 0.95)))
    lines = [f"| model | val CCC [{level}% CI] | {split} CCC [{level}% CI] | {split} ACC "
             "| beats baseline "
             f"| vs {selection.get('best') or 'best'} (chosen on val) |",
             "|---|---|---|---|---|---|",
             f"| train-mean baseline | - | {ci_text(report.get('baseline') or {})} | "
             f"{fmt(((report.get('baseline') or {}).get('mean') or {}).get('acc'))} | - | - |"]
    for m in models:
        e = report[m]
        vb, vs = e.get("vs_baseline") or {}, e.get("vs_best") or {}
        if vs:
            lo, hi = vs["delta_ccc"]
            delta = e["mean"]["ccc"] - report[vs["model"]]["mean"]["ccc"]
            inside = lo is not None and hi is not None and lo <= 0 <= hi
            versus = (f"Δ {delta:+.3f} [{lo:+.3f}, {hi:+.3f}], better in "
                      f"{100 * vs['p_better']:.0f}% of resamples"
                      + ("; inside the interval: no ranking" if inside else ""))
        else:
            versus = "chosen on val" if m == selection.get("best") else "-"
        beats = f"{100 * vb['p_better']:.0f}%" if vb.get("p_better") is not None else "-"
        low = ((e.get("ci") or {}).get("mean") or {}).get("ccc", [None])[0]
        if low is not None and math.isfinite(low) and low <= 0 and beats != "-":
            beats += "; its interval reaches 0"
        lines.append(f"| {m} | {_val_text(val.get(m, {}))} | {ci_text(e)} | "
                     f"{fmt(e['mean'].get('acc'))} | {beats} | {versus} |")
    n = ((report.get("baseline") or {}).get("ci") or {})
    lines.append("")
    lines.append(f"{split} split: {(report.get('baseline') or {}).get('n_videos', '?')} clips of "
                 f"{n.get('n_subjects', '?')} subjects; intervals and 'better in' shares from "
                 f"{n.get('n_boot', '?')} bootstrap resamples of subjects (models/bootstrap.py).")
    return "\n".join(lines) + "\n"


def summary_of(report: dict) -> dict:
    """The headline numbers of evaluate.json: per model (and the baseline) mean CCC with its
    interval, ACC, MAE; per model its validation CCC (what selection used) and the share of
    bootstrap resamples in which it beats the baseline."""
    val = (report.get("selection") or {}).get("val") or {}
    out = {}
    for name, entry in report.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("mean"), dict)):
            continue
        row = {k: entry["mean"].get(k) for k in ("ccc", "acc", "mae")}
        if "ci" in entry:
            row["ccc_lo"], row["ccc_hi"] = entry["ci"]["mean"]["ccc"]
        if name in val:
            row["val_ccc"] = val[name].get("ccc")
        if "vs_baseline" in entry:
            row["p_beats_baseline"] = entry["vs_baseline"]["p_better"]
        out[name] = row
    return out


def fmt(value) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{round(value, 6) + 0.0:.3f}"  # + 0.0: no "-0.000" for a rounding-level negative


def flat_metrics(entry: dict, prefix: str) -> dict[str, float]:
    """MLflow metric names for an evaluate.json entry: `<prefix>_<trait|mean>_<metric>`,
    `<prefix>_bins_<trait|mean>_<metric>`, `<prefix>_n_videos`; null / NaN values are left out."""
    out: dict[str, float] = {}

    def put(name: str, value) -> None:
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[name] = float(value)

    for key in (*TRAITS, "mean"):
        for metric, value in (entry.get(key) or {}).items():
            put(f"{prefix}_{key}_{metric}", value)
        for metric, value in ((entry.get("bins") or {}).get(key) or {}).items():
            put(f"{prefix}_bins_{key}_{metric}", value)
        for metric, (lo, hi) in ((entry.get("ci") or {}).get(key) or {}).items():
            put(f"{prefix}_{key}_{metric}_lo", lo)
            put(f"{prefix}_{key}_{metric}_hi", hi)
    for versus in ("vs_baseline", "vs_best"):
        put(f"{prefix}_{versus}_p_better", (entry.get(versus) or {}).get("p_better"))
    put(f"{prefix}_n_videos", entry.get("n_videos"))
    return out
