"""The evaluation report beyond per-model metrics: which model validation chose, how sure each
number is (intervals over subjects, paired comparisons: models/bootstrap.py), the headline summary
and the results table. Pure functions over evaluate.json-shaped dicts; stages/evaluate.py calls
them.

    best = select_best({"m1": {"ccc": 0.3}, "m2": {"ccc": 0.2}})            # "m1"
    add_uncertainty(report, {"m1": (video_ids, y_pred)}, manifest, split="test", n_boot=1000,
                    level=0.95, seed=1234, best=best, method="bca")         # adds ci, vs_*
    summary = summary_of(report); table = results_table(report, "test")

A split of one subject has no interval and no "better in" share (null in the JSON, n/a in the
table): every resample would be the same clips, a zero-width interval claiming certainty.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from models.bootstrap import (DEFAULT_METHOD, METRICS, TIE, bootstrap_scores, common_clips,
                              model_uncertainty, paired, subject_jackknife, subject_resamples,
                              subjects_for)
from models.conformal import half_widths, interval_entry, interval_table
from models.metrics import regression_metrics, train_mean_baseline
from personality.schemas import TRAITS

__all__ = ["RESERVED", "rank_models", "select_best", "add_uncertainty", "with_acc", "mean_interval",
           "chosen_shares", "trait_intervals", "ceiling_entry", "summary_of", "results_table",
           "fmt", "ci_text", "flat_metrics", "scatter_table"]

# keys of evaluate.json that are not models (ceiling: the best CCC any model can reach on a
# synthetic set, from the law of its labels)
RESERVED = ("baseline", "ceiling", "errors", "selection")
MIN_SUBJECTS = 2  # fewer: no spread between people to resample, so no interval


def rank_models(val: dict[str, dict]) -> list[str]:
    """Models best first by mean validation CCC (those without a finite one left out); among
    models tied on it (a val split of one clip gives every model CCC 0), the lower val MAE
    first. evaluate's choice and predict's default model both come from this order."""
    finite = [m for m, v in val.items() if v.get("ccc") is not None and math.isfinite(v["ccc"])]

    def mae(m: str) -> float:
        value = val[m].get("mae")
        return value if value is not None and math.isfinite(value) else math.inf

    return sorted(finite, key=lambda m: (-val[m]["ccc"], mae(m)))


def select_best(val: dict[str, dict]) -> str | None:
    """The first of `rank_models` (None when no model has a val CCC)."""
    ranked = rank_models(val)
    return ranked[0] if ranked else None


def _spread(scored: tuple[np.ndarray, np.ndarray], video_ids: np.ndarray) -> np.ndarray:
    """A model's (video_ids (m,), y_pred (m, 5)) on `video_ids`: (n, 5), NaN for a video it has
    no prediction for."""
    out = np.full((len(video_ids), len(TRAITS)), np.nan)
    row = {v: i for i, v in enumerate(video_ids)}
    for v, pred in zip(*scored):
        out[row[v]] = pred
    return out


def _labelled(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The videos of `split` with at least one label, sorted by video_id."""
    return manifest[(manifest["split"] == split)
                    & manifest[list(TRAITS)].notna().any(axis=1)].sort_values("video_id")


def _n_subjects(subjects: np.ndarray) -> int:
    return len(np.unique(np.asarray(subjects, dtype=str)))  # subject_resamples' identity


def _compare(a: str, b: str, preds: dict, samples: dict, y_true: np.ndarray, rows: list,
             jack: list, subjects: np.ndarray, *, level: float, method: str) -> dict:
    """`paired` of models a and b scored on the clips both predict (n_videos of them): a model
    without some videos would otherwise be scored on other people than the one it is compared
    with, and the difference would not be paired."""
    pa, pb, n = common_clips(preds[a], preds[b])
    if not (np.array_equal(pa, preds[a], equal_nan=True)
            and np.array_equal(pb, preds[b], equal_nan=True)):
        samples = bootstrap_scores(y_true, {a: pa, b: pb}, rows, jackknife=jack,
                                   subjects=subjects_for(method, subjects))
    return {**paired(samples[a], samples[b], level=level, method=method), "n_videos": n}


