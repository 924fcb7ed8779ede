"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`, and initial weights.

    save_checkpoint("data/models/x/best.pt", model=model, model_name="perfex_cnn", ...)
    model, ckpt = load_checkpoint("data/models/x/best.pt")      # rebuilt from the registry, eval mode
    load_weights(model, "weights.pt", strict=False)             # ours or a bare state_dict

A checkpoint holds only tensors, dicts, lists, strings and numbers: model_name, model_config,
state_dict, optimizer, scheduler, epoch (last completed, 1-based), best_epoch, best_metric,
val_metric_name, train_mean, inputs, source_config, params, label_scale, history; and, from the
train and retrain stages, `frontend` (params.yaml's frames, faces, aus, audio and functionals
sections that made the training data: predict runs its front-end with them), `finished` (False
while the run goes on, True once its predictions and metrics are written: `require_finished`
refuses the others), `test_error` (per-trait test MAE measured for *this* checkpoint) and `inputs_digest` (sha256 of what it was trained on).

A checkpoint is untrusted input (predict --checkpoint, serve, deploy, retrain): its model_config
could ask for a model of any size. So `load_checkpoint` first builds the model on the meta device
(no memory for tensors; a bounded number of modules), compares every parameter and buffer name and
shape with the stored state_dict, and checks that the stored data holds what those shapes claim;
a mismatch is an EngineError naming the file and the tensor, before the real build. The stored
data is bounded by the file: `read_checkpoint` refuses compressed zip entries (torch.save writes
none; torch.load would inflate them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.solver import EngineError
from personality.common import atomic_file, get_logger

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["model_config_of", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "load_weights", "inputs_digest", "mark_finished", "require_finished", "shown_name"]

RETRAINED_SUFFIX = "+retrained"  # stages/retrain.py's models: data/retrained/models/NAME+retrained

log = get_logger("engine")


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
                    state_dict: Mapping[str, Tensor] | None = None,
                    finished: bool | None = None, frontend: Mapping | None = None) -> Path:
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
    if finished is not None:
        ckpt["finished"] = bool(finished)
    if frontend is not None:
        ckpt["frontend"] = _plain(frontend)
    with atomic_file(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu",
                    ours: bool = False) -> dict:
    """The dict a checkpoint file holds (torch.load, weights_only); EngineError naming the file
    otherwise. `ours`: a checkpoint this project wrote, so torch.save's zip format (PyTorch >= 1.6)
    is required: a legacy file declares its own tensor sizes to the loader, which allocates them
    before anything can be checked (bare weights from elsewhere, `load_weights`, may be legacy)."""
    path = Path(path)
    if path.is_dir():
        raise EngineError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise EngineError(f"{path}: checkpoint not found")
    if ours and not zipfile.is_zipfile(path):
        raise EngineError(f"{path}: not a checkpoint this project wrote (torch.save's zip format); "
                          "a legacy or foreign file is refused, not loaded")
    _check_zip(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors of every kind: name the file
        raise EngineError(f"{path}: {_why(exc, _head(path))}") from None
    if not isinstance(ckpt, dict):
        raise EngineError(f"{path}: not a checkpoint (a {type(ckpt).__name__})")
    return ckpt


def _check_zip(path: Path) -> None:
    """torch.save writes its zip entries uncompressed; torch.load would also inflate compressed
    ones, so that a file of a few MB could fill GBs before anything is checked. EngineError for
    an entry that is compressed, or entries larger together than the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip (a legacy pickle, or no checkpoint at all): torch.load says which
    packed = next((e for e in entries if e.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        raise EngineError(f"{path}: not a checkpoint torch.save wrote: its entry "
                          f"{packed.filename!r} is compressed; refused, not loaded")
    if sum(e.file_size for e in entries) > path.stat().st_size:
        raise EngineError(f"{path}: not a checkpoint torch.save wrote: its entries claim more "
                          "bytes than the file has; refused, not loaded")


def _head(path: Path) -> bytes:
    """The file's first bytes ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


# how torch.save's files begin: a zip archive (since torch 1.6), or a bare pickle (protocol 2+)
_CHECKPOINT_HEADS = (b"PK\x03\x04", b"\x80")


def _why(exc: Exception, head: bytes = b"PK\x03\x04") -> str:
    """torch's reason in one line, without its advice to retry with weights_only=False (which
    would run the file's code); for bytes no torch.save wrote (`head`), that instead of torch's
    opaque KeyError or IndexError."""
    if not head.startswith(_CHECKPOINT_HEADS):
        return ("not a PyTorch checkpoint: neither torch's zip format nor a pickle (a text "
                "file, a video renamed .pt, a download that failed?)")
    text = str(exc)
    if text.startswith("Weights only load failed"):
        detail = [line.strip() for line in text.splitlines()[1:] if line.strip()
                  and "weights_only" not in line and not line.startswith("Check the doc")]
        named = [line for line in detail if "GLOBAL " in line]  # torch names a class/function
        if named:
            return ("not a readable checkpoint: it holds objects other than tensors and plain "
                    f"data ({named[0]}); refused, not loaded")
        # no object asked for: the bytes are not a pickle at all (text, a video renamed .pt)
        return "not a PyTorch checkpoint" + (f" ({detail[0]})" if detail else "")
    return "not a readable checkpoint: " + (text.splitlines()[0] if text else
                                            type(exc).__name__)


def inputs_digest(manifest: pd.DataFrame, source_config: dict) -> str:
    """sha256 of what a model was trained on: the videos, their splits and labels, the source
    config (with its fitted statistics)."""
    import hashlib
    import json

    from personality.schemas import TRAITS

    rows = manifest[["video_id", "split", *TRAITS]].sort_values("video_id")
    text = rows.to_csv(index=False, float_format="%.9g") + json.dumps(source_config,
                                                                       sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def mark_finished(path: str | os.PathLike, **facts: Any) -> Path:
    """Set `finished: True` (and `facts`, e.g. test_error, inputs_digest) in a checkpoint,
    atomically: the last step of a training run, after its predictions and metrics."""
    ckpt = read_checkpoint(path)
    ckpt.update(finished=True, **_plain(facts))
    with atomic_file(Path(path)) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def holds_weights(path: str | os.PathLike, model: nn.Module) -> bool:
    """Whether the checkpoint at `path` holds exactly `model`'s weights (every tensor equal):
    a run's best.pt and last.pt differ unless its last epoch was its best."""
    stored = read_checkpoint(path).get("state_dict") or {}
    state = getattr(model, "module", model).state_dict()  # a DDP wrapper's module, as saved
    return stored.keys() == state.keys() and all(
        torch.equal(stored[k], v.detach().cpu()) for k, v in state.items())


def shown_name(ckpt: dict) -> str:
    """The name evaluate and the README give the model a checkpoint holds: its `model_name`, with
    "+retrained" where the retrain stage fine-tuned it (its params say so). A retrained
    checkpoint keeps its base model's name and config, and the file may be anywhere (MLflow
    serves it as .../artifacts/best.pt): neither its name nor its folder says it alone."""
    params = ckpt.get("params")
    retrained = isinstance(params, dict) and "retrain" in params
    return str(ckpt["model_name"]) + (RETRAINED_SUFFIX if retrained else "")


def require_finished(ckpt: dict, path: str | os.PathLike) -> None:
    """EngineError for a checkpoint whose training run did not finish (killed mid-way)."""
    if ckpt.get("finished") is False:
        raise EngineError(f"{path}: its training run did not finish (stopped after epoch "
                          f"{ckpt.get('epoch', '?')}); re-run training before using it")


def load_checkpoint(path: str | os.PathLike, *,
                    map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint names, load its weights (strict), eval mode. A checkpoint
    whose fields are of the wrong kind, or whose weights do not fit the model it names, is an
    EngineError that starts with its path. An empty `inputs` list is taken to be the named
    model's registered inputs (what its architecture reads)."""
    ckpt = read_checkpoint(path, map_location=map_location, ours=True)
    _check_fields(ckpt, path)
    name = ckpt["model_name"]
    # `weights` would make the builder open a file the checkpoint names; state_dict replaces
    # whatever it loads anyway
    config = {**ckpt["model_config"], **{k: "" for k in _PATH_FIELDS
                                         if k in ckpt["model_config"]}}
    # the config is untrusted: its shapes are checked against the stored tensors (which the
    # file's size bounds) on the meta device before the model is built for real
    checked = _check_on_meta(name, config, ckpt["state_dict"], path)
    model = _build(name, config, path)
    if not checked:  # a model the meta device cannot build: checked now, before the weights
        _compare_shapes(model.state_dict(), ckpt["state_dict"], path, name)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise EngineError(f"{path}: its state_dict does not fit model {name!r}: "
                          f"{_first_line(exc)}") from None
    _default_inputs(ckpt, path)
    model.eval()
    return model, ckpt


def _build(name: str, config: dict, path: str | os.PathLike) -> nn.Module:
    """build_model(name, **config); its failure an EngineError that names `path`."""
    from models.registry import build_model

    try:
        return build_model(name, **config)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a factory fed an untrusted config fails any way
        raise EngineError(f"{path}: cannot build its model {name!r}: {_first_line(exc)}") \
            from None


class _TooManyTensors(Exception):
    """Raised from a registration hook: the model being built outgrows its checkpoint."""


@contextlib.contextmanager
def _registrations_at_most(limit: int) -> Iterator[None]:
    """_TooManyTensors once more than `limit` parameters, buffers and submodules have been
    registered (on any module) inside the block: a config asking for 10^5 blocks stops early
    instead of building them, even on the meta device (each costs Python objects)."""
    from torch.nn.modules import module as torch_module

    count = 0

    def hook(*_args: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors(limit)

    handles = [torch_module.register_module_parameter_registration_hook(hook),
               torch_module.register_module_buffer_registration_hook(hook),
               torch_module.register_module_module_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_on_meta(name: str, config: dict, state: Mapping[str, Tensor],
                   path: str | os.PathLike) -> bool:
    """Build model `name` from `config` on the meta device (no memory for its tensors) and
    compare its parameters and buffers with the stored `state`: an EngineError naming `path` and
    the first differing tensor before any real allocation. False (nothing checked) for a model
    whose construction the meta device cannot run; the caller then checks the real one."""
    from models.registry import build_model

    limit = 8 * len(state) + 1000  # the zoo registers at most ~5 per stored tensor, plus heads
    try:
        with _registrations_at_most(limit), torch.device("meta"):
            shadow = build_model(name, **config)
    except _TooManyTensors:
        raise EngineError(f"{path}: its model_config builds model {name!r} with more than "
                          f"{limit} parameters, buffers and modules, for {len(state)} stored "
                          "tensors; refused before building it") from None
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a factory fed an untrusted config fails any way
        if isinstance(exc, NotImplementedError) or re.search(r"\bmeta\b", str(exc), re.I):
            log.warning("%s: model %r cannot be built on the meta device (%s); its shapes are "
                        "checked once built", path, name, _first_line(exc))
            return False
        raise EngineError(f"{path}: cannot build its model {name!r}: {_first_line(exc)}") \
            from None
    expected = shadow.state_dict()
    _compare_shapes(expected, state, path, name)
    _check_storage(expected, state, path)
    return True


def _compare_shapes(expected: Mapping[str, Tensor], stored: Mapping[str, Tensor],
                    path: str | os.PathLike, name: str) -> None:
    """EngineError naming `path` and the first tensor whose name or shape differs between the
    model built from the checkpoint's config (`expected`) and its stored state dict. A lazy
    parameter (not yet materialised) takes any stored shape, as load_state_dict does."""
    misfit = f"{path}: its state_dict does not fit model {name!r} as its model_config builds it"
    for key, want in expected.items():
        if key not in stored:
            raise EngineError(f"{misfit}: it lacks tensor {key!r} (shape {_shape(want)})")
        if isinstance(want, nn.parameter.UninitializedTensorMixin):
            continue
        if tuple(want.shape) != tuple(stored[key].shape):
            raise EngineError(f"{misfit}: tensor {key!r} is {_shape(want)} in the model, "
                              f"{_shape(stored[key])} in the checkpoint; refused before "
                              "building it")
    extra = next((key for key in stored if key not in expected), None)
    if extra is not None:
        raise EngineError(f"{misfit}: it holds tensor {extra!r}, which the model does not have")


def _shape(tensor: Tensor) -> tuple[int, ...] | str:
    return "unset" if isinstance(tensor, nn.parameter.UninitializedTensorMixin) \
        else tuple(tensor.shape)


def _check_storage(expected: Mapping[str, Tensor], stored: Mapping[str, Tensor],
                   path: str | os.PathLike) -> None:
    """The stored tensors' data really holds what their shapes claim, so that matching shapes
    bound the model by the file: a view that repeats its data (stride 0: a 1-element storage
    shown as (10^5, 10^5)), or many tensors on one storage, would let a small file ask for a
    huge model. At most one element of the model per stored byte."""
    for key, value in stored.items():
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise EngineError(f"{path}: tensor {key!r} claims shape {tuple(value.shape)} but "
                              f"its data holds {value.untyped_storage().nbytes()} bytes; refused "
                              "before building it")
    storages = {(v.untyped_storage().data_ptr(), v.untyped_storage().nbytes()): None
                for v in stored.values()}
    held = sum(nbytes for _, nbytes in storages)
    wanted = sum(v.numel() for v in expected.values()
                 if not isinstance(v, nn.parameter.UninitializedTensorMixin))
    if wanted > held:
        raise EngineError(f"{path}: its model has {wanted} elements, its state_dict's data "
                          f"only {held} bytes (tensors sharing their data); refused before "
                          "building it")


# config fields that name a file the model builder would open (models/visual.py `weights`)
_PATH_FIELDS = ("weights",)


def _first_line(exc: Exception) -> str:
    """The first informative line of an error (torch's load_state_dict puts a header first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return lines[0] if lines else type(exc).__name__


def _check_fields(ckpt: dict, path: str | os.PathLike) -> None:
    """EngineError naming `path` and the field for a field that is missing or of the wrong kind."""
    for key in ("model_name", "model_config", "state_dict"):
        if key not in ckpt:
            raise EngineError(f"{path}: checkpoint lacks {key!r}")
    kinds = {"model_name": str, "model_config": dict, "state_dict": dict, "inputs": list,
             "source_config": dict, "train_mean": list, "label_scale": str}
    for key, kind in kinds.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise EngineError(f"{path}: {key} is a {type(ckpt[key]).__name__}, not a "
                              f"{kind.__name__}")
    if not ckpt["model_name"]:
        raise EngineError(f"{path}: model_name is empty")
    bad = next((k for k in ckpt["model_config"] if not isinstance(k, str)), None)
    if bad is not None:
        raise EngineError(f"{path}: model_config has a key {bad!r} that is not a name")
    bad = next((k for k, v in ckpt["state_dict"].items()
                if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise EngineError(f"{path}: state_dict entry {bad!r} is not a named tensor")
    bad = next((k for k in ckpt.get("inputs", []) if not isinstance(k, str) or not k), None)
    if bad is not None:
        raise EngineError(f"{path}: inputs holds {bad!r}, not a sample key")
    bad = next((k for k, v in (ckpt.get("source_config") or {}).items()
                if v is not None and not isinstance(v, dict)), None)
    if bad is not None:
        raise EngineError(f"{path}: source_config[{bad!r}] is a "
                          f"{type(ckpt['source_config'][bad]).__name__}, not a mapping")
    bad = next((v for v in ckpt.get("train_mean", []) if isinstance(v, bool)
                or not isinstance(v, (int, float))), None)
    if bad is not None:
        raise EngineError(f"{path}: train_mean holds {bad!r}, not a number")


def _default_inputs(ckpt: dict, path: str | os.PathLike) -> None:
    """`inputs` must be keys the named model reads; an empty list becomes all of them."""
    from models.registry import model_spec

    reads = list(model_spec(ckpt["model_name"]).inputs)
    given = list(ckpt.get("inputs") or [])
    foreign = [k for k in given if k not in reads]
    if foreign:
        raise EngineError(f"{path}: inputs lists {', '.join(map(repr, foreign))}, which model "
                          f"{ckpt['model_name']!r} does not read (it reads "
                          f"{', '.join(reads) or 'nothing'})")
    if not given:
        if not reads:
            raise EngineError(f"{path}: inputs is empty: the checkpoint does not say what its "
                              "model reads")
        log.warning("%s: the checkpoint lists no inputs; using model %r's own: %s", path,
                    ckpt["model_name"], ", ".join(reads))
        ckpt["inputs"] = reads


def load_weights(model: nn.Module, path: str | os.PathLike, *,
                 strict: bool = True) -> dict[str, list[str]]:
    """Initial weights from a file: one of our checkpoints or a bare state_dict (a "module."
    prefix from DataParallel is stripped). Non-strict: missing, unexpected and shape-mismatched
    tensors are skipped and reported. Returns {"missing", "unexpected", "mismatched"}."""
    obj = read_checkpoint(path)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()
             if isinstance(v, Tensor)}
    # a lazy layer (nn.LazyLinear) has no shape until its first input or these weights: torch's
    # load hook shapes it from the stored tensor, so it is no mismatch
    own = {k: v for k, v in model.state_dict().items()
           if not isinstance(v, nn.parameter.UninitializedTensorMixin)}
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

