"""train: fit every model of `train.models` on the manifest's train split, pick its best epoch on
val, predict every video, score val and test beside the train-mean baseline.

    python -m stages.train                     # every model of params.yaml:train.models
    python -m stages.train --model perfex_cnn  # one model (what each DVC stage train@<name> runs)

Per model <name> (under the repo root):
  data/models/<name>/best.pt, last.pt     checkpoints (models/engine.py: torch.load(weights_only=True))
  data/predictions/<name>.parquet         video_id, split, O, C, E, A, N, model: every manifest
                                          video that has the model's inputs
  metrics/train/<name>.json               best epoch, val and test metrics, baselines
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

train.distributed (multi-GPU / multi-process, DDP; not in params.yaml, null = auto):
    torchrun --standalone --nproc_per_node 2 -m stages.train --model perfex_cnn
every process trains on its shard of each epoch (nccl on CUDA, one GPU per process; gloo on the
CPU); train.batch_size is per process. Rank 0 alone validates, predicts and writes every output
above and logs to MLflow. false: each torchrun process trains alone; true: fail unless launched
by torchrun. Single-node only (every rank reads the same data/ and checkpoint files).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, ParamsError, StageInputError, atomic_write_json,
                           atomic_write_text, check_schema, get_logger, load_params, repo_root,
                           write_predictions)
from personality.schemas import SPLITS, TRAITS

log = get_logger("train")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    models: list[str] = dataclasses.field(
        default_factory=lambda: ["perfex_cnn", "perfex_hybrid"])  # registry names
    epochs: int = 30  # at most (DeepPersonality --max_epoch); early stopping may end sooner
    lr: float = 2e-3
    batch_size: int = 32
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["none", "cosine", "multistep"] = "cosine"  # stepped per epoch
    milestones: list[int] = dataclasses.field(default_factory=lambda: [10, 15])  # multistep
    gamma: float = 0.1  # multistep
    warmup_epochs: int = 0
    patience: int = 6  # epochs without val improvement before stopping (0: never)
    val_metric: str = "ccc"  # ccc (mean over traits) | pcc | acc | r2 | mae | mse | bin_accuracy
    views_per_video: int = 4  # random training views per train clip per epoch
    grad_clip: float = 0.0
    seed: int | None = None  # None: base.seed
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA only
    channels_last: bool = True  # CUDA only
    deterministic: bool = True
    threads: int = 1  # torch CPU threads (0: torch's default); 1 is fastest on a shared 2-core box
    resume: str = ""  # checkpoint to continue from ("" = start fresh)
    test_only: bool = False  # evaluate a checkpoint, no training
    weights: str = ""  # initial weights (a checkpoint or a bare state_dict)
    weights_strict: bool = True
    num_workers: int = 0  # DataLoader workers
    eval_batch_size: int = 64
    distributed: bool | None = None  # DDP under torchrun (module docstring); None: when launched
    use_augmented: bool = True  # AU models: training views from data/augmented
    mlflow: bool = True  # log to MLflow (sqlite:///mlflow.db)
    model_config: dict = dataclasses.field(default_factory=dict)  # {name: {field: value}}
    source_config: dict = dataclasses.field(default_factory=dict)  # {sample key: {option: value}}


# Solver params a model may set for itself under train.model_config.<name>.train (DeepPersonality
# keeps lr, epochs, batch size per model config): a face CNN from scratch needs more steps than a
# linear model on audio functionals.
PER_MODEL_TRAIN_KEYS = ("epochs", "lr", "batch_size", "optimizer", "momentum", "weight_decay",
                        "schedule", "milestones", "gamma", "warmup_epochs", "patience",
                        "val_metric", "views_per_video", "grad_clip")


def for_model(p: TrainParams, name: str) -> tuple[TrainParams, dict]:
    """(train params with `model_config.<name>.train` applied, the model's config overrides)."""
    overrides = dict(p.model_config.get(name) or {})
    solver = overrides.pop("train", None) or {}
    if not isinstance(solver, dict):
        raise ParamsError(f"train.model_config.{name}.train: expected a mapping, got {solver!r}")
    bad = sorted(set(solver) - set(PER_MODEL_TRAIN_KEYS))
    if bad:
        raise ParamsError(f"train.model_config.{name}.train.{bad[0]}: not a per-model train "
                          f"param (allowed: {', '.join(PER_MODEL_TRAIN_KEYS)})")
    if not solver:
        return p, overrides
    from personality.common import build_dataclass

    merged = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)} | solver
    return build_dataclass(TrainParams, merged, "train"), overrides


