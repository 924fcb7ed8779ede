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

Checkpoints (`save_checkpoint`) hold only tensors, dicts, lists, strings and numbers, so
`torch.load(path, weights_only=True)` reads them: model_name, model_config, state_dict, optimizer,
scheduler, epoch (last completed, 1-based), best_epoch, best_metric, val_metric_name, train_mean,
inputs, source_config, params, label_scale, history.

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
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.data import InputSource
from models.metrics import bin_metrics, regression_metrics
from personality.common import get_logger, progress
from personality.schemas import TRAITS

__all__ = ["TrainConfig", "EngineError", "seed_everything", "resolve_device", "TrainViews",
           "collate", "merge_views", "make_optimizer", "make_scheduler", "train_one_epoch",
           "predict_videos", "evaluate", "fit", "save_checkpoint", "load_checkpoint",
           "load_weights", "metric_is_better", "METRIC_MODES", "init_distributed", "shard_indices",
           "barrier", "shutdown_distributed"]

log = get_logger("engine")

# val metrics `evaluate` returns and whether larger is better
METRIC_MODES = {"ccc": "max", "pcc": "max", "acc": "max", "r2": "max", "bin_accuracy": "max",
                "mae": "min", "mse": "min",
                **{f"ccc_{t}": "max" for t in TRAITS}}


class EngineError(ValueError):
    """A bad training option or checkpoint; the message names it."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # at most this many epochs (early stopping may end sooner)
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # none | cosine | multistep (stepped once per epoch)
    milestones: tuple[int, ...] = (20, 40)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr / 10 before the schedule
    patience: int = 10  # epochs without val improvement before stopping; 0 = never stop early
    val_metric: str = "ccc"  # a key of METRIC_MODES
    views_per_video: int = 4  # training views drawn per train video per epoch
    grad_clip: float = 0.0  # max grad norm; 0 = off
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # 4-D inputs and the model, CUDA only
    deterministic: bool = True
    num_workers: int = 0  # DataLoader workers
    eval_batch_size: int = 64  # views per forward pass in evaluation
    # DDP: None = when launched by torchrun (WORLD_SIZE > 1) or a process group is up; True = the
    # same but an error when neither; False = every process trains alone
    distributed: bool | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.views_per_video < 1:
            raise EngineError("epochs must be >= 0, batch_size and views_per_video >= 1")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise EngineError(f"optimizer {self.optimizer!r} is not one of adamw, adam, sgd")
        if self.schedule not in ("none", "cosine", "multistep"):
            raise EngineError(f"schedule {self.schedule!r} is not one of none, cosine, multistep")
        if self.val_metric not in METRIC_MODES:
            raise EngineError(f"val_metric {self.val_metric!r} is not one of "
                              f"{', '.join(METRIC_MODES)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EngineError(f"device {self.device!r} is not one of auto, cpu, cuda")
        if not self.lr > 0:
            raise EngineError(f"lr must be positive, got {self.lr}")


# --------------------------------------------------------------------------------------------------
# seeding and devices


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for but CUDA is not available")
    return torch.device(device)


def _epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------------
# multi-process (DDP)

# rank 0 alone validates, predicts and writes while the others wait in a collective: long enough
# for a full prediction pass over a large dataset (the 30-minute default is not)
_DIST_TIMEOUT = datetime.timedelta(hours=2)


def _world() -> tuple[int, int]:
    """(rank, world_size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(mode: bool | None = None,
                     device: str | torch.device = "auto") -> tuple[int, int]:
    """(rank, world_size) of this process, starting the process group torchrun asked for.

    mode None: distributed when a group is up or torchrun set WORLD_SIZE > 1; True: the same, but
    an error when neither; False: (0, 1), this process trains alone. The group (env://: torchrun's
    MASTER_ADDR, RANK, ...) uses nccl when `device` is CUDA (each process on cuda:LOCAL_RANK) and
    gloo otherwise; it stays up for later `fit` calls until `shutdown_distributed`."""
    if mode is False:
        return 0, 1
    if dist.is_available() and not dist.is_initialized() and \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = resolve_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                timeout=_DIST_TIMEOUT)
    rank, world = _world()
    if mode and world == 1:
        raise EngineError("distributed training asked for, but there is no process group: launch "
                          "with torchrun --nproc_per_node N (WORLD_SIZE > 1)")
    return rank, world


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _world()[1] > 1:
        dist.barrier()


