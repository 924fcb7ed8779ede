"""explain: which behavioural features each trained model's predictions follow.

    python -m stages.explain      # reads params.yaml:explain and train.models,
                                  # data/manifest.parquet, data/functionals, data/predictions,
                                  # data/models/<model>/best.pt -> metrics/explain.json,
                                  # metrics/explain.md, metrics/explain/<model>.{png,csv}, MLflow

For every model of `train.models` (models/importance.py computes, with 95% intervals from a
bootstrap over subjects, `explain.bootstrap` resamples):

(a) correlation: Pearson r of every column of data/functionals (stages/functionals.py: AU, head,
    blink and audio functionals) with each trait's *prediction* over the clips of
    `explain.correlation_splits` (validation + test), beside the same r with the *labels*;
(b) permutation importance on `explain.permutation_split` (validation), for models whose input
    is a feature vector (functionals, audio_fn: one column at a time) or an AU sequence (aus: one
    AU channel across clips): the drop in CCC when the feature is shuffled across clips, mean of
    `explain.repeats` shuffles. Image and spectrogram models have no such features: (a) only.

Cue check (the default synthetic data only: the generator knows its law, `LABEL_WEIGHTS` in
personality/synthetic.py): each functional is mapped to the latent cue it measures (`CUE_RULES`,
from docs/frontend.md's and docs/audio.md's statistic per cue), and for each trait the stage asks
whether at least two of its three heaviest planted cues (by |weight|) are among the cues of its
`explain.top_k` most important features (permutation importance of `explain.cue_models` on
validation). A "feature" there is a cluster of interchangeable functionals (`cluster_distance`:
1 - |Spearman r| on the train clips, no labels; a cluster's cue is the one most of its members
measure), shuffled as one: one column at a time, a cue read by many proxies loses its importance
to each of them. The column-at-a-time and the by-cue checks are reported beside it. "share" is
how often the check holds over the subject resamples.

Outputs: metrics/explain.json (per model the top features per trait with intervals, the cue
check), metrics/explain/<model>.csv (every feature x trait: r with prediction and label,
importance, each with its interval), metrics/explain/<model>.png (heat map: the top features x
traits), metrics/explain.md (the tables docs/evaluation.md shows), one MLflow run per model.
They live in metrics/explain/, not metrics/plots/: that folder is the evaluate stage's DVC
output, and two stages cannot own one folder.
"""
from __future__ import annotations

import dataclasses
import time
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

from personality.common import (BaseParams, ParamsError, StageInputError, atomic_write_json,
                                atomic_write_text, experiment_models, find_checkpoint,
                                get_logger, load_params, mlflow_run, repo_root, stage_errors,
                                write_tracking_receipt)
from personality.cue_check import cluster_cue, cue_check, cue_of, same_cue
from personality.executor import local_processes, map_jobs
from personality.schemas import TRAITS

log = get_logger("explain")

MANIFEST = Path("data/manifest.parquet")
FUNCTIONALS = Path("data/functionals/functionals.parquet")
PREDICTIONS = Path("data/predictions")
OUT_JSON = Path("metrics/explain.json")
OUT_MD = Path("metrics/explain.md")
OUT_DIR = Path("metrics/explain")
PERMUTABLE = ("functionals", "audio_fn", "aus")  # inputs whose features can be shuffled

@dataclasses.dataclass(frozen=True)
class ExplainParams:
    correlation_splits: list[str] = dataclasses.field(default_factory=lambda: ["val", "test"])
    permutation_split: str = "val"  # importance is measured here (never on test)
    repeats: int = 20  # shuffles per feature
    bootstrap: int = 200  # subject resamples behind every interval
    ci_level: float = 0.95
    top_k: int = 5  # features per trait in the JSON, the heat map and the cue check
    # functionals clustered by 1 - |Spearman r| on train (average linkage, cut here) and each
    # cluster shuffled as one feature; 0: one column at a time only
    cluster_distance: float = 0.3
    cue_models: list[str] = dataclasses.field(
        default_factory=lambda: ["functionals_gbt", "functionals_ridge"])
    mlflow: bool = True
    dpi: int = 90

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.bootstrap < 1 or self.top_k < 1 or \
                not 0.5 <= self.ci_level < 1.0 or not self.correlation_splits or \
                not 0.0 <= self.cluster_distance < 1.0:
            raise ParamsError("explain: repeats, bootstrap, top_k >= 1; ci_level in [0.5, 1); "
                              "cluster_distance in [0, 1); correlation_splits not empty")


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
            "names": [names[m] + (f" (+{len(g) - 1})" if len(g) > 1 else "")
                      for g, m in zip(groups, medoids)]}