def engine_config(p: TrainParams, base: BaseParams):
    from models.engine import EngineError, TrainConfig

    try:
        return TrainConfig(
            epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, optimizer=p.optimizer,
            momentum=p.momentum, weight_decay=p.weight_decay, schedule=p.schedule,
            milestones=tuple(p.milestones), gamma=p.gamma, warmup_epochs=p.warmup_epochs,
            patience=p.patience, val_metric=p.val_metric, views_per_video=p.views_per_video,
            grad_clip=p.grad_clip, seed=base.seed if p.seed is None else p.seed, device=p.device,
            amp=p.amp, channels_last=p.channels_last, deterministic=p.deterministic,
            num_workers=p.num_workers, eval_batch_size=p.eval_batch_size,
            distributed=p.distributed)
    except EngineError as exc:
        raise ParamsError(f"train: {exc}") from None


def _path(root: Path, template: str, name: str) -> Path | None:
    if not template:
        return None
    path = Path(template.replace("{model}", name))
    return path if path.is_absolute() else root / path


def _targets(df: pd.DataFrame) -> np.ndarray:
    return df[list(TRAITS)].to_numpy(np.float64)  # (n, 5), NaN = unlabelled


def scores(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None,
           train_targets: np.ndarray) -> dict:
    """Model metrics beside the train-mean / majority-bin baselines, for one split."""
    from models.metrics import (baseline_metrics, bin_metrics, majority_class_accuracy,
                                regression_metrics)

    if len(y_true) == 0 or np.isnan(y_true).all():
        return {}
    reg = regression_metrics(y_true, y_pred)
    bins = bin_metrics(y_true, y_pred, proba=proba)
    base = baseline_metrics(train_targets, y_true)
    major = majority_class_accuracy(train_targets, y_true)
    return {
        "n": int(len(y_true)),
        "model": {**reg["mean"], **{f"ccc_{t}": reg[t]["ccc"] for t in TRAITS},
                  "bin_accuracy": bins["mean"]["accuracy"], "bin_precision": bins["mean"]["precision"],
                  "bin_recall": bins["mean"]["recall"], "bin_auc": bins["mean"]["auc"]},
        "baseline": {**{k: base["mean"][k] for k in ("ccc", "mae", "acc", "mse", "r2")},
                     "bin_accuracy": major["mean"]["accuracy"]},
        "per_trait": {t: {**reg[t], "bin_accuracy": bins[t]["accuracy"]} for t in TRAITS},
    }


def _history_csv(history: list[dict]) -> str:
    if not history:
        return "epoch,train_loss\n"
    return pd.DataFrame(history).to_csv(index=False, float_format="%.6g")