def with_acc(ci: dict, entry: dict) -> dict:
    """`ci` ({trait | "mean": {"ccc", "mae": [lo, hi]}}) with "acc": ACC is 1 - MAE, so its
    interval is MAE's mirrored, [1 - hi, 1 - lo], wherever `entry` has an ACC (null on z-scored
    labels, and so is its interval)."""
    for key, metrics in ci.items():
        lo, hi = metrics["mae"]
        has_acc = _finite((entry.get(key) or {}).get("acc"), lo, hi)
        metrics["acc"] = [1.0 - hi, 1.0 - lo] if has_acc else [None, None]
    return ci


def ceiling_entry(manifest: pd.DataFrame, split: str, law: pd.DataFrame
                  ) -> tuple[dict, tuple[np.ndarray, np.ndarray]] | None:
    """The CCC-optimal scores of a synthetic set's labels (`law`: (n, 5) by video_id,
    personality.law.law_scores: their law without its noise, stretched to their spread) scored
    on `split` as a model would be: the best any model can score in expectation. (entry, its
    (video_ids, predictions)); None where `law` lacks a labelled clip of the split (a real
    dataset: empty)."""
    labelled = _labelled(manifest, split)
    vids = labelled["video_id"].to_numpy()
    if labelled.empty or not set(vids) <= set(law.index):
        return None
    pred = law.loc[vids, list(TRAITS)].to_numpy(np.float64)  # (n, 5)
    entry = regression_metrics(labelled[list(TRAITS)].to_numpy(np.float64), pred)
    return {**entry, "n_videos": len(vids), "label_scale": "unit"}, (vids, pred)


def _withhold(entry: dict) -> None:
    """No intervals and no resample shares in `entry` (one subject): null in the JSON."""
    for key in (*TRAITS, "mean"):
        entry["ci"][key] = {m: [None, None] for m in (*METRICS, "acc")}
    for versus in ("vs_baseline", "vs_best"):
        if versus in entry:
            entry[versus].update(p_better=None, p_lower_mae=None, delta_ccc=[None, None])


def add_uncertainty(report: dict, predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                    manifest: pd.DataFrame, *, split: str, n_boot: int, level: float, seed: int,
                    best: str | None, method: str = DEFAULT_METHOD) -> None:
    """Add to each entry of `report` (models and baseline) `ci`: intervals (`method`: fisher_z,
    percentile, bca or bootstrap_t) from a bootstrap over the subjects of the scored split, and
    to each model `vs_baseline` / `vs_best`: paired comparisons on the same resamples and on the
    clips both predict (models.bootstrap), with the point difference `delta_ccc_point` and
    `n_videos`."""
    labelled = _labelled(manifest, split)
    if labelled.empty or "baseline" not in report:
        return
    vids, subjects = labelled["video_id"].to_numpy(), labelled["subject_id"].to_numpy()
    y_true = labelled[list(TRAITS)].to_numpy(np.float64)  # (n, 5)
    train = manifest.loc[manifest["split"] == "train", list(TRAITS)].to_numpy(np.float64)
    preds = {name: _spread(scored, vids) for name, scored in predictions.items()}
    selection = report.get("selection") or {}
    rows = subject_resamples(subjects, n_boot=n_boot, seed=seed)
    jack = subject_jackknife(subjects)
    for name in predictions:  # the val half-widths' coverage of this split's scores
        entry = interval_entry((selection.get("val") or {}).get(name) or {}, y_true, preds[name],
                               in_sample=split == selection.get("split"), resamples=rows,
                               jackknife=jack, level=level)
        if entry is not None:
            report[name]["prediction_interval"] = entry
    preds["baseline"] = train_mean_baseline(train, len(vids))
    samples = bootstrap_scores(y_true, preds, rows, jackknife=jack,
                               subjects=subjects_for(method, subjects))
    about = {"level": level, "n_boot": n_boot, "resampled": "subjects",
             "n_subjects": _n_subjects(subjects), "interval_method": method}
    for name, sample in samples.items():
        report[name]["ci"] = {**about, **with_acc(model_uncertainty(sample, TRAITS, level=level,
                                                                     method=method),
                                                   report[name])}
    compare = dict(preds=preds, samples=samples, y_true=y_true, rows=rows, jack=jack,
                   subjects=subjects, level=level, method=method)
    for name in predictions:
        report[name]["vs_baseline"] = _compare(name, "baseline", **compare)
        if best in samples and best != name:
            report[name]["vs_best"] = {"model": best, **_compare(name, best, **compare)}
    if about["n_subjects"] < MIN_SUBJECTS:
        for name in samples:
            _withhold(report[name])


