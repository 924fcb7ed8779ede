"""The solver knobs of training, declared once, with their one validation.

    from models.solver import TrainConfig
    cfg = TrainConfig(epochs=30, lr=2e-3, batch_size=32, seed=1234)   # EngineError on a bad value

`Solver` holds what a model may set for itself (`train.model_config.<name>.train` in params.yaml:
a face CNN from scratch needs more steps than a linear model on audio functionals);
`TrainConfig` adds how a run executes (seed, device, precision, loader workers, DDP). The train
stage's params (stages/train.py: TrainParams) extend TrainConfig with the stage's own keys, so each
knob has one declaration and one default, here; params.yaml sets the same values.

No torch here: importing the knobs stays cheap.
"""
from __future__ import annotations

import dataclasses
import math

from personality.common import StageInputError
from personality.schemas import TRAITS

__all__ = ["EngineError", "METRIC_MODES", "Solver", "TrainConfig", "metric_is_better"]

# val metrics `evaluate` returns and whether larger is better
METRIC_MODES = {"ccc": "max", "pcc": "max", "acc": "max", "r2": "max", "bin_accuracy": "max",
                "mae": "min", "mse": "min",
                **{f"ccc_{t}": "max" for t in TRAITS}}


class EngineError(StageInputError):
    """A bad training option or checkpoint; the message names it. A StageInputError, so a stage
    reports it in one line with exit code 2."""



@dataclasses.dataclass(frozen=True)
class Solver:
    """Optimisation knobs; every field may be set per model (train.model_config.<name>.train)."""
    epochs: int = 30  # at most this many epochs (early stopping may end sooner)
    lr: float = 2e-3
    batch_size: int = 32  # per process under DDP
    optimizer: str = "adamw"  # adamw | adam | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # none | cosine | multistep (stepped once per epoch)
    milestones: tuple[int, ...] = (10, 15)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr / 10 before the schedule
    patience: int = 10  # epochs without val improvement before stopping; 0 = never stop early
    val_metric: str = "ccc"  # a key of METRIC_MODES: ccc (mean over traits) | pcc | acc | r2 | ...
    views_per_video: int = 4  # training views drawn per train video per epoch
    grad_clip: float = 0.0  # max grad norm; 0 = off

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))  # a YAML list, say
        for key, choices in (("optimizer", ("adamw", "adam", "sgd")),
                             ("schedule", ("none", "cosine", "multistep")),
                             ("val_metric", tuple(METRIC_MODES))):
            if getattr(self, key) not in choices:
                raise EngineError(f"{key} {getattr(self, key)!r} is not one of "
                                  f"{', '.join(choices)}")
        # one message per value, naming it: torch refuses a negative weight_decay or momentum
        # only when the optimizer is built (a traceback mid-stage) and takes a gamma <= 0
        # silently (a negative lr: gradient ascent); a negative patience never stopped, a
        # milestone under 1 fired at epoch 1, a warm-up as long as the run never ended
        for key, ok, rule in (
                ("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                ("views_per_video", self.views_per_video >= 1, ">= 1"),
                ("lr", self.lr > 0, "positive"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("momentum", self.momentum >= 0, ">= 0"), ("gamma", self.gamma > 0, "> 0"),
                ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
                ("grad_clip", self.grad_clip >= 0, ">= 0"), ("patience", self.patience >= 0,
                                                           ">= 0 (0: never stop early)"),
                ("milestones", all(m >= 1 for m in self.milestones), "epochs >= 1"),
                ("warmup_epochs", not 0 < self.epochs <= self.warmup_epochs,
                 f"under epochs ({self.epochs}): the warm-up would never end")):
            if not ok:
                raise EngineError(f"{key} must be {rule}, got {getattr(self, key)!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Solver):
    """The solver knobs and how the run executes."""
    seed: int | None = None  # None: base.seed in the stages; 0 where `fit` is called alone
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # 4-D inputs and the model, CUDA only
    deterministic: bool = True
    num_workers: int = 0  # DataLoader workers
    eval_batch_size: int = 64  # views per forward pass in evaluation
    # DDP: None = when launched by torchrun (WORLD_SIZE > 1) or a process group is up; True = the
    # same but an error when neither; False = every process trains alone
    distributed: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EngineError(f"device {self.device!r} is not one of auto, cpu, cuda")


def metric_is_better(value: float, best: float | None, name: str) -> bool:
    """Whether `value` improves on `best` for metric `name` (NaN never improves)."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if METRIC_MODES[name] == "max" else value < best

