"""One training engine for every registered model (torchvision-references style).

    from models.engine import TrainConfig, fit, predict_videos, evaluate, load_checkpoint

    cfg = TrainConfig(epochs=30, lr=1e-3, batch_size=32, seed=1234)
    result = fit(model, sources, train_ids=ids, train_targets=y, val_ids=vids, val_targets=vy,
                 config=cfg, out_dir=Path("data/models/perfex_cnn"), meta={"model_name": ...})
    preds = predict_videos(model, sources, test_ids, batch_size=64, device="cpu")   # (n, 5)
    model, ckpt = load_checkpoint("data/models/perfex_cnn/best.pt")

The model protocol (models/registry.py): `outputs = model(batch)`, `model.loss(outputs, targets)`,
`model.decode(outputs)` -> (B, 5) in [0, 1]; NaN targets are unlabelled. The inputs come from
`models.data` sources: `train_item` gives one random view per sample, `eval_items` all views of a
video; predictions are averaged over the views, one per video.

Reproducibility: `seed_everything` seeds python, numpy and torch and switches torch to
deterministic algorithms. Every epoch re-derives its randomness from (seed, epoch): the shuffle,
each sample's view (`np.random.default_rng([seed, epoch, index])`, the same whatever the number of
loader workers) and torch's generator (dropout). A run resumed from the checkpoint of epoch k is
therefore the same run as one that never stopped (on the CPU, one thread).

Checkpoints (`save_checkpoint`, models/checkpoints.py) hold only tensors, dicts, lists, strings
and numbers, so `torch.load(path, weights_only=True)` reads them.

Mixed precision (bf16 autocast) and channels_last apply on CUDA only.

Multi-process training (DDP): under `torchrun --nproc_per_node N` (WORLD_SIZE > 1), or when a
process group is already up, `fit` starts the group (`init_distributed`: nccl on CUDA, gloo on the
CPU, from env://), wraps the model in DistributedDataParallel and gives every rank a disjoint shard
of each epoch's (seed, epoch) order (`shard_indices`: every N-th index from the rank, wrapped round
so all ranks take the same number of steps); `batch_size` is per process. DDP averages the
gradients; rank 0 alone validates, writes checkpoints (the unwrapped module's state_dict) and logs
to MLflow while the others wait, and its early-stopping decision is broadcast so all ranks stop
together. `TrainConfig.distributed=False` keeps every process on its own; a single process trains
exactly as before.

Where things are: the knobs and their validation in models/solver.py (TrainConfig), devices and DDP
in models/distributed.py, views and batches in models/batching.py, checkpoint I/O in
models/checkpoints.py, inference (predict_videos, evaluate) in models/inference.py; this module
holds the loop and re-exports those names, so `from models.engine import ...` finds every one
of them.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.batching import (TrainViews, collate, epoch_loader, epoch_seed, merge_views,
                             to_device)
from models.checkpoints import (load_checkpoint, load_weights, model_config_of, read_checkpoint,
                                save_checkpoint)
from models.data import InputSource
from models.distributed import (all_ranks_loss, barrier, broadcast, init_distributed,
                                resolve_device, shard_indices, shutdown_distributed, sync_buffers,
                                wrap_ddp)
from models.inference import autocast as _autocast
from models.inference import evaluate, predict_videos
from models.solver import METRIC_MODES, EngineError, Solver, TrainConfig, metric_is_better
from personality.common import get_logger, progress

__all__ = ["TrainConfig", "Solver", "EngineError", "seed_everything", "resolve_device",
           "TrainViews", "collate", "merge_views", "make_optimizer", "make_scheduler",
           "train_one_epoch", "predict_videos", "evaluate", "fit", "save_checkpoint",
           "read_checkpoint", "load_checkpoint", "load_weights", "model_config_of",
           "metric_is_better", "METRIC_MODES", "init_distributed", "shard_indices", "barrier",
           "shutdown_distributed"]

log = get_logger("engine")

# older names of two helpers now in models/batching.py, for the callers that use them (tests, bench)
_loader, _to_device = epoch_loader, to_device


# --------------------------------------------------------------------------------------------------
# seeding


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with `deterministic`, torch's deterministic algorithms
    (warn-only where an op has none) and cuDNN without autotuning."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False




# --------------------------------------------------------------------------------------------------
# optimisation


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer,
                   cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. cosine: to 0 over the epochs after warm-up; multistep: lr *= gamma
    at each milestone; none: constant. warmup_epochs > 0 prepends a linear ramp from lr / 10."""
    sched = torch.optim.lr_scheduler
    main_epochs = max(1, cfg.epochs - cfg.warmup_epochs)
    if cfg.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_epochs)
    elif cfg.schedule == "multistep":
        main = sched.MultiStepLR(optimizer, milestones=[max(1, m - cfg.warmup_epochs)
                                                        for m in cfg.milestones], gamma=cfg.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if cfg.warmup_epochs <= 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[cfg.warmup_epochs])


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable[Mapping[str, Tensor]], *, device: torch.device,
                    amp: bool = False, channels_last: bool = False,
                    grad_clip: float = 0.0) -> dict[str, float]:
    """One pass over `loader`; returns {"loss": mean per sample, "n_samples", "n_steps"}.
    `model` may be DDP-wrapped: the forward goes through the wrapper (it syncs the gradients),
    the loss is the wrapped module's."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.train()
    total, n, steps = 0.0, 0, 0
    cl = channels_last and device.type == "cuda"
    for batch in loader:
        batch = to_device(batch, device, cl)
        targets = batch.pop("target")  # (B, 5)
        with _autocast(device, amp):
            outputs = model(batch)
            loss = core.loss(outputs, targets)
        if not torch.isfinite(loss):
            raise EngineError(f"training loss is {loss.item()} at step {steps}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(targets)
        n += len(targets)
        steps += 1
    return {"loss": total / max(n, 1), "n_samples": n, "n_steps": steps}


# --------------------------------------------------------------------------------------------------
# the loop


def _materialize_lazy(model: nn.Module, sources: Sequence[InputSource],
                      train_ids: Sequence[str], device: torch.device) -> None:
    """Lazy layers (nn.LazyLinear: input size found on the first call) get their shapes from one
    real sample, so the optimizer is built over real parameters."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if not train_ids or not any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
                                for m in model.modules()):
        return
    item: dict[str, Tensor] = {}
    for source in sources:
        item.update(source.train_item(train_ids[0], np.random.default_rng(0)))
    was_training = model.training
    model.eval()  # batch norm cannot take a batch of one in training mode
    with torch.no_grad():
        model(to_device(collate([item]), device, False))
    model.train(was_training)