def add_split_intervals(figures: dict[str, dict],
                        predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                        manifest: pd.DataFrame, *, split: str, n_boot: int, level: float,
                        seed: int, method: str = DEFAULT_METHOD,
                        prediction_level: float = 0.8) -> None:
    """Add `ccc_ci` to each model's figures on `split` (e.g. val's, which choose the model): the
    interval of its mean CCC over a bootstrap of that split's subjects ([None, None] with one
    subject), `chosen_share`: the share of those resamples in which it has the highest mean
    CCC (how sure the choice is; None with one subject), and `interval_half_width`: per trait the
    split-conformal half-width of a clip's prediction interval (coverage `prediction_level`)
    from its residuals on `split` (models/conformal.py; None where too few clips), with
    `interval_level` and `interval_n_val` clips."""
    labelled = _labelled(manifest, split)
    if labelled.empty or not predictions:
        return
    vids, subjects = labelled["video_id"].to_numpy(), labelled["subject_id"].to_numpy()
    y_true = labelled[list(TRAITS)].to_numpy(np.float64)  # (n, 5)
    # (n, 5) per model, NaN where it has no prediction
    preds = {name: _spread(scored, vids) for name, scored in predictions.items()}
    for name, pred in preds.items():  # a clip's prediction interval (models/conformal.py)
        figures[name].update(interval_half_width=half_widths(y_true, pred, prediction_level),
                             interval_level=prediction_level,
                             interval_n_val=int(np.isfinite(pred).any(axis=1).sum()))
    if _n_subjects(subjects) < MIN_SUBJECTS:
        for name in predictions:
            figures[name].update(ccc_ci=[None, None], chosen_share=None)
        return
    samples = bootstrap_scores(y_true, preds,
                               subject_resamples(subjects, n_boot=n_boot, seed=seed),
                               jackknife=subject_jackknife(subjects),
                               subjects=subjects_for(method, subjects))
    for name, sample in samples.items():
        figures[name]["ccc_ci"] = model_uncertainty(sample, TRAITS, level=level,
                                                    method=method)["mean"]["ccc"]
    shares = chosen_shares({name: sample["ccc"].mean(axis=1) for name, sample in samples.items()})
    for name, share in shares.items():
        figures[name]["chosen_share"] = share


def chosen_shares(mean_ccc: dict[str, np.ndarray]) -> dict[str, float]:
    """{model: share of resamples in which its mean CCC (B,) is the highest}; models tied at the
    top of a resample (within TIE) split it; a NaN mean never wins."""
    names = list(mean_ccc)
    values = np.stack([np.nan_to_num(mean_ccc[n], nan=-np.inf) for n in names])  # (M, B)
    top = values.max(axis=0)  # (B,)
    winners = np.isclose(values, top, rtol=0.0, atol=TIE) & np.isfinite(top)  # (M, B)
    split = winners / np.maximum(winners.sum(axis=0), 1)
    return {n: float(split[i].mean()) for i, n in enumerate(names)}


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _with_interval(value, pair, withheld: bool) -> str:
    """`value [lo, hi]`; `value [n/a]` where the interval was withheld or is undefined."""
    lo, hi = pair or (None, None)
    if not _finite(value):
        return fmt(value)
    if not _finite(lo, hi):
        return f"{fmt(value)} [n/a]" if withheld else fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def _val_text(figures: dict) -> str:
    return _with_interval(figures.get("ccc"), figures.get("ccc_ci"), "ccc_ci" in figures)


