"""train: fit every model of `train.models` on the manifest's train split, pick its best epoch on
val, predict every video, score val and test beside the train-mean baseline.

    python -m stages.train                     # every model of params.yaml:train.models
    python -m stages.train --model perfex_cnn  # one model (what each DVC stage train@<name> runs)

Per model <name> (under the repo root):
  data/models/<name>/best.pt, last.pt     checkpoints (models/engine.py: torch.load(weights_only=True))
  data/predictions/<name>.parquet         video_id, split, O, C, E, A, N, model: every manifest
                                          video that has the model's inputs
  metrics/train/<name>.json               best epoch, val and test metrics, baselines, and
                                          trained_on (device, its name, bf16 used, torch version)
  metrics/train/<name>_history.csv        epoch, train_loss, lr, val_ccc, ... (dvc plots)
MLflow (train.mlflow): params, per-epoch curves (step = epoch), final metrics, tag model=<name>.

DeepPersonality's runner flags, as params (`dvc exp run -S train.<key>=...`):
  --resume PATH  -> train.resume      continue a run from a checkpoint (optimizer, scheduler, epoch)
  --test_only    -> train.test_only   evaluate a checkpoint (resume, else weights, else best.pt)
  --weight PATH  -> train.weights     initial weights (train.weights_strict: false for a partial fit)
  --lr / --bs    -> train.lr / train.batch_size
  --max_epoch    -> train.epochs
  --set k v      -> train.model_config.<name>.<k> / train.source_config.<key>.<k> / any key here
Paths may contain "{model}", replaced by the model's name (train.resume=data/models/{model}/last.pt).
A training stopped by Ctrl-C or SIGTERM keeps its epochs so far in data/interrupted/<name>/
(last.pt, best.pt; not a DVC output): train.resume=data/interrupted/{model}/last.pt goes on.

train.distributed (multi-GPU / multi-process, DDP; not in params.yaml, null = auto):
    torchrun --standalone --nproc_per_node 2 -m stages.train --model perfex_cnn
every process trains on its shard of each epoch (nccl on CUDA, one GPU per process; gloo on the
CPU); train.batch_size is per process. Rank 0 alone validates, predicts and writes every output
above and logs to MLflow. false: each torchrun process trains alone; true: fail unless launched
by torchrun. Single-node only (every rank reads the same data/ and checkpoint files).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from personality import schemas
from models.solver import TrainConfig
from models.train_params import (TrainParams, check_model_config, check_train_params,
                                 check_resumable_data, for_model)
from personality.common import (BaseParams, ParamsError, StageInputError, atomic_dir,
                                atomic_write_json, atomic_write_text, check_schema,
                                frontend_differences, frontend_params, get_logger, load_base,
                                load_params, repo_root, stage_errors, write_predictions)
from personality.schemas import SPLITS, TRAITS

log = get_logger("train")


# train: keys that are not the stage's DVC params (dvc.yaml): the model list and the other models'
# configs (each model's stage tracks its own), and `distributed`, a launch mode that `dvc repro`
# cannot tell apart (null and false train alike in one process): the MLflow run records the
# processes that trained it instead (`world_size`, beside its device tags)
UNTRACKED_PARAMS = ("models", "model_config", "distributed")


def engine_config(p: TrainParams, base: BaseParams) -> TrainConfig:
    """The engine's config: the TrainConfig part of `p`, the seed defaulting to base.seed."""
    values = {f.name: getattr(p, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**values, "seed": base.seed if p.seed is None else p.seed})


def _path(root: Path, template: str, name: str) -> Path | None:
    if not template:
        return None
    path = Path(template.replace("{model}", name))
    return path if path.is_absolute() else root / path


def _targets(df: pd.DataFrame) -> np.ndarray:
    return df[list(TRAITS)].to_numpy(np.float64)  # (n, 5), NaN = unlabelled


def _history_csv(history: list[dict]) -> str:
    if not history:
        return "epoch,train_loss\n"
    return pd.DataFrame(history).to_csv(index=False, float_format="%.6g")


