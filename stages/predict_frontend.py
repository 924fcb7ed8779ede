"""predict's front end: frames, faces, aus, audio and functionals on one new video, with the
pipeline's own stage functions, in a work folder; stages/predict.py calls it (nothing here runs on
its own: `python -m pytest tests/test_predict_frontend.py` exercises it).

The whole front end of a clip runs in one spawned worker process (personality.executor), and the
stages inside it run inline: a crash inside a native decoder or MediaPipe costs the worker, never
predict, and a hang is stopped at the sum of the stages' own time limits. The worker is kept for
the next clip of this process (personality.executor_kept: a batch worker's next video, a served
model's next request): a fresh worker per stage paid an interpreter start, the stages' imports and
the warm-ups three times a clip, 4 of the 5.7 s a 6-10 s clip's front end took (`python
bench/predict.py`: 1.7 s now, warm).
When the worker is lost (killed twice, or over its time limit), the clip runs again with one
worker per stage, as the stages run in the pipeline, so that a crash in the face search still
leaves the audio to score the clip.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from personality.common import (MACHINE_LOCAL, BaseParams, ParamsError, StageInputError,
                                build_dataclass, frontend_params, get_logger, load_params,
                                read_artifact, repo_root)
from personality.executor import CLUSTER_ENV, ExecutorError, map_jobs, time_limit_s
from personality.executor_kept import KeptWorkers
from personality.probing import local_placement, probe_in_worker
from personality.schemas import TRAITS
from stages.predict_batch import safe_video_id
from stages.predict_model import clip_warnings

__all__ = ["checked_frontend", "front_end_params", "frontend_stages", "resolved_frontend",
           "run_front_end", "start_front_end_worker"]

log = get_logger("predict")



def checked_frontend(stored: Any, params_file: Path | None, checkpoint: Path) -> dict | None:
    """A checkpoint's front-end params (None: it keeps none) with the MACHINE_LOCAL fields of
    this machine's params (or dropped: their defaults), every section read into its stage's
    params and checked now: a value the stage refuses (a wrong type, fps <= 0) is a ParamsError
    naming the checkpoint, before any work on a video."""
    if stored is None:
        return None
    if not isinstance(stored, dict) or any(v is not None and not isinstance(v, dict)
                                           for v in stored.values()):
        raise ParamsError(f"{checkpoint}: its front-end params are not sections of keys")
    here = frontend_params(params_file)
    frontend = {section: dict(values or {}) for section, values in stored.items()}
    for section, keys in MACHINE_LOCAL.items():
        for key in keys if section in frontend else ():
            if key in here.get(section, {}):
                frontend[section][key] = here[section][key]
            else:
                frontend[section].pop(key, None)
    params_of = front_end_params(params_file, frontend)
    for section, (cls, check) in frontend_stages().items():
        try:
            check(params_of(section, cls))
        except (ValueError, ArithmeticError) as exc:  # ParamsError, StageInputError: the stage's
            if section not in frontend:  # own checks (fps > 0, ...); params.yaml's, not its
                raise
            raise ParamsError(f"{checkpoint}: {exc}") from None
    return frontend


def frontend_stages() -> dict[str, tuple[type, Callable]]:
    """Each front-end section's params class and its stage's check of them (a module's
    check_params, else the class's own validate)."""
    from stages import audio, aus, faces, frames, functionals

    def own_check(module) -> Callable:
        return getattr(module, "check_params",
                       lambda p: p.validate() if hasattr(p, "validate") else None)

    return {section: (cls, own_check(module)) for section, module, cls in (
        ("frames", frames, frames.FramesParams), ("faces", faces, faces.FacesParams),
        ("aus", aus, aus.AusParams), ("audio", audio, audio.AudioParams),
        ("functionals", functionals, functionals.FunctionalsParams))}


def resolved_frontend(params_file: Path | None, frontend: dict | None) -> dict:
    """Every front-end section's params as the stages would read them (a checkpoint's, else
    params.yaml's): two that compare equal make the same front-end data."""
    params_of = front_end_params(params_file, frontend)
    return {section: params_of(section, cls) for section, (cls, _) in frontend_stages().items()}


def front_end_params(params_file: Path | None, frontend: dict | None):
    """`params_of(section, cls)`: the front-end's params from a checkpoint's `frontend` (the
    sections that made its training data), else from params.yaml (or `params_file`). The
    MACHINE_LOCAL paths come out absolute: a relative one is relative to the repo root, as the
    pipeline's stages read it, not to predict's work folder (nor a served model's copy of
    params.yaml, in MLflow's artifacts)."""
    here = repo_root()

    def params_of(section: str, cls: type):
        if frontend is not None and section in frontend:
            try:
                params = build_dataclass(cls, frontend[section] or {}, section)
            except ParamsError as exc:  # a key renamed or dropped since it was trained
                raise ParamsError(f"the model's checkpoint keeps front-end params this version "
                                  f"cannot read ({exc}): it was trained by another version of "
                                  "the project; retrain it (dvc repro) or choose another "
                                  "model with --model") from None
        else:
            params = load_params(section, cls, path=params_file)
        return _local_paths_absolute(section, params, here)
    return params_of


def _local_paths_absolute(section: str, params, folder: Path):
    """`params` with each MACHINE_LOCAL path of `section` that is relative (not "" and not a
    URL: faces.model_path may be the official one) made absolute under `folder`."""
    moved = {key: str(folder / value) for key in MACHINE_LOCAL.get(section, ())
             if (value := getattr(params, key, "")) and "://" not in value
             and not Path(value).is_absolute()}
    return dataclasses.replace(params, **moved) if moved else params


def run_front_end(video: Path, work: Path, params_file: Path | None = None,
                  frontend: dict | None = None,
                  refuse: Callable[[dict], str] | None = None) -> dict:
    """frames / faces / aus and audio on one video under `work`, with the pipeline's own stage
    functions, and the params of `frontend` (a checkpoint's: front_end_params) or params.yaml
    (or `params_file`: the copy a served model carries). Returns what the clip offers: face
    share, audio, voiced share, where a truncated file ends. A file that cannot be decoded
    raises StageInputError naming it, before any of the front-end's work, as does one for which
    `refuse(probe facts)` says why the model cannot score it (no audio track, for an audio
    model: the probe knows it before any work). The probe, too, decodes in the worker: a file
    that crashes or hangs FFmpeg costs the worker, never this process (a served model's)."""
    where = local_placement()
    setup = None if where.forced_inline else _stages_inline
    with FRONT_END_WORKER.borrow() as kept:
        facts = probe_in_worker(video, kept=kept, where=where, setup=setup)
        why = refuse(facts) if refuse else ""
        if why:
            raise StageInputError(f"{video}: {why}")
        # absolute paths, params.yaml's too: the kept worker's working folder is the one this
        # process had when the worker started
        job = (Path(video).resolve(), Path(work).resolve(),
               Path(params_file or repo_root() / "params.yaml").resolve(), frontend, facts)
        [out] = map_jobs(_front_end_job, [job], workers=1, where=where, label=_job_label,
                         setup=setup, on_lost=_lost, time_limit=_time_limit, kept=kept)
    if "lost" in out:
        log.warning("%s: the front end's worker was lost (%s); again with one worker per "
                    "stage", video, out["lost"])
        shutil.rmtree(Path(work) / "data", ignore_errors=True)  # what the lost try left
        out = front_end_here(*job)
    return {**out, "video": str(video)}  # as the caller named it


def _stages_inline() -> None:
    """The front-end worker's set-up: the stages' own maps run in it (it is their worker), and
    the first clip's one-off costs are paid once, at the worker's start: the imports of
    MediaPipe, librosa and openSMILE and the audio and faces warm-ups (~2.5 s), with
    params.yaml's params. Each stage still runs its own set-up with the clip's params, which
    then costs little. The worker's environment is this process's when it started."""
    import contextlib
    import os
    import signal

    os.environ[CLUSTER_ENV] = "inline"
    # Ctrl-C reaches the whole process group: predict (the parent) ends this worker itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from stages import audio, aus, faces, frames, functionals  # noqa: F401

    with contextlib.suppress(Exception):  # no params.yaml here: the stages' own set-ups say so
        audio.warm_up(load_params("audio", audio.AudioParams))
        faces.warm_up(load_params("faces", faces.FacesParams))


FRONT_END_WORKER = KeptWorkers(1, setup=_stages_inline)  # started by the first clip


def start_front_end_worker() -> None:
    """Spawn the front-end worker now (KeptWorkers.start_soon, in this thread, no waiting):
    its imports and warm-ups (~2.5 s) then overlap the caller's own (torch's). Not when the
    front end runs in this process."""
    try:
        if local_placement().forced_inline:
            return
    except ExecutorError:  # a bad PERSONALITY_CLUSTER: run_front_end says so
        return
    FRONT_END_WORKER.start_soon()


def _front_end_job(job: tuple) -> dict:
    return front_end_here(*job)


def _job_label(job: tuple) -> str:
    return str(job[0])


def _lost(job: tuple, why: str) -> dict:
    return {"lost": why}


def _time_limit(job: tuple) -> float | None:
    """The per-video stages' limits summed: frames and audio per second of video, faces per kept
    frame (personality.executor.time_limit_s; None when PERSONALITY_TIME_LIMIT_SCALE is 0)."""
    from stages.frames import FramesParams

    seconds = job[4].get("duration_s")
    sampling = front_end_params(job[2], job[3])("frames", FramesParams)
    kept = sampling.per_video or (seconds * sampling.fps if seconds is not None else None)
    limits = [time_limit_s(seconds, 20.0), time_limit_s(kept, 2.0), time_limit_s(seconds, 20.0)]
    return None if None in limits else sum(limits)


def front_end_here(video: Path, work: Path, params_file: Path | None, frontend: dict | None,
                   facts: dict) -> dict:
    """run_front_end's work in this process, `facts` the video's probe (stages.ingest)."""
    from personality.container_end import cut_short
    from personality.video_io import ends_short, stream_extent
    from stages import audio, aus, faces, frames, functionals
    from stages.ingest import write_manifest

    params_of = front_end_params(params_file, frontend)
    vid = safe_video_id(video)
    manifest = pd.DataFrame([{
        "video_id": vid, "path": str(video.resolve()), "split": "test", "subject_id": vid,
        "dataset": "predict", **{t: np.nan for t in TRAITS}, **facts, "label_scale": "unit"}])
    write_manifest(manifest, work)
    base = dataclasses.replace(load_params("base", BaseParams, path=params_file), workers=1)
    out = {"video_id": vid, "video": str(video), **facts}
    # a file cut off mid-data decodes without an error: only its length against the declared
    # one tells (the frames stage marks it `truncated` by the same rule)
    ends_at, declared = stream_extent(video)
    out["truncated"] = ends_short(ends_at, declared)
    if out["truncated"]:  # declared: a WebM's duration_s is what its packets measure, not this
        out["ends_at_s"], out["declared_s"] = round(ends_at, 3), round(declared, 3)
    elif cut := cut_short(video):  # MPEG-TS / PS, NUT, GIF: no declared length to fall short of
        out["truncated"], out["cut"] = True, cut
    frames_summary = frames.run(params_of("frames", frames.FramesParams), base, root=work)
    # damaged video packets (frames.damaged_video_note); a stream that only breaks off early is
    # said once, by the truncation warning above
    out["video_notes"] = [w["warning"] for w in frames_summary.get("warnings", [])
                          if not (out["truncated"] and w["warning"].startswith(
                              "the video stream breaks off early"))]
    faces_summary = faces.run(params_of("faces", faces.FacesParams), base, root=work)
    face_table = read_artifact("faces", path=work / "data" / "faces",
                               columns=["video_id", "frame_idx", "t", "face_found"])
    out["n_frames"] = int(len(face_table))
    out["face_share"] = float(face_table["face_found"].mean()) if len(face_table) else 0.0
    out["face_rate"] = out["face_share"]  # the earlier name, kept for readers of prediction.json
    aus.run(params_of("aus", aus.AusParams), base, root=work)
    out["faces_summary"] = {k: v for k, v in faces_summary.items()
                            if isinstance(v, (int, float, str))}
    if facts["has_audio"]:
        out.update(_audio_facts(params_of("audio", audio.AudioParams), base, work, facts))
        # the audio's second 0 on the frames' clock: the shift the audio stage gave its
        # features when `audio_aligned` (_audio_facts), else as read (the report draws the
        # strip there), None when the timestamps cannot say (read as the stage reads them)
        if "audio_offset_s" not in out:  # else the shift _audio_facts read from the row
            offset = audio.frames_offset_s(video)
            out["audio_offset_s"] = None if offset is None else round(offset, 4)
        if out["truncated"]:  # said once, by the video's truncation warning
            out["audio_notes"] = [n for n in out.get("audio_notes", [])
                                  if not n.endswith("the file looks truncated")]
    fp = params_of("functionals", functionals.FunctionalsParams)
    functionals.run(dataclasses.replace(fp, audio=fp.audio and facts["has_audio"]), base,
                    root=work)
    out["warnings"] = clip_warnings(out)
    return out


def _audio_facts(audio_params, base: BaseParams, work: Path, facts: dict) -> dict:
    """The audio stage on the clip, and what its track offers."""
    from stages import audio

    summary = audio.run(audio_params, base, root=work)
    row = read_artifact("audio", path=work / "data" / "audio").iloc[0]
    # a track the audio stage could not use (too short, unreadable) is no usable audio
    aligned = bool(np.isfinite(row["audio_offset_s"]))
    out = {"audio_silent": bool(not row["has_audio"] or row["silent"] or row["error"]),
           # the features start at the frames' t = 0 (a late track's lead of silence in them)
           "audio_aligned": aligned}
    if aligned:  # the shift the features were given
        out["audio_offset_s"] = round(float(row["audio_offset_s"]), 4)
    if row["error"]:
        out["audio_error"] = str(row["error"])
    voiced = row.get("fn_voiced_frac")
    out["voiced_share"] = float(voiced) if voiced is not None and np.isfinite(voiced) else 0.0
    if facts.get("duration_s", 0) > audio_params.max_feature_seconds:
        out["audio_cut_at_s"] = float(audio_params.max_feature_seconds)
    notes = [w["warning"] for w in summary.get("warnings", [])]  # damaged, or cut short
    if notes:
        out["audio_notes"] = notes
    return out