def mean_interval(entry: dict, metric: str, key: str = "mean") -> list | None:
    """[lo, hi] of `entry`'s `metric` for `key` (the mean over traits, or a trait); None where
    it has none."""
    return ((entry.get("ci") or {}).get(key) or {}).get(metric)


def trait_intervals(entry: dict, metric: str = "ccc") -> dict:
    """{trait: [lo, hi]} of `entry`'s `metric` (None where it has none)."""
    return {t: mean_interval(entry, metric, t) for t in TRAITS}


def ci_text(entry: dict, metric: str = "ccc", key: str = "mean") -> str:
    return _with_interval((entry.get(key) or {}).get(metric), mean_interval(entry, metric, key),
                          entry.get("ci") is not None)


def _share(value) -> str:
    return f"{100 * value:.0f}%" if _finite(value) else "n/a"


def _versus(entry: dict, report: dict) -> str:
    """The "vs best" cell: the difference in mean CCC on the clips both models predict, its
    interval, the share of resamples; no ranking where the interval contains 0 or is missing."""
    vs = entry["vs_best"]
    best = report.get(vs["model"]) or {}
    mine, theirs = (entry.get("mean") or {}).get("ccc"), (best.get("mean") or {}).get("ccc")
    # reports written before delta_ccc_point: the difference of the two means
    delta = vs.get("delta_ccc_point", mine - theirs if _finite(mine, theirs) else None)
    lo, hi = vs.get("delta_ccc") or (None, None)
    text = f"Δ {f'{delta:+.3f}' if _finite(delta) else 'n/a'}"
    if not _finite(lo, hi):
        return text + " [n/a]: no interval, no ranking"
    text += f" [{lo:+.3f}, {hi:+.3f}], better in {_share(vs.get('p_better'))} of resamples"
    shared = vs.get("n_videos")
    if shared is not None and shared < max(entry.get("n_videos") or 0, best.get("n_videos") or 0):
        text += f" (on the {shared} clips both predict)"
    return text + ("; inside the interval: no ranking" if lo <= 0 <= hi else "")


def results_table(report: dict, split: str) -> str:
    """metrics/results.md: one row per model, best validation CCC first; intervals in brackets;
    a model whose difference to the best-by-validation model is inside the interval says so."""
    selection = report.get("selection") or {}
    val = selection.get("val") or {}
    # the selection's order (ties on val CCC broken by val MAE), so the first row is the chosen
    # model; models without a val score last
    ranked = [m for m in rank_models(val) if m in report and m not in RESERVED]
    models = ranked + [m for m in report if m not in RESERVED and m not in ranked]
    base = report.get("baseline") or {}
    n = base.get("ci") or {}
    level = int(round(100 * n.get("level", 0.95)))
    lines = [f"| model | val CCC [{level}% CI] | {split} CCC [{level}% CI] | {split} ACC "
             f"[{level}% CI] | beats baseline "
             f"| vs {selection.get('best') or 'best'} (chosen on val) |",
             "|---|---|---|---|---|---|",
             f"| train-mean baseline | - | {ci_text(base)} | {ci_text(base, 'acc')} | - | - |",
             *_ceiling_row(report)]
    for m in models:
        e = report[m]
        vb, vs = e.get("vs_baseline") or {}, e.get("vs_best") or {}
        if vs:
            versus = _versus(e, report)
        else:
            versus = "chosen on val" if m == selection.get("best") else "-"
        beats = _share(vb.get("p_better")) if vb else "-"
        low = (((e.get("ci") or {}).get("mean") or {}).get("ccc") or [None])[0]
        if _finite(low) and low <= 0 and beats != "-":
            beats += "; its interval reaches 0"
        lines.append(f"| {m} | {_val_text(val.get(m, {}))} | {ci_text(e)} | "
                     f"{ci_text(e, 'acc')} | {beats} | {versus} |")
    method = {"bca": "BCa intervals", "percentile": "percentile intervals",
              "fisher_z": "Fisher-z intervals (bias-corrected, Student's t)",
              "bootstrap_t": "bootstrap-t intervals (studentised, on Fisher's z)"}.get(
        n.get("interval_method", "percentile"), "intervals")
    lines.append("")
    lines.append(f"{split} split: {base.get('n_videos', '?')} clips of "
                 f"{n.get('n_subjects', '?')} subjects; {method} and 'better in' shares from "
                 f"{n.get('n_boot', '?')} bootstrap resamples of subjects (models/bootstrap.py)"
                 + ("; one subject: no intervals." if n.get("n_subjects") == 1 else "."))
    return "\n".join([*lines, *_choice_line(selection, n.get("n_boot")), "",
                      *_trait_table(report, models, split, level),
                      *interval_table(report, models, split)]) + "\n"


