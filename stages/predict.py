"""predict: Big-Five scores for new videos, through the same stage functions as the pipeline.

    python -m stages.predict VIDEO --out DIR [--model NAME_OR_PATH]
    python -m stages.predict FOLDER_OR_VIDEO... --out DIR [--jobs N] [--strict]    # batch

Runs frames, faces, aus and audio (together in one worker process: stages/predict_frontend.py;
the front-end params the model's checkpoint keeps, those that made its training data, else
params.yaml's) on VIDEO in a temporary folder, builds the model's inputs with the same sources
training used, averages the model's predictions over the video's views, prints them and writes
  DIR/prediction.json   {"O": .., "C": .., "E": .., "A": .., "N": .., "model": .., ...}
  DIR/report.png        trait bars with the model's test error band, an AU timeline, a face
                        thumbnail, and what drove the scores (below)
`--model` is a trained model's name (data/models/NAME/best.pt; NAME+retrained for a retrained
one) or a checkpoint path. By default: the model with the best mean *validation* CCC
(metrics/evaluate.json "selection", else metrics/train/<model>.json) among those whose inputs the
clip has: a face-less clip with speech gets the best audio model, a silent one the best visual
model. No DVC is involved.

prediction.json and the report say what the clip offered: `face_share` (share of sampled frames
with a face), `has_audio`, `audio_silent`, `voiced_share`, `audio_offset_s` (where the audio's
second 0 lies on the frames' clock: a phone's sound that starts 0.3 s after its picture has 0.3;
personality/clip_clock.py), `audio_aligned` (true: the audio features were put on the frames'
clock by it, as the audio stage does by default, a late track's first 0.3 s silence in them;
false: the offset was unknown or audio.align_to_frames is off), `truncated` (with `ends_at_s`
and `declared_s` when it is: where the video stops, short of the length the file declares; or
`cut`, in words, for a container that declares none: personality/container_end.py),
and `warnings` in plain words (no face, a face in under half of the frames, several faces in a
tenth of them or more, no or silent audio, a truncated file, audio cut at
audio.max_feature_seconds), worded for what the chosen model reads: a face model's never speak of
the audio, an audio model's of the face (stages/predict_model.py, clip_warnings), and a default
choice that passed over better models says what the clip lacked.
A video the chosen model cannot use (no face for a visual or AU model, no audio track for an audio
model, neither a face nor usable audio for a functionals model, an unreadable file) gives a
one-line error and exit code 2; so does a checkpoint that cannot be used (not ours, unfinished,
unknown inputs, non-finite output), named, and read before any work on the video, and one whose
front-end params this version cannot read (a key renamed since it was trained: retrain it). A
file that stops well short of its declared duration, or inside a packet or block (MPEG-TS / PS,
NUT, GIF: they declare none), is scored with a warning that it looks truncated.

Batch mode (several paths, or a folder: every video file under it, recursively) spreads the
videos over `--jobs` processes (default base.workers; each keeps its own front-end worker) with a
progress bar over videos, and
writes DIR/predictions.csv (one row per video, in order: video, video_id, the five scores, model,
face_share, has_audio, audio_silent, voiced_share, warnings, error, report) beside one
DIR/<video_id>.png report per scored video. A bad file is a row with its error and the rest go on:
exit code 0, or 1 with `--strict` when any video failed. A worker process that dies (killed, out
of memory) fails only the video it was scoring (stages/predict_batch.py: retried once alone).

Nothing half-written stays: the report PNG and prediction.json go through a temp file and a
rename (prediction.json first), the work folder (frames, face crops: `personality-predict-<pid>-*`
in the temp folder) goes on SIGTERM too, and one a killed process left is swept by a later run
once it has been idle an hour.

Explanations (models/explain.py; `--no-explain` skips them): prediction.json's `explanation`
holds, per kind the model's inputs allow, the numbers the report draws: Grad-CAM maps per trait
over the face crops (visual models: five overlays on the model's input crop), per-second audio
occlusion (log-mel / wave models: a trait x second strip under the AU timeline, its `seconds` on
the frames' clock, as the AU timeline's: the features' own when `audio_aligned`, else shifted by
`audio_offset_s`), and each input
feature's contribution per trait (AU, functionals and audio-functionals models: the top features
per trait). They add 0.003-0.31 s per 10 s clip to the prediction at rest (models/explain.py).

The front end is stages/predict_frontend.py, the report's drawing stages/predict_report.py, the
batch's files, ids and worker pool stages/predict_batch.py (neither of the last two imports a
stage).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, ParamsError, SchemaError, StageInputError,
                                atomic_file, atomic_write_text, check_utf8_path, find_checkpoint,
                                get_logger, is_checkpoint_path, load_params, pid_alive,
                                repo_root, shown_path, sweep_stale_temps)
from personality.executor_worker import die_with_parent
from personality.schemas import TRAITS
from stages.predict_batch import (VIDEO_EXTENSIONS, WorkerDied, batch_ids, collect_videos,
                                  out_problem, save_table, save_table_if_due,
                                  exit_on_sigterm, run_jobs, safe_video_id, sigterm_exits)
from stages.predict_frontend import (checked_frontend, front_end_params, resolved_frontend,
                                     run_front_end, start_front_end_worker)
from stages.predict_caveats import clipped_warnings, model_warnings
from stages.predict_model import (choose_model, clip_interval, clip_warnings, enter_project,
                                  evaluation, load_model, missing_inputs, model_scores,
                                  own_test_error, test_error_interval, trained_models)
from stages.predict_report import draw_report, on_frames_clock, report_data, write_report

__all__ = ["predict_video", "run_front_end", "trained_models", "choose_model", "load_model",
           "model_scores", "missing_inputs", "clip_warnings", "write_outputs", "write_report",
           "predict_batch", "score_row", "result_row", "error_text", "collect_videos",
           "batch_ids", "safe_video_id", "sweep_dead_work", "main"]

log = get_logger("predict")


def predict_video(video: Path, *, model: str | None = None, root: Path | None = None,
                  work: Path | None = None, params_file: Path | None = None,
                  explain: bool = True) -> dict:
    """Scores of one video: {"O": .., ..., "model": .., "checkpoint": .., facts, warnings}.
    `params_file`: the front-end's params (default: the project's params.yaml). `model` is read
    and checked before any work on the video (`load_model`)."""
    from models.checkpoints import shown_name  # torch: not before the cheap checks

    root = root or repo_root()
    video = Path(video)
    _refuse_non_file(video)
    loaded = load_model(find_checkpoint(model, root)) if model else None
    frontend = _frontend_of(loaded, params_file)  # checked once, before any work
    with tempfile.TemporaryDirectory(dir=work, prefix=work_prefix()) as tmp:
        work_root = Path(tmp)
        facts = run_front_end(video, work_root, params_file, frontend, refuse=(
            (lambda probed: missing_inputs(set(loaded.needs), probed, probed_only=True,
                                           config=loaded.config))
            if loaded else None))
        name = shown_name(loaded.ckpt) if loaded else None  # not its folder's: served, "artifacts"
        passed_over: list[str] = []
        if loaded is None:
            name, ckpt_path, passed_over = choose_model(root, facts)
            loaded = load_model(ckpt_path)
            frontend = _frontend_of(loaded, params_file)
            if frontend is not None and (resolved_frontend(params_file, frontend)
                                         != resolved_frontend(params_file, None)):
                # the chosen model's data came from other front-end params: its clip is theirs
                log.info("%s: front-end again with %s's training params", video.name, name)
                facts = run_front_end(video, work_root, params_file, frontend)
        facts["warnings"] = [*passed_over, *clip_warnings(facts, loaded.reads)]  # its lacks
        facts["frontend_params"] = ("the checkpoint's (its training data's)"
                                    if frontend is not None else
                                    f"{params_file or 'params.yaml'} (the checkpoint keeps none)")
        why = missing_inputs(set(loaded.needs), facts, config=loaded.config)
        if why:
            raise StageInputError(f"{video}: {why}")
        vid = facts["video_id"]
        scores, sources = model_scores(loaded, work_root, vid, video)
        facts["warnings"] = [*facts["warnings"], *model_warnings(loaded, sources, vid, facts),
                             *clipped_warnings(loaded.net, sources, vid)]
        drawn = report_data(work_root, vid)
        if explain:  # while the clip's inputs exist
            explanation, drawn["explain_images"] = _explanation(
                loaded.net, sources, vid, front_end_params(params_file, frontend))
            on_frames_clock(explanation, facts.get("audio_offset_s"),  # audio seconds: AUs'
                            aligned=facts.get("audio_aligned", False))
    ckpt = loaded.ckpt
    result = {t: float(s) for t, s in zip(TRAITS, scores)}
    result.update(model=shown_name(ckpt), checkpoint=str(loaded.path),
                  chosen_by="--model" if model else "best mean validation CCC among the models "
                  "whose inputs the clip has", inputs=sorted(loaded.needs),
                  label_scale=ckpt.get("label_scale", "unit"),
                  **{k: v for k, v in facts.items() if k != "video_id"})
    _quote_errors(result, root, name, ckpt)
    if explain:
        result["explanation"] = explanation
    result["_report"] = drawn
    return result


def _quote_errors(result: dict, root: Path, name: str, ckpt: dict) -> None:
    """`result`'s test_error (the checkpoint's own test MAE), test_error_ci and the clip's
    prediction_interval (both only where evaluate measured this very run: None otherwise)."""
    result["test_error"] = own_test_error(root, result["model"], ckpt)
    report = evaluation(root)  # metrics/evaluate.json, read once for both quotes
    result["test_error_ci"] = test_error_interval(report, name, result["test_error"])
    result["prediction_interval"] = clip_interval(report, name, result["test_error"], result,
                                                  result["label_scale"] == "unit")


def _interval_text(result: dict, trait: str) -> str:
    """"  [0.27, 0.69] (95% prediction interval)" after a printed score, or "" without one."""
    interval = result.get("prediction_interval") or {}
    pair = interval.get(trait)
    return "" if not pair else (f"  [{pair[0]:.2f}, {pair[1]:.2f}] "
                                f"({100 * interval['level']:g}% prediction interval)")


def _refuse_non_file(video: Path) -> None:
    """StageInputError for a path that is not a regular file (saying what it is) or UTF-8."""
    check_utf8_path(video)
    if not video.is_file():
        raise StageInputError(f"{video}: " + ("no such file" if not video.exists() else
                                              "is a folder" if video.is_dir() else
                                              "not a regular file (a pipe or a device?)"))


def _frontend_of(loaded, params_file: Path | None) -> dict | None:
    """The front-end params a checkpoint keeps (stages/train.py), checked, with this machine's
    file and folder names (checked_frontend); None when none are kept."""
    if loaded is None:
        return None
    return checked_frontend(loaded.ckpt.get("frontend"), params_file, loaded.path)


WORK_PREFIX = "personality-predict-"  # + pid: a later run can tell a dead process's folder


def work_prefix() -> str:
    return f"{WORK_PREFIX}{os.getpid()}-"


def sweep_dead_work(where: Path | None = None) -> None:
    """Remove the work folders (frames, face crops) of predict processes that are gone: kill -9
    or the OOM killer left them, nothing of theirs ran to clean up. A live process's stay, and so
    does a folder touched in the last hour (a /tmp shared with another pid namespace, where the
    pid means another process)."""
    for folder in Path(where or tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        match = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", folder.name)
        if match and folder.is_dir() and not pid_alive(int(match.group(1))) \
                and _idle_for(folder) > 3600:
            shutil.rmtree(folder, ignore_errors=True)


def _idle_for(folder: Path) -> float:
    """Seconds since anything under `folder` last changed."""
    try:
        newest = max((p.stat().st_mtime for p in [folder, *folder.rglob("*")]), default=0.0)
    except OSError:  # a file went while we looked: somebody is at work in it
        return 0.0
    return time.time() - newest


def _explanation(net, sources, vid: str, params_of) -> tuple[dict, dict]:
    """What drove the clip's scores (models/explain.py): (the JSON part, images to draw on); an
    explanation that cannot be computed is a one-line `error`, never a failed prediction.
    `params_of`: front_end_params, for the audio features' hop."""
    from models.explain import ExplainError, explain_clip
    from stages.audio import AudioParams

    audio = params_of("audio", AudioParams)
    try:
        return explain_clip(net, sources, vid, hop_s=audio.hop_length / audio.sr, sr=audio.sr)
    except ExplainError as exc:
        log.warning("no explanation: %s", exc)
        return {"kinds": [], "error": str(exc)}, {}
    except Exception as exc:  # torch's (out of memory), or a bug in one explainer: the scores
        # stand, and the error says what failed (a TypeError in Grad-CAM once failed predict)
        why = f"{type(exc).__name__}: {exc}"
        log.warning("no explanation: %s", why)
        return {"kinds": [], "error": why}, {}


