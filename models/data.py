"""Input sources: what turns a video id into the tensors a model reads, for training and evaluation.

    from models.data import build_sources

    sources = build_sources(("aus", "aus_mask"), root=root, video_ids=ids,
                            config={"aus": {"seq_len": 64, "augmented": True}})
    item = sources[0].train_item("syn_0003", np.random.default_rng(0))  # {"aus": (64, 17), ...}
    views = sources[0].eval_items("syn_0003")                           # {"aus": (1, 64, 17), ...}

A source fills one or more sample keys (`models.registry.SAMPLE_KEYS`). A model's `inputs` name the
keys it reads; `build_sources` finds, for each key, the builder registered for it and calls every
needed builder once. Builders register with `@register_source(*keys)` in a module listed in
`_SOURCE_MODULES` (imported lazily on the first lookup):

    @register_source("aus", "aus_mask", options=AUSourceConfig)
    def au_source(*, root: Path, video_ids: list[str], config: dict) -> InputSource: ...

`config` is the merge of `train.source_config[key]` over the builder's keys (in the order they were
registered), so `source_config: {aus: {seq_len: 64}}` reaches the AU builder as `{"seq_len": 64}`.
An unknown option fails with its name; `check_source_options(keys, config)` reads a config into
the builders' `options` dataclasses without reading any data (predict checks a checkpoint's
config that way before its front-end runs).

The protocol the training engine relies on (models/engine.py):

- `train_item(video_id, rng)`: one training view (a random window / frame / clip), no batch axis;
  the same rng state gives the same view.
- `eval_items(video_id)`: every evaluation view stacked on a leading view axis V >= 1. V may differ
  between sources: a source with V = 1 is broadcast over the other sources' views, and the engine
  averages the decoded predictions over the views, one prediction per video.
- `has(video_id)`: whether the source has inputs for the video (default: True). Videos without
  inputs get no prediction.

Padding convention: a key `X` with a companion `X_mask` of shape (..., T) is zero-padded in time
and the mask is True on real steps, a prefix. The engine's collate trims a batch to its longest
real sequence, so padding to a generous `seq_len` costs nothing.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from personality.common import ParamsError, StageInputError, build_dataclass, get_logger

__all__ = ["InputSource", "SourceError", "check_inference_parity", "register_source", "build_sources", "source_keys",
           "train_lengths", "AUSource", "AUSourceConfig", "au_windows"]

# Modules whose import registers sources.
_SOURCE_MODULES = ("models.data", "models.data_image", "models.data_audio", "models.classical")

Builder = Callable[..., "InputSource"]

log = get_logger("data")


class SourceError(StageInputError):
    """A sample key nobody provides, a bad source option, or a video without inputs (a
    StageInputError: a stage reports it in one line, exit code 2)."""


class InputSource(abc.ABC):
    """Base class of the input sources (see the module docstring for the protocol).

    `fitted_config` is abstract: every source states what it learnt from its training data (or
    `{}` when nothing), so a source that forgets it cannot be built at all; and train checks, with
    `check_inference_parity`, that a source rebuilt from that config gives the same inputs."""

    keys: tuple[str, ...] = ()

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def has(self, video_id: str) -> bool:
        return True

    @abc.abstractmethod
    def fitted_config(self) -> dict[str, dict]:
        """What the source learnt from the data it was built on (e.g. standardisation statistics
        of the train split), as `{key: {option: value}}` to store in a checkpoint, so that a
        source built on other data (one new video) transforms it the same way. `{}` when the
        source learns nothing."""


def for_inference(source_config: dict | None, sources: Sequence[InputSource] = ()) -> dict:
    """A source config for prediction: every option `sources` were built with, defaults written
    out, original sequences rather than augmented ones, plus what `sources` fitted on their
    training data. Train stores its result in the checkpoint."""
    config = {k: dict(v or {}) for k, v in (source_config or {}).items()}
    if sources:
        _write_out_defaults(config, [k for s in sources for k in s.keys])
    for key, entry in config.items():
        for option in RUNTIME_OPTIONS:  # the machine that predicts sizes its own caches
            entry.pop(option, None)
        if key == "aus" or "augmented" in entry:  # under aus_mask too: it wins the AU merge
            entry["augmented"] = False
    for source in sources:
        for key, fitted in source.fitted_config().items():
            config.setdefault(key, {}).update(fitted)
    return config


# Options that change how fast inputs are made, never what they are: left to the machine that
# predicts (a checkpoint from a 128 GB box must not ask a laptop for its cache)
RUNTIME_OPTIONS = frozenset({"cache_mb", "preload"})


def _write_out_defaults(config: dict, input_keys: Sequence[str]) -> None:
    """Fill `config` in place with every option of the sources for `input_keys` that it leaves
    to a default, as resolved now: a checkpoint then says how its inputs were made, and a later
    change of a default (logmel max_frames, aus eval_views, ...) cannot change its predictions.
    Under each source's first key; an option given under another of its keys still wins. So
    every checkpoint names every option: one removed from a config class later must still be
    accepted (and ignored) there, or those checkpoints stop loading."""
    for reg in _registrations(input_keys):
        if reg.options is None:
            continue
        options = source_options(reg.options, _merged_config(reg, config),
                                 f"source_config.{reg.keys[0]}")
        entry = config.setdefault(reg.keys[0], {})
        for field in dataclasses.fields(options):
            if field.name not in RUNTIME_OPTIONS:
                entry.setdefault(field.name, getattr(options, field.name))


def check_inference_parity(sources: Sequence[InputSource], config: dict, *, root: Path,
                           video_ids: Sequence[str], atol: float = 1e-6) -> None:
    """Rebuild `sources` from the inference `config` on each of `video_ids` alone (as predict
    does for one new clip) and compare their evaluation inputs with the training sources'.

    Raises SourceError naming the source, key and video when they differ: the source's
    `fitted_config()` misses state it learnt from the training data, and predictions for new
    clips would differ from the pipeline's."""
    keys = [k for s in sources for k in s.keys]
    for vid in video_ids:
        if not all(s.has(vid) for s in sources):
            continue
        try:
            rebuilt = build_sources(keys, root=root, video_ids=[vid], config=config)
        except SourceError as exc:  # e.g. statistics it would have to refit on this one clip
            raise SourceError(f"sources {keys} rebuilt from the checkpoint's source config on "
                              f"video {vid!r} alone fail ({exc}); a fitted_config() misses state "
                              "learnt from the training data") from None
        for original, copy in zip(sources, rebuilt):
            want, got = original.eval_items(vid), copy.eval_items(vid)
            for key, x in want.items():
                y = got.get(key)
                same = y is not None and y.shape == x.shape and (
                    torch.allclose(x.float(), y.float(), atol=atol, rtol=0) if x.is_floating_point()
                    else torch.equal(x, y))
                if not same:
                    diff = ("shape " + str(tuple(y.shape)) if y is not None and y.shape != x.shape
                            else "missing" if y is None
                            else f"max difference {float((x.float() - y.float()).abs().max()):.3g}")
                    raise SourceError(
                        f"{type(original).__name__}: input {key!r} of video {vid!r} rebuilt from "
                        f"the checkpoint's source config differs from training's ({diff}); its "
                        "fitted_config() misses state learnt from the training data")