CEILING_ROW = "ceiling: the labels' law without its noise"


def _ceiling_row(report: dict) -> list[str]:
    """The ceiling's row (a synthetic set): how far the chosen model is from the best
    any model can score on these clips; [] without one."""
    e = report.get("ceiling")
    if not e:
        return []
    versus = _versus(e, report) if e.get("vs_best") else "-"
    return [f"| {CEILING_ROW} | - | {ci_text(e)} | {ci_text(e, 'acc')} | - | {versus} |"]


def _choice_line(selection: dict, n_boot) -> list[str]:
    """How sure validation's choice is: the share of resamples of the validation subjects in
    which each model has the highest mean CCC (those under 0.5% left out); [] without shares."""
    shares = {m: v.get("chosen_share") for m, v in (selection.get("val") or {}).items()}
    ranked = sorted(((v, m) for m, v in shares.items() if _finite(v) and v >= 0.005),
                    reverse=True)
    if not ranked:
        return []
    return ["", f"Validation's choice over {n_boot or '?'} resamples of its subjects (the share "
                "in which each model has the highest val CCC): "
                + ", ".join(f"{m} {_share(v)}" for v, m in ranked) + "."]


def _trait_table(report: dict, models: list[str], split: str, level: int) -> list[str]:
    """Each trait's CCC with its interval, a row per model in the first table's order."""
    rows = [("train-mean baseline", report.get("baseline") or {}),
            *([(CEILING_ROW, report["ceiling"])] if report.get("ceiling") else []),
            *((m, report[m]) for m in models)]
    return [f"{split} CCC per trait [{level}% CI]:", "",
            f"| model | {' | '.join(TRAITS)} |", "|---|" + "---|" * len(TRAITS),
            *(f"| {name} | " + " | ".join(ci_text(entry, "ccc", t) for t in TRAITS) + " |"
              for name, entry in rows)]


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
            row["acc_lo"], row["acc_hi"] = entry["ci"]["mean"].get("acc", [None, None])
        if name in val:
            row["val_ccc"] = val[name].get("ccc")
            row["val_chosen_share"] = val[name].get("chosen_share")
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


def scatter_table(video_ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Long table for `dvc plots`: video_id, trait, true, pred; labelled (video, trait) pairs."""
    n = len(video_ids)
    table = pd.DataFrame({
        "video_id": np.tile(np.asarray(video_ids, dtype=object), len(TRAITS)),
        "trait": np.repeat(np.array(TRAITS, dtype=object), n),
        "true": y_true.T.reshape(-1),
        "pred": y_pred.T.reshape(-1),
    })
    return table[table["true"].notna()].reset_index(drop=True)