# --------------------------------------------------------------------------------------------------
# batch mode: several videos or folders -> one predictions.csv beside one report PNG per video

def is_input_error(exc: BaseException) -> bool:
    """Our own error kinds: bad input (a video, params, a checkpoint), one line naming the file."""
    return isinstance(exc, (StageInputError, ParamsError, SchemaError)) or \
        type(exc).__name__ in ("EngineError", "SourceError")


def error_text(exc: BaseException) -> str:
    """One line for a video that could not be scored: the message of our own error kinds (they
    name the file), the type and message of anything else."""
    return str(exc) if is_input_error(exc) else f"{type(exc).__name__}: {exc}"


def result_row(result: dict) -> dict:
    """The flat part of a `predict_video` result: the five scores and the clip's facts (a row of
    predictions.csv, and of the pyfunc model's answer: stages/serve.py)."""
    return {**{t: result[t] for t in TRAITS}, "model": result["model"],
            "face_share": result.get("face_share"), "has_audio": result.get("has_audio"),
            "audio_silent": result.get("audio_silent"),
            "voiced_share": result.get("voiced_share"),
            "warnings": "; ".join(result.get("warnings") or []), "error": ""}


def score_row(video: Path, report: Path, model: str | None, root: Path | None,
              explain: bool = True) -> dict:
    """One row of predictions.csv: the scores and facts, or the error that stopped this video."""
    row = {"video": shown_path(video), "video_id": report.stem, "report": ""}
    try:
        result = predict_video(video, model=model, root=root, explain=explain)
    except Exception as exc:  # noqa: BLE001 - one bad file is a row, the batch goes on
        row["error"] = error_text(exc)
        return row
    row.update(result_row(result))
    try:
        write_report(result, report)
        row["report"] = str(report)
    except Exception as exc:  # noqa: BLE001 - a full disk, a drawing bug: the scores stand
        row["warnings"] = "; ".join(filter(None, [row["warnings"], "no report: "
                                                  + error_text(exc)]))
    return row


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the batch (this worker's parent) stops its
    # workers itself, and a traceback from each of them would bury its one line
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(os.getppid())  # a batch killed outright (SIGKILL) leaves no worker behind
    start_front_end_worker()  # its set-up overlaps torch's import here
    import torch

    torch.set_num_threads(1)  # one process per core: the front-end's own threads stay idle
    # the batch stopping (SIGTERM from _stop) unwinds the video's work folder, as in main
    signal.signal(signal.SIGTERM, exit_on_sigterm)


def _failed_row(job: tuple, exc: BaseException) -> dict:
    """The row of a video whose worker could not return one (run_jobs): it died, or its result
    could not be sent back."""
    video, report = job[0], job[1]
    text = str(exc) if isinstance(exc, WorkerDied) else error_text(exc)
    return {"video": shown_path(video), "video_id": report.stem, "report": "",
            "error": text if shown_path(video) in text else f"{shown_path(video)}: {text}"}


def _score_rows(jobs: list[tuple], workers: int):
    """Yield (index, row) as videos finish: in this process, or in `workers` spawned ones; a
    worker that dies fails only its own video (stages/predict_batch.py, run_jobs)."""
    return run_jobs(score_row, jobs, min(workers, len(jobs)), initializer=_init_worker,
                    failed=_failed_row)


def predict_batch(videos: list[Path], out: Path, *, model: str | None = None,
                  root: Path | None = None, workers: int = 1,
                  explain: bool = True) -> pd.DataFrame:
    """Score every video (front-ends in `workers` processes), write out/<video_id>.png and
    out/predictions.csv (one row per video, in the order given; a failed video has its error).
    Returns the table."""
    from personality.common import progress

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, out / f"{vid}.png", model, root, explain)
            for v, vid in zip(videos, batch_ids(videos))]
    rows: list[dict | None] = [None] * len(jobs)
    # written now with every row pending, then as rows finish: a batch stopped midway leaves
    # the rows it scored, and never an earlier run's table beside this run's reports
    saved = time.monotonic()
    save_table(out, rows, jobs)
    try:
        with progress(total=len(jobs), desc="predict", unit="video") as bar:
            for i, row in _score_rows(jobs, workers):
                rows[i] = row
                bar.update(1)
                if row.get("error"):
                    log.warning("%s", row["error"] if row["video"] in row["error"]
                                else f"{row['video']}: {row['error']}")
                saved = save_table_if_due(out, rows, jobs, saved)
    except BaseException:  # Ctrl-C, SIGTERM, a failure: the rows scored so far stay
        with contextlib.suppress(OSError):
            save_table(out, rows, jobs)
        raise
    table = save_table(out, rows, jobs)
    sweep_dead_work()  # work folders of dead processes, idle an hour (a worker killed now: later)
    return table