def permutation(root: Path, model: str, table: pd.DataFrame, p: ExplainParams,
                seed: int, train: pd.DataFrame | None = None) -> dict | None:
    """Permutation importance of `model` on p.permutation_split, or None when its inputs have
    no features to shuffle. {"key", "features", "importance": {...}, "n_clips", "base_ccc"};
    "clusters" and "cluster_importance" (each cluster of interchangeable functionals shuffled
    as one: clusters_of) when the inputs are functionals columns; and for p.cue_models "cues"
    and "cue_importance": all features of one cue shuffled
    together (one clip gives them all), which survives the cue's proxies standing in for each
    other (17 AU12 statistics read one smile)."""
    from models.data import build_sources, for_inference
    from models.engine import load_checkpoint
    from models.explain import clip_views, feature_names, predict_views
    from models.importance import (bootstrap_weights, permutation_importance,
                                   permuted_predictions, weighted_ccc)

    net, ckpt = load_checkpoint(find_checkpoint(model, root))
    inputs = list(ckpt.get("inputs", []))
    key = next((k for k in PERMUTABLE if k in inputs), None)
    if key is None:
        return None
    clips = table[table["split"] == p.permutation_split]
    sources = build_sources(inputs, root=root, video_ids=list(clips.index),
                            config=for_inference(ckpt.get("source_config")))
    ids = [v for v in clips.index if all(s.has(v) for s in sources)]
    views = {v: clip_views(sources, v) for v in ids}
    y = clips.loc[ids, list(TRAITS)].to_numpy(np.float64)
    base = predict_views(net, views)  # (n, 5)
    perm = permuted_predictions(net, views, key, repeats=p.repeats, seed=seed,
                                desc=f"explain {model}")  # (F, R, n, 5)
    w = bootstrap_weights(clips.loc[ids, "subject_id"].tolist(), n_boot=p.bootstrap, seed=seed)
    names = feature_names(sources, key, perm.shape[0])
    out = {"key": key, "features": names, "n_clips": len(ids),
           "importance": permutation_importance(y, base, perm, w, level=p.ci_level),
           "base_ccc": weighted_ccc(y, base, np.ones((1, len(y))))[0]}
    clusters = clusters_of(names, train, p.cluster_distance)
    if clusters is not None:
        cperm = permuted_predictions(net, views, key, repeats=p.repeats, seed=seed,
                                     groups=clusters["groups"],
                                     desc=f"explain {model} clusters")
        out["clusters"] = clusters
        out["cluster_importance"] = permutation_importance(y, base, cperm, w, level=p.ci_level)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if cue_of(name) and model in p.cue_models:
            groups.setdefault(cue_of(name), []).append(i)
    if groups:
        gperm = permuted_predictions(net, views, key, repeats=p.repeats, seed=seed,
                                     groups=list(groups.values()), desc=f"explain {model} cues")
        out["cues"] = list(groups)
        out["cue_importance"] = permutation_importance(y, base, gperm, w, level=p.ci_level)
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
                  features: list[str], labels_r: dict, p: ExplainParams,
                  seed: int, train: pd.DataFrame | None = None) -> tuple[dict, dict | None]:
    """One model's entry (correlations with its predictions over tables[0] and their top
    features per trait, permutation importance over tables[1] when its inputs allow, the CSV and
    heat map paths) and the full permutation result (None without one)."""
    from models.importance import bootstrap_weights, correlations

    table, perm_table = tables
    ids = list(table.index)
    pred = video_predictions(root, model, ids)
    keep = np.isfinite(pred).all(axis=1)
    x = table.loc[keep, features].to_numpy(np.float64)
    w = bootstrap_weights(table.loc[keep, "subject_id"].tolist(), n_boot=p.bootstrap, seed=seed)
    corr = correlations(x, pred[keep], w, level=p.ci_level)
    entry = {"n_clips": int(keep.sum()), "splits": list(p.correlation_splits),
             "top_r_prediction": _top(corr, features, p.top_k, by_abs=True)}
    perm = permutation(root, model, perm_table, p, seed, train)
    if perm is not None:
        entry["permutation"] = {
            "key": perm["key"], "split": p.permutation_split, "n_clips": perm["n_clips"],
            "repeats": p.repeats, "metric": "CCC drop when the feature is shuffled",
            "base_ccc": dict(zip(TRAITS, map(float, perm["base_ccc"]))),
            "top": _top(perm["importance"], perm["features"], p.top_k)}
        if "cues" in perm:
            entry["permutation"]["cues"] = _top(perm["cue_importance"], perm["cues"],
                                                len(perm["cues"]))
        if "clusters" in perm:
            c = perm["clusters"]
            entry["permutation"]["clusters"] = {
                "max_distance": p.cluster_distance, "n_clusters": len(c["names"]),
                "top": _top(perm["cluster_importance"], c["names"], p.top_k),
                "members": dict(zip(c["names"], c["members"])),
                "cues": dict(zip(c["names"], c["cues"]))}
    else:
        entry["permutation"] = None
    entry["csv"], entry["png"] = write_model_files(root, model, features, corr, labels_r, perm,
                                                   p)
    return entry, perm