def place_model(model: nn.Module, sources: Sequence[InputSource], train_ids: Sequence[str],
                device: torch.device, *, channels_last: bool) -> None:
    """The model on `device`, its lazy layers shaped (before the optimizer sees them), then, when
    asked, its convolution weights in channels_last: a lazy layer has no shape to convert before."""
    model.to(device)
    _materialize_lazy(model, sources, train_ids, device)
    if channels_last:
        model._apply(_channels_last)


def _channels_last(t: Tensor) -> Tensor:
    """4-D weights in channels_last, 5-D (3-D convolutions) in channels_last_3d, others as they
    are: `model.to(memory_format=torch.channels_last)` raises on a 5-D weight."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


@dataclasses.dataclass
class _Trainer:
    """What one `fit` call trains with: built once by `_prepare`, read by every helper below."""
    model: nn.Module
    net: nn.Module  # what trains: the model itself, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataset: TrainViews
    sources: Sequence[InputSource]
    val_ids: Sequence[str]
    val_targets: np.ndarray | None
    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    train_mean: list[float]
    meta: dict
    out: Path | None

    @property
    def has_val(self) -> bool:
        return len(self.val_ids) > 0 and self.val_targets is not None

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints and logs to the tracker (rank 0 alone)."""
        return self.rank == 0


@dataclasses.dataclass
class _Progress:
    """What `fit` carries from epoch to epoch, and what a checkpoint restores."""
    history: list[dict] = dataclasses.field(default_factory=list)
    start: int = 1  # the first epoch to run
    best_epoch: int = 0
    best_metric: float = math.nan
    best_state: dict[str, Tensor] | None = None


def _train_mean(train_targets: np.ndarray) -> list[float]:
    """Per trait mean of the labelled train targets (0.5 for a trait without labels)."""
    counts = np.sum(~np.isnan(train_targets), axis=0)
    return [float(x) for x in np.where(counts > 0, np.nansum(train_targets, axis=0)
                                       / np.maximum(counts, 1), 0.5)]


