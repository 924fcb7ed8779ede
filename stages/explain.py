"""explain: which behavioural features each trained model's predictions follow.

    python -m stages.explain      # reads params.yaml:explain and train.models,
                                  # data/manifest.parquet, data/functionals, data/predictions,
                                  # data/models/<model>/best.pt -> metrics/explain.json,
                                  # metrics/explain.md, metrics/explain/<model>.{png,csv}, MLflow

For every model of `train.models` (models/importance.py computes, with 95% intervals from a
bootstrap over subjects, `explain.bootstrap` resamples):

(a) correlation: Pearson r of every column of data/functionals (stages/functionals.py: AU, head,
    blink and audio functionals) with each trait's *prediction* over the clips of
    `explain.correlation_splits` (validation + test), beside the same r with the *labels* over
    the same clips (those the model has a prediction for; their count is the entry's n_clips)
    and the same subject resamples;
(b) permutation importance on `explain.permutation_split` (validation), for models whose input
    is a feature vector (functionals, audio_fn: one column at a time) or an AU sequence (aus: one
    AU channel across clips): the drop in CCC when the feature is shuffled across clips, mean of
    `explain.repeats` shuffles. Image and spectrogram models have no such features: (a) only.
    Cross-fitting (`explain.crossfit_folds`, closed-form models: functionals_ridge and _gbt):
    the train clips are scored too, in folds of subjects, each by a refit of the model's whole
    training procedure on the other folds (models/classical.refit), so every clip is scored by a
    model that never saw its subject, and the importance rests on train + val clips (125 on the
    default data) instead of val alone (28, 8 subjects: the intervals of the val-only ranking
    are too wide to rank the second and third cue). Each part's clips are shuffled among
    themselves; the bootstrap resamples the subjects of all parts. Test is never used.

Cue check (the default synthetic data only: the generator knows its law, `LABEL_WEIGHTS` in
personality/synthetic.py): each functional is mapped to the latent cue it measures (`CUE_RULES`,
from docs/frontend.md's and docs/audio.md's statistic per cue), and for each trait the stage asks
whether at least two of its three heaviest planted cues (by |weight|) are among the cues of its
`explain.top_k` most important features (permutation importance of `explain.cue_models` on
validation, cross-fitted over train). A "feature" there is a cluster of interchangeable
functionals (`cluster_distance`: 1 - |Spearman r| on the train clips, no labels; a cluster's cue
is the one most of its cue-carrying members measure, none on a tie), shuffled as one: one column
at a time, a cue read by many proxies loses its importance to each of them. Reported beside it:
the same check with each cluster's cue measured in the data (`explain.measured_cue_r`: the latent
cue of data/synthetic_cues.parquet its medoid follows on train within face photo, else the face
photo itself where it follows that: an identity proxy, never a hit), on the validation clips
alone, one column at a time and by cue. "share" is how often the check holds over the subject
resamples. bench/cue_check_power.py measures how often the check can pass on such data.

Outputs: metrics/explain.json (per model the top features per trait with intervals, the cue
check), metrics/explain/<model>.csv (every feature x trait: r with prediction and label,
importance, each with its interval), metrics/explain/<model>.png (heat map: the top features x
traits), metrics/explain/<model>_clusters.png (the cue models' top clusters, each shuffled as
one: the importances the cue check ranks), metrics/explain.md (the tables docs/evaluation.md shows), one MLflow run per model.
They live in metrics/explain/, not metrics/plots/: that folder is the evaluate stage's DVC
output, and two stages cannot own one folder.
"""
from __future__ import annotations

import dataclasses
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personality.common import (BaseParams, ParamsError, StageInputError, atomic_write_json,
                                atomic_write_text, experiment_models, find_checkpoint,
                                get_logger, load_base, load_params, mlflow_run, repo_root,
                                stage_errors, write_tracking_receipt)
from personality.cue_check import cluster_cue, cue_checks, cue_of, latent_cues
from personality.executor import local_processes, map_jobs
from personality.explain_report import markdown, write_cluster_png, write_model_files
from personality.schemas import TRAITS

log = get_logger("explain")