def _model_inputs(name: str, p: TrainParams, root: Path, inputs: tuple[str, ...]) -> dict:
    """The manifest, the model's input sources over it, the videos that have every input and
    their splits: {"manifest", "sources", "source_config", "have", "split"}."""
    from models.data import build_sources

    manifest = pd.read_parquet(root / schemas.ARTIFACTS["manifest"].path)
    check_schema(manifest, "manifest", root / schemas.ARTIFACTS["manifest"].path)
    source_config = {k: dict(v or {}) for k, v in p.source_config.items()}
    if "aus" in inputs:
        source_config.setdefault("aus", {})["augmented"] = p.use_augmented
    sources = build_sources(inputs, root=root, video_ids=manifest["video_id"].tolist(),
                            config=source_config)
    data = _with_sources(name, manifest, sources, inputs)
    if not len(data["split"]["train"]) and not p.test_only:
        raise StageInputError(f"{name}: no train video has the inputs {list(inputs)}")
    return {**data, "source_config": source_config}


def _with_sources(name: str, manifest: pd.DataFrame, sources: list, inputs: tuple[str, ...]
                  ) -> dict:
    """{"manifest", "sources", "have": the videos every source can feed, "split": have by split}."""
    have = manifest[[all(s.has(v) for s in sources) for v in manifest["video_id"]]]
    if len(have) < len(manifest):
        log.warning("%s: %d of %d manifest videos lack inputs %s; no prediction for them", name,
                    len(manifest) - len(have), len(manifest), list(inputs))
    split = {s: have[have["split"] == s] for s in SPLITS}
    return {"manifest": manifest, "sources": sources, "have": have, "split": split}


def _test_only_path(name: str, p: TrainParams, root: Path) -> Path:
    """The checkpoint test_only scores: resume, else weights, else data/models/<name>/best.pt."""
    return (_path(root, p.resume, name) or _path(root, p.weights, name)
            or root / "data" / "models" / name / "best.pt")


def _kept_source_config(name: str, p: TrainParams, root: Path) -> dict | None:
    """test_only: the source config a whole checkpoint carries (None for a bare state_dict)."""
    from models import engine

    ckpt = engine.read_checkpoint(_test_only_path(name, p, root))
    return dict(ckpt.get("source_config") or {}) if "model_name" in ckpt else None


def _checkpoint_inputs(name: str, root: Path, inputs: tuple[str, ...], kept: dict) -> dict:
    """test_only with a whole checkpoint: the inputs built from the config and statistics it
    carries (as predict builds them), never refitted on this data or read from params.yaml: one
    truth per clip, and no train split needed."""
    from models.data import build_sources, for_inference

    manifest = pd.read_parquet(root / schemas.ARTIFACTS["manifest"].path)
    check_schema(manifest, "manifest", root / schemas.ARTIFACTS["manifest"].path)
    sources = build_sources(inputs, root=root, video_ids=manifest["video_id"].tolist(),
                            config=for_inference(kept))
    return {**_with_sources(name, manifest, sources, inputs), "source_config": kept}


def _inference_config(data: dict, root: Path) -> dict:
    """The source config a checkpoint keeps for prediction (models.data.for_inference), checked:
    sources rebuilt from it on one video of each split alone, as predict builds them, must give
    the training sources' inputs, or the stage fails naming the source (lost fitted state)."""
    from models.data import check_inference_parity, for_inference

    config = for_inference(data["source_config"], data["sources"])
    probe = data["have"].groupby("split")["video_id"].first().tolist()
    check_inference_parity(data["sources"], config, root=root, video_ids=probe)
    return config


def _label_scale(manifest: pd.DataFrame, name: str, overrides: dict) -> str:
    """The manifest's label scale; z-scored labels (UDIVA) force the regression_z head (no
    sigmoid, no [0, 1] bins), so `overrides` may change."""
    label_scale = str(manifest["label_scale"].iloc[0]) if "label_scale" in manifest else "unit"
    if label_scale == "z":
        if overrides.get("head", "regression_z") != "regression_z":
            raise ParamsError(f"train.model_config.{name}.head: {overrides['head']!r} needs labels "
                              "in [0, 1]; these are z-scores (use regression_z)")
        overrides["head"] = "regression_z"
    return label_scale


