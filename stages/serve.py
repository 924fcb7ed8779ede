"""serve: a trained model as an MLflow pyfunc model (video file in, Big-Five scores and facts out),
and the `register` stage that logs the best model by validation CCC and registers it.

    python -m stages.serve                    # DVC stage `register`: selection.best of
                                              # metrics/evaluate.json -> models:/personality/<v>
    python -m stages.serve --model hrnet_face # register another trained model
    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db UVICORN_LIMIT_CONCURRENCY=4 \\
      mlflow models serve -m models:/personality/latest --env-manager local -h 127.0.0.1 -p 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_split": {"columns": ["video"], "data": [["/srv/videos/clip.mp4"]]}}'
    # (the server started with PERSONALITY_VIDEO_ROOT=/srv/videos)

The pyfunc (`VideoScorer`) is `stages.predict.predict_video` behind MLflow's interface: the same
front-end, the same params (params.yaml's base, front-end and register sections travel with the
model as an artifact: SERVED_SECTIONS, the stage's DVC params), the same checkpoint
(an artifact, read with torch.load(weights_only=True)). So the server's five scores for a clip are
predict's. One row per video in, one row out: the scores, the model, the clip's facts (face share,
audio) and its warnings; a video that cannot be scored is a row with its `error` and null (None)
scores, and the other rows of the request are scored.

A request names files on the server, so the scorer opens only files under the served video
root(s): the absolute folders of PERSONALITY_VIDEO_ROOT (separated by os.pathsep), read when the
model is loaded, else the server's working folder at that time. A path is resolved (symlinks
followed) before the check; a relative path, or one that resolves outside every root, is refused
with one message whatever the file is, so that a client learns nothing about other files. The
file is then opened once, that descriptor checked again (its real path, a regular file) and
copied into the request's temporary folder, which the front-end reads: a path swapped for a
symlink after the check is never read (`private_copy`); a file over PERSONALITY_MAX_VIDEO_GB
(default 4 GiB, read when the model is loaded) is refused before the copy. A request of more
than PERSONALITY_MAX_REQUEST_ROWS videos (default 100) is refused whole (HTTP 400); rows whose
turn comes after the server's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT are error rows, not scored.
MLflow 3.17's server (FastAPI, uvicorn) reads a body whole with no size limit or setting for one
(100 MB: +384 MB, 1.3 s; a reverse proxy can bound it) and scores as many requests at once as
come, each in a thread of its own. Whatever the server's settings, the process copies and scores
at most PERSONALITY_MAX_CONCURRENT_VIDEOS videos at once (default 2, all requests together;
stages/serve_limits.py says why 2): another row waits for a slot, and one whose slot does not
come before its request's time limit is an error row saying so. UVICORN_LIMIT_CONCURRENCY=N
(uvicorn's; `mlflow models serve` passes it on) bounds the requests themselves, their bodies and
threads: 503 while N connections are open, its own among them (warned when unset).

The model is logged *from code* (stages/serve_model.py calls mlflow.models.set_model): loading it
runs this project's code from the model's code/ folder (personality/, models/, stages/ travel as
code_paths), never unpickles an object. `--env-manager local` serves it in the project's
environment; the model's requirements.txt lists what another environment needs.

Every evaluated model (retrained ones too) is logged the same way in its own run `model:<name>`
(`register.log_all`), with its figures as tags and metrics; the chosen one is registered. The
registered version carries tags: the model's name, its test mean CCC with the 95% interval,
its validation mean CCC and chosen share, `chosen_by` (validation, or register.model / --model
naming it with validation's choice beside), the git commit and the DVC experiment. Writes
metrics/register.json (model, version, run id, model URI).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import json
import math
import os
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from personality.common import (FRONTEND_SECTIONS, ParamsError, StageInputError,
                                atomic_write_json, find_checkpoint, get_logger, load_base,
                                load_params, load_params_file, mlflow_run, repo_root,
                                shown_path, stage_errors, write_tracking_receipt)
from personality.schemas import TRAITS
from stages.serve_limits import (CONCURRENCY_ENV, DEFAULT_MAX_GB, MAX_GB_ENV, MAX_ROWS_ENV,
                                 MAX_VIDEOS_ENV, busy_row, late_row, max_concurrent_videos,
                                 max_request_rows, max_video_bytes, request_seconds, video_slot,
                                 video_slots)

log = get_logger("serve")

REGISTERED_NAME = "personality"
OUTPUT_COLUMNS = [*TRAITS, "model", "face_share", "has_audio", "audio_silent", "voiced_share",
                  "warnings", "error"]
# the models-from-code file MLflow executes on load (by path: a `*_MODULES` tuple, so that
# tests/test_dvc_deps.py follows it like an import)
SERVED_MODULES = ("stages.serve_model",)
MODEL_CODE = Path(__file__).with_name(SERVED_MODULES[0].split(".")[1] + ".py")
PACKAGES = ("personality", "models", "stages")  # the project's code the served model imports
CODE_ROOT = Path(__file__).resolve().parents[1]  # where they are (not the data root)
VIDEO_ROOT_ENV = "PERSONALITY_VIDEO_ROOT"  # the folders a served model may read videos from
# the params.yaml sections a logged model carries: what it reads (base and the front-end's, for a
# checkpoint that keeps none) and this stage's own; dvc.yaml's register params list exactly these
# (tests/test_serve.py), so a copy never holds a section that changed without a re-run
SERVED_SECTIONS = ("base", *FRONTEND_SECTIONS, "register")
OUTSIDE_ROOTS = f"not under the served video root(s); set {VIDEO_ROOT_ENV}"


@dataclasses.dataclass(frozen=True)
class RegisterParams:
    """params.yaml:register."""
    enabled: bool = True   # false: the stage writes its metrics file and registers nothing
    name: str = REGISTERED_NAME   # the registered model's name in the MLflow registry
    model: str = ""        # "": the best by validation CCC (metrics/evaluate.json selection)
    log_all: bool = True   # every evaluated model logged as a pyfunc (its own run), one registered


class VideoScorer:
    """The pyfunc model. Built lazily as a subclass of mlflow.pyfunc.PythonModel (`scorer`), so
    that importing this module does not import mlflow."""

    def load_context(self, context) -> None:
        from stages.predict_frontend import start_front_end_worker

        start_front_end_worker()  # set up before the first request (the worker is kept)
        import torch

        torch.set_num_threads(1)  # one thread per video scored; the front-end has its own
        self.checkpoint = Path(context.artifacts["checkpoint"])
        self.params_file = Path(context.artifacts["params"])
        self.video_roots, self.max_bytes = video_roots(), max_video_bytes()
        self.max_rows, self.max_videos = max_request_rows(), max_concurrent_videos()
        # one bound for the process: MLflow's server scores each request in a thread of its own
        self.slots = video_slots(self.max_videos)
        log.info("serving videos under %s, %d at once",
                 os.pathsep.join(map(str, self.video_roots)), self.max_videos)
        if request_seconds() is not None and not os.environ.get(CONCURRENCY_ENV, "").strip():
            log.warning("%s unset: any number of requests taken at once, each body held whole, "
                        "each waiting in a server thread (their videos are copied and scored %d "
                        "at a time: %s); set it (4: three at once, 503 to more)",
                        CONCURRENCY_ENV, self.max_videos, MAX_VIDEOS_ENV)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        """model_input: a column `video` of file paths; returns one row per video."""
        if "video" not in model_input:
            raise StageInputError(f"the input needs a 'video' column of file paths; got "
                                  f"{list(model_input.columns)}")
        if len(model_input) > self.max_rows:  # refused whole, before any work: HTTP 400
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(
                f"a request of {len(model_input)} videos; the served model scores at most "
                f"{self.max_rows} per request ({MAX_ROWS_ENV}): send them in smaller requests")
        seconds = request_seconds()
        end = time.monotonic() + (seconds or math.inf)
        rows = [self._row(str(v), end, seconds) if time.monotonic() < end
                else late_row(str(v), seconds) for v in model_input["video"]]
        return json_safe(pd.DataFrame(rows, columns=OUTPUT_COLUMNS))

    def _row(self, requested: str, end: float, seconds: float | None) -> dict:
        """The row of one video, scored in one of the process's slots when one comes free before
        `end` (the request's deadline, time.monotonic): else an error row."""
        refused = {**{t: math.nan for t in TRAITS}, "error": f"{requested}: {OUTSIDE_ROOTS}"}
        video = allowed_video(requested, self.video_roots)
        if video is None:  # one message whether the file exists or not
            return refused
        with video_slot(self.slots, end) as free:  # the copy and the front end's work
            if not free:
                return busy_row(requested, self.max_videos, seconds)
            return self._scored(video, requested, refused)

    def _scored(self, video: Path, requested: str, refused: dict) -> dict:
        from stages.predict import error_text, predict_video, result_row

        names: list[str] = []  # the copy's path as the front-end may write it
        try:
            with tempfile.TemporaryDirectory(prefix="serve-") as root:
                copy = private_copy(video, self.video_roots, Path(root) / "video",
                                    self.max_bytes)
                if copy is None:
                    return refused
                # resolved by the front-end (a temporary folder through a symlink: macOS /var);
                names = sorted({form(path) for path in (copy, copy.resolve())  # a name not UTF-8
                                for form in (str, shown_path)}, key=len, reverse=True)  # \xNN
                row = result_row(predict_video(copy, model=str(self.checkpoint),
                                               root=Path(root), params_file=self.params_file,
                                               explain=False))
        except Exception as exc:  # noqa: BLE001 - one bad video is a row, the request goes on
            row = {**{t: math.nan for t in TRAITS}, "error": error_text(exc)}
        # the client named its file, not the server's copy of it
        return {k: _named_as_asked(v, names, shown_path(requested)) for k, v in row.items()}


TEXT_COLUMNS = ("model", "warnings", "error")


def json_safe(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` as the scoring server must send them: a missing number None (JSON null), a missing
    text "". MLflow writes a float NaN as `NaN`, which is not JSON: a refused row's NaN scores
    made JavaScript's JSON.parse (and any strict parser) reject the whole response."""
    out = rows.astype(object).where(rows.notna(), None)
    for column in TEXT_COLUMNS:
        out[column] = ["" if v is None else v for v in out[column]]
    return out


def _named_as_asked(value, names: list[str], requested: str):
    """`value` with each of `names` (the server's copy) written as the client's `requested`."""
    if isinstance(value, str):
        for name in names:
            value = value.replace(name, requested)
    return value


def video_roots() -> tuple[Path, ...]:
    """The served video roots: PERSONALITY_VIDEO_ROOT's absolute folders (os.pathsep between
    them), else the working folder. A relative entry is a StageInputError (the model does not
    load): it would depend on where the server happens to start."""
    entries = [e for e in os.environ.get(VIDEO_ROOT_ENV, "").split(os.pathsep) if e.strip()]
    relative = [e for e in entries if not os.path.isabs(e)]
    if relative:
        raise StageInputError(f"{VIDEO_ROOT_ENV}: {relative[0]!r} is not an absolute folder")
    return tuple(Path(e).resolve() for e in entries) or (Path.cwd().resolve(),)


def allowed_video(requested: str, roots: tuple[Path, ...]) -> Path | None:
    """The requested file, resolved (symlinks followed), when it is absolute and lies under one
    of `roots`; else None, and nothing about the file is looked at beyond resolving it."""
    path = Path(requested)
    if not requested or not path.is_absolute():
        return None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
        return None
    return resolved if under_a_root(resolved, roots) else None


def private_copy(video: Path, roots: tuple[Path, ...], folder: Path,
                 max_bytes: int = DEFAULT_MAX_GB * 2**30) -> Path | None:
    """A copy of `video` (allowed_video's answer) in `folder`, read through one file descriptor
    that is checked after opening: its real path under one of `roots`, a regular file. None
    when it is not (the caller refuses it like any path outside the roots). The front-end opens
    the file several times (probe, frames, audio): a client able to write under a root could
    otherwise swap a path component for a symlink between the check and those opens. Raises
    StageInputError naming the file when it cannot be read or is no regular file (as predict
    says it). O_NONBLOCK: a named pipe with no writer would block the open, and the request;
    the descriptor is checked before Python wraps it (io refuses a folder, leaving it open). A
    file over `max_bytes` is refused (a sparse file's holes would be written out in full)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(video, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink in the resolved path's place: swapped since
            return None
        raise StageInputError(f"{video}: cannot be read: {exc.strerror}") from None
    src = None
    try:
        real = _real_path(fd, video)
        if real is None or not under_a_root(real, roots):
            return None
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode):
            raise StageInputError(f"{video}: " + ("is a folder" if stat.S_ISDIR(facts.st_mode)
                                                  else "not a regular file (a pipe or a device?)"))
        if facts.st_size > max_bytes:
            raise StageInputError(_too_big(video, max_bytes))
        os.set_blocking(fd, True)
        src = os.fdopen(fd, "rb")
    finally:
        if src is None:
            os.close(fd)
    with src:
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / video.name
        with open(copy, "wb") as dst:
            while chunk := src.read(min(1 << 20, max_bytes - dst.tell())):
                dst.write(chunk)
            if src.read(1):  # grown past the limit since the check
                raise StageInputError(_too_big(video, max_bytes))
    return copy


def _too_big(video: Path, max_bytes: int) -> str:
    return (f"{video}: over the {max_bytes / 2**30:g} GiB a served request may copy "
            f"(set {MAX_GB_ENV})")


def _real_path(fd: int, video: Path) -> Path | None:
    """Where the open file `fd` lies: Linux says it (/proc/self/fd); elsewhere `video` resolved
    again, when that is still the same file (device and inode); else None."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        try:
            again, now = video.resolve(), os.fstat(fd)
            same = os.stat(again)
        except (OSError, RuntimeError):
            return None
        return again if (same.st_dev, same.st_ino) == (now.st_dev, now.st_ino) else None


def under_a_root(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def scorer():
    """A VideoScorer that is an mlflow.pyfunc.PythonModel (what set_model needs)."""
    import mlflow.pyfunc

    class MlflowVideoScorer(VideoScorer, mlflow.pyfunc.PythonModel):
        pass

    return MlflowVideoScorer()


def signature():
    """Input: a string column `video`; output: the scores, facts and error columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("double", t) for t in TRAITS] + [
        ColSpec("string", "model"), ColSpec("double", "face_share"),
        ColSpec("boolean", "has_audio"), ColSpec("boolean", "audio_silent"),
        ColSpec("double", "voiced_share"), ColSpec("string", "warnings"),
        ColSpec("string", "error")]
    return ModelSignature(inputs=Schema([ColSpec("string", "video")]), outputs=Schema(outputs))


def chosen_model(p: RegisterParams, report: dict, root: Path) -> str:
    """register.model, else the best by validation CCC; refused when there is none, and a
    register.model without a checkpoint before anything is logged (a typo, named as one)."""
    name = p.model or (report.get("selection") or {}).get("best")
    if not name:
        raise StageInputError("metrics/evaluate.json: no model chosen on validation "
                              "(selection.best); run the evaluate stage first")
    if p.model:
        try:
            find_checkpoint(name, root)
        except StageInputError:
            known = evaluated_models(report)
            close = difflib.get_close_matches(name, known, n=1)
            raise ParamsError(f"register.model: {name!r} has no trained checkpoint ("
                              + (f"did you mean {close[0]!r}? " if close else "")
                              + f"evaluated: {', '.join(known) or 'none'})") from None
    return name


def model_figures(name: str, report: dict) -> dict:
    """The figures a user sees beside a logged or registered model: test mean CCC with its
    interval, the validation mean CCC that chose it and the share of val resamples in which it
    is the best (None where the report has none)."""
    entry = report.get(name) or {}
    ci = ((entry.get("ci") or {}).get("mean") or {}).get("ccc") or [None, None]
    val = (((report.get("selection") or {}).get("val") or {}).get(name) or {})
    return {"model": name, "test_mean_ccc": (entry.get("mean") or {}).get("ccc"),
            "test_mean_ccc_ci_low": ci[0], "test_mean_ccc_ci_high": ci[1],
            "val_mean_ccc": val.get("ccc"), "val_chosen_share": val.get("chosen_share"),
            "chosen_by": "best mean CCC on validation", "n_test_videos": entry.get("n_videos")}


def version_tags(figures: dict) -> dict[str, str]:
    """`model_figures` as MLflow tags (strings; floats to 4 decimals, missing ones left out but
    the interval's ends: "n/a" there, a test split of under 2 subjects has no interval)."""
    tags = {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in figures.items()
            if v is not None}
    return {**{k: "n/a" for k in ("test_mean_ccc_ci_low", "test_mean_ccc_ci_high")
               if k in figures}, **tags}


def example_video(root: Path) -> str | None:
    """A video of the manifest's test split (else any): the model's input example. None for a
    dataset of AU sequences without videos (perfex, openface_csv): an empty path is no video
    (it resolved to the repository's folder, which the served model was then told to serve)."""
    manifest = pd.read_parquet(root / "data" / "manifest.parquet", columns=["path", "split"])
    manifest = manifest[manifest["path"].astype(str) != ""]
    if manifest.empty:
        log.info("no video in data/manifest.parquet: the model is logged without an input example")
        return None
    test = manifest[manifest["split"] == "test"]
    path = Path(str((test if len(test) else manifest)["path"].iloc[0]))
    return str(path if path.is_absolute() else root / path)  # the scorer refuses relative paths


def log_pyfunc(mlf, checkpoint: Path, root: Path, example: str | None):
    """Log the pyfunc model into the active run; returns mlflow's ModelInfo. With an `example`
    clip mlflow stores it as the input example and checks that the logged model predicts it
    (the whole front-end on that clip, ~6 s); without one the signature alone says the input.
    The example's folder is a served root while mlflow checks it, whatever the environment's
    PERSONALITY_VIDEO_ROOT says: the check must score the clip, not record a refusal."""
    with _root_for(example):
        return _log_model(mlf, checkpoint, root, example)


@contextlib.contextmanager
def _root_for(example: str | None):
    before = os.environ.get(VIDEO_ROOT_ENV)
    if example is not None:
        folders = [f for f in (before or "").split(os.pathsep) if f]
        os.environ[VIDEO_ROOT_ENV] = os.pathsep.join([*folders, str(Path(example).parent)])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VIDEO_ROOT_ENV, None)
        else:
            os.environ[VIDEO_ROOT_ENV] = before


def served_params(root: Path, folder: Path) -> Path:
    """folder/params.yaml: root's params.yaml cut to SERVED_SECTIONS (comments dropped)."""
    import yaml

    data = load_params_file(root / "params.yaml")
    out = folder / "params.yaml"
    out.write_text(yaml.safe_dump({k: data[k] for k in SERVED_SECTIONS if k in data},
                                  sort_keys=False))
    return out


def _log_model(mlf, checkpoint: Path, root: Path, example: str | None):
    with tempfile.TemporaryDirectory(prefix="served-params-") as folder:
        return _log_pyfunc(mlf, checkpoint, served_params(root, Path(folder)), example)


def _log_pyfunc(mlf, checkpoint: Path, params: Path, example: str | None):
    return mlf.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE),
        artifacts={"checkpoint": str(checkpoint), "params": str(params)},
        code_paths=[str(CODE_ROOT / pkg) for pkg in PACKAGES],
        # the pinned requirements, given: without them mlflow infers them by loading the model in
        # a subprocess and predicting the example, ~20 s per model (4 of make run's minutes)
        pip_requirements=str(CODE_ROOT / "requirements.txt"),
        input_example=None if example is None else pd.DataFrame({"video": [example]}),
        signature=signature())


def evaluated_models(report: dict) -> list[str]:
    """The models metrics/evaluate.json scored (retrained ones included), in its order."""
    from models.report import RESERVED  # baseline, ceiling: no model to log

    return [k for k, v in report.items() if isinstance(v, dict) and "mean" in v
            and k not in RESERVED]


def log_model_run(name: str, report: dict, root: Path, example: str | None) -> tuple:
    """One MLflow run holding `name`'s pyfunc model, tagged with its figures: (ModelInfo,
    version tags, run id)."""
    figures = model_figures(name, report)
    tags = version_tags(figures)
    with mlflow_run("register", run_name=f"model:{name}", tags={"model": name}) as mlf:
        info = log_pyfunc(mlf, find_checkpoint(name, root), root, example)
        mlf.log_metrics({k: float(v) for k, v in figures.items()
                         if k.startswith(("test_", "val_")) and isinstance(v, (int, float))
                         and np.isfinite(v)})
        return info, tags, mlf.active_run().info.run_id


def register(p: RegisterParams, root: Path) -> dict:
    """Log every evaluated model (`p.log_all`) or the chosen one as a pyfunc, each in its own
    MLflow run, and register the chosen one as `p.name`."""
    import mlflow

    report = json.loads((root / "metrics" / "evaluate.json").read_text())
    name = chosen_model(p, report, root)
    example = example_video(root)
    names = evaluated_models(report) if p.log_all else []
    # only the registered model carries the input example: mlflow runs the front-end on it for
    # every model logged with one, which for ten models was 54 of the stage's 63 s
    logged = {m: log_model_run(m, report, root, example if m == name else None)
              for m in dict.fromkeys([*names, name])}
    info, tags, run_id = logged[name]
    if p.model:  # named by the user: the registry must not say that validation chose it
        best = (report.get("selection") or {}).get("best")
        tags = {**tags, "chosen_by": f"register.model (best on validation: {best or 'none'})"}
    version = mlflow.register_model(info.model_uri, p.name, tags=tags)
    log.info("registered %s as models:/%s/%s (test mean CCC %s [%s, %s]); %d model(s) logged",
             name, p.name, version.version, tags.get("test_mean_ccc"),
             tags.get("test_mean_ccc_ci_low"), tags.get("test_mean_ccc_ci_high"), len(logged))
    return {"model": name, "registered_name": p.name, "version": int(version.version),
            "run_id": run_id, "model_uri": f"models:/{p.name}/{version.version}", "tags": tags,
            "logged": {m: entry[0].model_uri for m, entry in logged.items()}}


def run(p: RegisterParams, root: Path | None = None) -> dict:
    root = root or repo_root()
    if not p.name:
        raise ParamsError("register.name: empty; name the registered model")
    out = register(p, root) if p.enabled else {"skipped": "register.enabled is false"}
    atomic_write_json(root / "metrics" / "register.json", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.serve",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="register this trained model instead")
    args = parser.parse_args(argv)
    with stage_errors("register"):
        params = load_params("register", RegisterParams)
        if args.model:
            params = dataclasses.replace(params, model=args.model)
        load_base()  # a bad params.yaml fails here, before any logging
        run(params)
        write_tracking_receipt("register", tracked=params.enabled)


if __name__ == "__main__":
    main()
