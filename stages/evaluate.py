"""evaluate: video-level metrics of every trained and retrained model, beside a train-mean baseline.

    python -m stages.evaluate      # reads params.yaml:evaluate, data/manifest.parquet,
                                   # data/predictions/*.parquet -> metrics/evaluate.json,
                                   # metrics/plots/scatter_<model>.csv, one MLflow run per model

Each predictions file `data/predictions/<model>.parquet`
(`data/retrained/predictions/<model>+retrained.parquet` for retrained ones) holds `video_id, split,
O, C, E, A, N` (predicted scores) and, for 5-bin classification heads, `proba_<T>_<k>` (k = 0..4).
Rows of `evaluate.split` (default test) are scored against the manifest's labels at video level
(several rows of one video are averaged first) with `models.metrics`:

    metrics/evaluate.json = {
      "<model>": {"O": {"acc", "mae", "mse", "pcc", "ccc", "r2"}, ..., "N": {...}, "mean": {...},
                  "bins": {"source": "proba" | "scores", "O": {"accuracy", "precision", "recall",
                           "auc"}, ..., "mean": {...}},          # evaluate.bins; unit scale only
                  "n_videos": 23, "n_missing": 0, "label_scale": "unit"},
      "baseline": {... the same for the train-mean predictor ..., "train_mean": {"O": ..},
                   "bins": {"O": {"accuracy", "majority_bin"}, ..., "mean": {"accuracy"}}},
      "ceiling": {... the same for the labels' law without its noise ...},  # synthetic set only
      "errors": {"<model>": "data/predictions/<model>.parquet: missing column 'E'"}   # when any
    }

NaN is written as null. With UDIVA's z-scored labels (`label_scale: z`) ACC = 1 - MAE means
nothing: it is null, a note says why, and the 5-bin view (defined on [0, 1]) is left out; CCC, PCC,
MSE, MAE and R² stay. A malformed predictions file (unreadable, a missing trait column, a video_id
the manifest does not know, a split that disagrees with the manifest, NaN predictions for labelled
videos) is reported by file and column, listed under "errors", and the other models are evaluated;
the stage fails only when no file is usable (or `evaluate.strict` is set and any is bad). The stage
scores the models of the current experiment only (`train.models`, and `<model>+retrained` for those
of them retrained): predictions that another experiment left in the workspace are ignored.
`run(..., models=None)` scores every file.

MLflow (`evaluate.mlflow`): one run per model (tags stage=evaluate, model=<name>; params; the
numbers above flattened, e.g. `test_mean_ccc`, `test_O_ccc`, `test_bins_mean_accuracy`,
`baseline_test_mean_ccc`; a predicted-vs-true scatter grid PNG) and one summary run (model=all: a
bar chart of mean CCC / ACC per model against the baseline, evaluate.json). PNGs go to MLflow only;
DVC gets CSVs (`dvc plots show`). docs/evaluation.md explains the metrics.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from models.report import (RESERVED, add_split_intervals, add_uncertainty, ceiling_entry, ci_text,
                           flat_metrics, fmt, mean_interval, results_table, scatter_table,
                           select_best, summary_of, trait_intervals)
from models.metrics import (MetricsError, baseline_metrics, bin_metrics, json_safe,
                            majority_class_accuracy, null_acc, regression_metrics)
from personality.common import (BaseParams, ParamsError, SchemaError, StageInputError,
                                atomic_write_json, atomic_write_text, experiment_models,
                                get_logger, load_base, load_params, mlflow_run, repo_root,
                                stage_errors, write_tracking_receipt)
from personality.schemas import SPLITS, TRAITS
from personality.law import law_scores

log = get_logger("evaluate")

N_BINS = 5
SUMMARY_JSON = Path("metrics/summary.json")  # one line per model: `dvc metrics show metrics/summary.json`
PREDICTIONS_DIR = Path("data/predictions")
RETRAINED_PREDICTIONS_DIR = Path("data/retrained/predictions")  # the retrain stage's
MANIFEST = Path("data/manifest.parquet")
SYNTHETIC_CUES = Path("data/synthetic_cues.parquet")  # ingest: the default set's latent cues
METRICS_JSON = Path("metrics/evaluate.json")
PLOTS_DIR = Path("metrics/plots")
RESULTS_MD = Path("metrics/results.md")  # the results table with intervals, as the README shows it
Z_NOTE = ("label_scale z (z-scored labels, e.g. UDIVA): ACC = 1 - MAE assumes [0, 1] scores, so it "
          "is null; the 5-bin view is left out; read CCC / PCC / MSE")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    split: Literal["test", "val"] = "test"  # the split scored (val: while tuning, keep test unseen)
    bins: Literal["all", "proba", "none"] = "all"  # 5-bin view: every model, proba_* ones, none
    mlflow: bool = True  # one MLflow run per model + a summary run
    strict: bool = False  # true: any malformed predictions file fails the stage
    dpi: int = 80  # resolution of the PNGs logged to MLflow
    bootstrap: int = 1000  # resamples of subjects for every interval and paired comparison
    ci_level: float = 0.95  # coverage of every interval
    prediction_level: float = 0.8  # coverage of one clip's prediction interval (models/conformal.py)
    interval: Literal["fisher_z", "percentile", "bca", "bootstrap_t"] = "fisher_z"  # bootstrap.py

    def __post_init__(self) -> None:
        if self.bootstrap < 1 or self.dpi < 1 or not (0.5 <= self.ci_level < 1.0
                                                       and 0.5 <= self.prediction_level < 1.0):
            raise ParamsError(f"evaluate.bootstrap and evaluate.dpi must be >= 1, evaluate.ci_level"
                              f" and prediction_level in [0.5, 1); got {self.bootstrap}, {self.dpi},"
                              f" {self.ci_level}, {self.prediction_level}")


@dataclasses.dataclass
class ModelResult:
    """One model's scores plus what the plots need."""

    name: str
    path: Path
    entry: dict  # its evaluate.json entry (NaN kept; json_safe at write time)
    video_ids: np.ndarray  # (n,) the scored videos, sorted
    y_true: np.ndarray  # (n, 5)
    y_pred: np.ndarray  # (n, 5)


