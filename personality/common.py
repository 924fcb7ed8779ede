"""Shared helpers for every stage: paths, typed params, Parquet artifacts, progress, logging, MLflow.

Each stage imports only this module for plumbing, so that its own file holds only the work:

    from personality.common import load_params, read_artifact, ArtifactWriter, progress, get_logger

    p = load_params("faces", FacesParams)     # typed dataclass; unknown or mistyped key -> ParamsError
    frames = read_artifact("frames")          # schema-checked DataFrame
    with ArtifactWriter("faces") as out:      # atomic: shards go to a temp dir, renamed on success
        out.write(table)

Nothing here runs on its own; `python -m pytest tests/test_common.py` exercises it.

One file because it is the single plumbing module every stage imports (the project's design:
one shared helper module); its sections are paths, params, schemas, artifacts, progress, tracking.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types
import typing
import uuid
from pathlib import Path
from typing import Any, Iterator, Literal

import pandas as pd
import pyarrow as pa
import yaml

from personality import schemas
from personality.launcher import stop_watching, watch_launcher

__all__ = [
    "ParamsError", "SchemaError", "StageInputError",
    "repo_root", "data_path", "load_params", "load_params_file", "BaseParams", "load_base",
    "read_artifact", "write_artifact", "ArtifactWriter", "check_schema",
    "atomic_write_text", "atomic_write_json", "progress", "get_logger", "mlflow_run", "run_stage",
    "mlflow_ui_url", "init_pipeline_tracking", "pipeline_tags", "shown_path", "check_utf8_path",
]


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing or of the wrong type. The message names the key."""


class SchemaError(ValueError):
    """An artifact lacks a column or has one of the wrong type. The message names file and column."""


class StageInputError(ValueError):
    """An input file (video, CSV, pickle) is unusable. The message names the file and the fault."""


# A header far wider than any real CSV here is refused on its first line: pandas builds objects per
# column, so width costs far more than its bytes (a crafted 18 MB OpenFace CSV of a million
# columns took 88 s and 1.4 GB to parse). OpenFace writes 714 columns at most; a labels,
# participants or sessions CSV tens; PerFeX's AU CSV under a hundred.
MAX_COLUMNS = 5000
_HEADER_BYTES = 1 << 20  # of the first line looked at: a MiB holds far more than MAX_COLUMNS


def check_width(path: Path, why: str) -> None:
    """StageInputError naming `path` when its header has more than MAX_COLUMNS columns (commas
    counted in its first _HEADER_BYTES: a lower bound for a longer line), before anything parses
    it; `why` follows the count in the message. OSError when it cannot be opened."""
    with open(path, "rb") as f:
        head = f.readline(_HEADER_BYTES)
    n = head.count(b",") + 1
    if n > MAX_COLUMNS:
        more = "" if head.endswith(b"\n") else " or more"
        raise StageInputError(f"{path}: a header of {n}{more} columns, over {MAX_COLUMNS} {why}")


# A cell of a CSV here is an id, a path, a label or a number (tens of characters), yet pandas
# materialises any cell whole: a labels CSV with one 200 MB cell took 2.4 s and 700 MB to read,
# and was accepted. 64 Ki characters is a thousand times a long path, and under the csv module's
# own default field limit (128 Ki), so that limit never speaks first. A row is read as one piece
# (a line, or the lines of a quoted cell), so it has a limit of its own: a MiB holds 5000 columns
# (MAX_COLUMNS) of 200 characters; OpenFace's 714 columns take about 6 KB. Checked by
# personality.csv_tables (csv_records, check_cells) before pandas reads a file; rows are not
# counted (PerFeX's long AU CSV holds millions).
MAX_CELL_CHARS = 64 * 1024
MAX_ROW_CHARS = 1 << 20


# --------------------------------------------------------------------------------------------------
# paths


_EXPS_TMP = (".dvc", "tmp", "exps")  # where DVC runs queued and --temp experiments


def repo_root() -> Path:
    """The project root: `DVC_ROOT` when DVC runs us, else the nearest parent holding dvc.yaml.

    Queued (`dvc exp run --queue`) and `--temp` experiments run in a copy of the workspace,
    `<repo>/.dvc/tmp/exps/[standalone/]<tmp>/`, but DVC points DVC_ROOT at the parent repo (for dvclive);
    their data, checkpoints and metrics belong to the copy, so a working directory inside such a
    copy wins: otherwise the experiment writes into the user's workspace and DVC then finds its
    outputs missing."""
    here = Path.cwd().resolve()
    env = os.environ.get("DVC_ROOT")
    if env:
        root = Path(env).resolve()
        exps = root.joinpath(*_EXPS_TMP)
        if here.is_relative_to(exps):  # exps/<tmp>/ (queue) or exps/standalone/<tmp>/ (--temp)
            for candidate in (here, *here.parents):
                if candidate == exps:
                    break
                if (candidate / "dvc.yaml").exists():
                    return candidate
        return root
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / ".dvc").is_dir():
            return candidate
    return here


def tracking_root() -> Path:
    """Where mlflow.db lives. Queued experiments run in `<repo>/.dvc/tmp/exps/<tmp>/`; they must
    log to the same store as the workspace, so climb out of it."""
    root = repo_root()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == _EXPS_TMP:
            return Path(*parts[:i])
    return root