def shutdown_distributed() -> None:
    """Tear down the process group `init_distributed` started (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (picklable objects)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_indices(order: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s share of an epoch's sample order: every world_size-th index from `rank`.

    The order is first wrapped round to a multiple of world_size (its first indices repeated, as
    DistributedSampler does), so every rank gets ceil(n / world_size) samples and takes the same
    number of steps: DDP's gradient all-reduce needs every rank in every step. world_size 1: the
    order itself."""
    order = list(order)
    if world_size <= 1 or not order:
        return order
    total = -(-len(order) // world_size) * world_size
    padded = (order * (total // len(order) + 1))[:total]  # n < world_size repeats more than once
    return padded[rank::world_size]


# --------------------------------------------------------------------------------------------------
# samples and batches


def merge_views(parts: Sequence[Mapping[str, Tensor]], video_id: str = "") -> dict[str, Tensor]:
    """Merge the eval_items of several sources, each (V_i, ...), into (V, ...) views.

    A source with one view is broadcast. When several sources have more than one view and their
    counts differ (face crops exist for fewer frames than the full frames of CR-Net's scene
    stream), V is the smallest of those counts and each keeps V evenly spaced views: a source's
    views run through the clip in time order, so view i of each lies near the same moment.
    """
    counts = {next(iter(p.values())).shape[0] for p in parts if p}
    many = [c for c in counts if c > 1]
    V = min(many) if many else 1
    if any(c < 1 for c in counts):
        raise EngineError(f"video {video_id!r}: a source gave no view")
    out: dict[str, Tensor] = {}
    for p in parts:
        for key, t in p.items():
            n = t.shape[0]
            if n == 1 and V > 1:
                t = t.expand(V, *t.shape[1:])
            elif n > V:
                t = t[torch.from_numpy(np.linspace(0, n - 1, V).round().astype(np.int64))]
            out[key] = t
    return out


def _pad_stack(tensors: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(list(tensors))
    if len({t.ndim for t in tensors}) != 1:
        raise EngineError(f"cannot batch tensors of ranks {sorted({t.ndim for t in tensors})}")
    size = [max(s[d] for s in shapes) for d in range(tensors[0].ndim)]
    out = tensors[0].new_zeros((len(tensors), *size))
    for i, t in enumerate(tensors):
        out[(i, *[slice(0, n) for n in t.shape])] = t
    return out


def collate(items: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack per-sample dicts into a batch (zero-padding unequal shapes), then trim every `X` with
    a prefix mask `X_mask` (B, T) to the longest real sequence of the batch."""
    batch = {key: _pad_stack([it[key] for it in items]) for key in items[0]}
    for key in list(batch):
        mask = batch.get(f"{key}_mask")
        x = batch[key]
        if mask is None or mask.ndim != 2 or x.ndim < 2 or x.shape[1] != mask.shape[1]:
            continue
        real = mask.any(dim=0).nonzero()
        T = int(real[-1]) + 1 if len(real) else 1
        batch[key], batch[f"{key}_mask"] = x[:, :T], mask[:, :T]
    return batch


class TrainViews(torch.utils.data.Dataset):
    """`views_per_video` random training views of each video per epoch; sample i of epoch e is
    drawn with `np.random.default_rng([seed, e, i])`. Every source of one sample gets a generator
    in the same state, so sources can agree on a random time (a clip start) by drawing alike."""

    def __init__(self, sources: Sequence[InputSource], video_ids: Sequence[str],
                 targets: np.ndarray, *, views_per_video: int = 1, seed: int = 0):
        self.sources = list(sources)
        self.video_ids = list(video_ids)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))  # (n, 5)
        if len(self.targets) != len(self.video_ids):
            raise EngineError(f"{len(self.video_ids)} videos but {len(self.targets)} target rows")
        self.views = views_per_video
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.video_ids) * self.views

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        k = i // self.views
        item: dict[str, Tensor] = {}
        for source in self.sources:
            item.update(source.train_item(self.video_ids[k],
                                          np.random.default_rng([self.seed, self.epoch, i])))
        item["target"] = self.targets[k]
        return item


def _loader(dataset: TrainViews, *, batch_size: int, epoch: int, seed: int, num_workers: int,
            rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """The epoch's batches: the (seed, epoch) order, this rank's shard of it under DDP. A sample
    keeps its index (and so its view) whatever the number of ranks."""
    dataset.set_epoch(epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
        _epoch_seed(seed, epoch, 1))).tolist()
    order = shard_indices(order, rank, world_size)  # every rank's shard has the same length
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order,
                                       collate_fn=collate, num_workers=num_workers,
                                       drop_last=len(order) > batch_size)


def _to_device(batch: Mapping[str, Tensor], device: torch.device,
               channels_last: bool) -> dict[str, Tensor]:
    out = {}
    for key, t in batch.items():
        t = t.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        out[key] = t
    return out


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=bool(amp and device.type == "cuda"))


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
        batch = _to_device(batch, device, cl)
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
# inference and evaluation


@torch.inference_mode()
def predict_videos(model: nn.Module, sources: Sequence[InputSource], video_ids: Sequence[str], *,
                   batch_size: int = 64, device: str | torch.device = "cpu", amp: bool = False,
                   return_proba: bool = False):
    """Video-level predictions: every eval view of every video, decoded, averaged over views.

    Returns (n, 5) float64 in [0, 1]; with `return_proba`, also (n, 5, 5) mean per-bin
    probabilities, or None when the model has no `proba` (regression head)."""
    device = resolve_device(device)
    model.eval()
    n = len(video_ids)
    sums = np.zeros((n, len(TRAITS)))
    counts = np.zeros(n)
    proba_sums: np.ndarray | None = None
    has_proba = return_proba and hasattr(model, "proba")
    items: list[dict[str, Tensor]] = []
    owners: list[int] = []

    def flush() -> None:
        nonlocal proba_sums
        if not items:
            return
        batch = _to_device(collate(items), device, device.type == "cuda")
        with _autocast(device, amp):
            outputs = model(batch)
        scores = model.decode(outputs).float().cpu().numpy()  # (b, 5)
        idx = np.asarray(owners)
        np.add.at(sums, idx, scores)
        np.add.at(counts, idx, 1)
        if has_proba:
            p = model.proba(outputs)
            if p is not None:
                p = p.float().cpu().numpy()  # (b, 5, 5)
                if proba_sums is None:
                    proba_sums = np.zeros((n, *p.shape[1:]))
                np.add.at(proba_sums, idx, p)
        items.clear()
        owners.clear()

    for i, vid in enumerate(video_ids):
        views = merge_views([s.eval_items(vid) for s in sources], vid)
        V = next(iter(views.values())).shape[0]
        for v in range(V):
            items.append({k: t[v] for k, t in views.items()})
            owners.append(i)
            if len(items) >= batch_size:
                flush()
    flush()
    preds = sums / np.maximum(counts, 1)[:, None]
    if not return_proba:
        return preds
    proba = proba_sums / np.maximum(counts, 1)[:, None, None] if proba_sums is not None else None
    return preds, proba


def _flat_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    reg = regression_metrics(y_true, y_pred)
    out = {k: reg["mean"][k] for k in ("ccc", "pcc", "mae", "acc", "mse", "r2")}
    out.update({f"ccc_{t}": reg[t]["ccc"] for t in TRAITS})
    out["bin_accuracy"] = bin_metrics(y_true, y_pred)["mean"]["accuracy"]
    return out


def evaluate(model: nn.Module, sources: Sequence[InputSource], video_ids: Sequence[str],
             targets: np.ndarray, *, batch_size: int = 64, device: str | torch.device = "cpu",
             amp: bool = False) -> dict[str, float]:
    """Video-level metrics of `model` on `video_ids`: mean ccc, pcc, mae, acc, mse, r2 over traits,
    ccc_<trait>, bin_accuracy (PerFeX's 5 bins). NaN targets drop that row for that trait."""
    preds = predict_videos(model, sources, video_ids, batch_size=batch_size, device=device, amp=amp)
    return _flat_metrics(np.asarray(targets, dtype=np.float64), preds)


def metric_is_better(value: float, best: float | None, name: str) -> bool:
    """Whether `value` improves on `best` for metric `name` (NaN never improves)."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if METRIC_MODES[name] == "max" else value < best


# --------------------------------------------------------------------------------------------------
# checkpoints


def _plain(obj: Any) -> Any:
    """A weights_only-safe copy: dataclasses -> dicts, tuples -> lists, numpy -> Python."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def model_config_of(model: nn.Module) -> dict:
    """The full config a model was built with (its `config` dataclass), as plain values."""
    cfg = getattr(model, "config", None)
    return _plain(cfg) if cfg is not None and dataclasses.is_dataclass(cfg) else {}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, model_name: str,
                    model_config: Mapping | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, epoch: int = 0, best_epoch: int = 0,
                    best_metric: float = math.nan, val_metric_name: str = "ccc",
                    train_mean: Sequence[float] = (), inputs: Sequence[str] = (),
                    source_config: Mapping | None = None, params: Mapping | None = None,
                    label_scale: str = "unit", history: Sequence[Mapping] = (),
                    state_dict: Mapping[str, Tensor] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename); see the module docstring for keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    ckpt = {
        "model_name": model_name,
        "model_config": _plain(model_config if model_config is not None else
                               model_config_of(model)),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "epoch": int(epoch), "best_epoch": int(best_epoch),
        "best_metric": float(best_metric) if best_metric is not None else math.nan,
        "val_metric_name": val_metric_name,
        "train_mean": [float(x) for x in train_mean],
        "inputs": list(inputs),
        "source_config": _plain(source_config or {}),
        "params": _plain(params or {}),
        "label_scale": label_scale,
        "history": _plain(list(history)),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors of every kind: name the file
        raise EngineError(f"{path}: not a readable checkpoint: {exc}") from None
    if not isinstance(ckpt, dict):
        raise EngineError(f"{path}: not a checkpoint (a {type(ckpt).__name__})")
    return ckpt


def load_checkpoint(path: str | os.PathLike, *,
                    map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint names, load its weights (strict), eval mode."""
    from models.registry import build_model

    ckpt = read_checkpoint(path, map_location=map_location)
    for key in ("model_name", "model_config", "state_dict"):
        if key not in ckpt:
            raise EngineError(f"{path}: checkpoint lacks {key!r}")
    model = build_model(ckpt["model_name"], **ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def load_weights(model: nn.Module, path: str | os.PathLike, *,
                 strict: bool = True) -> dict[str, list[str]]:
    """Initial weights from a file: one of our checkpoints or a bare state_dict (a "module."
    prefix from DataParallel is stripped). Non-strict: missing, unexpected and shape-mismatched
    tensors are skipped and reported. Returns {"missing", "unexpected", "mismatched"}."""
    obj = read_checkpoint(path)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()
             if isinstance(v, Tensor)}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if strict:
        if mismatched:
            raise EngineError(f"{path}: tensor {mismatched[0]!r} has shape "
                              f"{tuple(state[mismatched[0]].shape)}, the model wants "
                              f"{tuple(own[mismatched[0]].shape)}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EngineError(f"{path}: weights do not fit the model: {exc}") from None
        return {"missing": [], "unexpected": [], "mismatched": []}
    state = {k: v for k, v in state.items() if k not in mismatched}
    res = model.load_state_dict(state, strict=False)
    out = {"missing": [k for k in res.missing_keys if k not in mismatched],
           "unexpected": list(res.unexpected_keys),
           "mismatched": mismatched}
    if any(out.values()):
        log.warning("%s: loaded non-strictly; missing %d, unexpected %d, mismatched %d tensors",
                    path, len(out["missing"]), len(out["unexpected"]), len(mismatched))
    return out


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
        model(_to_device(collate([item]), device, False))
    model.train(was_training)


def _all_ranks_loss(stats: Mapping[str, float], device: torch.device) -> float:
    """The mean training loss per sample over every rank's shard (for the history, not the
    gradients: DDP averages those)."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([stats["loss"] * stats["n_samples"], stats["n_samples"]],
                     dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


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
    On return the model holds the best epoch's weights (the last epoch's without validation).
    Under torchrun (config.distributed, module docstring) every rank calls `fit` alike; rank 0
    alone writes to out_dir and the tracker, and every rank returns the same result and weights.
    Returns {"history", "best_epoch", "best_metric", "epochs_run", "stopped_early", "train_mean",
    "best_path", "last_path"}.
    """
    cfg = config
    meta = dict(meta or {})
    device = resolve_device(cfg.device)
    rank, world = init_distributed(cfg.distributed, device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train_targets = np.asarray(train_targets, dtype=np.float64)
    counts = np.sum(~np.isnan(train_targets), axis=0)
    train_mean = [float(x) for x in np.where(counts > 0, np.nansum(train_targets, axis=0)
                                             / np.maximum(counts, 1), 0.5)]
    has_val = len(val_ids) > 0 and val_targets is not None
    _materialize_lazy(model, sources, train_ids, device)  # before the optimizer sees them
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    dataset = TrainViews(sources, train_ids, train_targets, views_per_video=cfg.views_per_video,
                         seed=cfg.seed)
    history: list[dict] = []
    start, best_epoch, best_metric = 1, 0, math.nan
    best_state: dict[str, Tensor] | None = None
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        ckpt = read_checkpoint(resume)
        model.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["epoch"]) + 1
        best_epoch, best_metric = int(ckpt["best_epoch"]), float(ckpt["best_metric"])
        history = [dict(h) for h in ckpt.get("history", [])]
        if best_epoch == ckpt["epoch"]:
            best_state = copy.deepcopy(model.state_dict())
        elif out is not None and (out / "best.pt").is_file():
            best = read_checkpoint(out / "best.pt")
            if int(best.get("best_epoch", -1)) == best_epoch:
                best_state = best["state_dict"]
        log.info("%s: resuming from %s at epoch %d (best %s=%.4f at epoch %d)", desc, resume,
                 start, cfg.val_metric, best_metric, best_epoch)
    net = model  # what trains: the model itself, or its DDP wrapper
    if world > 1:
        # after the lazy layers and the resumed weights: DDP broadcasts rank 0's parameters and
        # buffers now, so every rank starts from the same state
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        log.info("%s: rank %d of %d (DDP, %s), batch_size %d per process", desc, rank, world,
                 dist.get_backend(), cfg.batch_size)

    def checkpoint(path: Path, epoch: int, state=None) -> None:
        save_checkpoint(path, model=model, model_name=meta.get("model_name", type(model).__name__),
                        model_config=meta.get("model_config"), optimizer=optimizer,
                        scheduler=scheduler, epoch=epoch, best_epoch=best_epoch,
                        best_metric=best_metric, val_metric_name=cfg.val_metric,
                        train_mean=train_mean, inputs=meta.get("inputs", ()),
                        source_config=meta.get("source_config"), params=meta.get("params"),
                        label_scale=meta.get("label_scale", "unit"), history=history,
                        state_dict=state)

    stopped_early = False
    epoch = start - 1
    stop = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    with progress(total=max(stop - start + 1, 0), desc=desc, unit="epoch") as bar:
        for epoch in range(start, stop + 1):
            # dropout: same on resume; each rank its own masks (rank 0's are the single process's)
            torch.manual_seed(_epoch_seed(cfg.seed, epoch, 2 + 1000 * rank))
            loader = _loader(dataset, batch_size=cfg.batch_size, epoch=epoch, seed=cfg.seed,
                             num_workers=cfg.num_workers, rank=rank, world_size=world)
            stats = train_one_epoch(net, optimizer, loader, device=device, amp=cfg.amp,
                                    channels_last=cfg.channels_last, grad_clip=cfg.grad_clip)
            if world > 1:
                stats["loss"] = _all_ranks_loss(stats, device)
                # DDP keeps the parameters equal; buffers (batch-norm statistics) drift with each
                # rank's last batches: rank 0's, which it validates and saves, go to all
                for buf in model.buffers():
                    dist.broadcast(buf, src=0)
            row = {"epoch": epoch, "train_loss": stats["loss"],
                   "lr": optimizer.param_groups[0]["lr"]}
            scheduler.step()
            value = math.nan
            if rank == 0:  # validation on rank 0 alone; the others wait in the broadcast
                if has_val:
                    vm = evaluate(model, sources, val_ids, val_targets,
                                  batch_size=cfg.eval_batch_size, device=device, amp=cfg.amp)
                    row.update({f"val_{k}": v for k, v in vm.items()})
                    value = vm[cfg.val_metric]
                else:
                    value = (-stats["loss"] if METRIC_MODES[cfg.val_metric] == "max"
                             else stats["loss"])
            if world > 1:
                row, value = _broadcast((row, value))  # every rank keeps the same history, best
            history.append(row)
            improved = metric_is_better(value, best_metric if best_epoch else None,
                                        cfg.val_metric)
            if improved or best_epoch == 0:
                best_epoch, best_metric = epoch, float(value)
                best_state = copy.deepcopy(model.state_dict())
                if out is not None and rank == 0:
                    checkpoint(out / "best.pt", epoch)
            if out is not None and rank == 0:
                checkpoint(out / "last.pt", epoch)
            if tracker is not None and rank == 0:
                tracker.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"
                                     and v is not None and math.isfinite(float(v))}, step=epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}",
                            **({cfg.val_metric: f"{value:.4f}"} if has_val else {}))
            stop_now = cfg.patience > 0 and has_val and epoch - best_epoch >= cfg.patience
            if world > 1:
                # rank 0's decision, so all ranks stop together; also holds the others until
                # rank 0 has written the checkpoints
                stop_now = bool(_broadcast(stop_now))
            if stop_now:
                stopped_early = True
                log.info("%s: no %s improvement for %d epochs; stopping at epoch %d (best %d)",
                         desc, cfg.val_metric, cfg.patience, epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch, "best_metric": best_metric,
            "epochs_run": max(epoch - start + 1, 0), "last_epoch": epoch,
            "stopped_early": stopped_early, "train_mean": train_mean,
            "best_path": str(out / "best.pt") if out is not None else None,
            "last_path": str(out / "last.pt") if out is not None else None}
