"""Video-level inference: every eval view of every video, decoded and averaged (predict_videos),
and the metrics of those predictions against labels (evaluate).

    from models.inference import predict_videos, evaluate
    preds = predict_videos(model, sources, ids, batch_size=64, device="cpu")      # (n, 5) in [0, 1]
    metrics = evaluate(model, sources, ids, targets)                             # {"ccc": ...}
    table = predictions_table(ids, splits, preds, proba, "perfex_cnn")          # the Parquet rows

models/engine.py re-exports both (`from models.engine import predict_videos`); the training loop
validates with `evaluate`, and predict, train's test split and serve all score through
`predict_videos`, so a clip gets one score whichever path asks for it. train and retrain write
their predictions files through `predictions_table`, so evaluate reads one layout from both.

A view shorter than the network takes (`min_lengths`: a log-mel of a 0.1 s clip in eval_mode
"full" has 11 steps, the log-mel CNN's four 2x2 pools need 16) is zero-padded at its end up to
that length (`pad_short`), as the sources pad a clip shorter than their crop: silence for a wave,
each band's train mean for a standardised log-mel. `short_views` says which views were padded
(predict names them under its warnings). Views at or over the minimum are untouched. A face clip
(face_seq) is not padded: black frames are no face, and the source already repeats crops to fill
a clip of `length` (models/data_image.py), so one shorter than the network takes (bimodal_lstm's
`segments`) comes from a checkpoint's config and is refused naming the video, the length and the
minimum (train refuses such a config before it reads any data: models/train_params.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from models.batching import collate, merge_views, to_device
from models.data import InputSource, SourceError
from models.distributed import resolve_device
from models.metrics import bin_metrics, regression_metrics
from personality.schemas import TRAITS


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp`; a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=bool(amp and device.type == "cuda"))


@contextlib.contextmanager
def exact_float32(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """TF32 off on CUDA inside the block (cuDNN's convolutions use its 10-bit mantissa by
    default): a full-precision score on a GPU (amp off: train's predictions) is then the
    float32 one that predict computes on the CPU, to float rounding. A no-op elsewhere."""
    if not (enabled and device.type == "cuda"):
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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
    sums, counts = np.zeros((n, len(TRAITS))), np.zeros(n)  # (n, 5) score sums, (n,) views
    proba_sums: np.ndarray | None = None
    has_proba = return_proba and hasattr(model, "proba")
    items: list[dict[str, Tensor]] = []
    owners: list[int] = []

    def flush() -> None:
        nonlocal proba_sums
        if not items:
            return
        batch = to_device(collate(items), device, device.type == "cuda")
        with autocast(device, amp), exact_float32(device, not amp):
            outputs = model(batch)
        outputs = outputs.float()  # bf16 under autocast; decode / proba's buffers are float32
        scores = model.decode(outputs).cpu().numpy()  # (b, 5)
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

    pending_shapes: tuple = ()
    mins = min_lengths(model)  # views shorter than the network takes are padded up to it
    for i, vid in enumerate(video_ids):
        views = eval_views(model, sources, vid, mins)
        V = next(iter(views.values())).shape[0]
        for v in range(V):
            item = {k: t[v] for k, t in views.items()}
            shapes = _unmasked_shapes(item)  # no zero padding to a batch-mate's length: it'd
            # enter the pooling of an input without a mask, the score depending on the batch
            if items and shapes != pending_shapes:
                flush()
            pending_shapes = shapes
            items.append(item)
            owners.append(i)
            if len(items) >= batch_size:
                flush()
    flush()
    preds = sums / np.maximum(counts, 1)[:, None]
    if not return_proba:
        return preds
    proba = proba_sums / np.maximum(counts, 1)[:, None, None] if proba_sums is not None else None
    return preds, proba


def eval_views(model: nn.Module, sources: Sequence[InputSource], video_id: str,
               mins: Mapping[str, int]) -> dict[str, Tensor]:
    """{key: (V, ...)}: every eval view of `video_id`, merged over `sources`, with the inputs
    under the network's minimum `mins` padded (or refused: pad_short)."""
    views = merge_views([s.eval_items(video_id) for s in sources], video_id)
    return pad_short(views, mins, video_id=video_id,
                     model=type(getattr(model, "module", model)).__name__)


def min_lengths(model: nn.Module) -> dict[str, int]:
    """{key: fewest steps on its time axis} the network takes (ZooModel.min_lengths; a
    DistributedDataParallel's module's); {} for a model that declares none."""
    return _declared(model, "min_lengths")


def _declared(model: nn.Module, method: str) -> dict[str, int]:
    """What `model` (or a DistributedDataParallel's module) declares through `method`, {} when it
    has no such method."""
    declared = getattr(getattr(model, "module", model), method, None)
    return dict(declared()) if callable(declared) else {}


def max_lengths(model: nn.Module) -> dict[str, int]:
    """{key: most steps on its time axis} the network takes (ZooModel.max_lengths); {} for a
    model that declares none."""
    return _declared(model, "max_lengths")


# the time axis of each sequence input's eval views: logmel (V, n_mels, T), wave (V, S),
# face_seq (V, T, 3, H, W), aus (V, T, 17); a key of min_lengths not named here: its last axis
TIME_AXIS = {"logmel": -1, "wave": -1, "face_seq": -4, "aus": -2}
# the inputs a view under the minimum is padded for, with zeros after its end (silence, or a
# standardised band's train mean); another short input is refused (pad_short): a face clip's
# black frames are no face, and an AU sequence would need its mask padded too (no AU net has a
# minimum: tests/test_short_sequences.py)
PADDED = ("logmel", "wave")


def pad_short(views: Mapping[str, Tensor], mins: Mapping[str, int], *, video_id: str = "",
              model: str = "the model") -> dict[str, Tensor]:
    """`views` {key: (V, ..., L)} with each PADDED key of `mins` whose L is under its minimum
    padded with zeros after its end to (V, ..., mins[key]); the rest as they are (the same
    tensors). Another key under its minimum (a face clip: TIME_AXIS) is a SourceError naming
    `video_id`, `model`, the length and the minimum, not the network's own error."""
    out = dict(views)
    for key, need in mins.items():
        x = out.get(key)
        have = need if x is None else _steps(key, x)
        if have >= need:
            continue
        if key not in PADDED:
            raise SourceError(f"video {video_id!r}: its {key} view has {have} steps, under the "
                              f"{need} {model} takes (min_lengths); a {key} is not padded")
        out[key] = torch.nn.functional.pad(x, (0, need - have))  # (V, ..., need)
    return out


def short_views(model: nn.Module, sources: Sequence[InputSource], video_id: str
                ) -> dict[str, tuple[int, int]]:
    """{key: (steps the clip's eval view has, steps the network takes)} for each input of
    `video_id` that `pad_short` lengthens in predict_videos; {} when none is short."""
    mins = min_lengths(model)
    if not mins:
        return {}
    views = merge_views([s.eval_items(video_id) for s in sources], video_id)
    return {k: (_steps(k, views[k]), need) for k, need in mins.items()
            if k in PADDED and k in views and _steps(k, views[k]) < need}


def _steps(key: str, x: Tensor) -> int:
    """The length of view `x` of input `key` along its time axis (TIME_AXIS)."""
    return int(x.shape[TIME_AXIS.get(key, -1)])


def predictions_table(video_ids: Sequence[str], splits: Sequence[str], preds: np.ndarray,
                      proba: np.ndarray | None, model: str) -> pd.DataFrame:
    """A predictions file's rows (data/predictions, data/retrained/predictions): video_id, split,
    O..N from preds (n, 5), model, and for 5-bin heads proba_<T>_<k> from proba (n, 5, 5),
    trait-major, from which stages/evaluate.py scores the 5-bin view."""
    table = pd.DataFrame({"video_id": np.asarray(video_ids), "split": np.asarray(splits),
                          **{t: preds[:, k] for k, t in enumerate(TRAITS)}, "model": model})
    if proba is not None:
        for j, t in enumerate(TRAITS):
            for k in range(proba.shape[2]):
                table[f"proba_{t}_{k}"] = proba[:, j, k]
    return table


def _unmasked_shapes(item: Mapping[str, Tensor]) -> tuple:  # (key, shape) of unmasked inputs
    return tuple((k, tuple(t.shape)) for k, t in sorted(item.items())
                 if not k.endswith("_mask") and f"{k}_mask" not in item)


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