def _prepare(model: nn.Module, sources: Sequence[InputSource], train_ids: Sequence[str],
             train_targets: np.ndarray, val: tuple, cfg: TrainConfig, meta: dict,
             out: Path | None) -> _Trainer:
    """Device, process group, seeds, the model on its device, optimizer, scheduler, dataset, in
    the order that fixes the RNG streams (the lazy layers draw their initial weights after
    seeding and before the optimizer sees them)."""
    device = resolve_device(cfg.device)
    rank, world = init_distributed(cfg.distributed, device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    train_targets = np.asarray(train_targets, dtype=np.float64)
    place_model(model, sources, train_ids, device,
                channels_last=cfg.channels_last and device.type == "cuda")
    optimizer = make_optimizer(model, cfg)
    return _Trainer(model=model, net=model, optimizer=optimizer,
                    scheduler=make_scheduler(optimizer, cfg),
                    dataset=TrainViews(sources, train_ids, train_targets,
                                       views_per_video=cfg.views_per_video, seed=cfg.seed),
                    sources=sources, val_ids=val[0], val_targets=val[1], cfg=cfg, device=device,
                    rank=rank, world=world, train_mean=_train_mean(train_targets), meta=meta,
                    out=out)


def _resume(t: _Trainer, path: str | os.PathLike, desc: str) -> _Progress:
    """Model, optimizer, scheduler, epoch, best and history from the checkpoint at `path`; the
    best epoch's weights from it or from out_dir/best.pt."""
    ckpt = read_checkpoint(path)
    try:
        t.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # another model_config than the run it continues: one line
        raise EngineError(f"{path}: its weights do not fit the model being trained (resume "
                          f"needs the model config it was trained with: "
                          f"{ckpt.get('model_config')}): {str(exc).splitlines()[-1].strip()}"
                          ) from None
    if ckpt.get("optimizer"):
        t.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler"):
        t.scheduler.load_state_dict(ckpt["scheduler"])
    _check_resumable(ckpt, t.cfg, path)
    state = _Progress(history=[dict(h) for h in ckpt.get("history", [])],
                      start=int(ckpt["epoch"]) + 1, best_epoch=int(ckpt["best_epoch"]),
                      best_metric=float(ckpt["best_metric"]))
    if state.best_epoch == ckpt["epoch"]:
        state.best_state = copy.deepcopy(t.model.state_dict())
    elif t.out is not None and (t.out / "best.pt").is_file():
        best = read_checkpoint(t.out / "best.pt")
        if int(best.get("best_epoch", -1)) == state.best_epoch:
            state.best_state = best["state_dict"]
    if state.best_state is None:
        _best_is_resumed_epoch(t, state, int(ckpt["epoch"]), path)
    log.info("%s: resuming from %s at epoch %d (best %s=%.4f at epoch %d)", desc, path,
             state.start, t.cfg.val_metric, state.best_metric, state.best_epoch)
    return state


# what the optimizer's and scheduler's saved states carry (their load restores them over the
# config); cosine's length is the epochs
_RESTORED_KNOBS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones",
                   "gamma", "warmup_epochs")


def _check_resumable(ckpt: Mapping, cfg: TrainConfig, path) -> None:
    """EngineError when the config changes a knob that resuming cannot honour: the saved
    optimizer and scheduler bring back their own lr, schedule (cosine: over the old epochs) and
    so on, so `-S train.lr=...` with train.resume trained at the old lr while the checkpoint and
    MLflow recorded the new one; the kept best_metric is in the saved val metric."""
    saved = dict(ckpt.get("params") or {})
    saved["val_metric"] = ckpt.get("val_metric_name")
    knobs = _RESTORED_KNOBS + ("val_metric",) + (("epochs",) if cfg.schedule == "cosine" else ())
    for key in knobs:
        if saved.get(key) is None or saved.get(key) == "neg_train_loss":  # not recorded
            continue
        old, new = saved[key], getattr(cfg, key)
        if (list(old) if isinstance(old, (list, tuple)) else old) != \
                (list(new) if isinstance(new, tuple) else new):
            raise EngineError(f"{path}: resume continues its run, which has {key} {old!r}; the "
                              f"config says {new!r}, which the restored optimizer, schedule and "
                              f"best epoch would not follow. Set {key} back, or start a new run "
                              "from its weights (train.weights)")