def _evaluate_checkpoint(name: str, p: TrainParams, root: Path, meta: dict,
                         overrides: dict, staging: Path) -> tuple:
    """test_only: the model of resume / weights / best.pt, its history and fit facts. The
    model folder that replaces data/models/<name> is filled in `staging`: a checkpoint from
    elsewhere becomes best.pt and last.pt; one of this model's own becomes best.pt (what its
    predictions, metrics and predict then share), its last.pt stays; a killed run's: refused."""
    from models import engine
    from models.checkpoints import require_finished
    from models.registry import build_model

    out_dir = root / "data" / "models" / name
    ckpt_path = _test_only_path(name, p, root)
    ckpt = engine.read_checkpoint(ckpt_path)
    differ = frontend_differences(ckpt.get("frontend"), frontend_params())
    if differ:  # scored on data/'s features, it would give numbers predict does not
        raise StageInputError(f"{ckpt_path}: its training data came from other front-end params "
                              f"than params.yaml's ({'; '.join(differ[:4])}): set them there "
                              "(dvc repro) to score it here, or use predict")
    if "model_name" in ckpt:
        if ckpt["model_name"] != name:
            raise StageInputError(f"{ckpt_path}: a {ckpt['model_name']} checkpoint, not "
                                  f"{name}; put {{model}} in the path")
        require_finished(ckpt, ckpt_path)  # a killed run's: never marked finished here
        model, ckpt = engine.load_checkpoint(ckpt_path)
    else:  # a bare state_dict
        model = build_model(name, **overrides)
        engine.load_weights(model, ckpt_path, strict=p.weights_strict)
        ckpt = {}
    # the weights scored are the file's own epoch's (a last.pt's best_epoch is another's)
    fit_info = {"best_epoch": ckpt.get("epoch", ckpt.get("best_epoch", 0)), "epochs_run": 0,
                "stopped_early": False, "best_metric": ckpt.get("best_metric", math.nan)}
    inside = Path(ckpt_path).resolve().parent == out_dir.resolve()
    for target in ("best.pt", "last.pt"):
        own = out_dir / target
        if inside and target == "last.pt" and own.is_file():  # the run's last epoch stays; its
            shutil.copyfile(own, staging / target)  # best.pt is the file scored (predict's)
        elif ckpt:
            shutil.copyfile(ckpt_path, staging / target)
        else:
            engine.save_checkpoint(staging / target, model=model, model_name=name,
                                   train_mean=[], **{k: meta[k] for k in (
                                       "inputs", "source_config", "params", "label_scale",
                                       "frontend")})
    return model, list(ckpt.get("history", [])), fit_info


def _fit(name: str, p: TrainParams, cfg: TrainConfig, root: Path, meta: dict, overrides: dict,
         data: dict, tracker, staging: Path | None) -> tuple:
    """Build (seeded), optionally load weights, and train the model: (model, history, fit facts).
    Checkpoints go to `staging` (None on the ranks other than 0, which write nothing)."""
    from models import engine
    from models.registry import build_model

    resume, weights = _path(root, p.resume, name), _path(root, p.weights, name)
    engine.seed_everything(cfg.seed, deterministic=cfg.deterministic)  # init weights
    model = build_model(name, **overrides)
    if weights is not None:
        engine.load_weights(model, weights, strict=p.weights_strict)
    if resume is not None:
        prior = engine.read_checkpoint(resume)
        if prior.get("model_name", name) != name:
            raise StageInputError(f"{resume}: a {prior['model_name']} checkpoint, not "
                                  f"{name}; put {{model}} in the path")
        check_resumable_data(prior, meta, resume)  # the same seed, data and model config
        # the best epoch so far, if not resume's: its run's best.pt lies beside it (the model
        # folder's best.pt is another run's when resuming a kept interrupted one)
        kept_best = resume.parent / "best.pt"
        if staging is not None and kept_best.is_file():
            shutil.copyfile(kept_best, staging / "best.pt")
    meta["model_config"] = engine.model_config_of(model) or overrides
    train_df, val_df = data["split"]["train"], _labelled_val(data["split"]["val"], name)
    if getattr(model, "closed_form", False):  # models/classical.py: fitted, not trained
        from models.classical import fit_closed_form

        result = fit_closed_form(model, data["sources"], train_ids=train_df["video_id"].tolist(),
                                 train_targets=_targets(train_df),
                                 groups=train_df["subject_id"].tolist(),
                                 val_ids=val_df["video_id"].tolist(), val_targets=_targets(val_df),
                                 config=cfg, out_dir=staging, meta=meta,
                                 tracker=tracker, desc=f"train:{name}")
        meta["model_config"] = result["model_config"]
        fit_info = {k: result[k] for k in ("best_epoch", "epochs_run", "stopped_early",
                                           "best_metric")}
        return model, result["history"], fit_info
    result = engine.fit(model, data["sources"], train_ids=train_df["video_id"].tolist(),
                        train_targets=_targets(train_df), val_ids=val_df["video_id"].tolist(),
                        val_targets=_targets(val_df), config=cfg,
                        out_dir=staging, meta=meta, resume=resume,
                        tracker=tracker, desc=f"train:{name}")
    fit_info = {k: result[k] for k in ("best_epoch", "epochs_run", "stopped_early", "best_metric")}
    return model, result["history"], fit_info


