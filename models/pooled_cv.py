"""Cross-validation's figures with intervals: every fold's test predictions pooled, so that each
subject of the dataset is scored once (by the fold that held it out), and a bootstrap over all
of them.

    pooled = pool_folds([(manifest_k, {"ridge": preds_k, "trees": preds_k2}) for k in folds])
    table = pooled_figures(pooled, n_boot=1000, level=0.95, seed=1234, best="ridge")
    table["trees"]["ccc"], table["trees"]["ccc_ci"], table["trees"]["vs_best"]["delta_ccc"]
    pairs = pairwise(pooled, ["ridge", "trees"], n_boot=1000, level=0.95, seed=1234)
    # both from one bootstrap: draws = draw(pooled, n_boot=1000, seed=1234); pass draws=draws

scripts/cv.py reads each fold's manifest and predictions from its DVC experiment and prints
these beside the per-fold table. The mean and sd of per-fold test CCCs say how much a number
owes to the split; they are no interval (five folds of one dataset are not five independent
draws). Pooled, the test scores of k folds rest on every subject (50 on the default data, not
the 8-10 of one fold), and their interval comes from the same subject bootstrap as evaluate's
(models/bootstrap.py, the method `evaluate.interval` names). Two caveats: each fold's scores
come from a model trained on the other folds, so the pooled CCC also counts the folds'
differences in calibration (Forman & Scholz 2010: pooled scores can sit below the per-fold
mean); and the folds' models are refits, so this measures the training procedure, not one
shipped model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.bootstrap import (DEFAULT_METHOD, bootstrap_scores, common_clips, model_uncertainty,
                              paired, subject_jackknife, subject_resamples, subjects_for)
from personality.schemas import TRAITS

__all__ = ["pool_folds", "draw", "pooled_figures", "pairwise"]

RETRAINED = "+retrained"  # a model fine-tuned on user-study ratings (stages/retrain.py SUFFIX)


def pool_folds(folds: list[tuple[pd.DataFrame, dict[str, pd.DataFrame]]]) -> dict:
    """The labelled test clips of every fold, once each: {"labels": (n, 5), "subjects": (n,),
    "video_ids": (n,), "folds": (n,) the fold index, "predictions": {model: (n, 5), NaN for the
    clips of a fold without that model's predictions}, "stale": [(fold, model, why)]
    predictions left out, "missing_subjects": labelled subjects no fold tests}. A fold is (its
    manifest: video_id, subject_id, split, the traits; {model: its predictions file: video_id,
    split, the traits, one or more rows per video, averaged as evaluate averages them}). A
    predictions file with a clip its fold's manifest lacks, or whose splits are not its fold's
    (an older run's output, made on another split), is left out, never mixed in. A clip held
    out by two folds is an error: the folds would not partition the subjects."""
    parts = []
    for k, (manifest, _) in enumerate(folds):
        test = manifest[(manifest["split"] == "test") & manifest[list(TRAITS)].notna().any(axis=1)]
        parts.append(test.assign(fold=k)[["video_id", "subject_id", "fold", *TRAITS]])
    clips = pd.concat(parts, ignore_index=True)
    twice = clips["video_id"][clips["video_id"].duplicated()]
    if len(twice):
        raise ValueError(f"clip {twice.iloc[0]} is in the test split of two folds: the folds do "
                         "not partition the subjects (pooling needs each clip scored once)")
    row = {v: i for i, v in enumerate(clips["video_id"])}
    predictions: dict[str, np.ndarray] = {}
    stale = []
    for k, (manifest, preds) in enumerate(folds):
        for model, frame in preds.items():
            why = _not_of_fold(frame, manifest)
            if why:
                stale.append((k, model, why))
                continue
            test = frame[frame["split"] == "test"]
            test = test.groupby("video_id")[list(TRAITS)].mean(skipna=False)
            out = predictions.setdefault(model, np.full((len(clips), len(TRAITS)), np.nan))
            for vid, values in zip(test.index, test.to_numpy(np.float64)):
                if vid in row:  # (an unlabelled test clip is not scored)
                    out[row[vid]] = values
    labelled = {str(s) for manifest, _ in folds
                for s in manifest.loc[manifest[list(TRAITS)].notna().any(axis=1), "subject_id"]}
    return {"labels": clips[list(TRAITS)].to_numpy(np.float64),
            "subjects": clips["subject_id"].to_numpy(), "video_ids": clips["video_id"].to_numpy(),
            "folds": clips["fold"].to_numpy(),
            "predictions": {m: p for m, p in predictions.items() if np.isfinite(p).any()},
            "stale": stale,
            "missing_subjects": sorted(labelled - set(clips["subject_id"].astype(str)))}


def _not_of_fold(frame: pd.DataFrame, manifest: pd.DataFrame) -> str | None:
    """Why a predictions file cannot be this fold's (None when it can): a clip the manifest
    lacks, or a clip in another split than the manifest's."""
    split_of = dict(zip(manifest["video_id"], manifest["split"]))
    for vid, split in zip(frame["video_id"], frame["split"]):
        if vid not in split_of:
            return f"clip {vid} is not in the fold's manifest"
        if split_of[vid] != split:
            return (f"made on another split (an older run's): clip {vid} is {split} there, "
                    f"{split_of[vid]} in the fold")
    return None


@dataclass(frozen=True)
class Draws:
    """The bootstrap every pooled figure and comparison reads: `rows` (resamples of the pooled
    subjects), `jack` (leave-one-subject-out rows) and `samples` (each model's bootstrap_scores
    on them), drawn once by `draw` and shared by pooled_figures and pairwise."""
    rows: list
    jack: list
    samples: dict
    method: str


def draw(pooled: dict, *, n_boot: int, seed: int, method: str = DEFAULT_METHOD) -> Draws:
    """Every pooled model scored on `n_boot` resamples of the pooled subjects."""
    subjects = pooled["subjects"]
    rows = subject_resamples(subjects, n_boot=n_boot, seed=seed)
    jack = subject_jackknife(subjects)
    samples = bootstrap_scores(pooled["labels"], pooled["predictions"], rows, jackknife=jack,
                               subjects=subjects_for(method, subjects))
    return Draws(rows, jack, samples, method)


def pooled_figures(pooled: dict, *, n_boot: int, level: float, seed: int, best: str | None,
                   method: str = DEFAULT_METHOD, draws: Draws | None = None) -> dict[str, dict]:
    """Per model: "ccc" (mean over traits, on the pooled clips it predicts), "ccc_ci" (its
    interval at `level` from `n_boot` resamples of the pooled subjects), "per_trait" ({trait:
    {"ccc", "ccc_ci"}}), "n_videos", "n_subjects", "n_folds" (folds with its predictions),
    "level" and, for models other than `best`, "vs_best": the paired difference to `best` on
    the clips both predict ({"model", "delta_ccc_point", "delta_ccc", "p_better", "n_videos"});
    for a model retrained on the user-study ratings (<model>+retrained) also "vs_base", the
    same against <model>. `draws`: `draw`'s, where already drawn."""
    draws = draws or draw(pooled, n_boot=n_boot, seed=seed, method=method)
    subjects, preds = pooled["subjects"], pooled["predictions"]
    out: dict[str, dict] = {}
    for model, pred in preds.items():
        scored = np.isfinite(pred).any(axis=1)
        point = draws.samples[model]["point"]["ccc"]
        ci = model_uncertainty(draws.samples[model], TRAITS, level=level, method=method)
        out[model] = {"ccc": float(np.mean(point)) if np.isfinite(point).all() else None,
                      "ccc_ci": _finite(ci["mean"]["ccc"]),
                      "per_trait": {t: {"ccc": float(point[j]) if math.isfinite(point[j]) else None,
                                        "ccc_ci": _finite(ci[t]["ccc"])}
                                    for j, t in enumerate(TRAITS)},
                      "n_videos": int(scored.sum()),
                      "n_subjects": len(np.unique(subjects[scored].astype(str))),
                      "n_folds": len(np.unique(pooled["folds"][scored])), "level": level}
    for model in preds:
        if best in preds and model != best:
            out[model]["vs_best"] = _versus(model, best, pooled, draws, level)
        base = model.removesuffix(RETRAINED)
        if base != model and base in preds:  # what the user-study retraining changed
            out[model]["vs_base"] = _versus(model, base, pooled, draws, level)
    return out


def pairwise(pooled: dict, models: list[str], *, n_boot: int, level: float, seed: int,
             method: str = DEFAULT_METHOD, draws: Draws | None = None
             ) -> dict[str, dict[str, dict]]:
    """Every pair of `models` compared on the pooled clips both predict, on the resamples
    pooled_figures draws: {a: {b: {"delta_ccc_point" (a - b), "delta_ccc" [lo, hi], "p_better",
    "n_videos"}}} for a before b in `models` (b - a is the same, negated). Which differences
    among the models behind the best one hold, which pooled_figures' `vs_best` does not say."""
    draws = draws or draw(pooled, n_boot=n_boot, seed=seed, method=method)
    names = [m for m in models if m in pooled["predictions"]]
    out: dict[str, dict[str, dict]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            versus = _versus(a, b, pooled, draws, level)
            out.setdefault(a, {})[b] = {k: v for k, v in versus.items() if k != "model"}
    return out


def _versus(a: str, b: str, pooled: dict, draws: Draws, level: float) -> dict:
    """a - b, paired on the pooled clips both models predict: from the shared draws where both
    predict the same clips, as evaluate's comparisons do, else scored again on the common ones."""
    preds = pooled["predictions"]
    pa, pb, n = common_clips(preds[a], preds[b])
    samples = draws.samples
    if not (np.array_equal(pa, preds[a], equal_nan=True)
            and np.array_equal(pb, preds[b], equal_nan=True)):
        samples = bootstrap_scores(pooled["labels"], {a: pa, b: pb}, draws.rows,
                                   jackknife=draws.jack,
                                   subjects=subjects_for(draws.method, pooled["subjects"]))
    got = paired(samples[a], samples[b], level=level, method=draws.method)
    return {"model": b, "delta_ccc_point": got.get("delta_ccc_point"),
            "delta_ccc": _finite(got["delta_ccc"]), "p_better": got["p_better"], "n_videos": n}


def _finite(pair: list[float]) -> list[float | None]:
    """[lo, hi] with NaN ends as None (JSON null: no interval)."""
    return [float(v) if v is not None and math.isfinite(v) else None for v in pair]