@dataclasses.dataclass(frozen=True)
class _Registration:
    keys: tuple[str, ...]
    builder: Builder
    options: type | None = None  # the builder's config dataclass (check_source_options)


_BUILDERS: dict[str, _Registration] = {}  # sample key -> the builder that fills it
_LOADED = False


def register_source(*keys: str, options: type | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(*, root, video_ids, config) -> InputSource` for `keys`;
    `options` is the dataclass its config is read into (source_options), so that a config can be
    checked before any data is read (check_source_options)."""
    if not keys or not all(isinstance(k, str) and k.isidentifier() for k in keys):
        raise ValueError(f"register_source needs sample key names, got {keys!r}")

    def decorator(builder: Builder) -> Builder:
        reg = _Registration(tuple(keys), builder, options)
        for key in keys:
            prior = _BUILDERS.get(key)
            if prior is not None and (prior.builder.__module__, prior.builder.__qualname__) != (
                    builder.__module__, builder.__qualname__):
                raise ValueError(f"sample key {key!r} already has a source "
                                 f"({prior.builder.__module__}.{prior.builder.__qualname__})")
            _BUILDERS[key] = reg
        return builder

    return decorator


def _load_modules() -> None:
    global _LOADED
    if _LOADED:
        return
    for module in _SOURCE_MODULES:
        importlib.import_module(module)
    _LOADED = True


def source_keys(input_keys: Iterable[str] | None = None) -> list[str]:
    """Every sample key some registered source fills, sorted; with `input_keys` (a model's
    `inputs`) only those the sources it reads fill: its train.source_config keys."""
    _load_modules()
    if input_keys is None:
        return sorted(_BUILDERS)
    return sorted({key for reg in _registrations(input_keys) for key in reg.keys})


def _registrations(input_keys: Iterable[str]) -> list[_Registration]:
    """The builders that together fill `input_keys`, each once; SourceError names a key that no
    module provides."""
    _load_modules()
    chosen: list[_Registration] = []
    for key in input_keys:
        reg = _BUILDERS.get(key)
        if reg is None:
            raise SourceError(f"no input source provides sample key {key!r} (known: "
                              f"{', '.join(sorted(_BUILDERS)) or 'none'}; modules: "
                              f"{', '.join(_SOURCE_MODULES)})")
        if reg not in chosen:
            chosen.append(reg)
    return chosen


def _merged_config(reg: _Registration, config: dict) -> dict:
    """The merge of `config`'s entries for the keys `reg` fills."""
    merged: dict = {}
    for key in reg.keys:
        entry = config.get(key) or {}
        if not isinstance(entry, dict):
            raise SourceError(f"source_config.{key}: expected a mapping, got {entry!r}")
        merged.update(entry)
    return merged


def check_source_options(input_keys: Iterable[str], config: dict | None) -> None:
    """Read `config` into each needed source's options dataclass without touching any data: an
    unknown option or a bad value is a SourceError naming it now, not after the front-end ran."""
    config = dict(config or {})
    for reg in _registrations(input_keys):
        if reg.options is not None:
            source_options(reg.options, _merged_config(reg, config), f"source_config.{reg.keys[0]}")


def train_lengths(input_keys: Iterable[str], config: dict | None) -> dict[str, tuple[str, int]]:
    """{sample key: (option, value)}: the length along its time axis of every training view a
    source makes for that key, for the keys of `input_keys` whose options class names one in
    `train_length` (logmel: `frames`, wave: `samples`, face_seq: `length`); read from `config`
    without any data."""
    keys, config = list(input_keys), dict(config or {})
    out: dict[str, tuple[str, int]] = {}
    for reg in _registrations(keys):
        named = getattr(reg.options, "train_length", None) or {}
        if named:
            options = source_options(reg.options, _merged_config(reg, config),
                                     f"source_config.{reg.keys[0]}")
            out.update({key: (option, int(getattr(options, option)))
                        for key, option in named.items() if key in keys})
    return out


def build_sources(input_keys: Iterable[str], *, root: str | Path, video_ids: Sequence[str],
                  config: dict | None = None) -> list[InputSource]:
    """One source per builder, together covering `input_keys` (a model's `inputs`).

    config: `{key: {option: value}}` (train.source_config); each builder receives the merge of
    its keys' entries. SourceError names a key that no module provides.
    """
    config = dict(config or {})
    return [reg.builder(root=Path(root), video_ids=list(video_ids),
                        config=_merged_config(reg, config))
            for reg in _registrations(input_keys)]


# --------------------------------------------------------------------------------------------------
# the AU source


def _any_face(a: np.ndarray) -> bool:
    """Whether an AU sequence, (T, 17) with NaN rows where no face was found, has a face row."""
    a = np.asarray(a, dtype=np.float32)
    return bool(len(a)) and not np.isnan(a).all()


@dataclasses.dataclass(frozen=True)
class AUSourceConfig:
    seq_len: int = 64  # time steps per sample (zero-padded / cropped); 12.8 s at frames.fps = 5
    augmented: bool = False  # training views from data/augmented (train split) when it has the video
    drop_missing: bool = False  # drop frames without a face instead of keeping them as 0
    scale: float = 1.0  # multiply intensities (0-5) by this (e.g. 0.2 for 0-1 inputs)
    eval_views: int = 1  # > 1: a clip longer than seq_len is seen as this many evenly spaced windows
    aus_path: str = "data/aus"  # relative to the root
    augmented_path: str = "data/augmented"


def source_options(cls: type, config: dict, prefix: str) -> Any:
    """A source's config dataclass from `{option: value}`, each value checked against its
    annotation (lists from YAML or a checkpoint become tuples); an unknown option or a bad value
    -> SourceError naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise SourceError(f"{prefix}.{unknown[0]}: unknown source option "
                          f"(known: {', '.join(sorted(names))})")
    _check_folders(config, prefix)
    try:  # typed by the dataclass's annotations: a bad value is named with its option
        options = build_dataclass(cls, config, prefix)
    except ParamsError as exc:  # "source_config.face_seq.sampling: 'foo' is not one of ..."
        raise SourceError(str(exc)) from None
    except (SourceError, TypeError, ValueError) as exc:  # __post_init__'s checks across options
        raise SourceError(f"{prefix}: {exc}") from None
    for option, limit in SIZE_LIMITS.items():
        value = getattr(options, option, None)
        if isinstance(value, int) and value > limit:
            raise SourceError(f"{prefix}.{option}: {value} is over {limit}, more than any model "
                              "here reads (a bound: a checkpoint's config is untrusted)")
    return options


# Options that size what a source allocates per sample, bounded far above any model's use: a
# checkpoint asking for 10^5-pixel faces would allocate 30 GB per crop before anything else failed
SIZE_LIMITS = {"size": 1024, "length": 512, "stride": 1000, "seq_len": 100_000,
               "eval_views": 1000, "max_eval_views": 10_000, "frames": 100_000,
               "max_frames": 1_000_000, "samples": 100_000_000}


def _check_folders(config: dict, prefix: str) -> None:
    """A folder option (`path`, `aus_path`, ...) is relative to the root and stays in it: a
    checkpoint's source_config is untrusted, and predict builds a clip's inputs from it in its
    own work folder, so an absolute path or `..` would read another folder's artifacts."""
    for key, value in config.items():
        if key.endswith("path") and isinstance(value, str) and (
                PurePath(value).is_absolute() or ".." in PurePath(value).parts):
            raise SourceError(f"{prefix}.{key}: {value!r} leaves the data root; give a folder "
                              "relative to it, without '..'")


def au_windows(n: int, seq_len: int, views: int) -> list[int]:
    """Start indices of `views` evenly spaced windows of seq_len over n steps (one if n <= seq_len)."""
    if n <= seq_len or views <= 1:
        return [0]
    return sorted(set(np.linspace(0, n - seq_len, views).round().astype(int).tolist()))


class AUSource(InputSource):
    """OpenFace-named AU intensities per frame -> {"aus": (T, 17) float32, "aus_mask": (T,) bool}.

    Frames without a face (NaN) become 0, the neutral intensity, and stay True in the mask: the
    time axis keeps its meaning (a 5 s clip is 25 steps at 5 fps). `drop_missing` drops them
    instead. A clip with no face in any frame is left out (`has` is False). Every item is
    zero-padded to `seq_len`; longer sequences are cropped: a random window for training, the
    first `seq_len` steps (or `eval_views` evenly spaced windows) for evaluation.
    Training views come from data/augmented (`augmented: true`, a random augmented sequence of the
    clip) where the clip has some; evaluation always reads the original data/aus.
    """

    keys = ("aus", "aus_mask")

    def __init__(self, sequences: dict[str, np.ndarray], *, config: AUSourceConfig,
                 augmented: dict[str, list[np.ndarray]] | None = None):
        if config.seq_len < 1 or config.eval_views < 1:
            raise SourceError("source_config.aus: seq_len and eval_views must be >= 1")
        self.config = config
        # a clip whose every frame lacks a face has no AU sequence, not a neutral face's: the
        # model neither trains on it nor scores it (predict refuses it the same way)
        faceless = {v for v, a in sequences.items() if not _any_face(a)}
        if faceless:
            log.info("aus: %d clip(s) without a face in any frame left out (e.g. %s)",
                     len(faceless), sorted(faceless)[0])
        self.sequences = {v: self._prepare(a) for v, a in sequences.items() if v not in faceless}
        self.augmented = {v: [self._prepare(a) for a in seqs if _any_face(a)]
                          for v, seqs in (augmented or {}).items() if v not in faceless}

    def _prepare(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)  # (T, 17)
        if self.config.drop_missing:
            a = a[~np.isnan(a).all(axis=1)]
        return np.nan_to_num(a, nan=0.0) * np.float32(self.config.scale)

    def has(self, video_id: str) -> bool:
        return video_id in self.sequences

    def fitted_config(self) -> dict[str, dict]:
        return {}  # fixed scale and length: nothing learnt from the data

    def _get(self, video_id: str) -> np.ndarray:
        try:
            return self.sequences[video_id]
        except KeyError:
            raise SourceError(f"no AU frames for video {video_id!r} in data/aus") from None

    def _pad(self, a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.config.seq_len
        aus = torch.zeros(L, a.shape[1])  # (L, 17)
        mask = torch.zeros(L, dtype=torch.bool)  # (L,)
        n = min(len(a), L)
        aus[:n] = torch.from_numpy(a[:n])
        mask[:n] = True
        return aus, mask

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pool = self.augmented.get(video_id) if self.config.augmented else None
        a = pool[int(rng.integers(len(pool)))] if pool else self._get(video_id)
        L = self.config.seq_len
        if len(a) > L:
            start = int(rng.integers(len(a) - L + 1))
            a = a[start:start + L]
        aus, mask = self._pad(a)
        return {"aus": aus, "aus_mask": mask}

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        a = self._get(video_id)
        L = self.config.seq_len
        views = [self._pad(a[s:s + L]) for s in au_windows(len(a), L, self.config.eval_views)]
        return {"aus": torch.stack([v[0] for v in views]),  # (V, L, 17)
                "aus_mask": torch.stack([v[1] for v in views])}  # (V, L)


def _read_sequences(path: Path, name: str, group: Sequence[str], ids: set[str]) -> dict:
    from personality.common import read_artifact
    from personality.schemas import AU_INTENSITY

    df = read_artifact(name, path=path)
    df = df[df["video_id"].isin(ids)].sort_values([*group, "frame_idx"], kind="stable")
    values = df[list(AU_INTENSITY)].to_numpy(np.float32)  # (rows, 17)
    out: dict = {}
    keys = df[list(group)].to_numpy()
    if not len(df):
        return out
    change = np.flatnonzero((keys[1:] != keys[:-1]).any(axis=1)) + 1
    for lo, hi in zip(np.r_[0, change], np.r_[change, len(df)]):
        out[tuple(keys[lo])] = values[lo:hi]
    return out


@register_source("aus", "aus_mask", options=AUSourceConfig)
def au_source(*, root: Path, video_ids: list[str], config: dict) -> AUSource:
    """data/aus (and data/augmented when `augmented`) for `video_ids` under `root`."""
    cfg = source_options(AUSourceConfig, config, "source_config.aus")
    ids = set(video_ids)
    seqs = {k[0]: v for k, v in _read_sequences(root / cfg.aus_path, "aus", ("video_id",),
                                                ids).items()}
    augmented: dict[str, list[np.ndarray]] = {}
    if cfg.augmented:
        path = root / cfg.augmented_path
        if not path.exists():
            raise SourceError(f"{path}: source_config.aus.augmented is true but the augmented "
                              "sequences are missing; run the augment stage")
        for (vid, _aug), a in _read_sequences(path, "augmented", ("video_id", "aug_id"),
                                              ids).items():
            augmented.setdefault(vid, []).append(a)
    return AUSource(seqs, config=cfg, augmented=augmented)