def train_model(name: str, p: TrainParams, base: BaseParams, root: Path) -> dict:
    """Train (or, with test_only, evaluate) one registered model; write its outputs under root."""
    from models import engine
    from models.data import build_sources, for_inference
    from models.registry import build_model, model_spec

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
    manifest = pd.read_parquet(root / schemas.ARTIFACTS["manifest"].path)
    check_schema(manifest, "manifest", root / schemas.ARTIFACTS["manifest"].path)
    source_config = {k: dict(v or {}) for k, v in p.source_config.items()}
    if "aus" in spec.inputs:
        source_config.setdefault("aus", {})["augmented"] = p.use_augmented
    sources = build_sources(spec.inputs, root=root, video_ids=manifest["video_id"].tolist(),
                            config=source_config)
    have = manifest[[all(s.has(v) for s in sources) for v in manifest["video_id"]]]
    if len(have) < len(manifest):
        log.warning("%s: %d of %d manifest videos lack inputs %s; no prediction for them", name,
                    len(manifest) - len(have), len(manifest), list(spec.inputs))
    split = {s: have[have["split"] == s] for s in SPLITS}
    train_df = split["train"]
    if not len(train_df) and not p.test_only:
        raise StageInputError(f"{name}: no train video has the inputs {list(spec.inputs)}")
    label_scale = str(manifest["label_scale"].iloc[0]) if "label_scale" in manifest else "unit"
    if label_scale == "z":  # z-scored labels (UDIVA): no sigmoid, no [0, 1] bins
        if overrides.get("head", "regression_z") != "regression_z":
            raise ParamsError(f"train.model_config.{name}.head: {overrides['head']!r} needs labels "
                              "in [0, 1]; these are z-scores (use regression_z)")
        overrides["head"] = "regression_z"
    # the checkpoint keeps the config for prediction: what the sources fitted on this data
    # (standardisation statistics) and original, not augmented, sequences
    meta = {"model_name": name, "inputs": list(spec.inputs),
            "source_config": for_inference(source_config, sources),
            "params": dataclasses.asdict(p), "label_scale": label_scale}
    out_dir = root / "data" / "models" / name
    resume, weights = _path(root, p.resume, name), _path(root, p.weights, name)

    tracking = None
    if p.mlflow and rank == 0:
        from personality.common import mlflow_run

        tracking = mlflow_run("train", run_name=name, tags={"model": name},
                              params={**dataclasses.asdict(cfg), "model": name,
                                      "model_config": overrides, "source_config": source_config,
                                      "use_augmented": p.use_augmented, "test_only": p.test_only})
    started = time.perf_counter()
    with tracking if tracking is not None else _null() as mlf:
        if p.test_only:
            ckpt_path = resume or weights or out_dir / "best.pt"
            ckpt = engine.read_checkpoint(ckpt_path)
            if "model_name" in ckpt:
                if ckpt["model_name"] != name:
                    raise StageInputError(f"{ckpt_path}: a {ckpt['model_name']} checkpoint, not "
                                          f"{name}; put {{model}} in the path")
                model, ckpt = engine.load_checkpoint(ckpt_path)
            else:  # a bare state_dict
                model = build_model(name, **overrides)
                engine.load_weights(model, ckpt_path, strict=p.weights_strict)
                ckpt = {}
            history = list(ckpt.get("history", []))
            fit_info = {"best_epoch": ckpt.get("best_epoch", 0), "epochs_run": 0,
                        "stopped_early": False, "best_metric": ckpt.get("best_metric", math.nan)}
            # the stage's outputs: a checkpoint from elsewhere becomes best.pt and last.pt; one
            # of this model's own (best.pt, last.pt) leaves the other alone (if present)
            inside = Path(ckpt_path).resolve().parent == out_dir.resolve()
            for target in ("best.pt", "last.pt"):
                if Path(ckpt_path).resolve() != (out_dir / target).resolve() and not (
                        inside and (out_dir / target).exists()):
                    out_dir.mkdir(parents=True, exist_ok=True)
                    if ckpt:
                        shutil.copyfile(ckpt_path, out_dir / target)
                    else:
                        engine.save_checkpoint(out_dir / target, model=model, model_name=name,
                                               train_mean=[], **{k: meta[k] for k in (
                                                   "inputs", "source_config", "params",
                                                   "label_scale")})
        else:
            engine.seed_everything(cfg.seed, deterministic=cfg.deterministic)  # init weights
            model = build_model(name, **overrides)
            if weights is not None:
                engine.load_weights(model, weights, strict=p.weights_strict)
            if resume is not None:
                prior = engine.read_checkpoint(resume)
                if prior.get("model_name", name) != name:
                    raise StageInputError(f"{resume}: a {prior['model_name']} checkpoint, not "
                                          f"{name}; put {{model}} in the path")
            meta["model_config"] = engine.model_config_of(model) or overrides
            result = engine.fit(model, sources, train_ids=train_df["video_id"].tolist(),
                                train_targets=_targets(train_df),
                                val_ids=split["val"]["video_id"].tolist(),
                                val_targets=_targets(split["val"]), config=cfg, out_dir=out_dir,
                                meta=meta, resume=resume, tracker=mlf, desc=f"train:{name}")
            history = result["history"]
            fit_info = {k: result[k] for k in ("best_epoch", "epochs_run", "stopped_early",
                                               "best_metric")}
            if rank != 0:  # the predictions and metrics are rank 0's to write; wait for them
                engine.barrier()
                return {"model": name, "test_only": False, "rank": rank, **fit_info}
        device = engine.resolve_device(cfg.device)
        model.to(device)
        preds, proba = engine.predict_videos(model, sources, have["video_id"].tolist(),
                                             batch_size=cfg.eval_batch_size, device=device,
                                             amp=cfg.amp, return_proba=True)
        predictions = pd.DataFrame({"video_id": have["video_id"].to_numpy(),
                                    "split": have["split"].to_numpy(),
                                    **{t: preds[:, k] for k, t in enumerate(TRAITS)},
                                    "model": name})
        if proba is not None:  # 5-bin heads: proba_<T>_<k>, trait-major (stages/evaluate.py)
            for j, t in enumerate(TRAITS):
                for k in range(proba.shape[2]):
                    predictions[f"proba_{t}_{k}"] = proba[:, j, k]
        write_predictions(root / "data" / "predictions" / f"{name}.parquet", predictions)
        train_targets = _targets(train_df) if len(train_df) else _targets(have)
        summary = {"model": name, "test_only": p.test_only, "val_metric": cfg.val_metric,
                   **fit_info,
                   "n_videos": {s: int(len(split[s])) for s in SPLITS}}
        rows = {vid: i for i, vid in enumerate(have["video_id"])}
        for s in ("val", "test"):
            idx = [rows[v] for v in split[s]["video_id"]]
            summary[s] = scores(_targets(split[s]), preds[idx],
                                proba[idx] if proba is not None else None, train_targets)
        from models.metrics import json_safe

        atomic_write_json(root / "metrics" / "train" / f"{name}.json", json_safe(summary))
        atomic_write_text(root / "metrics" / "train" / f"{name}_history.csv",
                          _history_csv(history))
        if mlf is not None:
            final = {f"{s}_{k}": v for s in ("val", "test") for k, v in
                     summary[s].get("model", {}).items()}
            final.update({f"{s}_baseline_{k}": v for s in ("val", "test") for k, v in
                          summary[s].get("baseline", {}).items()})
            mlf.log_metrics({k: float(v) for k, v in final.items()
                             if v is not None and math.isfinite(float(v))})
            mlf.log_metric("train_seconds", time.perf_counter() - started)
    test = summary["test"].get("model", {})
    log.info("%s: best epoch %s; test ccc %.3f (baseline 0), bin acc %.3f (majority %.3f) "
             "in %.1f s", name, summary["best_epoch"], test.get("ccc", math.nan),
             test.get("bin_accuracy", math.nan),
             summary["test"].get("baseline", {}).get("bin_accuracy", math.nan),
             time.perf_counter() - started)
    engine.barrier()  # under torchrun: the other ranks go on to the next model with rank 0
    return summary


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def run(params: TrainParams, base: BaseParams, root: Path | None = None,
        models: list[str] | None = None) -> dict[str, dict]:
    """Train `models` (default: params.models) under `root`; returns {name: metrics summary}."""
    root = root or repo_root()
    names = list(models) if models else list(params.models)
    if not names:
        raise ParamsError("train.models: empty; name at least one registered model")
    from models.registry import model_spec

    for name in names:
        try:
            model_spec(name)
        except ValueError as exc:
            raise ParamsError(f"train.models: {exc}") from None
    from models.registry import list_models

    registered = {m["name"] for m in list_models()}
    unknown = sorted(set(params.model_config) - registered)
    if unknown:  # a typo would otherwise silently train the module's defaults
        log.warning("train.model_config.%s: not a registered model", unknown[0])
    return {name: train_model(name, params, base, root) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="train only this model (repeatable); default: train.models")
    args = parser.parse_args(argv)
    base = load_params("base", BaseParams)
    params = load_params("train", TrainParams)
    from models.data import SourceError
    from models.engine import EngineError

    from models.engine import shutdown_distributed

    try:
        run(params, base, models=args.model)
    except (StageInputError, ParamsError, SourceError, EngineError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    finally:
        shutdown_distributed()  # the torchrun process group, if one was started


if __name__ == "__main__":
    main()