def data_path(*parts: str | os.PathLike) -> Path:
    """A path under `<root>/data`. Refuses paths that escape it (`..`, absolute paths)."""
    base = (repo_root() / "data").resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise StageInputError(f"{target}: path escapes the data root {base}")
    return target


def safe_join(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Join a path read from an untrusted label file onto `root`; refuse one that escapes it, and
    one the file system cannot take (a symlink loop, a NUL byte, a name too long): each a
    StageInputError naming `relative`."""
    base = Path(root).resolve()
    target = resolve_untrusted(base / relative, relative)
    if target != base and base not in target.parents:
        raise StageInputError(f"{relative}: path escapes the dataset root {base}")
    return target


# what the OS answers for a path it cannot take at all (rather than for a missing file)
_UNUSABLE_PATH = (errno.ENAMETOOLONG,)


def resolve_untrusted(path: str | os.PathLike, shown: str | os.PathLike) -> Path:
    """`path` resolved (symlinks followed). A path that cannot be resolved or looked at, a
    symlink loop, a NUL byte, a name too long for the file system, is a StageInputError naming
    `shown`; a missing file is not (the caller says what it needed)."""
    try:
        target = Path(path).resolve()
    except RuntimeError:  # pathlib: "Symlink loop from ..."
        raise StageInputError(f"{shown}: a symlink loop") from None
    except ValueError:  # "embedded null byte"
        raise StageInputError(f"{str(shown)!r}: the path holds a NUL byte") from None
    except OSError as exc:
        _refuse_unusable(exc, shown)
        raise
    try:
        target.lstat()
    except OSError as exc:
        _refuse_unusable(exc, shown)  # a missing file is the caller's to report
    check_utf8_path(target)  # a symlink's target may be named in another encoding
    return target


def shown_path(path: str | os.PathLike) -> str:
    """`path` as text any UTF-8 writer takes (Parquet, CSV, JSON): the bytes of a name that are
    not UTF-8 (which Python keeps as lone surrogates) shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_utf8_path(path: str | os.PathLike) -> None:
    """StageInputError when `path` is not valid UTF-8 (a name from a Latin-1 or Shift-JIS file
    system): the tables and reports store names as UTF-8 text, so it is refused by name here,
    not by a UnicodeEncodeError that would stop the whole stage or batch later."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise StageInputError(f"{shown_path(path)}: the file name (or a folder's on its path) is "
                              "not valid UTF-8; rename it") from None


def _refuse_unusable(exc: OSError, shown: str | os.PathLike) -> None:
    """StageInputError for a symlink loop or a name too long; other errors are the caller's."""
    if exc.errno == errno.ELOOP:
        raise StageInputError(f"{shown}: a symlink loop") from None
    if exc.errno in _UNUSABLE_PATH:
        raise StageInputError(f"{shown}: {exc.strerror or exc}") from None


# FFmpeg's demuxers for containers and streams that hold their own data, and local files only:
# not its playlists and lists (hls, dash, concat, imf, image2...), which open the files they
# name (an .m3u8 any absolute path, an ffconcat list named .mp4 a symlink beside it) past every
# dataset-root check, nor its protocols (a file named `subfile,,start,0,end,0,,:x.mp4` opens
# x.mp4). Tried in tests/test_untrusted_inputs.py.
MEDIA_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": (
    "mov,matroska,avi,flv,mpegts,mpeg,mpegvideo,m4v,h264,hevc,asf,ogg,mxf,nut,ivf,obu,dv,gif,"
    "mjpeg,yuv4mpegpipe,rm,wav,w64,mp3,aac,flac,aiff,caf,amr,wv,ac3,eac3,dts,truehd,au")}


def open_media(path: str | os.PathLike):
    """av.open of an untrusted media file (MEDIA_OPTIONS); StageInputError naming it when it
    cannot be opened, saying so when FFmpeg took it for a file that names others."""
    import av

    try:
        return av.open(str(path), container_options=MEDIA_OPTIONS)
    except av.error.ArgumentError:  # EINVAL: a demuxer or protocol off the lists
        if kind := _still_image(path):  # FFmpeg's image2: a photo sent as a clip, said as such
            raise StageInputError(f"{path}: a still image ({kind}), not a video; refused"
                                  ) from None
        raise StageInputError(f"{path}: not a media file this project reads (FFmpeg takes it for "
                              "a playlist, a list of other files or a protocol URL, which could "
                              "open files outside the dataset, or for a format off "
                              "common.MEDIA_OPTIONS' list); refused") from None
    except av.error.InvalidDataError:  # FFmpeg's "[Errno 1094995529] Invalid data ...: 'path'"
        raise StageInputError(f"{path}: cannot be opened as media: FFmpeg found no readable "
                              "container in it (not a video file, or one cut off before its "
                              "index was written, as an MP4 whose recording stopped)") from None
    except Exception as exc:  # PyAV raises OSError, PermissionError, ... for unreadable files
        raise StageInputError(f"{path}: cannot be opened as media: {exc}") from None