MANIFEST = Path("data/manifest.parquet")
FUNCTIONALS = Path("data/functionals/functionals.parquet")
SYNTHETIC_CUES = Path("data/synthetic_cues.parquet")  # ingest: the generator's cues (or empty)
PREDICTIONS = Path("data/predictions")
OUT_JSON = Path("metrics/explain.json")
OUT_MD = Path("metrics/explain.md")
OUT_DIR = Path("metrics/explain")
PERMUTABLE = ("functionals", "audio_fn", "aus")  # inputs whose features can be shuffled

@dataclasses.dataclass(frozen=True)
class ExplainParams:
    correlation_splits: list[str] = dataclasses.field(default_factory=lambda: ["val", "test"])
    permutation_split: str = "val"  # importance is measured here (never on test)
    # closed-form models: the train clips count too, each fold of subjects scored by a refit on
    # the other folds (crossfit); 0: the permutation_split clips alone
    crossfit_folds: int = 5
    repeats: int = 20  # shuffles per feature
    bootstrap: int = 200  # subject resamples behind every interval
    ci_level: float = 0.95
    top_k: int = 5  # features per trait in the JSON, the heat map and the cue check
    # functionals clustered by 1 - |Spearman r| on train (average linkage, cut here) and each
    # cluster shuffled as one feature; 0: one column at a time only
    cluster_distance: float = 0.3
    cue_models: list[str] = dataclasses.field(
        default_factory=lambda: ["functionals_gbt", "functionals_ridge"])
    # default data: each cluster also gets the latent cue its medoid follows at |Spearman r| >=
    # this on the train clips, and the check is reported with that measured cue too
    measured_cue_r: float = 0.5
    mlflow: bool = True
    dpi: int = 90

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.bootstrap < 1 or self.top_k < 1 or self.dpi < 1 or \
                not 0.5 <= self.ci_level < 1.0 or not self.correlation_splits or \
                not 0.0 <= self.cluster_distance < 1.0 or self.crossfit_folds < 0 or \
                self.crossfit_folds == 1 or self.permutation_split in ("test", "train"):
            raise ParamsError("explain: repeats, bootstrap, top_k, dpi >= 1; ci_level in [0.5, 1); "
                              "cluster_distance in [0, 1); correlation_splits not empty; "
                              "crossfit_folds 0 or >= 2; permutation_split not test or train")


# --------------------------------------------------------------------------------------------------
# inputs