def _best_is_resumed_epoch(t: _Trainer, state: _Progress, epoch: int, path) -> None:
    """The best epoch's weights are in neither the resumed checkpoint nor out_dir/best.pt: the
    resumed epoch's weights become the best so far, with that epoch's own val metric, so that the
    reported best epoch is always the one whose weights are kept and scored."""
    row = next((h for h in state.history if int(h.get("epoch", -1)) == epoch), {})
    if t.has_val:
        value = row.get(f"val_{t.cfg.val_metric}", math.nan)
    else:
        loss = row.get("train_loss", math.nan)
        value = -loss if METRIC_MODES[t.cfg.val_metric] == "max" else loss
    log.warning("%s: the weights of best epoch %d are not there (nor in best.pt beside it); the "
                "best so far is the resumed epoch %d (%s=%.4f)", path, state.best_epoch, epoch,
                t.cfg.val_metric, float(value))
    state.best_epoch, state.best_metric = epoch, float(value)
    state.best_state = copy.deepcopy(t.model.state_dict())
    if t.out is not None and t.writes:  # out_dir/best.pt holds the weights the report names
        _checkpoint(t, state, "best.pt", epoch)


def _checkpoint(t: _Trainer, state: _Progress, name: str, epoch: int) -> None:
    meta = t.meta
    save_checkpoint(t.out / name, model=t.model,
                    model_name=meta.get("model_name", type(t.model).__name__),
                    model_config=meta.get("model_config"), optimizer=t.optimizer,
                    scheduler=t.scheduler, epoch=epoch, best_epoch=state.best_epoch,
                    best_metric=state.best_metric, val_metric_name=_metric_name(t),
                    train_mean=t.train_mean, inputs=meta.get("inputs", ()),
                    source_config=meta.get("source_config"), params=meta.get("params"),
                    label_scale=meta.get("label_scale", "unit"), history=state.history,
                    finished=meta.get("finished"), frontend=meta.get("frontend"))


def _metric_name(t: _Trainer) -> str:
    """What `best_metric` holds: the val metric, or without a val set (fine-tuning on a user
    study) the training loss that stands in for it, negated when the metric is maximised."""
    if t.has_val:
        return t.cfg.val_metric
    return "neg_train_loss" if METRIC_MODES[t.cfg.val_metric] == "max" else "train_loss"


def _validate(t: _Trainer, row: dict, train_loss: float) -> float:
    """The epoch's val metric (rank 0 only); the val metrics go into `row`. Without a val set,
    the training loss stands in, signed so that better is better."""
    if not t.has_val:
        return -train_loss if METRIC_MODES[t.cfg.val_metric] == "max" else train_loss
    vm = evaluate(t.model, t.sources, t.val_ids, t.val_targets,
                  batch_size=t.cfg.eval_batch_size, device=t.device, amp=t.cfg.amp)
    row.update({f"val_{k}": v for k, v in vm.items()})
    return vm[t.cfg.val_metric]


def _run_epoch(t: _Trainer, epoch: int) -> tuple[dict, float]:
    """Train one epoch, step the schedule, validate: (the history row, the val metric value),
    the same on every rank."""
    cfg = t.cfg
    # dropout: same on resume; each rank its own masks (rank 0's are the single process's)
    torch.manual_seed(epoch_seed(cfg.seed, epoch, 2 + 1000 * t.rank))
    loader = epoch_loader(t.dataset, batch_size=cfg.batch_size, epoch=epoch, seed=cfg.seed,
                          num_workers=cfg.num_workers, rank=t.rank, world_size=t.world)
    stats = train_one_epoch(t.net, t.optimizer, loader, device=t.device, amp=cfg.amp,
                            channels_last=cfg.channels_last, grad_clip=cfg.grad_clip)
    if t.world > 1:
        stats["loss"] = all_ranks_loss(stats, t.device)
        sync_buffers(t.model)
    row = {"epoch": epoch, "train_loss": stats["loss"], "lr": t.optimizer.param_groups[0]["lr"]}
    t.scheduler.step()
    value = _validate(t, row, stats["loss"]) if t.rank == 0 else math.nan  # the others wait
    if t.world > 1:
        row, value = broadcast((row, value))  # every rank keeps the same history, best
    return row, value