# The largest video frame decoded (personality/video_io.py): 8K's; FFmpeg's own cap is ~268 Mpx.
# A crafted 415 KB H.264 file of 30 all-skip 12000x12000 frames took 19 s and 740 MB to decode;
# frames.max_side is 640 anyway.
MAX_FRAME_PIXELS = 7680 * 4320


def check_frame_size(path: str | os.PathLike, width: int, height: int) -> None:
    """StageInputError naming `path` for frames over MAX_FRAME_PIXELS: checked on the header
    before decoding and on every decoded frame (a stream may change size)."""
    if width * height > MAX_FRAME_PIXELS:
        raise StageInputError(f"{path}: frames of {width}x{height} pixels "
                              f"({width * height / 1e6:.1f} Mpx), over the "
                              f"{MAX_FRAME_PIXELS / 1e6:.1f} Mpx of 8K video (7680x4320) this "
                              "project decodes; not read")


# the first bytes of the still-image formats FFmpeg's image2 demuxers (off MEDIA_OPTIONS) read
_IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"BM", "BMP"),
                (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))


def _still_image(path: str | os.PathLike) -> str:
    """The still-image format `path` starts with ('JPEG', ...), '' for anything else."""
    try:  # never blocking: a pipe FFmpeg has drained has nothing more to say
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            head = os.read(fd, 12)
        finally:
            os.close(fd)
    except OSError:
        return ""
    return next((kind for magic, kind in _IMAGE_MAGIC if head.startswith(magic)
                 and (kind != "WebP" or head[8:12] == b"WEBP")), "")


def is_checkpoint_path(model: str, root: Path | None = None) -> bool:
    """Whether `model` (a params value) names a checkpoint file rather than a registered model:
    a .pt suffix, a path separator (model names have none), or an existing file."""
    path = Path(model)
    return (path.suffix == ".pt" or "/" in model or "\\" in model or path.is_file()
            or (Path(root or repo_root()) / path).is_file())