def proba_columns(traits=TRAITS) -> list[str]:
    """`proba_<T>_<k>` for every trait and bin, trait-major: reshape to (n, len(traits), 5)."""
    return [f"proba_{t}_{k}" for t in traits for k in range(N_BINS)]


# --------------------------------------------------------------------------------------------------
# inputs


def _read_trait_table(path: Path, where: str, error: type[Exception],
                      expected: str) -> pd.DataFrame:
    """A Parquet table with `video_id, split` and numeric O..N, or `error` naming file and column
    (SchemaError for the manifest, StageInputError for a predictions file)."""
    try:
        df = pd.read_parquet(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise error(f"{where}: not a readable Parquet file: {exc}") from None
    for column in ("video_id", "split", *TRAITS):
        if column not in df.columns:
            raise error(f"{where}: missing column '{column}'")
    for column in TRAITS:
        if not pd.api.types.is_numeric_dtype(df[column]):
            raise error(f"{where}: column '{column}' has dtype {df[column].dtype}, "
                        f"expected {expected}")
    return df


def load_manifest(path: Path) -> pd.DataFrame:
    """`video_id, split, subject_id, label_scale, O..N` of the manifest; label_scale defaults to
    "unit", subject_id to the video_id."""
    if not path.exists():
        raise SchemaError(f"{path}: manifest not found; run the ingest stage first")
    df = _read_trait_table(path, str(path), SchemaError, "float")
    if "label_scale" not in df.columns:
        df = df.assign(label_scale="unit")
    bad = sorted(set(df["label_scale"]) - {"unit", "z"})
    if bad:
        raise SchemaError(f"{path}: column 'label_scale' has {bad[0]!r}, expected 'unit' or 'z'")
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        raise SchemaError(f"{path}: column 'video_id' repeats {dup.iloc[0]!r}")
    if "subject_id" not in df.columns:  # each video its own subject: intervals over clips
        df = df.assign(subject_id=df["video_id"])
    out = df[["video_id", "split", "subject_id", "label_scale", *TRAITS]].copy()
    out["video_id"] = out["video_id"].astype(str)
    out[list(TRAITS)] = out[list(TRAITS)].astype(np.float64)
    return out


def label_scale_of(manifest: pd.DataFrame, split: str, where: str = "manifest") -> str:
    """The one label scale of `split`; mixing scales in one scored split is refused."""
    scales = sorted(set(manifest.loc[manifest["split"] == split, "label_scale"]))
    if len(scales) > 1:
        raise SchemaError(f"{where}: column 'label_scale' mixes {scales} in split '{split}': "
                          "metrics over mixed scales mean nothing")
    return scales[0] if scales else "unit"


def read_predictions(path: Path, manifest: pd.DataFrame, *, where: str | None = None
                     ) -> tuple[pd.DataFrame, bool]:
    """Read and check one predictions file; returns (table, has_proba).

    Raises StageInputError naming the file and the column: unreadable file, a missing or
    non-numeric trait column, an incomplete set of proba_* columns, a video_id the manifest does not
    know, a split value that disagrees with the manifest.
    """
    where = where or str(path)
    df = _read_trait_table(path, where, StageInputError, "float scores")
    wanted = proba_columns()
    present = [c for c in wanted if c in df.columns]
    has_proba = bool(present)
    if has_proba and len(present) < len(wanted):
        missing = next(c for c in wanted if c not in df.columns)
        raise StageInputError(f"{where}: missing column '{missing}' (proba_* columns are all "
                              f"{len(wanted)} or none)")
    df = df.copy()
    df["video_id"] = df["video_id"].astype(str)
    bad_split = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if bad_split:
        raise StageInputError(f"{where}: column 'split' has {bad_split[0]!r}, expected one of "
                              f"{', '.join(SPLITS)}")
    known = manifest.set_index("video_id")["split"]
    unknown = sorted(set(df["video_id"]) - set(known.index))
    if unknown:
        raise StageInputError(f"{where}: column 'video_id': {len(unknown)} id(s) not in the "
                              f"manifest, e.g. {unknown[0]!r}")
    disagree = df["split"].astype(str).to_numpy() != known.loc[df["video_id"]].to_numpy()
    if disagree.any():
        row = df[disagree].iloc[0]
        raise StageInputError(f"{where}: column 'split': video {row['video_id']!r} is "
                              f"{row['split']!r} here but {known[row['video_id']]!r} in the "
                              "manifest")
    return df, has_proba


def video_level(df: pd.DataFrame, split: str, has_proba: bool) -> pd.DataFrame:
    """The rows of `split`, one per video (its clips averaged; a failed clip's NaN stays NaN)."""
    cols = list(TRAITS) + (proba_columns() if has_proba else [])
    rows = df.loc[df["split"] == split, ["video_id", *cols]]
    return rows.groupby("video_id", sort=True)[cols].mean(skipna=False).reset_index()


def align(pred: pd.DataFrame, manifest: pd.DataFrame, split: str, *, where: str,
          has_proba: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Join video-level predictions to the labels of `split`.

    Returns (video_ids (n,), y_true (n, 5), y_pred (n, 5), proba (n, 5, 5) or None, n_missing):
    n_missing counts labelled videos of the split that the file has no prediction for.
    """
    targets = manifest[manifest["split"] == split]
    labelled = targets[targets[list(TRAITS)].notna().any(axis=1)]
    merged = labelled.merge(pred, on="video_id", how="inner", suffixes=("_true", "_pred"))
    merged = merged.sort_values("video_id", kind="mergesort")
    if merged.empty:
        raise StageInputError(f"{where}: column 'video_id': no prediction for any labelled "
                              f"'{split}' video ({len(labelled)} in the manifest)")
    y_true = merged[[f"{t}_true" for t in TRAITS]].to_numpy(np.float64)
    y_pred = merged[[f"{t}_pred" for t in TRAITS]].to_numpy(np.float64)
    for j, t in enumerate(TRAITS):
        bad = ~np.isnan(y_true[:, j]) & ~np.isfinite(y_pred[:, j])
        if bad.any():
            raise StageInputError(f"{where}: column '{t}': {int(bad.sum())} NaN/inf prediction(s) "
                                  f"for labelled '{split}' videos, e.g. "
                                  f"{merged['video_id'].iloc[int(np.flatnonzero(bad)[0])]!r}")
    proba = None
    if has_proba:
        proba = merged[proba_columns()].to_numpy(np.float64)
        proba = proba.reshape(len(merged), len(TRAITS), N_BINS)  # (n, 5 traits, 5 bins)
        if not np.isfinite(proba).all():
            j = int(np.flatnonzero(~np.isfinite(proba).reshape(len(merged), -1).any(axis=0))[0])
            raise StageInputError(f"{where}: column '{proba_columns()[j]}' has NaN/inf values")
    n_missing = int(len(labelled) - len(merged))
    return merged["video_id"].to_numpy(), y_true, y_pred, proba, n_missing


# --------------------------------------------------------------------------------------------------
# scoring (pure)


def score_model(y_true: np.ndarray, y_pred: np.ndarray, *, label_scale: str = "unit",
                proba: np.ndarray | None = None, bins: str = "all") -> dict:
    """The evaluate.json entry of one model: regression metrics per trait and mean, plus the
    5-bin view when `bins` asks for it ("all": every model; "proba": models with proba only) and
    the labels are on the unit scale. y_true, y_pred: (n, 5); proba: (n, 5, 5) or None."""
    entry: dict = regression_metrics(y_true, y_pred)
    notes = []
    if label_scale == "z":
        null_acc(entry)
        notes.append(Z_NOTE)
    elif bins == "all" or (bins == "proba" and proba is not None):
        b = bin_metrics(y_true, y_pred, proba=proba)
        entry["bins"] = {"source": "proba" if proba is not None else "scores", **b}
    entry["n_videos"] = int(y_true.shape[0])
    entry["label_scale"] = label_scale
    if notes:
        entry["notes"] = notes
    return entry


def baseline_entry(manifest: pd.DataFrame, split: str, *, label_scale: str = "unit",
                   bins: str = "all") -> dict:
    """The train-mean predictor scored on every labelled video of `split`, plus (unit scale, bins
    not "none") the majority-class 5-bin accuracy."""
    train = manifest.loc[manifest["split"] == "train", list(TRAITS)].to_numpy(np.float64)
    target = manifest.loc[manifest["split"] == split, list(TRAITS)].to_numpy(np.float64)
    target = target[~np.isnan(target).all(axis=1)]
    entry: dict = baseline_metrics(train, target)
    entry["train_mean"] = {t: float(np.nanmean(train[:, j])) for j, t in enumerate(TRAITS)}
    entry["n_videos"] = int(target.shape[0])
    entry["label_scale"] = label_scale
    if label_scale == "z":
        null_acc(entry)
        entry["notes"] = [Z_NOTE]
    elif bins != "none":
        entry["bins"] = majority_class_accuracy(train, target)
    return entry


def evaluate_file(path: Path, manifest: pd.DataFrame, params: EvaluateParams, *,
                  label_scale: str, where: str | None = None) -> ModelResult:
    """Score one predictions file; StageInputError (file + column) when it is malformed."""
    where = where or str(path)
    df, has_proba = read_predictions(path, manifest, where=where)
    pred = video_level(df, params.split, has_proba)
    video_ids, y_true, y_pred, proba, n_missing = align(pred, manifest, params.split, where=where,
                                                        has_proba=has_proba)
    try:
        entry = score_model(y_true, y_pred, label_scale=label_scale, proba=proba, bins=params.bins)
    except MetricsError as exc:
        raise StageInputError(f"{where}: {exc}") from None
    entry["n_missing"] = n_missing
    if n_missing:
        log.warning("%s: no prediction for %d labelled '%s' video(s): scored on the other %d",
                    where, n_missing, params.split, len(video_ids))
    return ModelResult(path.stem, path, entry, video_ids, y_true, y_pred)


def evaluate_all(files: list[Path], manifest: pd.DataFrame, params: EvaluateParams, *,
                 label_scale: str, root: Path) -> tuple[list[ModelResult], dict[str, str]]:
    """Score every file; a bad one goes to `errors` ({model: message}) and the others go on."""
    results, errors = [], {}
    for path in files:
        name, where = path.stem, _rel(path, root)
        try:
            if name in RESERVED:
                raise StageInputError(f"{where}: '{name}' is a reserved key of "
                                      f"{METRICS_JSON}; rename the model")
            results.append(evaluate_file(path, manifest, params, label_scale=label_scale,
                                         where=where))
        except StageInputError as exc:
            log.error("%s", exc)
            errors[name] = str(exc)
    return results, errors


# --------------------------------------------------------------------------------------------------
# selection on validation, uncertainty on the scored split


def validation_ccc(files: list[Path], manifest: pd.DataFrame, params: EvaluateParams,
                   *, label_scale: str, seed: int) -> dict[str, dict]:
    """Each predictions file's mean CCC / MAE on the val split and the CCC's interval over val
    subjects (`ccc_ci`): what chooses models. Every file is scored on val here, whatever it gave
    on the reported split: a NaN on a test clip must not take a model out of the choice (test is
    looked at once, for the report)."""
    val_params = dataclasses.replace(params, split="val", bins="none")
    out, scored = {}, {}
    for path in (f for f in files if f.stem not in RESERVED):
        try:
            result = evaluate_file(path, manifest, val_params, label_scale=label_scale)
        except StageInputError as exc:
            log.warning("%s: no validation figures (%s)", path.stem, exc)
            continue
        out[path.stem] = {**{k: result.entry["mean"][k] for k in ("ccc", "mae")},
                          "n_videos": result.entry["n_videos"]}
        scored[path.stem] = (result.video_ids, result.y_pred)
    add_split_intervals(out, scored, manifest, split="val", n_boot=params.bootstrap,
                        level=params.ci_level, seed=seed, method=params.interval,
                        prediction_level=params.prediction_level)
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------
# outputs


def write_scatter_csvs(results: list[ModelResult], plots_dir: Path) -> list[Path]:
    """metrics/plots/scatter_<model>.csv for each model; stale scatter files of other models go."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        table = scatter_table(r.video_ids, r.y_true, r.y_pred)
        path = plots_dir / f"scatter_{r.name}.csv"
        atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
        written.append(path)
    for stale in plots_dir.glob("scatter_*.csv"):
        if stale not in written:
            stale.unlink()
    return written


def log_to_mlflow(results: list[ModelResult], report: dict, params: EvaluateParams,
                  manifest: Path | None = None) -> list[str]:
    """One MLflow run per model (scatter PNG; `manifest` as its evaluation dataset) and a summary
    run (bar chart). Returns run ids."""
    from personality import plots

    split = params.split
    baseline = report.get("baseline") or {}
    base_flat = flat_metrics(baseline, f"baseline_{split}") if baseline else {}
    run_ids = []
    with tempfile.TemporaryDirectory(prefix="evaluate-png-") as tmp:
        for r in results:
            png = plots.scatter_grid(
                r.y_true, r.y_pred, path=Path(tmp) / f"scatter_{r.name}.png",
                title=f"{r.name}: {split} set, predicted vs true",
                ccc={t: r.entry[t]["ccc"] for t in TRAITS}, ccc_ci=trait_intervals(r.entry),
                unit_scale=r.entry["label_scale"] == "unit", dpi=params.dpi)
            tags = {"model": r.name, "eval_kind": "model",
                    "retrained": str(r.name.endswith("+retrained")).lower()}
            run_params = {**dataclasses.asdict(params), "model": r.name,
                          "label_scale": r.entry["label_scale"], "predictions": str(r.path.name)}
            with mlflow_run("evaluate", run_name=f"evaluate:{r.name}", params=run_params,
                            tags=tags, manifest=manifest, context="evaluation") as mlf:
                mlf.log_metrics({**flat_metrics(r.entry, split), **base_flat})
                mlf.log_artifact(str(png), artifact_path="plots")
                mlf.log_dict(json_safe(r.entry), "evaluate.json")
                run_ids.append(mlf.active_run().info.run_id)
        if results:
            ccc = {r.name: r.entry["mean"]["ccc"] for r in results}
            acc = ({r.name: r.entry["mean"]["acc"] for r in results}
                   if all(r.entry["label_scale"] == "unit" for r in results) else None)
            png = plots.ccc_bars(ccc, path=Path(tmp) / "mean_ccc_vs_baseline.png",
                                 baseline_ccc=(baseline.get("mean") or {}).get("ccc", 0.0),
                                 acc=acc, baseline_acc=(baseline.get("mean") or {}).get("acc"),
                                 title=f"{split} set: models vs the train-mean baseline",
                                 dpi=params.dpi, level=params.ci_level,
                                 ccc_ci={r.name: mean_interval(r.entry, "ccc") for r in results},
                                 acc_ci={r.name: mean_interval(r.entry, "acc") for r in results})
            with mlflow_run("evaluate", run_name="evaluate:summary",
                            params={**dataclasses.asdict(params), "n_models": len(results)},
                            tags={"model": "all", "eval_kind": "summary"}) as mlf:
                mlf.log_metrics({**base_flat, **flat_metrics(report.get("ceiling") or {},
                                                             f"ceiling_{split}")})
                mlf.log_artifact(str(png), artifact_path="plots")
                mlf.log_dict(json_safe(report), "evaluate.json")
                run_ids.append(mlf.active_run().info.run_id)
    return run_ids


def run(params: EvaluateParams, base: BaseParams | None = None,
        root: Path | None = None, models: list[str] | None = None) -> dict:
    """Evaluate the predictions files under `root` of `models` (and their +retrained), or every
    file when `models` is None; returns the report written to metrics/evaluate.json (NaN as
    null). MLflow logs to the store of `personality.common.mlflow_run` (anchored on DVC_ROOT)."""
    root = Path(root or repo_root())
    manifest = load_manifest(root / MANIFEST)
    label_scale = label_scale_of(manifest, params.split, where=str(MANIFEST))
    files = sorted([*(root / PREDICTIONS_DIR).glob("*.parquet"),
                    *(root / RETRAINED_PREDICTIONS_DIR).glob("*.parquet")])
    if models is not None:
        ignored = [f.name for f in files if f.stem.removesuffix("+retrained") not in models]
        if ignored:
            log.info("not in train.models, not scored: %s", ", ".join(ignored))
        files = [f for f in files if f.stem.removesuffix("+retrained") in models]
    if not files:
        log.warning("no predictions under %s: only the baseline is reported", PREDICTIONS_DIR)
    results, errors = evaluate_all(files, manifest, params, label_scale=label_scale, root=root)
    if files and not results:
        raise StageInputError(f"no usable predictions file ({len(files)} bad):\n  "
                              + "\n  ".join(errors.values()))
    if errors and params.strict:
        raise StageInputError(f"{len(errors)} malformed predictions file(s) and evaluate.strict "
                              "is set:\n  " + "\n  ".join(errors.values()))
    report: dict = {r.name: r.entry for r in results}
    scored = {r.name: (r.video_ids, r.y_pred) for r in results}
    ceiling = ceiling_entry(manifest, params.split, law_scores(root / SYNTHETIC_CUES))
    if ceiling is not None:  # the default dataset: the best CCC its labels allow
        report["ceiling"], scored["ceiling"] = ceiling
    try:
        report["baseline"] = baseline_entry(manifest, params.split, label_scale=label_scale,
                                            bins=params.bins)
    except MetricsError as exc:  # e.g. a trait with no train label at all
        log.error("baseline: %s", exc)
        errors["baseline"] = f"{MANIFEST}: {exc}"
    if errors:
        report["errors"] = errors
    val = validation_ccc(files, manifest, params, label_scale=label_scale,
                         seed=(base or BaseParams()).seed)
    best = select_best(val)
    report["selection"] = {"split": "val", "metric": "mean CCC", "best": best, "val": val}
    add_uncertainty(report, scored, manifest, split=params.split, n_boot=params.bootstrap,
                    level=params.ci_level, seed=(base or BaseParams()).seed, best=best,
                    method=params.interval)
    write_scatter_csvs(results, root / PLOTS_DIR)
    atomic_write_json(root / METRICS_JSON, json_safe(report))
    atomic_write_json(root / SUMMARY_JSON, json_safe(summary_of(report)))
    atomic_write_text(root / RESULTS_MD, results_table(report, params.split))
    for r in results:
        b = (report.get("baseline") or {}).get("mean", {})
        log.info("%s: %s mean CCC %s (baseline %s), ACC %s (baseline %s), %d videos",
                 r.name, params.split, ci_text(r.entry), fmt(b.get("ccc")),
                 ci_text(r.entry, "acc"), fmt(b.get("acc")), r.entry["n_videos"])
    if ceiling is not None:
        log.info("ceiling (the labels' law without its noise): %s mean CCC %s", params.split,
                 ci_text(report["ceiling"]))
    log.info("chosen on val (mean CCC): %s", best)
    if params.mlflow and results:
        log_to_mlflow(results, report, params, manifest=root / MANIFEST)
    return json_safe(report)


def main(argv: list[str] | None = None) -> None:
    with stage_errors("evaluate"):
        params = load_params("evaluate", EvaluateParams)
        run(params, load_base(), models=experiment_models())  # base.seed
        write_tracking_receipt("evaluate", tracked=params.mlflow)


if __name__ == "__main__":
    main()