def _keep_best(t: _Trainer, state: _Progress, epoch: int, value: float) -> None:
    """Record the epoch's row first (the checkpoints carry the history), then keep the best
    weights, and write best.pt (when improved) and last.pt."""
    improved = metric_is_better(value, state.best_metric if state.best_epoch else None,
                                t.cfg.val_metric)
    if improved or state.best_epoch == 0:
        state.best_epoch, state.best_metric = epoch, float(value)
        state.best_state = copy.deepcopy(t.model.state_dict())
        if t.out is not None and t.writes:
            _checkpoint(t, state, "best.pt", epoch)
    if t.out is not None and t.writes:
        _checkpoint(t, state, "last.pt", epoch)


def _should_stop(t: _Trainer, state: _Progress, epoch: int) -> bool:
    """Early stopping by patience; under DDP rank 0's decision, so all ranks stop together (the
    broadcast also holds the others until rank 0 has written the checkpoints)."""
    stop = t.cfg.patience > 0 and t.has_val and epoch - state.best_epoch >= t.cfg.patience
    return bool(broadcast(stop)) if t.world > 1 else stop


def _log_epoch(tracker: Any, row: Mapping, epoch: int) -> None:
    tracker.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"
                         and v is not None and math.isfinite(float(v))}, step=epoch)


def fit(model: nn.Module, sources: Sequence[InputSource], *, train_ids: Sequence[str],
        train_targets: np.ndarray, val_ids: Sequence[str] = (),
        val_targets: np.ndarray | None = None, config: TrainConfig = TrainConfig(),
        out_dir: str | os.PathLike | None = None, meta: Mapping | None = None,
        resume: str | os.PathLike | None = None, tracker: Any = None,
        until_epoch: int | None = None, desc: str = "train") -> dict:
    """Train `model`, validating after every epoch; keep the best epoch by `config.val_metric`.

    out_dir: where best.pt and last.pt go (None: nowhere; the best weights are kept in memory).
    meta: checkpoint fields (model_name, model_config, inputs, source_config, params, label_scale).
    resume: a checkpoint to continue from (model, optimizer, scheduler, epoch, best, history).
    tracker: the `mlflow` module of an open run (personality.common.mlflow_run) or None: per-epoch
    metrics are logged with step=epoch.
    until_epoch: pause after this epoch (the schedule still spans config.epochs); resume later
    from last.pt.
    On return the model holds the best epoch's weights (without validation: lowest train loss).
    Under torchrun (config.distributed, module docstring) every rank calls `fit` alike; rank 0
    alone writes to out_dir and the tracker, and every rank returns the same result and weights.
    Returns {"history", "best_epoch", "best_metric", "epochs_run", "last_epoch", "stopped_early",
    "train_mean", "best_path", "last_path"}.
    """
    cfg = config if config.seed is not None else dataclasses.replace(config, seed=0)
    out = Path(out_dir) if out_dir is not None else None
    t = _prepare(model, sources, train_ids, train_targets, (val_ids, val_targets), cfg,
                 dict(meta or {}), out)
    state = _resume(t, resume, desc) if resume else _Progress()
    if t.world > 1:
        t.net = wrap_ddp(model, t.device)
        log.info("%s: rank %d of %d (DDP, %s), batch_size %d per process", desc, t.rank, t.world,
                 dist.get_backend(), cfg.batch_size)
    epoch, stopped_early = state.start - 1, False
    stop = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    with progress(total=max(stop - state.start + 1, 0), desc=desc, unit="epoch") as bar:
        for epoch in range(state.start, stop + 1):
            row, value = _run_epoch(t, epoch)
            state.history.append(row)
            _keep_best(t, state, epoch, value)
            if tracker is not None and t.writes:
                _log_epoch(tracker, row, epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}",
                            **({cfg.val_metric: f"{value:.4f}"} if t.has_val else {}))
            if _should_stop(t, state, epoch):
                stopped_early = True
                log.info("%s: no %s improvement for %d epochs; stopping at epoch %d (best %d)",
                         desc, cfg.val_metric, cfg.patience, epoch, state.best_epoch)
                break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return {"history": state.history, "best_epoch": state.best_epoch,
            "best_metric": state.best_metric, "epochs_run": max(epoch - state.start + 1, 0),
            "last_epoch": epoch, "stopped_early": stopped_early, "train_mean": t.train_mean,
            "best_path": str(out / "best.pt") if out is not None else None,
            "last_path": str(out / "last.pt") if out is not None else None}