def find_checkpoint(model: str, root: Path | None = None) -> Path:
    """A checkpoint path from a model name or a path (a relative one from the current folder,
    else from the repo root). Names are looked up where the stages put them:
    data/models/NAME/best.pt (train), data/retrained/models/NAME/best.pt (retrain: NAME ends in
    "+retrained"). Raises StageInputError saying where it looked."""
    root = root or repo_root()
    path = Path(model)
    if is_checkpoint_path(model, root):
        if not path.is_absolute():
            path = path.absolute() if path.exists() else root / path
        if path.is_dir():
            raise StageInputError(f"{path}: is a directory, not a checkpoint file")
        if not path.is_file():
            raise StageInputError(f"{path}: checkpoint not found" + (
                "" if Path(model).is_absolute() else f" (nor under {Path.cwd()})"))
        return path
    candidates = [root / "data" / "models" / model / "best.pt",
                  root / "data" / "retrained" / "models" / model / "best.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    base = model.removesuffix("+retrained")
    how = (f"dvc repro retrain, with {base} in retrain.models" if base != model else
           f"dvc exp run -S 'train.models=[{model}]'")
    raise StageInputError(f"model {model!r}: no checkpoint at {candidates[0]} or {candidates[1]}"
                          f" (train it: {how})")


# --------------------------------------------------------------------------------------------------
# params


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """`base:` in params.yaml: what every stage shares."""

    seed: int = 1234  # the one seed every generator and trainer derives from
    workers: int = 2  # processes for per-video work
    log_level: str = "INFO"  # the stages' log (PERSONALITY_LOG_LEVEL, when set, wins)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ParamsError(f"base.workers: {self.workers}; it must be >= 1 (processes for "
                              "per-video work)")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ParamsError(f"base.log_level: {self.log_level!r}; it must be one of "
                              f"{', '.join(LOG_LEVELS)}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def load_base(path: str | os.PathLike | None = None) -> BaseParams:
    """params.yaml's `base`, its log_level put in force for this process (a stage's entry point
    calls it; PERSONALITY_LOG_LEVEL, when set, wins)."""
    base = load_params("base", BaseParams, path)
    get_logger("personality")  # the handler, first
    level = logging.getLevelName((os.environ.get("PERSONALITY_LOG_LEVEL")
                                  or base.log_level).upper())
    logging.getLogger().setLevel(level)
    if level < logging.INFO:  # DEBUG is for the project's own log, not theirs
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    return base


# libraries whose DEBUG log would bury the stages' own (numba logs every compiled function).
# Never set below WARNING: SQLAlchemy leaves its level alone once set, and at INFO it logs
# ~2,300 lines of mapper set-up each time MLflow opens its store
CHATTY_LIBRARIES = ("numba", "matplotlib", "PIL", "urllib3", "mlflow", "alembic", "sqlalchemy",
                    "git", "fsspec", "asyncio", "h5py", "filelock", "absl")


def load_params_file(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path else repo_root() / "params.yaml"
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of stage names")
    return data


T = typing.TypeVar("T")


def load_params(section: str, cls: type[T], path: str | os.PathLike | None = None,
                overrides: dict | None = None) -> T:
    """Read `section` of params.yaml into the dataclass `cls`, checking every key and type.

    `overrides` (a nested dict) is merged over the file: tests and the predict CLI use it.
    """
    data = load_params_file(path).get(section, {}) or {}
    if overrides:
        data = _deep_merge(data, overrides)
    return build_dataclass(cls, data, section)


def load_params_keys(section: str, cls: type[T], path: str | os.PathLike | None = None) -> T:
    """The keys of params.yaml's `section` that the dataclass `cls` names, read into it (checked
    as load_params checks them): a stage reading a few of another stage's params, e.g. retrain's
    evaluate.bootstrap. The section's other keys are that stage's business."""
    data = load_params_file(path).get(section) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    return build_dataclass(cls, {k: v for k, v in data.items() if k in names}, section)


FRONTEND_SECTIONS = ("frames", "faces", "aus", "audio", "functionals")


def frontend_params(path: str | os.PathLike | None = None,
                    sections: tuple[str, ...] = FRONTEND_SECTIONS) -> dict[str, dict]:
    """params.yaml's front-end sections as written, {section: {key: value}}: what a checkpoint
    keeps, so that predict runs the front-end that made the model's training data even after
    params.yaml has changed (stages/predict.py). `sections`: only these (deploy: the AU ones)."""
    data = load_params_file(path)
    return {s: dict(data.get(s) or {}) for s in sections}


# front-end params naming a file, folder or URL of the machine that runs predict: never a
# checkpoint's (an untrusted file would send predict to any path or URL), this machine's own
MACHINE_LOCAL = {"faces": ("model_path",), "aus": ("openface_dir",)}


def frontend_differences(stored: Any, here: dict[str, dict], *,
                         sections: tuple[str, ...] = FRONTEND_SECTIONS,
                         ignore: frozenset[str] = frozenset()) -> list[str]:
    """"section.key: <stored> (the checkpoint's) against <here>" for each front-end param of
    `sections` that a checkpoint's `stored` sections set otherwise than `here`
    (frontend_params()), the MACHINE_LOCAL names and the keys in `ignore` left out. As written,
    not as resolved: a key that one side sets to its default and the other leaves out counts as
    differing (say it in both)."""
    out = []
    for section in sections if isinstance(stored, dict) else ():
        a, b = stored.get(section), here.get(section) or {}
        a = a if isinstance(a, dict) else {}
        for key in sorted(set(a) | set(b)):
            if key not in (*MACHINE_LOCAL.get(section, ()), *ignore) and a.get(key) != b.get(key):
                out.append(f"{section}.{key}: {a.get(key, 'unset')!r} (the checkpoint's) "
                           f"against {b.get(key, 'unset')!r}")
    return out


def experiment_models(path: str | os.PathLike | None = None) -> list[str] | None:
    """`train.models` of params.yaml: the models of the current experiment (None: not set).

    The stages after train (retrain, deploy, evaluate) act on these only, so that a
    `dvc exp run -S 'train.models=[x]'` neither needs nor scores checkpoints and predictions that
    earlier experiments left in the workspace."""
    train = load_params_file(path).get("train") or {}
    if "models" not in train:
        return None
    models = train["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ParamsError(f"train.models: expected a non-empty list of model names, got {models!r}")
    return models


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_dataclass(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParamsError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}"
        if field.name in data:
            kwargs[field.name] = _coerce(hints[field.name], data[field.name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{key}: required key is missing")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ParamsError(f"{key}: unsupported parameter type {tp}")


# --------------------------------------------------------------------------------------------------
# artifacts


def artifact_path(name: str) -> Path:
    return repo_root() / schemas.ARTIFACTS[name].path


def check_schema(df: pd.DataFrame, name: str, path: str | os.PathLike) -> pd.DataFrame:
    """Raise SchemaError naming `path` and the column when `df` does not match artifact `name`."""
    spec = schemas.ARTIFACTS[name]
    kinds = dict(spec.columns)
    for column in spec.columns:
        if column not in df.columns:
            raise SchemaError(f"{path}: missing column '{column}' of artifact '{name}'")
    for column in df.columns:  # optional columns, declared by prefix (they depend on params)
        if column not in kinds:
            kind = next((k for p, k in spec.prefixed.items() if str(column).startswith(p)), None)
            if kind:
                kinds[column] = kind
    for column, kind in kinds.items():
        if len(df) and not schemas.matches_kind(df[column], kind):
            raise SchemaError(
                f"{path}: column '{column}' has dtype {df[column].dtype}, expected {kind}")
    return df


def read_artifact(name: str, columns: list[str] | None = None,
                  path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read artifact `name` (a Parquet file or a folder of shards) and check its schema."""
    path = Path(path) if path else artifact_path(name)
    if not path.exists():
        raise SchemaError(f"{path}: artifact '{name}' not found; run its stage first")
    try:
        if path.is_dir():
            shards = sorted(path.glob("*.parquet"))
            if not shards:
                df = pd.DataFrame({c: pd.Series(dtype=_empty_dtype(k))
                                   for c, k in schemas.ARTIFACTS[name].columns.items()})
            else:
                df = pd.concat([pd.read_parquet(s, columns=columns) for s in shards],
                               ignore_index=True)
        else:
            df = pd.read_parquet(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet artifact: {exc}") from None
    if columns is None:
        check_schema(df, name, path)
    return df


def _empty_dtype(kind: str) -> str:
    return {"int": "int64", "float": "float64", "bool": "bool", "str": "object",
            "bytes": "object", "list": "object"}[kind]


def _tmp_sibling(path: Path) -> Path:
    # the writer's pid in the name: a later writer in the same folder can tell a stale one
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale_temps(path: Path, *, own_only: bool = False) -> None:
    """Remove what killed writers left beside `path`: every temp in the folder whose writer's pid
    is gone (and an old pid-less temp of this artifact). A live writer's temp stays, even one of
    this artifact: a second run writing it must not destroy the first one's work. Sweeping the
    whole folder matters when DVC restores the killed stage from its run cache and never runs it
    again: the next stage that writes in data/ clears its `.audio.tmp-*`."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*" if own_only else ".*.tmp-*"):
        match = re.fullmatch(r"\.(.+)\.tmp-(?:(\d+)-)?[0-9a-f]{8}", stale.name)
        if not match:
            continue
        pid = match.group(2)
        if (not pid and match.group(1) == path.name) or (pid and not pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else \
                stale.unlink(missing_ok=True)


# SIGINTs this process received since it began counting (a one-item list: the handler bumps it)
_SIGINTS = [0]


def _count_sigint(signum, frame) -> None:
    """Python's default SIGINT behaviour (KeyboardInterrupt), counted first: Python drops an
    exception raised inside __del__ (and a bare `except:` eats one), so a Ctrl-C landing there
    would let a stage run on and swap in its output; the writers check the count instead."""
    _SIGINTS[0] += 1
    signal.default_int_handler(signum, frame)


def _interrupts_so_far() -> int:
    """Start counting SIGINTs (main thread, Python's default handler in place: a handler of the
    caller's own is left alone) and return the count so far."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _count_sigint)
    return _SIGINTS[0]


def _refuse_if_interrupted(path: Path, since: int) -> None:
    if _SIGINTS[0] > since:
        raise KeyboardInterrupt(f"{path}: interrupted (SIGINT) while being written; not written")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; when the block ends without an exception the
    file replaces `path` (one rename), else it is removed. A reader, or a run killed half-way,
    sees the old file or the new one, never half of one. The one temp-then-rename of the project."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path, own_only=True)  # a SIGKILLed writer's temp, which no `finally`
    # removed (this file's only: atomic_file runs once per file, e.g. per rendered clip)
    tmp = _tmp_sibling(path)
    since = _interrupts_so_far()
    try:
        yield tmp
        _refuse_if_interrupted(path, since)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_artifact(name: str, df: pd.DataFrame, path: str | os.PathLike | None = None) -> Path:
    """Write a whole artifact atomically: a single file, or a folder with one shard."""
    path = Path(path) if path else artifact_path(name)
    if schemas.ARTIFACTS[name].sharded:
        with ArtifactWriter(name, path=path) as out:
            out.write(df)
        return path
    check_schema(df, name, path)
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def write_predictions(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """One model's predictions, `data/predictions/<model>.parquet` (a file of the sharded
    `predictions` artifact), schema-checked and written atomically; train and retrain use it."""
    path = Path(path)
    check_schema(df, "predictions", path)
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path` to fill; when the block ends without an exception
    it replaces `path` whole (the old folder moved aside first), else it is removed. A reader, or
    a stage killed half-way, sees the old folder or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)  # left by a killed run
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    since = _interrupts_so_far()
    try:
        yield tmp
        _refuse_if_interrupted(path, since)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _swap_in(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def _swap_in(tmp: Path, path: Path) -> Path | None:
    """Put `tmp` where `path` is; returns where the old `path` went (None if there was none). On
    Linux one renameat2(RENAME_EXCHANGE) swaps the two: no instant without `path`, even under
    SIGKILL. Elsewhere (or on a file system without it) two renames, with SIGINT and SIGTERM held
    back between them so a Ctrl-C cannot leave neither."""
    if not path.exists():
        os.replace(tmp, path)
        return None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path),
                              _RENAME_EXCHANGE) == 0:
                return tmp  # now holds the old folder
    old = _tmp_sibling(path)
    held = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        os.replace(path, old)
        os.replace(tmp, path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return old


class ArtifactWriter:
    """Stream rows into a folder of Parquet shards; the folder appears only when all went well.

    Rows are buffered and flushed every `rows_per_shard` rows, so memory stays bounded by one
    shard. On an exception (or a kill) the temp folder is removed / left aside, never renamed.
    """

    def __init__(self, name: str, *, path: str | os.PathLike | None = None,
                 rows_per_shard: int = 20_000):
        self.name = name
        self.path = Path(path) if path else artifact_path(name)
        self.rows_per_shard = rows_per_shard
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._shard = 0
        self._tmp: Path | None = None
        self._folder: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "ArtifactWriter":
        self._folder = atomic_dir(self.path)
        self._tmp = self._folder.__enter__()
        return self

    def write(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
        check_schema(df, self.name, self.path)
        self._buffer.append(df)
        self._buffered += len(df)
        if self._buffered >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pd.concat(self._buffer, ignore_index=True)
        table.to_parquet(self._tmp / f"part-{self._shard:05d}.parquet", index=False)
        self._shard += 1
        self._buffer, self._buffered = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._folder is not None
        if exc_type is None:
            try:
                self._flush()
            except BaseException as flush_error:  # the temp folder goes, the error stays
                self._folder.__exit__(type(flush_error), flush_error, flush_error.__traceback__)
                raise
        self._folder.__exit__(exc_type, exc, tb)  # swaps the folder in, or removes it


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def by_video(named: dict[str, Any], field: str, *, root: Path | None = None) -> list[dict]:
    """A {video_id: value} map as [{"video_id": ..., field: value}, ...] sorted by video id, for
    a metrics file: `dvc metrics show` and `dvc exp show` turn every key of a map into a column
    (a corpus with 80 broken videos would get 80 columns), and show no list, so the table keeps
    the counts while the file keeps the names. With `root`, paths under it in text values are
    written relative to it: a git-tracked metrics file must not differ between checkouts (nor
    carry a user's home folder)."""
    prefixes = sorted({f"{r}{os.sep}" for r in (root, root.resolve())} if root else (),
                      key=len, reverse=True)

    def relative(value: Any) -> Any:
        if isinstance(value, str):
            for prefix in prefixes:
                value = value.replace(prefix, "")
        return value

    return [{"video_id": vid, field: relative(named[vid])} for vid in sorted(named)]


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    import json

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
                             + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------------
# progress and logging


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr; quiet refresh (every 2 s) when stderr is not a terminal (CI logs)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.1 if interactive else 2.0, file=sys.stderr)


_LOGGING_READY = False


def get_logger(name: str, level: str | None = None) -> logging.Logger:
    global _LOGGING_READY
    if not _LOGGING_READY:
        logging.basicConfig(
            level=(level or os.environ.get("PERSONALITY_LOG_LEVEL", "INFO")).upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
            stream=sys.stderr)
        _LOGGING_READY = True
    return logging.getLogger(name)


# --------------------------------------------------------------------------------------------------
# the thin main every stage shares


def _stage_sigterm(signum, frame) -> None:
    """SIGTERM (`timeout`, a batch scheduler, `kill`) in a stage: SystemExit(143), so that the
    stage unwinds as on Ctrl-C: temp folders go, MLflow runs end as KILLED, not RUNNING for ever.
    Counted as a SIGINT is (`_count_sigint`): one that lands in a __del__ is dropped by Python,
    and the writers must still refuse to swap their output in."""
    _SIGINTS[0] += 1
    _SIGTERMED[0] = True
    raise SystemExit(128 + signum)


_SIGTERMED = [False]  # a SIGTERM came: the stage then dies of it, whatever unwound it


def _stopped(log: logging.Logger, signum: int) -> typing.NoReturn:
    """Say that the stage was stopped, then end this process as killed by `signum`: a shell
    running stages in a loop stops on Ctrl-C only when its child died of SIGINT (an exit code
    130 reads as "handled", and the loop goes on)."""
    log.error("stopped (%s); what it had written is as before, a rerun starts it again",
              "Ctrl-C" if signum == signal.SIGINT else "SIGTERM")
    for handler in logging.getLogger().handlers:
        handler.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # not reached unless the signal is blocked


# a forked child (a front-end worker, a DataLoader worker) dies of SIGTERM as before: the parent's
# Python handler would run only between bytecodes, never while the child is stuck in native code
os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    if signal.getsignal(signal.SIGTERM) is _stage_sigterm else None)


@contextlib.contextmanager
def stage_errors(section: str) -> Iterator[None]:
    """Every failure of a stage's entry point is one log line: a cause that is the user's (bad
    param, bad input file, bad checkpoint) exits 2, one that is the machine's (full disk,
    read-only or missing folder, permissions) exits 1, naming the file; bugs keep their
    traceback. Ctrl-C and SIGTERM unwind the stage (nothing half-written stays), say so in one
    line and end the process by that signal (a shell shows 130 and 143)."""
    log = get_logger(section)
    # a SIGTERM handler of the caller's own, or SIGTERM ignored by the launcher, is left alone
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if ours:
        signal.signal(signal.SIGTERM, _stage_sigterm)
    try:
        if ours and "DVC_STAGE" in os.environ:  # run by DVC, which forwards no SIGTERM: stop
            watch_launcher(log)                 # when it ends (inside the try: it may at once)
        yield
    except (ParamsError, StageInputError, SchemaError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        log.error("%s: %s%s", section, where, exc.strerror or exc)
        sys.exit(1)
    except (KeyboardInterrupt, SystemExit) as exc:
        if ours and _SIGTERMED[0]:  # also when a writer refused its swap for it
            stopped = signal.SIGTERM
        elif isinstance(exc, KeyboardInterrupt):
            stopped = signal.SIGINT
        else:
            raise
        _stopped(log, stopped)
    else:
        if ours and _SIGTERMED[0]:  # a SIGTERM Python dropped (in a __del__) still ends it
            _stopped(log, signal.SIGTERM)
    finally:
        if ours:
            stop_watching()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_stage(section: str, params_cls: type, run: typing.Callable[..., Any]) -> None:
    """Load `base` and `section` from params.yaml, call `run(params, base)`; a bad param or a bad
    input ends the process with exit code 2 and one clear log line instead of a traceback."""
    with stage_errors(section):  # the timings' MLflow run too: a stop ends it KILLED
        base = load_base()
        params = load_params(section, params_cls)
        result = run(params, base)
        if isinstance(result, dict) and result.get("timings"):
            log_timings(section, result["timings"])


def log_timings(stage: str, timings: dict[str, float | None]) -> None:
    """Timings (seconds, frames per second) to the log and to an MLflow run of the stage: they
    differ on every run, so they stay out of the DVC-tracked metrics files. Tracking is best
    effort: a store that cannot be written costs a warning, not the stage."""
    log = get_logger(stage)
    values = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}
    log.info("%s timings: %s", stage, ", ".join(f"{k} {v:g}" for k, v in values.items()))
    try:
        with mlflow_run(stage, run_name=f"{stage}:timings", tags={"kind": "timings"},
                        rolls_up=False) as mlf:  # its failure is no stage's
            mlf.log_metrics(values)
    except Exception as exc:  # noqa: BLE001 - never fail a finished stage over its timings
        log.warning("timings not tracked in MLflow: %s", exc)


# --------------------------------------------------------------------------------------------------
# tracking


RECEIPTS = Path("data/tracked")  # one file per stage whose other outputs are all in git


def write_tracking_receipt(stage: str, *, tracked: bool, root: Path | None = None) -> Path:
    """data/tracked/<stage>.json: the DVC-cached output of a stage whose other outputs are all in
    git (evaluate, register, explain), standing for what it wrote into this checkout's mlflow.db.
    In a fresh clone those outputs come from git and the stage's inputs come out byte-identical,
    so without a file that git does not carry DVC would call the stage up to date, skip it, and
    the clone's MLflow store would never get its runs or the registered model. The same bytes on
    every run (no run ids): dvc.lock does not change when nothing else does."""
    return atomic_write_json(Path(root or repo_root()) / RECEIPTS / f"{stage}.json", {
        "stage": stage, "mlflow": tracked,
        "store": "mlflow.db of this checkout (delete this file to make `dvc repro` log again)"})


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


EXPERIMENT_NAME = "personality"
# MLflow 3 opens an experiment in its GenAI view (traces, token usage) unless this tag names a
# model-training experiment; the UI link below asks for the training view as well
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PIPELINE_KIND = "pipeline"  # tag `kind` of the parent run of one pipeline run


def params_digest(root: Path | None = None) -> str:
    """sha256 of params.yaml's bytes (first 12 hex digits); "" without the file."""
    import hashlib

    path = Path(root or repo_root()) / "params.yaml"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else ""


def pipeline_tags(root: Path | None = None) -> dict[str, str]:
    """Tags that every run of one pipeline run shares: git commit, DVC experiment (name and
    baseline), params.yaml digest, and `pipeline_id`, a hash of the three that names the pipeline
    run. DVC runs each stage in its own process: they find their common parent run by it."""
    import hashlib

    commit = git_commit(root or repo_root())
    exp = os.environ.get("DVC_EXP_NAME", "")
    digest = params_digest(root)
    pid = hashlib.sha256(f"{commit}\0{exp}\0{digest}".encode()).hexdigest()[:16]
    return {"git_commit": commit, "dvc_exp_name": exp,
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            "params_digest": digest, "pipeline_id": pid}


def _experiment_id(mlflow, root: Path) -> str:
    """The project's experiment (created with its artifact folder beside the store), tagged as a
    model-training experiment."""
    exp = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if exp is None:
        # Artifacts (plots, models) go beside the store, not into ./mlruns of whichever folder
        # first created the experiment: a queued `dvc exp run` works in a temp copy deleted after.
        try:
            mlflow.create_experiment(EXPERIMENT_NAME, tags=EXPERIMENT_KIND,
                                     artifact_location=(root / "mlartifacts").as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a parallel run (dvc exp run -j 2)
        exp = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
        for key, value in EXPERIMENT_KIND.items():  # a store made before the tag existed
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _tracking_uri(root: Path) -> str:
    # timeout: parallel experiments (dvc exp run -j 2) write to one SQLite file; on a loaded
    # machine a writer can hold its lock longer than SQLite's default 5 s wait, and the other
    # stage then failed with "database is locked"
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}?timeout=120"


def _open_store():
    """(mlflow, experiment id): the module pointed at the project's store, the experiment made
    if new (mlflow's import costs seconds: only callers that track pay it)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = tracking_root()
    mlflow.set_tracking_uri(_tracking_uri(root))
    return mlflow, _experiment_id(mlflow, root)


def mlflow_ui_url(base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's link to the experiment's training runs (`make ui` prints it)."""
    _, experiment_id = _open_store()
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def init_pipeline_tracking() -> str:
    """Make the store, the experiment and this pipeline run's parent run, and return the parent's
    id: scripts/repro.py calls it before stages run side by side, which could otherwise each
    create the SQLite file or a parent run of their own at the same moment."""
    mlflow, experiment_id = _open_store()
    return pipeline_parent(mlflow, experiment_id, pipeline_tags(repo_root()))


def pipeline_parent(mlflow, experiment_id: str, tags: dict[str, str]) -> str:
    """The run id of this pipeline run's parent (tag pipeline_id), found or created. Its name is
    the DVC experiment's, else the git commit's and the params digest's."""
    client = mlflow.MlflowClient()
    query = f"tags.pipeline_id = '{tags['pipeline_id']}' and tags.kind = '{PIPELINE_KIND}'"

    def oldest():
        runs = client.search_runs([experiment_id], filter_string=query, max_results=50)
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None

    found = oldest()
    if found is not None:
        return found.info.run_id
    name = tags["dvc_exp_name"] or f"pipeline {tags['git_commit'][:8]} params {tags['params_digest'][:6]}"
    made = client.create_run(experiment_id, run_name=name, tags={
        **tags, "kind": PIPELINE_KIND, "stage": PIPELINE_KIND,
        "mlflow.note.content": "One pipeline run (dvc repro / dvc exp run): its train, retrain "
        "and evaluate runs are nested under it."})
    client.set_terminated(made.info.run_id)  # a parent logs nothing itself
    first = oldest()  # two stages that created one at once: keep the oldest, drop the other
    if first is not None and first.info.run_id != made.info.run_id:
        client.delete_run(made.info.run_id)
        return first.info.run_id
    return made.info.run_id


def log_manifest_input(mlflow, manifest: Path, context: str) -> None:
    """The manifest as the active run's dataset input: name, digest of the file's bytes, source
    path, schema, and the number of clips per split as input tags."""
    import hashlib
    import warnings

    df = pd.read_parquet(manifest)
    digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": a local file
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=str(manifest), name="manifest",
                                          digest=digest)
    counts = df["split"].value_counts() if "split" in df else pd.Series(dtype=int)
    tags = {**{f"n_{split}": str(int(n)) for split, n in counts.items()}, "n_clips": str(len(df))}
    for attempt in range(3):
        try:
            return mlflow.log_input(dataset, context=context, tags=tags)
        except mlflow.exceptions.MlflowException as exc:
            # trainings side by side on a new store all find no such dataset, then all insert
            # it: the losers' transaction is rolled back whole, and again finds the winner's
            if attempt == 2 or "UNIQUE constraint failed: datasets" not in str(exc):
                raise


@contextlib.contextmanager
def mlflow_run(stage: str, *, run_name: str | None = None, params: dict | None = None,
               tags: dict | None = None, manifest: Path | None = None,
               context: str = "training", rolls_up: bool = True) -> Iterator[Any]:
    """Open an MLflow run in `sqlite:///<root>/mlflow.db`, nested under the pipeline run's parent
    (`pipeline_parent`), tagged with commit, DVC experiment, params digest, stage. `manifest`: a
    manifest.parquet to log as the run's dataset input (`context`: training, evaluation).

    Yields the `mlflow` module so that callers log with `mlf.log_metric(...)` without importing it
    (mlflow's import costs seconds; stages that never track never pay it). Its status rolls up
    to the parent (`roll_up_status`); with `rolls_up=False` (best-effort runs: timings) only a
    stop does.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow, experiment_id = _open_store()
    mlflow.set_experiment(experiment_id=experiment_id)
    shared = pipeline_tags(repo_root())
    parent = pipeline_parent(mlflow, experiment_id, shared)
    status = "FAILED"  # until the body returns
    try:
        with mlflow.start_run(run_name=run_name or stage, parent_run_id=parent,
                              tags={**shared, "stage": stage, **(tags or {})}):
            try:  # a stop while the params or the dataset are logged (hashing it) counts too
                if params:
                    mlflow.log_params(_flatten(params))
                if manifest is not None and Path(manifest).is_file():
                    log_manifest_input(mlflow, Path(manifest), context)
                yield mlflow
                status = "FINISHED"
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: stopped, not failed
                status = "KILLED"
                mlflow.end_run(status="KILLED")
                raise
    finally:  # the pipeline run shows it (a stop always: the stage was stopped)
        if rolls_up or status == "KILLED":
            roll_up_status(mlflow.MlflowClient(), parent, run_name or stage, status)


# the worst of the children's last statuses is the parent's: one stage that failed or was stopped
# shows on the pipeline run, and its successful re-run clears it
_STATUS_ORDER = ("FINISHED", "KILLED", "FAILED")


def roll_up_status(client, parent: str, run_name: str, status: str) -> None:
    """Record `status` as run `run_name`'s last (tag `status.<run_name>` on the pipeline parent)
    and set the parent's status to the worst of its children's last ones. Best effort: a store
    that cannot be written must not hide the stage's own error."""
    def worst() -> str:
        last = [v for k, v in client.get_run(parent).data.tags.items() if k.startswith("status.")]
        return max(last, key=lambda s: _STATUS_ORDER.index(s) if s in _STATUS_ORDER else 0)

    try:  # MLflow's tag keys take letters, digits and _ - . : / and spaces (no `+retrained`)
        client.set_tag(parent, "status." + re.sub(r"[^\w\-.:/ ]", "_", run_name), status)
        written = worst()
        client.set_terminated(parent, status=written)
        # a run that ended at the same moment may have read before this one's tag and set its
        # status after ours: read again once we have set it, and set the worst of both
        again = worst()
        if again != written:
            client.set_terminated(parent, status=again)
    except Exception as exc:  # noqa: BLE001 - reported, never raised over the stage's outcome
        logging.getLogger("personality").warning("MLflow: pipeline run status not updated: %s",
                                                 exc)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out
