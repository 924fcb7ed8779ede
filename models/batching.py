"""Samples and batches for the engine: per-epoch training views, collation, view merging.

    loader = epoch_loader(TrainViews(sources, ids, targets, views_per_video=4, seed=1),
                          batch_size=32, epoch=3, seed=1, num_workers=0)
    batch = collate([item, ...])                  # {key: (B, ...)}, zero-padded, trimmed by masks

Sample i of epoch e is drawn with `np.random.default_rng([seed, e, i])` and the epoch's order
from (seed, e), so a sample's view does not depend on the number of loader workers or ranks.

Image inputs (IMAGE_KEYS) travel as uint8 from the sources through the loader workers and the
host-to-device copy, a quarter of float32's bytes; `to_device` (and, for a direct model call, the
models' own pre-hook, models/perfex.py HeadModel) ImageNet-normalises them where they land.
On an H200 the float32 batches held the loader to 32% of a ResNet-18's speed (docs/models.md).
"""
from __future__ import annotations

import signal
import sys
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from models.data import InputSource
from models.distributed import shard_indices
from models.solver import EngineError

__all__ = ["epoch_seed", "merge_views", "collate", "TrainViews", "epoch_loader", "to_device"]


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1)[0])



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


def epoch_loader(dataset: TrainViews, *, batch_size: int, epoch: int, seed: int, num_workers: int,
            rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """The epoch's batches: the (seed, epoch) order, this rank's shard of it under DDP. A sample
    keeps its index (and so its view) whatever the number of ranks."""
    dataset.set_epoch(epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
        epoch_seed(seed, epoch, 1))).tolist()
    order = shard_indices(order, rank, world_size)  # every rank's shard has the same length
    return _StageLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=collate,
                        num_workers=num_workers, drop_last=len(order) > batch_size,
                        worker_init_fn=leave_stopping_to_the_stage)


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _StageLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers are forked with SIGTERM and SIGINT blocked: a stop that lands
    before a worker has run leave_stopping_to_the_stage stays pending until the worker ignores
    it. Without the block, a group SIGTERM in that window (a busy machine: 1 try in 5 under CI
    load) killed the worker, and the stage's exit printed torch's "DataLoader worker ... is
    killed by signal" traceback under its one "stopped" line. The stage itself unblocks them
    at once and stops as ever."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()  # forks the workers, which inherit the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a stop pending here lands now


def leave_stopping_to_the_stage(worker_id: int) -> None:
    """In each DataLoader worker: ignore SIGTERM and SIGINT, then unblock them (_StageLoader
    forks the worker with both blocked; one already pending is dropped, being ignored). A Ctrl-C
    or a kill of the process group reaches the workers too; one that died of it first made the
    stage fail with the DataLoader's "worker exited unexpectedly" traceback instead of its one
    "stopped" line. The stage stops them itself as it unwinds (and a worker exits when its
    parent is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sys.excepthook = _quiet_once_the_stage_left  # multiprocessing.resource_sharer reports by it


def _quiet_once_the_stage_left(kind: type, value: BaseException, trace) -> None:
    """The worker's thread that hands a batch's shared memory (file descriptors) to the stage
    loses its connection when the stage stops mid-handover: nothing is lost, so no traceback
    under the stage's one line."""
    if issubclass(kind, (ConnectionError, EOFError)):
        return
    sys.__excepthook__(kind, value, trace)


IMAGE_KEYS = ("face", "frame", "face_seq")  # (..., 3, H, W) uint8 from the sources
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_SCALES: dict[torch.device, tuple[Tensor, Tensor]] = {}  # device -> (mean * 255, std * 255)


def _scales(device: torch.device) -> tuple[Tensor, Tensor]:
    """The normalisation constants on `device`, made once: building them on every call would copy
    from the host each time, which waits for the GPU's queued work."""
    if device not in _SCALES:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255  # computed on the CPU, as always
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
        _SCALES[device] = (mean.to(device), std.to(device))
    return _SCALES[device]


def normalise_images(x: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 ImageNet-normalised, on x's device."""
    mean, std = _scales(x.device)
    return (x.float() - mean) / std


def normalise_image_keys(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch with its uint8 image inputs normalised; float ones (already normalised, e.g. an
    explanation's perturbed input) and every other key as they are."""
    return {key: normalise_images(t) if key in IMAGE_KEYS and t.dtype == torch.uint8 else t
            for key, t in batch.items()}


def to_device(batch: Mapping[str, Tensor], device: torch.device,
              channels_last: bool) -> dict[str, Tensor]:
    """The batch on `device`, uint8 images normalised there, 4-D float inputs in channels_last
    when asked."""
    out = {}
    moved = normalise_image_keys({k: t.to(device, non_blocking=True) for k, t in batch.items()})
    for key, t in moved.items():
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        out[key] = t
    return out

