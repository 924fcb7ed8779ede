"""retrain: fine-tune trained models on user-study ratings (PerFeX's retraining step).

    python -m stages.retrain       # params.yaml:retrain; data/user_study.parquet + data/models

1. Ratings (`video_id, rater_id, O..N` on Likert 1-5) are aggregated per stimulus: the mean over
   raters, mapped to [0, 1] by (r - 1) / 4. Inter-rater agreement per trait is reported as one-way
   random-effects ICC(1,1) (one rater) and ICC(1,k) (the mean of k raters), Shrout & Fleiss 1979,
   with unequal numbers of raters per stimulus handled by the usual k0 correction.
2. Rated stimuli of the train split are the fine-tuning set; rated stimuli of val and test are
   held out. A share of unrated original training clips with their original labels
   (`retrain.mix_share`) is mixed in against forgetting; parameters whose names start with a
   prefix in `retrain.freeze` stay fixed, and so do the running statistics of the BatchNorm
   layers under such a prefix (they stay in eval mode while the rest trains).
3. Before and after fine-tuning, the model predicts the held-out rated stimuli of each split
   apart; CCC, PCC and MAE (means over traits) against the rater means, with intervals over
   `evaluate.bootstrap` resamples of the split's subjects at `evaluate.ci_level`, go to
   metrics/retrain.json: `{model: {"val": {"n_clips", "n_subjects", "before": {"ccc", "pcc",
   "mae", "ccc_ci", "mae_ci"}, "after": {...}, "change": {"delta_ccc", "p_better",
   "p_lower_mae"}}, "test": {...}, ...}, "user_study": {icc, counts}}`. `val` is the figure to
   choose retrain.* (epochs, lr, mix_share, freeze) on; `test` is reported, never tuned on.
Outputs per model NAME under data/retrained/: models/NAME+retrained/{best,last}.pt and
predictions/NAME+retrained.parquet (every video, the layout of the train stage), which `evaluate`
scores beside the trained models. MLflow: one run per model.

Only models of the current experiment (`train.models`) are fine-tuned: in
`dvc exp run -S 'train.models=[resnet18_face]'` the PerFeX models are not trained, so retrain
writes `{"skipped": ...}` and empty folders instead of reusing checkpoints an earlier
experiment left behind (or failing in a fresh clone, where there are none).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from operator import itemgetter
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, ParamsError, StageInputError, atomic_dir,
                                atomic_write_json, experiment_models, get_logger,
                                load_params_keys, read_artifact, repo_root, run_stage,
                                write_predictions)
from personality.executor import local_processes, map_jobs
from personality.schemas import TRAITS

log = get_logger("retrain")

SUFFIX = "+retrained"
RETRAINED = Path("data/retrained")  # the stage's one output folder: models/ and predictions/
# held-out rated splits, each reported apart: val to choose retrain.* on, test to report only
HELD_OUT = {"val": "for choosing retrain.*", "test": "report only, never tuned on"}


@dataclasses.dataclass(frozen=True)
class RetrainParams:
    models: list[str] = dataclasses.field(
        default_factory=lambda: ["perfex_cnn", "perfex_hybrid"])  # trained models to fine-tune
    epochs: int = 15
    lr: float = 5e-4
    batch_size: int = 16
    weight_decay: float = 1e-4
    freeze: list[str] = dataclasses.field(default_factory=list)  # parameter-name prefixes kept fixed
    mix_share: float = 0.5  # original train clips mixed in, as a share of the rated train clips
    views_per_video: int = 4
    seed: int | None = None  # None: base.seed
    threads: int = 1  # torch CPU threads
    mlflow: bool = True


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """evaluate.bootstrap, evaluate.ci_level and evaluate.interval: retrain's intervals are
    resampled as evaluate's (subjects, models/bootstrap.py), with the same count, level and
    method."""
    bootstrap: int = 1000
    ci_level: float = 0.95
    interval: Literal["fisher_z", "percentile", "bca", "bootstrap_t"] = "fisher_z"

    def __post_init__(self) -> None:
        if self.bootstrap < 1 or not 0.5 <= self.ci_level < 1.0:
            raise ParamsError(f"evaluate.bootstrap must be >= 1 and evaluate.ci_level in "
                              f"[0.5, 1); got {self.bootstrap}, {self.ci_level}")


def evaluate_uncertainty(path: Path | None = None) -> Uncertainty:
    """The two keys of params.yaml:evaluate that retrain reads (the rest is evaluate's)."""
    return load_params_keys("evaluate", Uncertainty, path)


# --------------------------------------------------------------------------------------------------
# ratings


def aggregate_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per stimulus: mean rating per trait mapped to [0, 1], and the number of raters.
    Returns a frame indexed by video_id with columns O..N (in [0, 1]) and n_raters."""
    bad = ratings[list(TRAITS)].stack()
    bad = bad[(bad < 1) | (bad > 5)]
    if len(bad):
        raise StageInputError(f"user study: ratings outside the Likert range 1-5, e.g. "
                              f"{bad.index[0]} = {bad.iloc[0]}")
    grouped = ratings.groupby("video_id")
    means = (grouped[list(TRAITS)].mean() - 1.0) / 4.0
    means["n_raters"] = grouped.size()
    return means


def icc_oneway(ratings: pd.DataFrame, trait: str) -> dict[str, float]:
    """ICC(1,1) and ICC(1,k) of one trait from long ratings (video_id, rater_id, trait).

    One-way random effects: MSB between stimuli, MSW within; k0 = (N - sum k_i^2 / N) / (n - 1)
    replaces k when stimuli have different numbers of raters."""
    groups = [g.dropna().to_numpy(float) for _, g in ratings.groupby("video_id")[trait]]
    groups = [g for g in groups if len(g)]
    n = len(groups)
    sizes = np.array([len(g) for g in groups], float)
    total = sizes.sum()
    if n < 2 or total - n < 1:
        return {"icc1": math.nan, "icck": math.nan, "k": float(sizes.mean()) if n else math.nan}
    grand = np.concatenate(groups).mean()
    msb = float(sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (n - 1))
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / (total - n))
    k0 = (total - (sizes ** 2).sum() / total) / (n - 1)
    icc1 = (msb - msw) / (msb + (k0 - 1) * msw) if msb + (k0 - 1) * msw > 0 else math.nan
    icck = (msb - msw) / msb if msb > 0 else math.nan
    return {"icc1": float(icc1), "icck": float(icck), "k": float(k0)}


def agreement(ratings: pd.DataFrame) -> dict:
    return {t: icc_oneway(ratings, t) for t in TRAITS}


# --------------------------------------------------------------------------------------------------


def _summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from models.metrics import regression_metrics

    if not len(y_true):
        return {"ccc": math.nan, "pcc": math.nan, "mae": math.nan}
    mean = regression_metrics(y_true, y_pred)["mean"]
    return {k: float(mean[k]) for k in ("ccc", "pcc", "mae")}


def _split_report(truth: np.ndarray, before: np.ndarray, after: np.ndarray, subjects: list,
                  boot: Uncertainty, seed: int) -> dict:
    """One held-out split's block. truth, before, after: (n, 5) rater means and predictions.
    {"n_clips", "n_subjects", "before" / "after": {"ccc", "pcc", "mae", "ccc_ci", "mae_ci"}
    (intervals of the mean over traits over resamples of the split's subjects,
    models/bootstrap.py), "change": {"delta_ccc": [lo, hi], "p_better": share of resamples where
    after's CCC beats before's, "p_lower_mae": where its MAE is lower, "n_boot", "ci_level"}}."""
    from models.bootstrap import (bootstrap_scores, model_uncertainty, paired, subject_jackknife,
                                  subject_resamples, subjects_for)

    out = {"n_clips": len(truth), "n_subjects": len(set(subjects)),
           "before": _summary(truth, before), "after": _summary(truth, after), "change": {}}
    if len(set(subjects)) < 2:  # one subject (or none): no spread to resample
        return out
    rows = subject_resamples(subjects, n_boot=boot.bootstrap, seed=seed)
    s = bootstrap_scores(truth, {"before": before, "after": after}, rows,
                         jackknife=subject_jackknife(subjects),
                         subjects=subjects_for(boot.interval, subjects))
    for when in ("before", "after"):
        ci = model_uncertainty(s[when], TRAITS, level=boot.ci_level, method=boot.interval)
        out[when].update({f"{m}_ci": ci["mean"][m] for m in ("ccc", "mae")})
    cmp = paired(s["after"], s["before"], level=boot.ci_level, method=boot.interval)
    out["change"] = {**cmp, "n_boot": boot.bootstrap, "ci_level": boot.ci_level,
                     "interval_method": boot.interval}
    return out


def _held_out(model, sources, rated: pd.DataFrame, have: pd.DataFrame) -> dict[str, dict]:
    """Per held-out split: {"ids", "truth" (n, 5) rater means, "subjects", "before" (n, 5)
    predictions of the model as it is now}."""
    from models import engine

    split_of = dict(zip(have["video_id"], have["split"]))
    subject_of = dict(zip(have["video_id"], have["subject_id"]))
    out = {}
    for split in HELD_OUT:
        ids = [v for v in rated.index if split_of[v] == split]
        out[split] = {"ids": ids, "truth": rated.loc[ids, list(TRAITS)].to_numpy(float),
                      "subjects": [subject_of[v] for v in ids],
                      "before": engine.predict_videos(model, sources, ids)}  # (0, 5) if none
    return out


def _mix_in(p: RetrainParams, seed: int, have: pd.DataFrame, rated: pd.DataFrame,
            tune_ids: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Original train clips mixed in beside the rated ones (a share of them, drawn with the
    seed), so fine-tuning does not forget the training labels: (mixed ids, all ids, targets
    (n, 5))."""
    rng = np.random.default_rng([seed, 31])
    pool = sorted(set(have.loc[have["split"] == "train", "video_id"]) - set(rated.index))
    n_mix = min(len(pool), int(round(p.mix_share * len(tune_ids))))
    mixed = sorted(rng.choice(pool, size=n_mix, replace=False).tolist()) if n_mix else []
    labels = have.set_index("video_id")
    train_targets = np.vstack([rated.loc[tune_ids, list(TRAITS)].to_numpy(float),
                               labels.loc[mixed, list(TRAITS)].to_numpy(float)
                               if mixed else np.empty((0, len(TRAITS)))])
    return mixed, tune_ids + mixed, train_targets


def _freeze(model, prefixes: list[str], name: str) -> int:
    """Fix the parameters whose names start with one of `prefixes`, and the running statistics
    of the BatchNorm layers among them; returns how many parameter numbers."""
    from torch.nn.modules.batchnorm import _BatchNorm

    frozen = 0
    for pname, param in model.named_parameters():
        if any(pname.startswith(prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    if prefixes and not frozen:
        raise ParamsError(f"retrain.freeze: {prefixes} matches no parameter of {name} (names "
                          f"start with: {sorted({n.split('.')[0] for n, _ in model.named_parameters()})})")
    for mname, module in model.named_modules():
        # a frozen layer computes what it computed before: in training mode a BatchNorm would
        # normalise with batch statistics and move its running ones (num_batches_tracked too)
        if isinstance(module, _BatchNorm) and any(f"{mname}.running_mean".startswith(prefix)
                                                  for prefix in prefixes):
            module.register_forward_pre_hook(_stay_in_eval)
    return frozen


def _stay_in_eval(module, args) -> None:
    """Forward pre-hook of a frozen BatchNorm: eval mode at every call, whatever the engine's
    model.train() at each epoch set (a hook, not a one-off .eval(), which that call undoes)."""
    module.training = False


def _retrained_meta(p: RetrainParams, ckpt: dict, base_checkpoint: str) -> dict:
    """The fine-tuned checkpoint's fields: the base model's, with the retrain params. The base
    checkpoint's path is relative: an absolute one would make it differ between checkouts."""
    return {"model_name": ckpt["model_name"], "model_config": ckpt["model_config"],
            "inputs": ckpt["inputs"], "source_config": ckpt.get("source_config", {}),
            "params": {"retrain": dataclasses.asdict(p), "base_checkpoint": base_checkpoint},
            "label_scale": ckpt.get("label_scale", "unit"),
            **({"frontend": ckpt["frontend"]} if "frontend" in ckpt else {}),
            "finished": False}  # until its predictions are written (_finish)


def _tracking(p: RetrainParams, out_name: str, root: Path, params: dict):
    """The MLflow run of one fine-tuning (retrain.mlflow), or a context that yields None."""
    if not p.mlflow:
        return contextlib.nullcontext()
    from personality.common import mlflow_run

    return mlflow_run("retrain", run_name=out_name, tags={"model": out_name}, params=params,
                      manifest=root / schemas.ARTIFACTS["manifest"].path)


def _train_config(p: RetrainParams, seed: int):
    """The fine-tuning's engine.TrainConfig; a value it refuses (lr <= 0, a negative
    weight_decay, epochs < 0, batch_size < 1...) is a ParamsError naming retrain."""
    from models import engine

    try:
        return engine.TrainConfig(epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                                  weight_decay=p.weight_decay, schedule="cosine", patience=0,
                                  views_per_video=p.views_per_video, seed=seed, device="cpu")
    except engine.EngineError as exc:
        raise ParamsError(f"retrain: {exc}") from None


def retrain_model(name: str, p: RetrainParams, base: BaseParams, root: Path,
                  rated: pd.DataFrame, manifest: pd.DataFrame,
                  boot: Uncertainty = Uncertainty()) -> dict:
    import torch

    from models import engine
    from models.checkpoints import require_finished
    from models.data import build_sources, for_inference

    ckpt_path = root / "data" / "models" / name / "best.pt"
    if not ckpt_path.is_file():
        raise StageInputError(f"{ckpt_path}: no trained {name}; run the train stage first")
    if p.threads > 0:
        torch.set_num_threads(p.threads)
    seed = base.seed if p.seed is None else p.seed
    engine.seed_everything(seed)
    model, ckpt = engine.load_checkpoint(ckpt_path)
    require_finished(ckpt, ckpt_path)
    sources = build_sources(ckpt["inputs"], root=root, video_ids=manifest["video_id"].tolist(),
                            config=for_inference(ckpt.get("source_config", {})))
    have = manifest[[all(s.has(v) for s in sources) for v in manifest["video_id"]]]
    split_of = dict(zip(have["video_id"], have["split"]))
    rated = rated[rated.index.isin(split_of.keys())]
    tune_ids = [v for v in rated.index if split_of[v] == "train"]
    if not tune_ids:
        raise StageInputError(f"{name}: no rated stimulus of the train split has the model's "
                              "inputs; nothing to fine-tune on")
    held = _held_out(model, sources, rated, have)  # "before", per held-out split

    mixed, train_ids, train_targets = _mix_in(p, seed, have, rated, tune_ids)
    frozen = _freeze(model, p.freeze, name)
    cfg = _train_config(p, seed)
    out_name = f"{name}{SUFFIX}"
    meta = _retrained_meta(p, ckpt, ckpt_path.relative_to(root).as_posix())
    tracking = _tracking(p, out_name, root, {**dataclasses.asdict(p), "base_model": name,
                                             "n_finetune": len(tune_ids), "n_mixed": len(mixed)})
    # the model folder appears whole or not at all: filled in a temp sibling, swapped in last
    with tracking as mlf, atomic_dir(root / RETRAINED / "models" / out_name) as staging:
        engine.fit(model, sources, train_ids=train_ids, train_targets=train_targets,
                   config=cfg, out_dir=staging, meta=meta, tracker=mlf, desc=f"retrain:{name}")
        report = {split: _split_report(part["truth"], part["before"],
                                       engine.predict_videos(model, sources, part["ids"]),
                                       part["subjects"], boot, seed)
                  for split, part in held.items()}
        if mlf is not None:
            mlf.log_metrics({f"{split}_{when}_{k}": v for split, r in report.items()
                             for when in ("before", "after") for k, v in r[when].items()
                             if isinstance(v, float) and math.isfinite(v)})
        # proba (n, 5, 5) for 5-bin heads: evaluate scores the 5-bin view from it, as train's
        _finish(root, out_name, have, engine.predict_videos(
            model, sources, have["video_id"].tolist(), return_proba=True), staging,
            train_duration_s=ckpt.get("train_duration_s") or [], model=model)
    _log_report(name, report, len(tune_ids), len(mixed))
    return {**report, "n_finetune": len(tune_ids), "n_mixed": len(mixed),
            "frozen_parameters": frozen}


def _log_report(name: str, report: dict, n_tuned: int, n_mixed: int) -> None:
    for split, use in HELD_OUT.items():
        r = report[split]
        log.info("%s: %s (%s): rater means ccc %.3f -> %.3f, mae %.3f -> %.3f (%d clips, "
                 "%d subjects)", name, split, use, r["before"]["ccc"], r["after"]["ccc"],
                 r["before"]["mae"], r["after"]["mae"], r["n_clips"], r["n_subjects"])
    log.info("%s: fine-tuned on %d rated + %d mixed train clips", name, n_tuned, n_mixed)


def _finish(root: Path, out_name: str, have: pd.DataFrame, predicted: tuple,
            staging: Path, *, train_duration_s: list, model) -> None:
    """Mark the checkpoints in `staging` finished with the test error measured for them
    (per-trait MAE against the manifest's test labels) and the base model's span of training
    clip durations (the rated stimuli tuned on are clips of the same train split: predict's
    short-clip warning holds as it did), and write the predictions.
    predicted: (preds (n, 5), proba (n, 5, 5) or None) for every row of `have`."""
    from models.checkpoints import holds_weights, mark_finished
    from models.inference import predictions_table

    preds, proba = predicted
    test = (have["split"] == "test").to_numpy()
    truth = have.loc[test, list(TRAITS)].to_numpy(float)
    error = {t: float(np.nanmean(np.abs(preds[test, k] - truth[:, k])))
             for k, t in enumerate(TRAITS)} if test.any() else {}
    for name in ("best.pt", "last.pt"):
        if (staging / name).is_file():
            mark_finished(staging / name, train_duration_s=train_duration_s,  # the scored one's
                          test_error=error if holds_weights(staging / name, model) else None)
    write_predictions(root / RETRAINED / "predictions" / f"{out_name}.parquet", predictions_table(
        have["video_id"].to_numpy(), have["split"].to_numpy(), preds, proba, out_name))


def _retrain_job(job: dict) -> dict:
    """One model's fine-tuning in a worker process (models are independent: each seeds itself,
    so a model's numbers do not depend on which process or which order it ran in)."""
    return retrain_model(job["name"], job["params"], job["base"], job["root"], job["rated"],
                         job["manifest"], job["uncertainty"])


def _skip(root: Path, reason: str) -> dict:
    """Empty outputs and a metrics file that says why: the pipeline goes on."""
    log.warning("retrain skipped: %s", reason)
    (root / RETRAINED / "models").mkdir(parents=True, exist_ok=True)
    (root / RETRAINED / "predictions").mkdir(parents=True, exist_ok=True)
    out = {"skipped": reason}
    atomic_write_json(root / "metrics" / "retrain.json", out)
    return out


def run(params: RetrainParams, base: BaseParams, root: Path | None = None,
        trained: list[str] | None = None, uncertainty: Uncertainty = Uncertainty()) -> dict:
    """Fine-tune `params.models`; with `trained` (the stage passes train.models), only those of
    them that this experiment trains. `uncertainty`: the stage passes evaluate's bootstrap."""
    from models.metrics import json_safe
    from models.train_params import retrained_models

    root = root or repo_root()
    if not params.models:
        raise ParamsError("retrain.models: empty; name at least one trained model")
    if not 0 <= params.mix_share <= 10:
        raise ParamsError(f"retrain.mix_share: {params.mix_share} must be in [0, 10]")
    _train_config(params, base.seed)  # before any training job: a bad value named once
    names = retrained_models(params.models, trained)  # all of them, or none; some: refused
    if not names:  # an experiment of other models (make zoo): nothing of ours to fine-tune
        return _skip(root, f"none of retrain.models {params.models} is in train.models {trained}")
    ratings = read_artifact("user_study", path=root / schemas.ARTIFACTS["user_study"].path)
    if ratings.empty:  # e.g. ChaLearn, UDIVA: nothing to fine-tune on; the pipeline goes on
        return _skip(root, "the source has no user study")
    manifest = read_artifact("manifest", path=root / schemas.ARTIFACTS["manifest"].path)
    rated = aggregate_ratings(ratings)
    jobs = [{"name": name, "params": params, "base": base, "root": root, "rated": rated,
             "manifest": manifest, "uncertainty": uncertainty} for name in names]
    # one process per model, each at retrain.threads torch threads: both cores of a 2-core box
    where = local_processes(len(names), base.workers, params.threads)
    out: dict = dict(zip(names, map_jobs(_retrain_job, jobs, workers=where.workers,
                                         label=itemgetter("name"), where=where)))
    out["user_study"] = {"n_rated_videos": int(len(rated)), "n_ratings": int(len(ratings)),
                         "raters_per_video": float(rated["n_raters"].mean()),
                         "icc": agreement(ratings)}
    atomic_write_json(root / "metrics" / "retrain.json", json_safe(out))
    return out


def main(argv: list[str] | None = None) -> None:
    run_stage("retrain", RetrainParams,
              lambda params, base: run(params, base, trained=experiment_models(),
                                       uncertainty=evaluate_uncertainty()))


if __name__ == "__main__":
    main()