def _labelled_val(val_df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The val clips that carry labels: an unlabelled one would make every epoch's val CCC NaN,
    and the first epoch would be kept as the best. None left: no early stopping (said)."""
    labelled = val_df[val_df[list(TRAITS)].notna().any(axis=1)]
    if len(labelled) < len(val_df):
        log.warning("%s: %d of %d val clips carry no label; %s", name,
                    len(val_df) - len(labelled), len(val_df),
                    "left out of validation" if len(labelled) else
                    "no validation: the epoch of lowest training loss is kept")
    return labelled


def _predict(model, name: str, cfg: TrainConfig, data: dict) -> tuple:
    """Every video with inputs: (the predictions table, preds (n, 5), proba (n, 5, 5) or None)."""
    from models import engine
    from models.inference import predictions_table

    have = data["have"]
    device = engine.resolve_device(cfg.device)
    model.to(device)
    # full precision, as predict scores a clip: bf16 autocast (train.amp, CUDA) serves the
    # training and its validation only
    preds, proba = engine.predict_videos(model, data["sources"], have["video_id"].tolist(),
                                         batch_size=cfg.eval_batch_size, device=device,
                                         amp=False, return_proba=True)
    predictions = predictions_table(have["video_id"].to_numpy(), have["split"].to_numpy(),
                                    preds, proba, name)  # + proba_<T>_<k> for 5-bin heads
    return predictions, preds, proba


def _summarize(name: str, p: TrainParams, cfg: TrainConfig, fit_info: dict, data: dict,
               preds: np.ndarray, proba: np.ndarray | None) -> dict:
    """The metrics/train/<name>.json content: val and test scores beside the baselines."""
    from models.distributed import describe_device
    from models.metrics import split_scores

    have, split = data["have"], data["split"]
    # no train clips (test_only on another corpus): no baseline, never a mean of test labels
    train_targets = _targets(split["train"]) if len(split["train"]) else None
    summary = {"model": name, "test_only": p.test_only, "val_metric": cfg.val_metric,
               **fit_info, "n_videos": {s: int(len(split[s])) for s in SPLITS},
               "trained_on": describe_device(cfg.device, cfg.amp)}
    rows = {vid: i for i, vid in enumerate(have["video_id"])}
    for s in ("val", "test"):
        idx = [rows[v] for v in split[s]["video_id"]]
        summary[s] = split_scores(_targets(split[s]), preds[idx],
                                  proba[idx] if proba is not None else None, train_targets)
    return summary


def _finish(out_dir: Path, summary: dict, data: dict, meta: dict, model) -> None:
    """The run's last step: its checkpoints say they are finished, what they were trained on (and
    the training clips' shortest and longest duration) and the test error measured for them
    (predict quotes it): only a file that holds the scored `model`'s weights gets it, the other
    (a last.pt past the best epoch) None."""
    from models.checkpoints import holds_weights, inputs_digest, mark_finished

    per_trait = (summary.get("test") or {}).get("per_trait") or {}
    test_error = {t: per_trait[t]["mae"] for t in TRAITS if t in per_trait}
    digest = inputs_digest(data["have"], meta["source_config"])
    # predict warns for a clip far shorter than any the model learnt from
    have = data["have"]
    seconds = have.loc[have["split"] == "train", "duration_s"].dropna() \
        if "duration_s" in have else pd.Series(dtype=float)
    span = [float(seconds.min()), float(seconds.max())] if len(seconds) else []
    for name in ("best.pt", "last.pt"):
        if (out_dir / name).is_file():
            scored = holds_weights(out_dir / name, model)
            mark_finished(out_dir / name, test_error=test_error if scored else None,
                          inputs_digest=digest, train_duration_s=span)


def _log_final(mlf, summary: dict, started: float) -> None:
    final = {f"{s}_{k}": v for s in ("val", "test") for k, v in
             summary[s].get("model", {}).items()}
    final.update({f"{s}_baseline_{k}": v for s in ("val", "test") for k, v in
                  summary[s].get("baseline", {}).items()})
    mlf.log_metrics({k: float(v) for k, v in final.items()
                     if v is not None and math.isfinite(float(v))})
    mlf.log_metric("train_seconds", time.perf_counter() - started)


def _tracking(p: TrainParams, cfg: TrainConfig, name: str, overrides: dict, data: dict,
              rank: int, world: int, root: Path):
    """The MLflow run of this model (rank 0, train.mlflow), or a context that yields None."""
    if not p.mlflow or rank != 0:
        return contextlib.nullcontext()
    from models.distributed import describe_device
    from personality.common import mlflow_run

    hardware = describe_device(cfg.device, cfg.amp)
    return mlflow_run("train", run_name=name, tags={"model": name, "device": hardware["device"],
                                                    "device_name": hardware["name"]},
                      manifest=root / schemas.ARTIFACTS["manifest"].path,
                      params={**{k: v for k, v in dataclasses.asdict(cfg).items()
                                 if k not in UNTRACKED_PARAMS}, "world_size": world, "model": name,
                              "model_config": overrides, "source_config": data["source_config"],
                              "use_augmented": p.use_augmented, "test_only": p.test_only})


def train_model(name: str, p: TrainParams, base: BaseParams, root: Path) -> dict:
    """Train (or, with test_only, evaluate) one registered model; write its outputs under root."""
    from models import engine
    from models.metrics import json_safe
    from models.registry import model_spec

    spec = model_spec(name)
    p, overrides = for_model(p, name)
    cfg = engine_config(p, base)
    if p.threads > 0:
        import torch

        torch.set_num_threads(p.threads)
    rank, world = engine.init_distributed(cfg.distributed, cfg.device)
    if p.test_only and rank != 0:  # nothing to share: rank 0 evaluates and writes alone
        engine.barrier()
        return {"model": name, "test_only": True, "rank": rank}
    kept = _kept_source_config(name, p, root) if p.test_only else None
    data = (_model_inputs(name, p, root, spec.inputs) if kept is None
            else _checkpoint_inputs(name, root, spec.inputs, kept))
    # the checkpoint keeps the config for prediction: what the sources fitted on this data
    # (standardisation statistics) and original, not augmented, sequences
    meta = {"model_name": name, "inputs": list(spec.inputs),
            "source_config": _inference_config(data, root) if kept is None else kept,
            # this stage's params only (dvc.yaml): the other models' configs, the model list and
            # the launch mode would leave a checkpoint naming values its stage never re-ran for
            "params": {**{k: v for k, v in dataclasses.asdict(p).items()
                          if k not in UNTRACKED_PARAMS},
                       "model_config": {name: p.model_config.get(name) or {}}},
            "frontend": frontend_params(),  # predict runs the front-end that made this data
            "label_scale": _label_scale(data["manifest"], name, overrides),
            "finished": False}  # until predictions and metrics are written (_finish)
    started = time.perf_counter()
    with _tracking(p, cfg, name, overrides, data, rank, world, root) as mlf, \
            _model_folder(root, name, rank, keep_if_stopped=not p.test_only) as staging:
        if p.test_only:
            model, history, fit_info = _evaluate_checkpoint(name, p, root, meta, overrides,
                                                            staging)
        else:
            model, history, fit_info = _fit(name, p, cfg, root, meta, overrides, data, mlf,
                                            staging)
            if rank != 0:  # the predictions and metrics are rank 0's to write; wait for them
                engine.barrier()
                return {"model": name, "test_only": False, "rank": rank, **fit_info}
        predictions, preds, proba = _predict(model, name, cfg, data)
        summary = _summarize(name, p, cfg, fit_info, data, preds, proba)
        _finish(staging, summary, data, meta, model)
        # each file below is atomic; a kill between them leaves the stage unfinished for DVC,
        # which re-runs it, and the old model folder in place (it is swapped in after them)
        write_predictions(root / "data" / "predictions" / f"{name}.parquet", predictions)
        atomic_write_json(root / "metrics" / "train" / f"{name}.json", json_safe(summary))
        atomic_write_text(root / "metrics" / "train" / f"{name}_history.csv",
                          _history_csv(history))
        if mlf is not None:
            _log_final(mlf, summary, started)
    _log_done(name, summary, started)
    engine.barrier()  # under torchrun: the other ranks go on to the next model with rank 0
    return summary


@contextlib.contextmanager
def _model_folder(root: Path, name: str, rank: int, *, keep_if_stopped: bool
                  ) -> Iterator[Path | None]:
    """The temp folder to fill (None on ranks other than 0, which write nothing): the model
    folder appears whole or not at all, swapped in last (common.atomic_dir); with
    `keep_if_stopped`, a training's epochs so far survive a stop (`_kept_if_stopped`)."""
    if rank != 0:
        yield None
        return
    with atomic_dir(root / "data" / "models" / name) as staging, \
            _kept_if_stopped(staging if keep_if_stopped else None, root, name):
        yield staging


INTERRUPTED = Path("data") / "interrupted"  # <name>/last.pt, best.pt of a run that was stopped


@contextlib.contextmanager
def _kept_if_stopped(staging: Path | None, root: Path, name: str) -> Iterator[None]:
    """On Ctrl-C or SIGTERM mid-training, the checkpoints the run has written so far move from
    its temp model folder (about to be removed) to data/interrupted/<name>/, so that
    `train.resume=data/interrupted/{model}/last.pt` continues it; the model folder, DVC's
    output, stays the last finished run's. A long training stopped at epoch 40 lost all 40."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):  # SystemExit: SIGTERM (common.stage_errors)
        if staging is not None and (staging / "last.pt").is_file():
            with atomic_dir(root / INTERRUPTED / name) as kept:
                for file in ("last.pt", "best.pt"):
                    if (staging / file).is_file():
                        os.replace(staging / file, kept / file)
            log.warning("%s: stopped mid-training; its epochs so far are kept in %s: `dvc exp "
                        "run -S \"train.resume='%s/{model}/last.pt'\"` goes on from them", name,
                        root / INTERRUPTED / name, INTERRUPTED.as_posix())
        raise


def _log_done(name: str, summary: dict, started: float) -> None:
    test = summary["test"].get("model", {})
    log.info("%s: best epoch %s; test ccc %.3f (baseline 0), bin acc %.3f (majority %.3f) "
             "in %.1f s on %s", name, summary["best_epoch"], test.get("ccc", math.nan),
             test.get("bin_accuracy", math.nan),
             summary["test"].get("baseline", {}).get("bin_accuracy", math.nan),
             time.perf_counter() - started, summary["trained_on"]["device"])


def run(params: TrainParams, base: BaseParams, root: Path | None = None,
        models: list[str] | None = None) -> dict[str, dict]:
    """Train `models` (default: params.models) under `root`; returns {name: metrics summary}."""
    root = root or repo_root()
    names = list(models) if models else list(params.models)
    if not names:
        raise ParamsError("train.models: empty; name at least one registered model")
    check_train_params(dataclasses.replace(params, models=names))
    for name in names:  # every model's config and crop lengths, before any model reads data
        check_model_config(name, for_model(params, name)[1], params)
    return {name: train_model(name, params, base, root) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="train only this model (repeatable); default: train.models")
    args = parser.parse_args(argv)
    from models.engine import shutdown_distributed

    with stage_errors("train"):  # SourceError and EngineError are StageInputErrors
        try:
            run(load_params("train", TrainParams), load_base(), models=args.model)
        finally:
            shutdown_distributed()  # the torchrun process group, if one was started


if __name__ == "__main__":
    main()