def _explain_job(job: dict) -> tuple[dict, dict | None, float]:
    """explain_model in a worker process (models are explained independently), and its
    seconds."""
    t0 = time.perf_counter()
    entry, perm = explain_model(job["root"], job["model"], job["tables"], job["features"],
                                job["labels_r"], job["params"], job["seed"], job["train"])
    return entry, perm, time.perf_counter() - t0


def write_model_files(root: Path, model: str, features: list[str], corr: dict, labels_r: dict,
                      perm: dict | None, p: ExplainParams) -> tuple[str, str]:
    """metrics/explain/<model>.csv (every feature x trait) and .png (the top rows)."""
    from personality.common import atomic_write_text
    from personality.explain_plots import heatmap_png, top_features

    cols = {"r_prediction": corr, "r_label": labels_r}
    imp = None
    if perm is not None:  # importance on its own feature list (aus channels, audio_fn columns)
        pos = {f: i for i, f in enumerate(perm["features"])}
        imp = {s: np.array([perm["importance"][s][pos[f]] if f in pos else [np.nan] * 5
                            for f in features]) for s in ("value", "lo", "hi")}
        cols["importance"] = imp
    rows = [{"feature": f, "cue": cue_of(f), "trait": t,
             **{f"{c}{suffix}": float(stat[s][i, j]) for c, stat in cols.items()
                for s, suffix in (("value", ""), ("lo", "_lo"), ("hi", "_hi"))}}
            for i, f in enumerate(features) for j, t in enumerate(TRAITS)]
    out = root / OUT_DIR
    csv = atomic_write_text(out / f"{model}.csv", pd.DataFrame(rows).to_csv(
        index=False, float_format="%.4g"))
    lead = imp["value"] if imp is not None and np.isfinite(imp["value"]).any() else corr["value"]
    shown = top_features(lead, features, p.top_k)
    panels = {"r with prediction": corr["value"][shown], "r with label": labels_r["value"][shown]}
    if imp is not None:
        panels["permutation importance (CCC drop)"] = imp["value"][shown]
    png = heatmap_png(panels, [features[i] for i in shown], path=out / f"{model}.png",
                      row_notes=[cue_of(features[i]) for i in shown], dpi=p.dpi,
                      title=f"{model}: top features per trait ({'/'.join(p.correlation_splits)}"
                            f" clips; importance on {p.permutation_split})")
    return str(csv.relative_to(root)), str(png.relative_to(root))


# --------------------------------------------------------------------------------------------------
# the stage


def _fmt_ci(v: float | None, lo: float | None, hi: float | None) -> str:
    """'0.123 [0.045, 0.210]'; n/a for a value JSON holds as null (NaN)."""
    f = [("n/a" if x is None else f"{x:.3f}") for x in (v, lo, hi)]
    return f"{f[0]} [{f[1]}, {f[2]}]"


def _check_table(check: dict, top: dict, cues: dict | None, title: str) -> list[str]:
    """A cue check as markdown lines: per trait its planted cues, its top features with their
    cues (`cues` by name, else cue_of) and importance, hits and the share of resamples."""
    lines = [title, "", "| trait | heaviest planted cues | top 5 features (cue): CCC drop "
             "[95% CI] | hits | ≥ 2 | share of resamples | chance |",
             "|---|---|---|---|---|---|---|"]
    for t, c in check.items():
        tops = "; ".join(f"{f} ({(cues[f] if cues else cue_of(f)) or '-'}): "
                         f"{_fmt_ci(v, lo, hi)}" for f, v, lo, hi in top[t])
        lines.append(f"| {t} | {', '.join(c['planted'])} | {tops} | {c['hits']}/3 | "
                     f"{'yes' if c['pass'] else 'no'} | {c['share_pass']:.0%} | "
                     f"{c['chance_pass']:.0%} |")
    return lines + [""]