def _single(video: Path, out: Path, model: str | None, explain: bool = True) -> int:
    """One video: prediction.json and report.png in `out`; exit code 2 with one line on error."""
    try:
        # a mistyped name or model fails at once: no worker's start, no torch import (seconds,
        # and MediaPipe's log lines after the error); a file that is no video, in the worker
        _check_before_work(video, model)
        start_front_end_worker()
        from models.registry import list_models

        list_models()  # torch, every model (~3.5 s) while the worker sets up
        result = predict_video(video, model=model, explain=explain)
    except Exception as exc:  # our own errors: one line, not a traceback
        if not is_input_error(exc):
            raise
        log.error("%s", exc)
        return 2
    try:
        write_outputs(result, out)
    except OSError as exc:  # read-only folder, full disk: the machine's, not a bug
        log.error("cannot write to %s: %s", out, exc.strerror or exc)
        return 1
    width = max(len(n) for n in schemas.TRAIT_NAMES.values())
    for t in TRAITS:
        print(f"{schemas.TRAIT_NAMES[t]:<{width}}  {result[t]:.3f}{_interval_text(result, t)}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    print(f"model {result['model']}; wrote {out / 'prediction.json'} and {out / 'report.png'}")
    return 0


def _check_before_work(video: Path, model: str | None) -> None:
    """StageInputError for a --model with no checkpoint, or a video that is no file: the cheap
    checks that predict_video makes again. Not the media itself: FFmpeg reads it only in the
    front-end's worker, where a file that crashes it cannot take predict down."""
    if model:
        find_checkpoint(model, repo_root())
    _refuse_non_file(video)


def write_outputs(result: dict, out: Path) -> None:
    """out/prediction.json and out/report.png: both written to temp files first (the report
    drawn, the JSON serialised: what can fail), then renamed in, prediction.json first, so that
    a failure or a kill never leaves a new report beside an old prediction.json (a kill between
    the renames can leave a new prediction.json beside the old report). Strict JSON: a
    non-finite number is null (the scores were checked)."""
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    text = json.dumps(_finite(public), indent=2, default=str, allow_nan=False) + "\n"
    sweep_stale_temps(out / "report.png")  # the temps of a run killed (SIGKILL) while writing
    with atomic_file(out / "report.png") as png:
        draw_report(result, png)
        atomic_write_text(out / "prediction.json", text)


def _finite(obj):
    """`obj` with every NaN / infinite float (an unknown frame rate, say) as None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _batch(args: argparse.Namespace) -> int:
    """Several videos or folders: predictions.csv; exit 0 unless --strict and a video failed."""
    videos = collect_videos(args.video)
    if not videos:
        log.error("no video (%s) under %s", " ".join(VIDEO_EXTENSIONS),
                  ", ".join(map(str, args.video)))
        return 2
    try:
        if args.model:  # an unknown or unusable model fails the batch at once, before any video
            load_model(find_checkpoint(args.model, repo_root()))
        workers = args.jobs or load_params("base", BaseParams).workers
    except Exception as exc:  # our own errors: one line, not a traceback
        if not is_input_error(exc):
            raise
        log.error("%s", exc)
        return 2
    try:
        table = predict_batch(videos, args.out, model=args.model, workers=workers,
                              explain=args.explain)
    except OSError as exc:  # a disk filled midway: predictions.csv holds the rows written
        log.error("cannot write to %s: %s", args.out, exc.strerror or exc)
        return 1
    failed = int((table["error"] != "").sum())
    print(f"{len(table) - failed} of {len(table)} videos scored; wrote "
          f"{args.out / 'predictions.csv'}" + (f"; {failed} failed (see its error column)"
                                               if failed else ""))
    return 1 if failed and args.strict else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Big-Five scores for one video, or for several "
                                     "videos and folders (batch: predictions.csv).")
    parser.add_argument("video", type=Path, nargs="+", help="video files and/or folders "
                        "(searched recursively for " + " ".join(VIDEO_EXTENSIONS) + ")")
    parser.add_argument("--out", type=Path, required=True, help="folder for prediction.json "
                        "and report.png (one video), or predictions.csv and <video>.png (batch)")
    parser.add_argument("--model", default=None, help="registry name (data/models/NAME/best.pt) "
                        "or checkpoint path; default: best mean validation CCC among the "
                        "models whose inputs the clip has")
    parser.add_argument("--jobs", type=int, default=0, help="batch: processes for the "
                        "front-end (default: base.workers)")
    parser.add_argument("--strict", action="store_true", help="batch: exit 1 when any video "
                        "failed (default: its row holds the error and the exit code is 0)")
    parser.add_argument("--no-explain", dest="explain", action="store_false", help="skip the "
                        "explanations (Grad-CAM, audio occlusion, feature contributions)")
    args = parser.parse_args(argv)
    here = Path.cwd()
    problem = enter_project()
    if problem:
        log.error("%s", problem)
        return 2
    if Path.cwd() != here:  # moved into the checkout: the user's paths keep their meaning; in
        # the project they stay as named (prediction.json's and predictions.csv's `video`)
        args.video, args.out = [here / v for v in args.video], here / args.out
        if args.model and is_checkpoint_path(args.model, here):
            args.model = str(here / args.model)
    problem = out_problem(args.out)
    if problem:
        log.error("--out %s: %s", args.out, problem)
        return 2
    sweep_dead_work()  # what a predict killed by SIGKILL left
    try:
        with sigterm_exits():  # a killed run unwinds: its work folder goes, no temp renamed in
            if len(args.video) == 1 and not args.video[0].is_dir():
                return _single(args.video[0], args.out, args.model, args.explain)
            return _batch(args)
    except KeyboardInterrupt:  # the work folder has gone with the unwinding; nothing half-written
        log.error("interrupted (Ctrl-C)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
