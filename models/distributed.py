"""Devices and multi-process training (DDP) for the engine (models/engine.py).

    rank, world = init_distributed(None, "auto")   # (0, 1) in a single process
    shard = shard_indices(order, rank, world)      # this rank's share of an epoch's order

Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1), or when a process group is already up,
`init_distributed` starts the group (nccl on CUDA, gloo on the CPU, from env://). Every rank takes a
disjoint shard of each epoch's (seed, epoch) order, wrapped round so all ranks take the same number
of steps; rank 0 alone validates and writes while the others wait in a collective.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from models.solver import EngineError
from personality.common import get_logger

__all__ = ["resolve_device", "describe_device", "init_distributed", "barrier",
           "shutdown_distributed", "broadcast", "shard_indices", "all_ranks_loss", "wrap_ddp",
           "sync_buffers", "cpu_build_beside_gpu"]

log = get_logger("engine")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if not torch.cuda.is_available() and cpu_build_beside_gpu() and not _WARNED:
            _WARNED.append(True)  # once per process: resolve_device runs per model and stage
            log.warning("an NVIDIA GPU is here but torch %s is a CPU build: training runs on the "
                        "CPU (%s)", torch.__version__, CUDA_BUILD_HINT)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is a CPU build ({CUDA_BUILD_HINT})"
               if cpu_build_beside_gpu() else "CUDA is not available")
        raise EngineError(f"device {device!r} asked for but {why}")
    return torch.device(device)


_WARNED: list[bool] = []

# this project's machines install torch's CPU build (requirements.txt); PyPI's is a CUDA one
CUDA_BUILD_HINT = ("PyPI's CUDA build of the same version: env -u PIP_FIND_LINKS "
                   "PIP_CONFIG_FILE=/dev/null .venv/bin/pip install --force-reinstall torch==" +
                   torch.__version__.split("+")[0] + " -c requirements.lock")


def cpu_build_beside_gpu() -> bool:
    """Whether this torch has no CUDA while the machine shows an NVIDIA driver: `device: auto`
    would quietly train on the CPU."""
    return torch.version.cuda is None and (Path("/proc/driver/nvidia/version").exists()
                                           or Path("/dev/nvidia0").exists())


def describe_device(device: str | torch.device, amp: bool) -> dict:
    """What runs on `device` (TrainConfig.device): its type and name, whether bf16 autocast is on
    (amp applies on CUDA only) and torch's version. A CUDA run draws other random numbers than a
    CPU run of the same seed, so a metric says which one it came from (docs/training.md)."""
    import platform

    device = resolve_device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {"device": device.type, "name": name, "amp": bool(amp and device.type == "cuda"),
            "torch": torch.__version__}


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


def broadcast(obj: Any) -> Any:
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



def all_ranks_loss(stats: Mapping[str, float], device: torch.device) -> float:
    """The mean training loss per sample over every rank's shard (for the history, not the
    gradients: DDP averages those)."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([stats["loss"] * stats["n_samples"], stats["n_samples"]],
                     dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


def sync_buffers(model: nn.Module) -> None:
    """DDP keeps the parameters equal; buffers (batch-norm statistics) drift with each rank's last
    batches: rank 0's, which it validates and saves, go to all."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """The DDP wrapper of `model`; built after the lazy layers and resumed weights, since it
    broadcasts rank 0's parameters and buffers now, so every rank starts from the same state."""
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