def markdown(report: dict) -> str:
    """metrics/explain.md: the cue check and each model's strongest feature per trait."""
    lines = []
    for model, check in (report.get("cue_check") or {}).items():
        imp = report["models"][model]["permutation"]
        clusters = imp.get("clusters")
        if clusters is None:
            continue  # no clusters: the column table below is the check
        lines += _check_table(
            check, clusters["top"], clusters["cues"],
            f"**Cue check, {model}** (features: {clusters['n_clusters']} clusters of "
            f"interchangeable functionals, |Spearman r| on train, cut at distance "
            f"{clusters['max_distance']}, each shuffled as one; named by its most central "
            f"member, (+k) other members; permutation importance on {imp['split']}, "
            f"{imp['n_clips']} clips, {imp['repeats']} shuffles; 95% intervals over subjects):")
    for model, check in (report.get("cue_check_columns") or {}).items():
        imp = report["models"][model]["permutation"]
        lines += _check_table(
            check, imp["top"], None,
            f"**Cue check one column at a time, {model}** (permutation importance on "
            f"{imp['split']}, {imp['n_clips']} clips, {imp['repeats']} shuffles; 95% intervals "
            f"over subjects):")
    for model, check in (report.get("cue_check_grouped") or {}).items():
        imp = report["models"][model]["permutation"]
        lines += [f"**Cue check by cue, {model}** (all functionals of a cue shuffled together; "
                  "the three most important of the 10 cues; chance of >= 2 hits: 18%):", "",
                  "| trait | heaviest planted cues | top 3 cues: CCC drop [95% CI] | hits | ≥ 2 | "
                  "share of resamples |", "|---|---|---|---|---|---|"]
        for t, c in check.items():
            tops = "; ".join(f"{f}: {_fmt_ci(v, lo, hi)}" for f, v, lo, hi in imp["cues"][t][:3])
            lines.append(f"| {t} | {', '.join(c['planted'])} | {tops} | {c['hits']}/3 | "
                         f"{'yes' if c['pass'] else 'no'} | {c['share_pass']:.0%} |")
        lines.append("")
    lines += ["**Strongest correlate of each trait's prediction** (functional with the largest "
              "|r| over the correlation clips; r [95% CI])", "",
              "| model | " + " | ".join(TRAITS) + " |", "|---|" + "---|" * len(TRAITS)]
    for model, entry in report["models"].items():
        cells = [f"{f[0]} {_fmt_ci(*f[1:])}" for f in
                 (entry["top_r_prediction"][t][0] for t in TRAITS)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
            for key in ("png", "csv"):
                mlf.log_artifact(str(root / entry[key]), artifact_path="explain")
            mlf.log_dict(entry, "explain.json")
            check = (report.get("cue_check") or {}).get(model)
            if check:
                mlf.log_metrics({f"cue_hits_{t}": c["hits"] for t, c in check.items()})
                mlf.log_metric("cue_traits_passed", sum(c["pass"] for c in check.values()))


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
                    | ({"train"} if clustering else set()))
    try:
        table, features = load_table(root, splits)
    except TooFewClips as exc:
        return _skip(root, str(exc))
    corr_table = table[table["split"].isin(params.correlation_splits)]
    w = bootstrap_weights(corr_table["subject_id"].tolist(), n_boot=params.bootstrap, seed=seed)
    labels_r = correlations(corr_table[features].to_numpy(np.float64),
                            corr_table[list(TRAITS)].to_numpy(np.float64), w,
                            level=params.ci_level)
    report: dict = {"params": dataclasses.asdict(params), "n_features": len(features),
                    "labels": {"n_clips": len(corr_table),
                               "top_r": _top(labels_r, features, params.top_k, by_abs=True)},
                    "models": {}, "cue_check": {}, "cue_check_columns": {},
                    "cue_check_grouped": {}}
    law = _cue_law(table)
    train = table.loc[table["split"] == "train", features] if clustering else None
    jobs = [{"root": root, "model": model, "tables": (corr_table, table), "features": features,
             "labels_r": labels_r, "params": params, "seed": seed, "train": train}
            for model in models]
    # one process per model (torch at one thread each): both cores of a 2-core box
    where = local_processes(len(jobs), base.workers)
    explained = map_jobs(_explain_job, jobs, workers=where.workers, label=itemgetter("model"),
                         where=where)
    for model, (entry, perm, seconds) in zip(models, explained):
        report["models"][model] = entry
        if law is not None and perm is not None and model in params.cue_models:
            columns = cue_check(perm["importance"], perm["features"], *law, k_top=params.top_k)
            report["cue_check_columns"][model] = columns
            report["cue_check"][model] = columns
            if "clusters" in perm:  # the check's features: clusters of interchangeable columns
                c = perm["clusters"]
                report["cue_check"][model] = cue_check(
                    perm["cluster_importance"], c["names"], *law, k_top=params.top_k,
                    to_cue=dict(zip(c["names"], c["cues"])).get)
            if "cues" in perm:
                report["cue_check_grouped"][model] = cue_check(
                    perm["cue_importance"], perm["cues"], *law, k_top=3, to_cue=same_cue)
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
        base = load_params("base", BaseParams)
        params = load_params("explain", ExplainParams)
        run(params, base, models=experiment_models())
        write_tracking_receipt("explain", tracked=params.mlflow)


if __name__ == "__main__":
    main()