def load_table(root: Path, splits: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The labelled clips of `splits` (manifest rows) joined with their functionals: (table
    indexed by video_id with split, subject_id, traits and features, the feature names)."""
    from personality.common import read_artifact

    manifest = read_artifact("manifest", path=root / MANIFEST)
    path = root / FUNCTIONALS
    if not path.exists():
        raise StageInputError(f"{path}: not found; run the functionals stage")
    fn = read_artifact("functionals", path=path)
    features = [c for c in fn.columns if c != "video_id"]
    rows = manifest[manifest["split"].isin(splits)].dropna(subset=list(TRAITS))
    table = rows.merge(fn, on="video_id", how="inner").set_index("video_id")
    if len(table) < 3:
        raise TooFewClips(f"{len(table)} labelled clips of {splits} with functionals: "
                          "too few to explain anything")
    return table, features


def video_predictions(root: Path, model: str, ids: list[str]) -> np.ndarray:
    """(n, 5) the model's video-level predictions for `ids` (NaN where it has none)."""
    path = root / PREDICTIONS / f"{model}.parquet"
    if not path.exists():
        raise StageInputError(f"{path}: no predictions of {model}; run train@{model}")
    pred = pd.read_parquet(path, columns=["video_id", *TRAITS]).groupby("video_id").mean()
    return pred.reindex(ids)[list(TRAITS)].to_numpy(np.float64)


def clusters_of(names: list[str], train: pd.DataFrame | None,
                max_distance: float) -> dict | None:
    """Feature clusters of a model's inputs (models/importance.feature_clusters on the train
    clips): {"names": medoid (+ how many others), "members", "cues", "groups": indices}, or None
    when the inputs are not functionals columns (AU channels) or clustering is off."""
    from models.importance import feature_clusters

    if max_distance <= 0 or train is None or len(train) < 3 or \
            not set(names) <= set(train.columns):
        return None
    groups, medoids = feature_clusters(train[names].to_numpy(np.float64), max_distance)
    members = [[names[i] for i in g] for g in groups]
    return {"groups": groups, "members": members, "cues": [cluster_cue(m) for m in members],
            "medoids": [names[m] for m in medoids],
            "names": [names[m] + (f" (+{len(g) - 1})" if len(g) > 1 else "")
                      for g, m in zip(groups, medoids)]}


@dataclasses.dataclass
class Scored:
    """Clips one model scores for permutation importance: the trained model on validation, or
    (cross-fitting) a refit that never saw their subjects on one fold of the train clips."""
    model: Any
    views: dict  # {video_id: {key: (V, ...) tensor}}: each clip's eval views
    y: np.ndarray  # (n, 5) labels
    subjects: list
    split: str


def _clips_of(root: Path, inputs: list[str], config: dict, clips: pd.DataFrame
              ) -> tuple[list, list[str], dict, pd.DataFrame]:
    """(sources, ids, views, rows) of the clips of `clips` that every input source has."""
    from models.data import build_sources
    from models.explain import clip_views

    sources = build_sources(inputs, root=root, video_ids=list(clips.index), config=config)
    ids = [v for v in clips.index if all(s.has(v) for s in sources)]
    return sources, ids, {v: clip_views(sources, v) for v in ids}, clips.loc[ids]


def crossfit(net: Any, key: str, ids: list[str], rows: pd.DataFrame, names: list[str],
             folds: int) -> list[Scored]:
    """The train clips `ids` (rows: their manifest + raw functionals) in `folds` folds by
    subject, each scored by a refit of `net` on the other folds: the functionals standardised
    with those folds' statistics (models/classical.standardised, as the source does in
    training), then the model's own grid searched again (models/classical.refit). [] when
    fewer than two subjects (a fold would hold clips of a subject its refit saw) or no clip."""
    import torch

    from models.classical import group_folds, refit, standardised

    g = rows["subject_id"].to_numpy()
    if len(set(g)) < 2:
        log.warning("explain: %d train subject(s): no cross-fitting", len(set(g)))
        return []
    raw = rows.reindex(columns=names).to_numpy(np.float64)  # (n, F), NaN where none
    y = rows[list(TRAITS)].to_numpy(np.float64)
    parts = []
    for held in group_folds(g, folds):
        fit = ~np.isin(np.arange(len(ids)), held)  # (n,) the clips this refit is fitted on
        keep = np.flatnonzero(fit)
        z = standardised(raw, fit)  # (n, F) float32, from the fitted folds' statistics
        views = {ids[i]: {key: torch.from_numpy(z[i:i + 1])} for i in held}
        zk = np.where(np.isnan(raw[keep]), np.nan, z[keep])  # missing: each fold's own fill
        parts.append(Scored(refit(net, zk.astype(np.float64), y[keep], g[keep], names),
                            views, y[held], list(g[held]), "train"))
    return parts


def scored_clips(root: Path, model: str, table: pd.DataFrame, p: ExplainParams
                 ) -> tuple[str, list[str], list[Scored]] | None:
    """(input key, feature names, parts): the p.permutation_split clips scored by the trained
    model, then (p.crossfit_folds, a closed-form model on functionals) the train clips scored
    by refits (crossfit). None when the model's inputs have no features to shuffle."""
    from models.data import for_inference
    from models.engine import load_checkpoint
    from models.contributions import feature_names

    net, ckpt = load_checkpoint(find_checkpoint(model, root))
    inputs = list(ckpt.get("inputs", []))
    key = next((k for k in PERMUTABLE if k in inputs), None)
    if key is None:
        return None
    config = for_inference(ckpt.get("source_config"))
    split = p.permutation_split
    sources, ids, views, rows = _clips_of(root, inputs, config, table[table["split"] == split])
    if not ids:
        log.warning("%s: no labelled %s clips with its inputs: no permutation importance",
                    model, split)
        return None
    names = feature_names(sources, key, int(views[ids[0]][key].shape[-1]))
    parts = [Scored(net, views, rows[list(TRAITS)].to_numpy(np.float64),
                    rows["subject_id"].tolist(), split)]
    if p.crossfit_folds and getattr(net, "closed_form", False) and key == "functionals":
        _, train_ids, _, train_rows = _clips_of(root, inputs, config,
                                                table[table["split"] == "train"])
        parts += crossfit(net, key, train_ids, train_rows, names, p.crossfit_folds)
    return key, names, parts


def permutation(root: Path, model: str, table: pd.DataFrame, p: ExplainParams,
                seed: int, train: pd.DataFrame | None = None) -> dict | None:
    """Permutation importance of `model` over the clips of scored_clips, or None when its inputs
    have no features to shuffle. {"key", "features", "importance", "n_clips", "n_val",
    "n_crossfit", "base_ccc"}; "clusters" and "cluster_importance" (each cluster of
    interchangeable functionals shuffled as one: clusters_of) when the inputs are functionals
    columns, with "cluster_importance_val" (the validation clips alone) when cross-fitted; and
    for p.cue_models "cues" and "cue_importance": all features of one cue shuffled together (one
    clip gives them all), which survives the cue's proxies standing in for each other (17 AU12
    statistics read one smile). Each part's clips are shuffled among themselves."""
    from models.explain import predict_views
    from models.importance import (bootstrap_weights, permutation_importance,
                                   permuted_predictions, weighted_ccc)

    scored = scored_clips(root, model, table, p)
    if scored is None:
        return None
    key, names, parts = scored
    y = np.concatenate([s.y for s in parts])  # (n, 5): validation first, then the train folds
    base = np.concatenate([predict_views(s.model, s.views) for s in parts])
    n_val = len(parts[0].y)
    w = bootstrap_weights([g for s in parts for g in s.subjects], n_boot=p.bootstrap, seed=seed)

    def importance(groups: list | None, what: str, val_alone: bool = False) -> tuple:
        perm = np.concatenate([permuted_predictions(
            s.model, s.views, key, repeats=p.repeats, seed=seed + i, groups=groups,
            desc=f"explain {model} {what} ({s.split} {i})") for i, s in enumerate(parts)],
            axis=2)  # (F or G, R, n, 5)
        whole = permutation_importance(y, base, perm, w, level=p.ci_level)
        if not val_alone or len(parts) == 1:
            return whole, None
        w_val = bootstrap_weights(parts[0].subjects, n_boot=p.bootstrap, seed=seed)
        return whole, permutation_importance(y[:n_val], base[:n_val], perm[:, :, :n_val],
                                             w_val, level=p.ci_level)

    out = {"key": key, "features": names, "n_clips": len(y), "n_val": n_val,
           "n_crossfit": len(parts) - 1, "importance": importance(None, "columns")[0],
           "base_ccc": weighted_ccc(y, base, np.ones((1, len(y))))[0],
           "base_ccc_val": weighted_ccc(y[:n_val], base[:n_val], np.ones((1, n_val)))[0]}
    clusters = clusters_of(names, train, p.cluster_distance)
    if clusters is not None:
        out["clusters"] = clusters
        out["cluster_importance"], out["cluster_importance_val"] = importance(
            clusters["groups"], "clusters", val_alone=True)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if cue_of(name) and model in p.cue_models:
            groups.setdefault(cue_of(name), []).append(i)
    if groups:
        out["cues"] = list(groups)
        out["cue_importance"] = importance(list(groups.values()), "cues")[0]
    return out


# --------------------------------------------------------------------------------------------------
# one model


def _top(stat: dict, features: list[str], k: int, by_abs: bool = False) -> dict:
    """{trait: [[feature, value, lo, hi], ...k]} by value (or |value|), best first."""
    from models.importance import top_indices

    value = stat["value"]
    idx = top_indices(np.abs(value) if by_abs else value, k)
    return {t: [[features[i], *(float(stat[s][i, j]) for s in ("value", "lo", "hi"))]
                for i in idx[:, j]] for j, t in enumerate(TRAITS)}


def explain_model(root: Path, model: str, tables: tuple[pd.DataFrame, pd.DataFrame],
                  features: list[str], p: ExplainParams,
                  seed: int, train: pd.DataFrame | None = None) -> tuple[dict, dict | None]:
    """One model's entry (correlations with its predictions and with the labels over the clips
    of tables[0] it has a prediction for, their top features per trait, permutation importance
    over tables[1] when its inputs allow, the CSV and heat map paths) and the full permutation
    result (None without one)."""
    from models.importance import paired_correlations

    table, perm_table = tables
    pred = video_predictions(root, model, list(table.index))  # (n, 5), NaN where none
    corr, labels_r, keep = paired_correlations(
        table[features].to_numpy(np.float64), pred, table[list(TRAITS)].to_numpy(np.float64),
        table["subject_id"].tolist(), n_boot=p.bootstrap, seed=seed, level=p.ci_level)
    entry = {"n_clips": int(keep.sum()), "splits": list(p.correlation_splits),
             "n_subjects": int(table.loc[keep, "subject_id"].nunique()),
             "n_without_prediction": int((~keep).sum()),  # left out of both r's
             "top_r_prediction": _top(corr, features, p.top_k, by_abs=True),
             "top_r_label": _top(labels_r, features, p.top_k, by_abs=True)}  # same clips
    perm = permutation(root, model, perm_table, p, seed, train)
    if perm is not None:
        entry["permutation"] = {
            "key": perm["key"], "split": p.permutation_split, "n_clips": perm["n_clips"],
            "n_val": perm["n_val"], "crossfit_folds": perm["n_crossfit"],
            "clips": [p.permutation_split] + (["train (cross-fitted)"] if perm["n_crossfit"]
                                              else []),
            "repeats": p.repeats, "metric": "CCC drop when the feature is shuffled",
            "base_ccc": dict(zip(TRAITS, map(float, perm["base_ccc"]))),  # over "clips"
            "base_ccc_val": dict(zip(TRAITS, map(float, perm["base_ccc_val"]))),
            "top": _top(perm["importance"], perm["features"], p.top_k)}
        if "cues" in perm:
            entry["permutation"]["cues"] = _top(perm["cue_importance"], perm["cues"],
                                                len(perm["cues"]))
        if "clusters" in perm:
            c = perm["clusters"]
            entry["permutation"]["clusters"] = {
                "max_distance": p.cluster_distance, "n_clusters": len(c["names"]),
                "top": _top(perm["cluster_importance"], c["names"], p.top_k),
                "top_val": (_top(perm["cluster_importance_val"], c["names"], p.top_k)
                            if perm["cluster_importance_val"] is not None else None),
                "members": dict(zip(c["names"], c["members"])),
                "cues": dict(zip(c["names"], c["cues"]))}
    else:
        entry["permutation"] = None
    entry["csv"], entry["png"] = write_model_files(root, OUT_DIR, model, features, corr, labels_r,
                                                   perm, p)
    clusters_png = write_cluster_png(root, OUT_DIR, model, perm, p)
    if clusters_png is not None:
        entry["png_clusters"] = clusters_png
    return entry, perm


def _explain_job(job: dict) -> tuple[dict, dict | None, float]:
    """explain_model in a worker process (models are explained independently), and its
    seconds."""
    t0 = time.perf_counter()
    entry, perm = explain_model(job["root"], job["model"], job["tables"], job["features"],
                                job["params"], job["seed"], job["train"])
    return entry, perm, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# the stage


def _cue_law(table: pd.DataFrame) -> tuple[np.ndarray, list[str]] | None:
    """The generator's weights and cue names when the clips are the default synthetic ones."""
    if "dataset" not in table or not (table["dataset"] == "synthetic").all():
        return None
    from personality.synthetic import CUES, LABEL_WEIGHTS

    return LABEL_WEIGHTS, list(CUES)


def log_to_mlflow(report: dict, root: Path) -> None:
    """One run per model: its heat map, CSV and entry; cue hits as metrics."""
    for model, entry in report["models"].items():
        with mlflow_run("explain", run_name=f"explain:{model}", tags={"model": model},
                        params={"model": model, **report["params"]},
                        manifest=root / MANIFEST, context="evaluation") as mlf:
            for key in ("png", "png_clusters", "csv"):
                if key in entry:
                    mlf.log_artifact(str(root / entry[key]), artifact_path="explain")
            mlf.log_dict(entry, "explain.json")
            for kind, suffix in (("cue_check", ""), ("cue_check_val", "_val"),
                                 ("cue_check_measured", "_measured")):
                check = (report.get(kind) or {}).get(model)
                if check:
                    mlf.log_metrics({f"cue_hits{suffix}_{t}": c["hits"] for t, c in check.items()})
                    mlf.log_metric(f"cue_traits_passed{suffix}",
                                   sum(c["pass"] for c in check.values()))


class TooFewClips(StageInputError):
    """Too few labelled clips to correlate or permute anything: the stage says so and the
    pipeline goes on (a small corpus, or one labelled on train only)."""


def _skip(root: Path, reason: str) -> dict:
    """Outputs that say why nothing was explained (as retrain does without a user study)."""
    log.warning("explain skipped: %s", reason)
    (root / OUT_DIR).mkdir(parents=True, exist_ok=True)
    report = {"skipped": reason}
    atomic_write_json(root / OUT_JSON, report)
    atomic_write_text(root / OUT_MD, f"explain skipped: {reason}\n")
    return report


def longest_first(models: list[str], cue_models: list[str]) -> list[str]:
    """The order to explain `models` in: the cue models first. Cross-fitted, they are the
    longest jobs (functionals_gbt's five refits and 125-clip shuffles: ~60 s, the six other
    default models ~50 s together), so the other worker explains the rest meanwhile."""
    return [m for m in cue_models if m in models] + [m for m in models if m not in cue_models]


def run(params: ExplainParams, base: BaseParams | None = None, root: Path | None = None,
        models: list[str] | None = None) -> dict:
    """Explain `models` (default: train.models) under `root`; returns the report written to
    metrics/explain.json."""
    from models.importance import bootstrap_weights, correlations
    from models.metrics import json_safe

    root = Path(root or repo_root())
    base = base or BaseParams()
    seed = base.seed
    models = models or experiment_models() or []
    clustering = params.cluster_distance > 0  # the clusters are computed on the train clips
    splits = sorted(set(params.correlation_splits) | {params.permutation_split}
                    | ({"train"} if clustering or params.crossfit_folds else set()))
    try:
        table, features = load_table(root, splits)
    except TooFewClips as exc:
        return _skip(root, str(exc))
    corr_table = table[table["split"].isin(params.correlation_splits)]
    # every labelled clip of the correlation splits, whatever a model predicts: each model's
    # entry has the label's r again over the clips it has predictions for (paired_correlations)
    w = bootstrap_weights(corr_table["subject_id"].tolist(), n_boot=params.bootstrap, seed=seed)
    labels_r = correlations(corr_table[features].to_numpy(np.float64),
                            corr_table[list(TRAITS)].to_numpy(np.float64), w,
                            level=params.ci_level)
    report: dict = {"params": dataclasses.asdict(params), "n_features": len(features),
                    "labels": {"n_clips": len(corr_table),
                               "top_r": _top(labels_r, features, params.top_k, by_abs=True)},
                    "models": {}, "cue_check": {}, "cue_check_val": {},
                    "cue_check_measured": {}, "cue_check_columns": {}, "cue_check_grouped": {}}
    law = _cue_law(table)
    latent = latent_cues(root / SYNTHETIC_CUES) if law is not None else None
    train = table.loc[table["split"] == "train", features] if clustering else None
    ordered = longest_first(models, params.cue_models)  # the report keeps train.models' order
    jobs = [{"root": root, "model": model, "tables": (corr_table, table), "features": features,
             "params": params, "seed": seed, "train": train}
            for model in ordered]
    # one process per model (torch at one thread each): both cores of a 2-core box
    where = local_processes(len(jobs), base.workers)
    explained = dict(zip(ordered, map_jobs(_explain_job, jobs, workers=where.workers,
                                           label=itemgetter("model"), where=where)))
    for model in models:
        entry, perm, seconds = explained[model]
        report["models"][model] = entry
        if law is not None and perm is not None and model in params.cue_models:
            checks, measured = cue_checks(perm, law, params.top_k, train, latent,
                                          params.measured_cue_r)
            for kind, check in checks.items():
                report[kind][model] = check
            if measured is not None:
                entry["permutation"]["clusters"]["measured_cues"] = measured
        log.info("%s: explained (%s) in %.1f s", model, "permutation + correlation"
                 if perm is not None else "correlation only", seconds)
    report = json_safe(report)
    atomic_write_json(root / OUT_JSON, report)
    atomic_write_text(root / OUT_MD, markdown(report))
    if params.mlflow and report["models"]:
        log_to_mlflow(report, root)
    return report


def main(argv: list[str] | None = None) -> None:
    with stage_errors("explain"):
        base = load_base()
        params = load_params("explain", ExplainParams)
        run(params, base, models=experiment_models())
        write_tracking_receipt("explain", tracked=params.mlflow)


if __name__ == "__main__":
    main()
