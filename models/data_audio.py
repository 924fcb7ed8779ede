"""Input sources of the audio models: logmel (log-mel spectrogram), wave (raw 16 kHz samples) and
audio_fn (the per-clip audio functionals), read from the audio and functionals stages' Parquet.

    from models.data import build_sources
    src, = build_sources(["logmel"], root=root, video_ids=ids, config={"logmel": {"frames": 300}})
    src.train_item("syn_0003", np.random.default_rng(0))   # {"logmel": (n_mels, 300) float}
    src.eval_items("syn_0003")                              # {"logmel": (1, n_mels, T)}

Sampling (ours; DeepPersonality's differs: docs/models.md, "Against DeepPersonality"):

| key      | train_item (one random view)                      | eval_items (all views, V)          |
|----------|---------------------------------------------------|------------------------------------|
| logmel   | a random crop of `frames` steps (zero-padded)     | the whole clip (`full`) or the     |
|          |                                                   | centre crop (`centre`), V = 1      |
|          | `span: whole`: the whole clip stretched to        | the same, V = 1                    |
|          | `frames` steps (bimodal_lstm's segments)          |                                    |
| wave     | a random crop of `samples` within the real audio  | the centre crop (or `full`), V = 1 |
| audio_fn | the standardised audio functionals vector (fn_*,  | the same, V = 1                    |
|          | egemaps_*, compare_*; `include` picks by prefix)  |                                    |

A clip too short for the network (eval_mode full: a 0.1 s clip's log-mel has 11 steps, the log-mel
CNN takes 16) is not the source's concern: scoring pads the view up to the model's
`min_lengths()` (models/inference.py, pad_short); `step_s` (hop_s, or 1 / sr) lets predict say
how many seconds that was.

Videos without inputs: `has(video_id)` is False for a video with no usable audio (logmel /
audio_fn: no stream, silent, error; wave: no stream); `train_item` / `eval_items` then raise
`SourceError` naming the video and why (the engine drops videos whose `has` is False). The
sources take `on_missing: zeros` to feed such videos a neutral input instead (zeros after
standardisation).

Standardisation (logmel per band, audio_fn per feature) uses statistics of the train split:
`stats_split: train` reads data/manifest.parquet under the root and keeps the given videos of
that split ("" = all the given videos); `mean` / `std` in the config override them. They travel
in the checkpoint (`fitted_config`), beside every option as resolved (models.data.for_inference:
a train.source_config without eval_mode got the source's default, logmel `full`, wave `centre`,
and the checkpoint says so). The image sources are models/data_image.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.data import InputSource, SourceError, register_source, source_options
from personality.common import get_logger
from personality.schemas import AUDIO_FUNCTIONAL_PREFIXES

__all__ = ["LogmelSourceConfig", "WaveSourceConfig", "AudioFnSourceConfig", "LogmelSource",
           "WaveSource", "AudioFnSource", "crop_starts"]

log = get_logger("data_audio")

AUDIO_FUNCTIONALS = tuple(AUDIO_FUNCTIONAL_PREFIXES.values())  # fn_, egemaps_, compare_


# --------------------------------------------------------------------------------------------------
# audio


def _read_audio(root: Path, path: str, video_ids: Sequence[str], columns: list[str]) -> pa.Table:
    from personality.common import SchemaError

    folder = root / (path or "data/audio")
    shards = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not shards:
        raise SchemaError(f"{folder}: artifact 'audio' not found; run the audio stage first")
    ids = list(dict.fromkeys(video_ids))
    tables = [pq.read_table(s, columns=["video_id", *columns],
                            filters=[("video_id", "in", ids)] if ids else None) for s in shards]
    return pa.concat_tables(tables, promote_options="permissive")


def _stats_ids(root: Path, video_ids: Sequence[str], split: str) -> list[str]:
    """The given videos of split `split` (data/manifest.parquet), or all of them when split is ""
    or the manifest is absent; none of that split is an error."""
    manifest = root / "data" / "manifest.parquet"
    if not split or not manifest.exists():
        return list(video_ids)
    m = pq.read_table(manifest, columns=["video_id", "split"]).to_pandas()
    chosen = set(m.loc[m["split"] == split, "video_id"])
    picked = [v for v in video_ids if v in chosen]
    if not picked:  # never fall back on val / test clips: statistics come from training data
        raise SourceError(f"no {split}-split video among the {len(video_ids)} given to fit the "
                          "standardisation on; give the statistics (mean, std: a checkpoint's "
                          "source_config) or set stats_split: ''")
    return picked


def _usable(row: dict) -> str:
    """'' when an audio row has features, else why not."""
    if not row.get("has_audio", True):
        return "has no audio stream"
    if row.get("error"):
        return f"audio error: {row['error']}"
    if row.get("silent"):
        return "is silent"
    return ""


@dataclasses.dataclass(frozen=True)
class LogmelSourceConfig:
    frames: int = 300  # train crop, in hop_s steps (300 x 10 ms = 3 s); shorter clips zero-padded
    # eval_mode's default stays `full` (params.yaml sets `centre`): checkpoints trained with a
    # train.source_config that left it out were scored on the whole clip, and predict scores
    # them so; since 2026-12-05 the checkpoint records the mode it used, since 2026-12-06 every
    # option (models.data.for_inference)
    eval_mode: Literal["full", "centre", "crops"] = "full"  # whole clip as one view, the centre
    #   crop of `frames`, or crops: V = ceil(T / frames) crops of `frames` steps, evenly spaced
    #   from the first step to the last (overlapping a little), predictions averaged over them
    max_frames: int = 1500  # eval "full": at most this many (centred): bounds memory
    span: Literal["crop", "whole"] = "crop"  # whole: train and eval read the whole clip (at
    #   most max_frames, centred) stretched to `frames` steps, one view: a model that cuts the
    #   log-mel into segments then has them cover the clip as face_seq `segments` do
    normalise: bool = True  # per-band standardisation with train-split statistics
    stats_split: str = "train"  # split whose videos give the statistics ("" = all given)
    mean: tuple[float, ...] = ()  # per-band statistics given explicitly (n_mels values each)
    std: tuple[float, ...] = ()
    on_missing: Literal["error", "zeros"] = "error"  # videos without usable audio
    path: str = ""  # artifact folder ("" = data/audio)
    # every training view is `frames` steps long (a crop, or the whole clip stretched): under the
    # network's min_lengths() its pooling fails, so train refuses it first (models/train_params.py)
    train_length: ClassVar[dict[str, str]] = {"logmel": "frames"}

    def __post_init__(self) -> None:
        if self.frames < 1 or self.eval_mode not in ("full", "centre", "crops") or \
                self.on_missing not in ("error", "zeros") or len(self.mean) != len(self.std) \
                or self.span not in ("crop", "whole"):
            raise SourceError("logmel source: frames >= 1, eval_mode full|centre|crops, "
                              "on_missing error|zeros, mean and std of equal length, "
                              "span crop|whole")


class _AudioBase(InputSource):
    key: str
    fitted: dict = {}  # standardisation statistics, for checkpoints (InputSource.fitted_config)
    step_s: float = 0.01  # seconds per step of the last axis (the artifact's hop_s, or 1 / sr)

    def fitted_config(self) -> dict[str, dict]:
        """The statistics (the eval view's mode and every other option are written out for the
        checkpoint by models.data.for_inference, whatever train.source_config left out)."""
        return self.fitted

    def __init__(self, data: dict[str, np.ndarray], missing: dict[str, str], on_missing: str):
        self.data, self.missing, self.on_missing = data, missing, on_missing
        self.keys = (self.key,)

    def has(self, video_id: str) -> bool:
        return video_id in self.data or (self.on_missing == "zeros" and video_id in self.missing)

    def _get(self, video_id: str) -> np.ndarray | None:
        x = self.data.get(video_id)
        if x is not None:
            return x
        if self.on_missing == "zeros" and video_id in self.missing:
            return None
        why = self.missing.get(video_id, "is not in data/audio")
        raise SourceError(f"video {video_id!r} {why}: no {self.key!r} input")


def _crop(x: np.ndarray, length: int, start: int, axis_len: int) -> np.ndarray:
    """x[..., start:start + length] zero-padded to `length` along the last axis."""
    out = np.zeros((*x.shape[:-1], length), np.float32)
    piece = x[..., start:start + length]
    out[..., :piece.shape[-1]] = piece
    return out


def stretch(x: np.ndarray, length: int, max_len: int) -> np.ndarray:
    """(M, T) -> (M, length): the centred `max_len` steps at most, linearly resampled in time,
    so that step k of the output sits k / length of the way through the clip."""
    if x.shape[1] > max_len:
        start = (x.shape[1] - max_len) // 2
        x = x[:, start:start + max_len]
    n = x.shape[1]
    if n == 1:
        return np.repeat(x, length, axis=1).astype(np.float32)
    pos = np.linspace(0, n - 1, length)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    return (x[:, lo] * (1 - w) + x[:, hi] * w).astype(np.float32)


def crop_starts(n: int, length: int) -> list[int]:
    """Starts of the fewest `length`-step crops that cover all `n` steps, evenly spaced from the
    first step to the last (neighbours overlap by less than a crop); [0] when n <= length."""
    if n <= length:
        return [0]
    count = -(-n // length)  # ceil
    return np.linspace(0, n - length, count).round().astype(int).tolist()


class LogmelSource(_AudioBase):
    """{"logmel": (n_mels, T) float32}, standardised per band."""

    key = "logmel"

    def __init__(self, data, missing, cfg: LogmelSourceConfig, n_mels: int):
        super().__init__(data, missing, cfg.on_missing)
        self.config, self.n_mels = cfg, n_mels

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.frames
        if x is None:
            return {"logmel": torch.zeros(self.n_mels, L)}
        if self.config.span == "whole":
            return {"logmel": torch.from_numpy(stretch(x, L, self.config.max_frames))}
        start = int(rng.integers(max(x.shape[1] - L + 1, 1)))
        return {"logmel": torch.from_numpy(_crop(x, L, start, x.shape[1]))}  # (M, L)

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        if self.config.span == "whole":
            whole = (stretch(x, self.config.frames, self.config.max_frames) if x is not None
                     else np.zeros((self.n_mels, self.config.frames), np.float32))
            return {"logmel": torch.from_numpy(whole[None])}  # (1, M, frames)
        full = self.config.eval_mode == "full"
        L = self.config.frames if not full else (
            min(x.shape[1], self.config.max_frames) if x is not None else self.config.frames)
        if x is None:
            return {"logmel": torch.zeros(1, self.n_mels, L)}
        if self.config.eval_mode == "crops":
            starts = crop_starts(x.shape[1], L)
        else:
            starts = [max((x.shape[1] - L) // 2, 0)]
        views = [_crop(x, L, start, x.shape[1]) for start in starts]
        return {"logmel": torch.from_numpy(np.stack(views))}  # (V, M, L)


@register_source("logmel", options=LogmelSourceConfig)
def logmel_source(*, root: Path, video_ids: list[str], config: dict) -> LogmelSource:
    cfg = source_options(LogmelSourceConfig, config, "source_config.logmel")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "silent", "error", "n_frames",
                                                "n_mels", "hop_s", "logmel"])
    data, missing, n_mels = {}, {}, 64
    meta = t.drop_columns(["logmel"]).to_pylist()
    col = t.column("logmel")
    for i, row in enumerate(meta):
        why = _usable(row) or ("has no log-mel frames" if not row["n_frames"] else "")
        if why:
            missing[row["video_id"]] = why
            continue
        n_mels = int(row["n_mels"])
        v = np.asarray(col[i].values.to_numpy(zero_copy_only=False), np.float32)
        data[row["video_id"]] = np.ascontiguousarray(v.reshape(-1, n_mels).T)  # (T, M) -> (M, T)
    _report_missing("logmel", video_ids, data, missing)
    if cfg.normalise:
        if cfg.mean:
            mean = np.asarray(cfg.mean, np.float32)[:, None]
            std = np.asarray(cfg.std, np.float32)[:, None]
        else:
            fit = [data[v] for v in _stats_ids(root, video_ids, cfg.stats_split) if v in data]
            allx = np.concatenate(fit, axis=1) if fit else np.zeros((n_mels, 1), np.float32)
            mean, std = allx.mean(axis=1, keepdims=True), allx.std(axis=1, keepdims=True)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        data = {v: (x - mean) / std for v, x in data.items()}
    src = LogmelSource(data, missing, cfg, n_mels)
    src.step_s = float(meta[0]["hop_s"]) if meta else src.step_s
    if cfg.normalise:
        src.fitted = {"logmel": {"mean": mean.ravel().tolist(), "std": std.ravel().tolist()}}
    return src


def _report_missing(key: str, video_ids: Sequence[str], data: dict, missing: dict) -> None:
    for v in video_ids:
        if v not in data and v not in missing:
            missing[v] = "is not in data/audio"
    if missing:
        log.warning("%s: %d video(s) without usable audio: %s", key, len(missing),
                    "; ".join(f"{v} {w}" for v, w in list(missing.items())[:5]))


@dataclasses.dataclass(frozen=True)
class WaveSourceConfig:
    samples: int = 48000  # train crop (3 s at 16 kHz) within the real audio; zero-padded
    eval_mode: Literal["centre", "full"] = "centre"  # centre crop of `samples`, or all real audio
    on_missing: Literal["error", "zeros"] = "error"  # videos without an audio stream
    path: str = ""
    train_length: ClassVar[dict[str, str]] = {"wave": "samples"}  # as LogmelSourceConfig's

    def __post_init__(self) -> None:
        if self.samples < 1 or self.eval_mode not in ("centre", "full") or \
                self.on_missing not in ("error", "zeros"):
            raise SourceError("wave source: samples >= 1, eval_mode centre|full, on_missing "
                              "error|zeros")


class WaveSource(_AudioBase):
    """{"wave": (S,) float32 in [-1, 1]}; kept as int16 (the real part) in memory."""

    key = "wave"

    def __init__(self, data, missing, scales: dict[str, float], cfg: WaveSourceConfig):
        super().__init__(data, missing, cfg.on_missing)
        self.scales, self.config = scales, cfg

    def _float(self, x: np.ndarray, video_id: str, start: int, length: int) -> torch.Tensor:
        return torch.from_numpy(_crop(x[None].astype(np.float32) * self.scales[video_id], length,
                                      start, len(x))[0])

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.samples
        if x is None:
            return {"wave": torch.zeros(L)}
        return {"wave": self._float(x, video_id, int(rng.integers(max(len(x) - L + 1, 1))), L)}

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.samples if self.config.eval_mode == "centre" or x is None else len(x)
        if x is None:
            return {"wave": torch.zeros(1, L)}
        return {"wave": self._float(x, video_id, max((len(x) - L) // 2, 0), L)[None]}  # (1, L)


@register_source("wave", options=WaveSourceConfig)
def wave_source(*, root: Path, video_ids: list[str], config: dict) -> WaveSource:
    cfg = source_options(WaveSourceConfig, config, "source_config.wave")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "error", "wave", "wave_scale",
                                                "n_samples", "sr"])
    data, missing, scales = {}, {}, {}
    meta = t.drop_columns(["wave"]).to_pylist()
    col = t.column("wave")
    for i, row in enumerate(meta):
        n = int(row["n_samples"] or 0)
        if not row["has_audio"] or n == 0:
            missing[row["video_id"]] = ("has no audio stream" if not row["has_audio"]
                                        else "has no audio samples")
            continue
        w = col[i].values.to_numpy(zero_copy_only=False)[:n]
        data[row["video_id"]] = np.ascontiguousarray(w)
        scales[row["video_id"]] = float(row["wave_scale"])
    _report_missing("wave", video_ids, data, missing)
    src = WaveSource(data, missing, scales, cfg)
    src.step_s = 1.0 / float(meta[0]["sr"]) if meta else 1.0 / 16000
    return src


@dataclasses.dataclass(frozen=True)
class AudioFnSourceConfig:
    # keep the functionals (fn_*, egemaps_*, compare_*: what audio.feature_sets wrote) whose name
    # starts with one of these (() = all of them); e.g. [egemaps_] or [fn_rms_db, fn_f0]
    include: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # the exact columns (fitted: what training used)
    stats_split: str = "train"  # standardisation statistics from this split ("" = all given)
    mean: tuple[float, ...] = ()  # explicit statistics (one per kept column)
    std: tuple[float, ...] = ()
    on_missing: Literal["error", "zeros"] = "error"  # silent / no-audio videos (NaN functionals)
    path: str = ""

    def __post_init__(self) -> None:
        if self.on_missing not in ("error", "zeros") or len(self.mean) != len(self.std):
            raise SourceError("audio_fn source: on_missing error|zeros, mean and std of equal "
                              "length")


class AudioFnSource(_AudioBase):
    """{"audio_fn": (F,) float32}: the standardised audio functionals; NaN entries -> 0."""

    key = "audio_fn"

    def __init__(self, data, missing, columns: list[str], cfg: AudioFnSourceConfig):
        super().__init__(data, missing, cfg.on_missing)
        self.columns, self.config = columns, cfg
        self.n_features = len(columns)

    def _vec(self, video_id: str) -> torch.Tensor:
        x = self._get(video_id)
        return torch.zeros(self.n_features) if x is None else torch.from_numpy(x)

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"audio_fn": self._vec(video_id)}

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        return {"audio_fn": self._vec(video_id)[None]}  # (1, F)


@register_source("audio_fn", options=AudioFnSourceConfig)
def audio_fn_source(*, root: Path, video_ids: list[str], config: dict) -> AudioFnSource:
    cfg = source_options(AudioFnSourceConfig, config, "source_config.audio_fn")
    folder = root / (cfg.path or "data/audio")
    schema = pq.read_schema(sorted(folder.glob("*.parquet"))[0]) if folder.is_dir() and any(
        folder.glob("*.parquet")) else None
    if schema is None:
        _read_audio(root, cfg.path, video_ids, [])  # raises the "run the stage" error
    columns = list(cfg.columns) or [
        c for c in schema.names if c.startswith(AUDIO_FUNCTIONALS) and (
            not cfg.include or any(c.startswith(p) for p in cfg.include))]
    if not columns:
        raise SourceError(f"source_config.audio_fn.include {cfg.include}: no functional column "
                          f"({', '.join(p + '*' for p in AUDIO_FUNCTIONALS)}) matches")
    absent = [c for c in columns if c not in schema.names]
    if absent:
        raise SourceError(f"source_config.audio_fn: {len(absent)} columns absent from {folder} "
                          f"(e.g. {absent[0]}): params audio.feature_sets differ from training's")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "silent", "error", *columns])
    df = t.to_pandas()
    values = df[columns].to_numpy(np.float64)  # (n, F)
    data_raw, missing = {}, {}
    for i, row in enumerate(df[["video_id", "has_audio", "silent", "error"]].to_dict("records")):
        why = _usable(row) or ("has no functionals" if np.isnan(values[i]).all() else "")
        if why:
            missing[row["video_id"]] = why
        else:
            data_raw[row["video_id"]] = values[i]
    _report_missing("audio_fn", video_ids, data_raw, missing)
    if cfg.mean:
        if len(cfg.mean) != len(columns):
            raise SourceError(f"source_config.audio_fn.mean: {len(cfg.mean)} values for "
                              f"{len(columns)} columns")
        mean, std = np.asarray(cfg.mean), np.asarray(cfg.std)
    else:
        fit = np.array([data_raw[v] for v in _stats_ids(root, video_ids, cfg.stats_split)
                        if v in data_raw]).reshape(-1, len(columns))
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(fit, axis=0)) if len(fit) else np.zeros(len(columns))
            std = np.nan_to_num(np.nanstd(fit, axis=0)) if len(fit) else np.ones(len(columns))
    std = np.where(std > 1e-8, std, 1.0)
    data = {v: np.nan_to_num((x - mean) / std).astype(np.float32) for v, x in data_raw.items()}
    src = AudioFnSource(data, missing, columns, cfg)
    src.mean, src.std = mean.astype(np.float32), std.astype(np.float32)
    # float64, as used above: float32 copies would move standardised values by ~1e-5
    src.fitted = {"audio_fn": {"mean": mean.tolist(), "std": std.tolist(),
                               "include": list(cfg.include), "columns": columns}}
    return src
