"""predict: Big-Five scores for new videos, through the same stage functions as the pipeline.

    python -m stages.predict VIDEO --out DIR [--model NAME_OR_PATH]
    python -m stages.predict FOLDER_OR_VIDEO... --out DIR [--jobs N] [--strict]    # batch

Runs frames, faces, aus and audio (params from params.yaml, one worker) on VIDEO in a temporary
folder, builds the model's inputs with the same sources training used, and averages the model's
predictions over the video's views. Prints the five scores and writes
  DIR/prediction.json   {"O": .., "C": .., "E": .., "A": .., "N": .., "model": .., ...}
  DIR/report.png        trait bars with the model's test error band, an AU timeline, a face
                        thumbnail, and what drove the scores (below)
`--model` is a trained model's name (data/models/NAME/best.pt; NAME+retrained for a retrained
one) or a checkpoint path. By default: the model with the best mean *validation* CCC
(metrics/evaluate.json "selection", else metrics/train/<model>.json) among those whose inputs the
clip has: a face-less clip with speech gets the best audio model, a silent one the best visual
model. No DVC is involved.

prediction.json and the report say what the clip offered: `face_share` (share of sampled frames
with a face), `has_audio`, `audio_silent`, `voiced_share`, and `warnings` in plain words (no face,
a face in under half of the frames, no or silent audio, audio cut at audio.max_feature_seconds).
A video the chosen model cannot use (no face for a visual or AU model, no audio track for an audio
model, an unreadable file) gives a one-line error and exit code 2.

Batch mode (several paths, or a folder: every video file under it, recursively) runs each video's
front-end in its own process (`--jobs`, default base.workers) with a progress bar over videos, and
writes DIR/predictions.csv (one row per video, in order: video, video_id, the five scores, model,
face_share, has_audio, audio_silent, voiced_share, warnings, error, report) beside one
DIR/<video_id>.png report per scored video. A bad file is a row with its error and the rest go on:
exit code 0, or 1 with `--strict` when any video failed.

Explanations (models/explain.py; `--no-explain` skips them): prediction.json's `explanation`
holds, per kind the model's inputs allow, the numbers the report draws: Grad-CAM maps per trait
over the face crops (visual models: five overlays on the model's input crop), per-second audio
occlusion (log-mel / wave models: a trait x second strip under the AU timeline), and each input
feature's contribution per trait (AU, functionals and audio-functionals models: the top features
per trait). They add 0.01-1.2 s per clip to the prediction (models/explain.py: measured costs).

One file because the batch mode is the single-video path run many times: it shares its
functions, error kinds and report, and one CLI reads both.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, ParamsError, SchemaError, StageInputError,
                                atomic_write_text, find_checkpoint, get_logger, load_params,
                                read_artifact, repo_root)
from personality.schemas import TRAITS

log = get_logger("predict")

VISUAL_KEYS = {"face", "face_seq", "frame", "aus", "aus_mask"}
AUDIO_KEYS = {"logmel", "wave", "audio_fn"}


def trained_models(root: Path) -> list[str]:
    """Names of every trained and retrained model with a checkpoint under `root`, sorted."""
    return sorted({p.parent.name for pattern in ("data/models/*/best.pt",
                                                 "data/retrained/models/*/best.pt")
                   for p in root.glob(pattern)})


def validation_ranking(root: Path, names: list[str]) -> list[tuple[str, float]]:
    """(model, mean val CCC) best first: evaluate's selection figures (metrics/evaluate.json),
    else the train stage's own (metrics/train/<model>.json). Models are chosen on validation:
    the test split is for the report only."""
    val = (_evaluation(root).get("selection") or {}).get("val") or {}
    ranked = []
    for name in names:
        ccc = (val.get(name) or {}).get("ccc")
        if ccc is None:
            path = root / "metrics" / "train" / f"{name}.json"
            try:
                ccc = json.loads(path.read_text())["val"]["model"]["ccc"] if path.exists() else None
            except (json.JSONDecodeError, KeyError, TypeError):
                ccc = None
        if isinstance(ccc, (int, float)) and np.isfinite(ccc):
            ranked.append((name, float(ccc)))
    return sorted(ranked, key=lambda nc: -nc[1])


def _inputs_of(path: Path) -> set[str]:
    from models.engine import read_checkpoint

    return set(read_checkpoint(path).get("inputs", []))


def choose_model(root: Path, facts: dict) -> tuple[str, Path]:
    """The best validation model among those whose inputs the clip has (a face for visual and AU
    models, voiced audio for audio models)."""
    names = trained_models(root)
    if not names:
        raise StageInputError(f"no trained model under {root / 'data'}: run `make run` "
                              "or pass --model PATH")
    ranked = [n for n, _ in validation_ranking(root, names)] or names
    for name in ranked:
        path = find_checkpoint(name, root)
        if not missing_inputs(_inputs_of(path), facts):
            return name, path
    raise StageInputError(f"{facts.get('video')}: no trained model can score it: "
                          + "; ".join(clip_warnings(facts)))


def _evaluation(root: Path) -> dict:
    path = root / "metrics" / "evaluate.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def safe_video_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "video"


MIN_FACE_SHARE = 0.5  # below this share of sampled frames with a face, the report warns


def clip_warnings(facts: dict) -> list[str]:
    """What the clip lacks or what was cut, in plain words."""
    out = []
    face = facts.get("face_share")
    if face == 0:
        out.append(f"no face in any of the {facts.get('n_frames', 0)} sampled frames: scores "
                   "can come from the voice alone")
    elif face is not None and face < MIN_FACE_SHARE:
        out.append(f"a face in only {100 * face:.0f}% of the sampled frames: visual scores rest "
                   "on few frames")
    if not facts.get("has_audio"):
        out.append("no audio track: scores can come from the face alone")
    elif facts.get("audio_silent"):
        out.append("the audio track is silent: scores can come from the face alone")
    elif facts.get("voiced_share") is not None and facts["voiced_share"] < 0.05:
        out.append(f"almost no voiced speech ({100 * facts['voiced_share']:.0f}% of the audio)")
    cut = facts.get("audio_cut_at_s")
    if cut:
        out.append(f"audio features stop at {cut:.0f} s (audio.max_feature_seconds) of a "
                   f"{facts.get('duration_s', 0):.0f} s clip")
    return out


def missing_inputs(needs: set[str], facts: dict) -> str:
    """'' when the clip offers what a model with inputs `needs` reads, else why not."""
    if needs & VISUAL_KEYS and not facts.get("face_share"):
        return "no face was found in any of its sampled frames; this model needs one"
    if needs & AUDIO_KEYS:
        if not facts.get("has_audio"):
            return "no audio track; this model needs audio"
        if facts.get("audio_silent"):
            return "the audio track is silent or unreadable; this model needs audio"
    return ""


def run_front_end(video: Path, work: Path, params_file: Path | None = None) -> dict:
    """frames / faces / aus and audio on one video under `work`, with the pipeline's own stage
    functions and params (params.yaml, or `params_file`: the copy a served model carries).
    Returns what the clip offers: face share, audio, voiced share."""
    import functools

    from stages import audio, aus, faces, frames, functionals
    from stages.ingest import probe_video, write_manifest

    params_of = functools.partial(load_params, path=params_file)

    facts = probe_video(video)  # raises, naming the file, when it cannot be decoded
    vid = safe_video_id(video)
    manifest = pd.DataFrame([{
        "video_id": vid, "path": str(video.resolve()), "split": "test", "subject_id": vid,
        "dataset": "predict", **{t: np.nan for t in TRAITS}, **facts, "label_scale": "unit"}])
    write_manifest(manifest, work)
    base = dataclasses.replace(params_of("base", BaseParams), workers=1)
    out = {"video_id": vid, "video": str(video), **facts}
    frames.run(params_of("frames", frames.FramesParams), base, root=work)
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
        audio_params = params_of("audio", audio.AudioParams)
        audio.run(audio_params, base, root=work)
        row = read_artifact("audio", path=work / "data" / "audio").iloc[0]
        out["audio_silent"] = bool(not row["has_audio"] or row["silent"])
        voiced = row.get("fn_voiced_frac")
        out["voiced_share"] = float(voiced) if voiced is not None and np.isfinite(voiced) else 0.0
        if facts.get("duration_s", 0) > audio_params.max_feature_seconds:
            out["audio_cut_at_s"] = float(audio_params.max_feature_seconds)
    fp = params_of("functionals", functionals.FunctionalsParams)
    functionals.run(dataclasses.replace(fp, audio=fp.audio and facts["has_audio"]), base,
                    root=work)
    out["warnings"] = clip_warnings(out)
    return out


def predict_video(video: Path, *, model: str | None = None, root: Path | None = None,
                  work: Path | None = None, params_file: Path | None = None,
                  explain: bool = True) -> dict:
    """Scores of one video: {"O": .., ..., "model": .., "checkpoint": .., facts, warnings}.
    `params_file`: the front-end's params (default: the project's params.yaml)."""
    from models.data import build_sources, for_inference
    from models.checkpoints import require_finished
    from models.engine import load_checkpoint, predict_videos

    root = root or repo_root()
    video = Path(video)
    if not video.is_file():
        raise StageInputError(f"{video}: no such file")
    chosen = find_checkpoint(model, root) if model else None  # an unknown model fails first
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        work_root = Path(tmp)
        facts = run_front_end(video, work_root, params_file)
        if chosen is None:
            name, ckpt_path = choose_model(root, facts)
        else:
            name, ckpt_path = chosen.parent.name, chosen
        net, ckpt = load_checkpoint(ckpt_path)
        require_finished(ckpt, ckpt_path)
        needs = set(ckpt.get("inputs", []))
        why = missing_inputs(needs, facts)
        if why:
            raise StageInputError(f"{video}: {why}")
        vid = facts["video_id"]
        sources = build_sources(sorted(needs), root=work_root, video_ids=[vid],
                                config=for_inference(ckpt.get("source_config")))
        scores = predict_videos(net, sources, [vid])[0]  # (5,)
        report_data = _report_data(work_root, vid)
        if explain:  # while the clip's inputs exist
            explanation, report_data["explain_images"] = _explanation(net, sources, vid)
    result = {t: float(s) for t, s in zip(TRAITS, scores)}
    # a retrained checkpoint keeps its base model's name; the folder says "+retrained"
    shown = name if name.endswith("+retrained") else ckpt.get("model_name", name)
    result.update(model=shown, checkpoint=str(ckpt_path),
                  chosen_by="--model" if model else "best mean validation CCC among the models "
                  "whose inputs the clip has", inputs=sorted(needs),
                  label_scale=ckpt.get("label_scale", "unit"),
                  **{k: v for k, v in facts.items() if k != "video_id"})
    result["test_error"] = _test_error(root, result["model"], ckpt)
    if explain:
        result["explanation"] = explanation
    result["_report"] = report_data
    return result


def _explanation(net, sources, vid: str) -> tuple[dict, dict]:
    """What drove the clip's scores (models/explain.py): (the JSON part, images to draw on); an
    explanation that cannot be computed is a one-line `error`, never a failed prediction."""
    from models.explain import ExplainError, explain_clip
    from stages.audio import AudioParams

    audio = load_params("audio", AudioParams)
    try:
        return explain_clip(net, sources, vid, hop_s=audio.hop_length / audio.sr, sr=audio.sr)
    except (ExplainError, RuntimeError) as exc:  # RuntimeError: torch's, e.g. out of memory
        log.warning("no explanation: %s", exc)
        return {"kinds": [], "error": str(exc)}, {}


def _test_error(root: Path, name: str, ckpt: dict) -> dict[str, float] | None:
    """Per-trait test MAE measured for *this* checkpoint (written into it when its training run
    finished), or None: a number measured for another run of the model is never quoted."""
    error = ckpt.get("test_error")
    if isinstance(error, dict) and all(isinstance(error.get(t), (int, float)) for t in TRAITS):
        return {t: float(error[t]) for t in TRAITS}
    return None


def _report_data(work: Path, vid: str) -> dict:
    """What the report draws, read before the temporary folder goes: AU curves and one crop."""
    data: dict = {}
    aus_path = work / "data" / "aus"
    if aus_path.exists():
        table = read_artifact("aus", path=aus_path)
        table = table[table["video_id"] == vid].sort_values("t")
        data["t"] = table["t"].to_numpy()
        data["aus"] = {a: table[a].to_numpy() for a in ("AU01_r", "AU04_r", "AU06_r", "AU12_r",
                                                        "AU25_r", "AU45_r") if a in table}
    faces_path = work / "data" / "faces"
    if faces_path.exists():
        faces = read_artifact("faces", path=faces_path, columns=["video_id", "face_found", "crop"])
        found = faces[faces["face_found"]]
        if len(found):
            data["crop"] = found["crop"].iloc[len(found) // 2]
    return data


def write_report(result: dict, path: Path) -> Path:
    """report.png: trait bars with the test error band, an AU timeline, a face thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import cv2
    import matplotlib.pyplot as plt

    data = result.get("_report", {})
    rows = _explanation_rows(result.get("explanation"))
    fig = plt.figure(figsize=(10, 6.5 + 2.3 * len(rows)))
    grid = fig.add_gridspec(2 + len(rows), 3, height_ratios=[1.2, 1, *[1] * len(rows)])
    ax = fig.add_subplot(grid[0, :2])
    scores = [result[t] for t in TRAITS]
    err = result.get("test_error")
    ax.bar(range(5), scores, color="#4C72B0",
           yerr=[err[t] for t in TRAITS] if err else None, capsize=6,
           error_kw={"ecolor": "#333333", "label": "test MAE"})
    ax.set_xticks(range(5), [schemas.TRAIT_NAMES[t] for t in TRAITS], rotation=15)
    if result.get("label_scale", "unit") == "unit":
        ax.set_ylim(0, 1.05)
    _label_bars(ax, scores, [err[t] for t in TRAITS] if err else [0.0] * 5)
    ax.set_title(f"{Path(result['video']).name}: {result['model']}"
                 + ("  (bars: model's test MAE)" if err else ""))
    if result.get("warnings"):
        fig.text(0.01, 0.005, "\n".join("warning: " + w for w in result["warnings"]),
                 color="#B22222", fontsize=9, va="bottom")
    ax_face = fig.add_subplot(grid[0, 2])
    ax_face.axis("off")
    crop = data.get("crop")
    if crop is not None:
        img = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
        ax_face.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        ax_face.set_title("aligned face")
    else:
        ax_face.text(0.5, 0.5, "no face crop", ha="center", va="center")
    ax_au = fig.add_subplot(grid[1, :])
    if data.get("aus"):
        for name, values in data["aus"].items():
            ax_au.plot(data["t"], values, label=name)
        ax_au.set_ylim(-0.1, 5.1)
        ax_au.set_xlabel("time (s)")
        ax_au.set_ylabel("intensity (0-5)")
        ax_au.legend(ncol=6, fontsize=8, loc="upper right")
        ax_au.set_title("Action Units")
    else:
        ax_au.axis("off")
        ax_au.text(0.5, 0.5, "no AU timeline (audio-only model)", ha="center", va="center")
    _draw_explanation(fig, grid, rows, result)
    fig.tight_layout(rect=(0, 0.04 * len(result.get("warnings") or []), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label_bars(ax, scores: list[float], errors: list[float]) -> None:
    """Each bar's value, where neither the error whisker nor the title covers it: white at the
    foot of a bar tall enough to hold it above its whisker's lower end, else just above the
    whisker's top."""
    for i, (score, error) in enumerate(zip(scores, errors)):
        if score - error >= 0.12:
            ax.text(i, 0.02, f"{score:.2f}", ha="center", va="bottom", color="white",
                    fontweight="bold")
        else:
            ax.text(i, max(score, 0.0) + error + 0.02, f"{score:.2f}", ha="center", va="bottom")


def _explanation_rows(explanation: dict | None) -> list[str]:
    """The report's extra rows, in drawing order: audio occlusion (under the AU timeline), then
    Grad-CAM, then feature contributions."""
    kinds = (explanation or {}).get("kinds") or []
    return [k for k in ("audio_occlusion", "gradcam", "contributions") if k in kinds]


def _draw_explanation(fig, grid, rows: list[str], result: dict) -> None:
    """One row per explanation kind (the first input key of each kind)."""
    from personality.explain_plots import draw_contributions, draw_gradcam, draw_occlusion

    explanation = result["explanation"] if rows else {}
    images = result.get("_report", {}).get("explain_images") or {}
    names = [schemas.TRAIT_NAMES[t] for t in TRAITS]
    for i, kind in enumerate(rows):
        key, part = next(iter(explanation[kind].items()))
        if kind == "gradcam":
            draw_gradcam(fig, grid[2 + i, :], part["maps"], images.get(key), names,
                         title=f"Grad-CAM per trait ({key}, layer {part['layer']})")
        elif kind == "audio_occlusion":
            draw_occlusion(fig.add_subplot(grid[2 + i, :]), part, names,
                           title=f"audio occlusion ({key}): score minus score with that second "
                                 f"muted")
        else:
            draw_contributions(fig.add_subplot(grid[2 + i, :]), part, names,
                               title=f"feature contributions ({key}, {part['method']})")


# --------------------------------------------------------------------------------------------------
# batch mode: several videos or folders -> one predictions.csv beside one report PNG per video

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".3gp")
CSV_COLUMNS = ["video", "video_id", *TRAITS, "model", "face_share", "has_audio", "audio_silent",
               "voiced_share", "warnings", "error", "report"]


def collect_videos(paths: list[Path]) -> list[Path]:
    """The videos named by `paths`: a folder gives every file under it (recursively) whose
    extension is a video's, sorted; a file is taken as it is (a bad one becomes a row with its
    error). Each video once, in the order given."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(f for f in path.rglob("*")
                          if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            out.append(path)
    unique: dict[Path, Path] = {}
    for video in out:
        unique.setdefault(video.resolve(), video)
    return list(unique.values())


def batch_ids(videos: list[Path]) -> list[str]:
    """One file-name-safe id per video (its stem); a repeated stem gets _2, _3..."""
    ids, used = [], set()
    for video in videos:
        base = vid = safe_video_id(video)
        k = 1
        while vid in used:
            k += 1
            vid = f"{base}_{k}"
        used.add(vid)
        ids.append(vid)
    return ids


def error_text(exc: BaseException) -> str:
    """One line for a video that could not be scored: the message of our own error kinds (they
    name the file), the type and message of anything else."""
    known = isinstance(exc, (StageInputError, ParamsError, SchemaError)) or \
        type(exc).__name__ in ("EngineError", "SourceError")
    return str(exc) if known else f"{type(exc).__name__}: {exc}"


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
    row = {"video": str(video), "video_id": report.stem, "report": ""}
    try:
        result = predict_video(video, model=model, root=root, explain=explain)
        write_report(result, report)
    except Exception as exc:  # noqa: BLE001 - one bad file is a row, the batch goes on
        row["error"] = error_text(exc)
        return row
    row.update(result_row(result), report=str(report))
    return row


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: the front-end's own threads stay idle


def _score_rows(jobs: list[tuple], workers: int):
    """Yield (index, row) as videos finish: in this process, or in `workers` spawned ones."""
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, score_row(*job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: fork is unsafe beside numba / BLAS / MediaPipe threads (as stages/audio.py)
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(score_row, *job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                yield i, future.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (BrokenProcessPool)
                yield i, {"video": str(jobs[i][0]), "video_id": jobs[i][1].stem, "report": "",
                          "error": f"{type(exc).__name__}: {exc}"}


def predict_batch(videos: list[Path], out: Path, *, model: str | None = None,
                  root: Path | None = None, workers: int = 1,
                  explain: bool = True) -> pd.DataFrame:
    """Score every video (front-ends in `workers` processes), write out/<video_id>.png and
    out/predictions.csv (one row per video, in the order given; a failed video has its error).
    Returns the table."""
    from personality.common import atomic_write_text, progress

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, out / f"{vid}.png", model, root, explain)
            for v, vid in zip(videos, batch_ids(videos))]
    rows: list[dict | None] = [None] * len(jobs)
    with progress(total=len(jobs), desc="predict", unit="video") as bar:
        for i, row in _score_rows(jobs, workers):
            rows[i] = row
            bar.update(1)
            if row.get("error"):
                log.warning("%s", row["error"] if row["video"] in row["error"]
                            else f"{row['video']}: {row['error']}")
    table = pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)
    table["error"] = table["error"].fillna("")
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False, float_format="%.6g"))
    return table


def _single(video: Path, out: Path, model: str | None, explain: bool = True) -> int:
    """One video: prediction.json and report.png in `out`; exit code 2 with one line on error."""
    try:
        result = predict_video(video, model=model, explain=explain)
    except (StageInputError, ParamsError, SchemaError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # the engine's and sources' own errors: one line, not a traceback
        if type(exc).__name__ in ("EngineError", "SourceError"):
            log.error("%s", exc)
            return 2
        raise
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_report(result, out / "report.png")
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        atomic_write_text(out / "prediction.json",
                          json.dumps(public, indent=2, default=str) + "\n")
    except OSError as exc:  # read-only folder, full disk: the machine's, not a bug
        log.error("cannot write to %s: %s", out, exc.strerror or exc)
        return 1
    width = max(len(n) for n in schemas.TRAIT_NAMES.values())
    for t in TRAITS:
        print(f"{schemas.TRAIT_NAMES[t]:<{width}}  {result[t]:.3f}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    print(f"model {result['model']}; wrote {out / 'prediction.json'} and {out / 'report.png'}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    """Several videos or folders: predictions.csv; exit 0 unless --strict and a video failed."""
    videos = collect_videos(args.video)
    if not videos:
        log.error("no video (%s) under %s", " ".join(VIDEO_EXTENSIONS),
                  ", ".join(map(str, args.video)))
        return 2
    try:
        if args.model:
            find_checkpoint(args.model, repo_root())  # an unknown model fails the batch at once
        workers = args.jobs or load_params("base", BaseParams).workers
    except (StageInputError, ParamsError) as exc:
        log.error("%s", exc)
        return 2
    table = predict_batch(videos, args.out, model=args.model, workers=workers,
                          explain=args.explain)
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
    if args.out.exists() and not args.out.is_dir():
        log.error("--out %s: exists and is not a folder; give a folder for the results",
                  args.out)
        return 2
    if len(args.video) == 1 and not args.video[0].is_dir():
        return _single(args.video[0], args.out, args.model, args.explain)
    return _batch(args)


if __name__ == "__main__":
    sys.exit(main())
