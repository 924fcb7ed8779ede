"""predict: Big-Five scores for one new video, through the same stage functions as the pipeline.

    python -m stages.predict VIDEO --out DIR [--model NAME_OR_PATH]

Runs frames, faces, aus and audio (params from params.yaml, one worker) on VIDEO in a temporary
folder, builds the model's inputs with the same sources training used, and averages the model's
predictions over the video's views. Prints the five scores and writes
  DIR/prediction.json   {"O": .., "C": .., "E": .., "A": .., "N": .., "model": .., ...}
  DIR/report.png        trait bars with the model's test error band, an AU timeline, a face
                        thumbnail
`--model` is a trained model's name (data/models/NAME/best.pt; NAME+retrained for a retrained
one) or a checkpoint path;
by default the model with the best mean test CCC in metrics/evaluate.json (else the first trained
one). No DVC is involved. A video the model cannot use (no face for a visual or AU model, no audio
track for an audio model, an unreadable file) gives a clear error and exit code 2.
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
from personality.common import (BaseParams, ParamsError, SchemaError, StageInputError, find_checkpoint,
                           get_logger, load_params, read_artifact, repo_root, write_artifact)
from personality.schemas import TRAITS

log = get_logger("predict")

VISUAL_KEYS = {"face", "face_seq", "frame", "aus", "aus_mask"}
AUDIO_KEYS = {"logmel", "wave", "audio_fn"}


def resolve_model(model: str | None, root: Path) -> tuple[str, Path]:
    """(name, checkpoint path) for a model name, a checkpoint path, or the best evaluated."""
    if model:
        path = find_checkpoint(model, root)
        return path.parent.name, path
    trained = sorted({p.parent.name for pattern in ("data/models/*/best.pt",
                                                    "data/retrained/models/*/best.pt")
                      for p in root.glob(pattern)})
    if not trained:
        raise StageInputError(f"no trained model under {root / 'data'}: run `make run` "
                              "or pass --model PATH")
    evaluation = _evaluation(root)
    scored = [(m, evaluation[m]["mean"].get("ccc")) for m in trained
              if isinstance(evaluation.get(m), dict) and "mean" in evaluation[m]]
    scored = [(m, c) for m, c in scored if c is not None]
    name = max(scored, key=lambda mc: mc[1])[0] if scored else trained[0]
    return name, find_checkpoint(name, root)


def _evaluation(root: Path) -> dict:
    path = root / "metrics" / "evaluate.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def safe_video_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "video"


def run_front_end(video: Path, work: Path, *, needs: set[str]) -> dict:
    """frames / faces / aus (and audio when needed) on one video under `work`. Returns facts;
    raises StageInputError when the model needs what the video lacks."""
    from stages import audio, aus, faces, frames
    from stages.ingest import probe_video

    facts = probe_video(video)  # raises, naming the file, when it cannot be decoded
    vid = safe_video_id(video)
    manifest = pd.DataFrame([{
        "video_id": vid, "path": str(video.resolve()), "split": "test", "subject_id": vid,
        "dataset": "predict", **{t: np.nan for t in TRAITS}, **facts, "label_scale": "unit"}])
    write_artifact("manifest", manifest, path=work / schemas.ARTIFACTS["manifest"].path)
    base = dataclasses.replace(load_params("base", BaseParams), workers=1)
    out = {"video_id": vid, **facts}
    if needs & VISUAL_KEYS or not needs & AUDIO_KEYS:
        frames.run(load_params("frames", frames.FramesParams), base, root=work)
        faces_summary = faces.run(load_params("faces", faces.FacesParams), base, root=work)
        face_table = read_artifact("faces", path=work / "data" / "faces",
                                   columns=["video_id", "frame_idx", "t", "face_found"])
        out["n_frames"] = int(len(face_table))
        out["face_rate"] = float(face_table["face_found"].mean()) if len(face_table) else 0.0
        if needs & VISUAL_KEYS and not face_table["face_found"].any():
            raise StageInputError(f"{video}: no face was found in any of its "
                                  f"{len(face_table)} sampled frames; this model needs one")
        aus.run(load_params("aus", aus.AusParams), base, root=work)
        out["faces_summary"] = {k: v for k, v in faces_summary.items()
                                if isinstance(v, (int, float, str))}
    if needs & AUDIO_KEYS:
        if not facts["has_audio"]:
            raise StageInputError(f"{video}: no audio track; this model needs audio")
        audio.run(load_params("audio", audio.AudioParams), base, root=work)
        row = read_artifact("audio", path=work / "data" / "audio",
                            columns=["video_id", "has_audio", "silent"]).iloc[0]
        if not bool(row["has_audio"]) or bool(row["silent"]):
            raise StageInputError(f"{video}: the audio track is silent or unreadable; this model "
                                  "needs audio")
    return out


def predict_video(video: Path, *, model: str | None = None, root: Path | None = None,
                  work: Path | None = None) -> dict:
    """Scores of one video: {"O": .., ..., "model": .., "checkpoint": .., facts...}."""
    from models.data import build_sources, for_inference
    from models.engine import load_checkpoint, predict_videos

    root = root or repo_root()
    video = Path(video)
    if not video.is_file():
        raise StageInputError(f"{video}: no such file")
    name, ckpt_path = resolve_model(model, root)
    net, ckpt = load_checkpoint(ckpt_path)
    needs = set(ckpt.get("inputs", []))
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        work_root = Path(tmp)
        facts = run_front_end(video, work_root, needs=needs)
        vid = facts["video_id"]
        sources = build_sources(sorted(needs), root=work_root, video_ids=[vid],
                                config=for_inference(ckpt.get("source_config")))
        scores = predict_videos(net, sources, [vid])[0]  # (5,)
        report_data = _report_data(work_root, vid)
    result = {t: float(s) for t, s in zip(TRAITS, scores)}
    result.update(model=ckpt.get("model_name", name), checkpoint=str(ckpt_path),
                  inputs=sorted(needs), label_scale=ckpt.get("label_scale", "unit"),
                  video=str(video), **{k: v for k, v in facts.items() if k != "video_id"})
    result["test_error"] = _test_error(root, result["model"], ckpt)
    result["_report"] = report_data
    return result


def _test_error(root: Path, name: str, ckpt: dict) -> dict[str, float] | None:
    """Per-trait test MAE of the model: metrics/evaluate.json, else the checkpoint's record."""
    entry = _evaluation(root).get(name)
    if isinstance(entry, dict) and all(isinstance(entry.get(t), dict) for t in TRAITS):
        values = {t: entry[t].get("mae") for t in TRAITS}
        if all(isinstance(v, (int, float)) for v in values.values()):
            return {t: float(v) for t, v in values.items()}
    test = (ckpt.get("params") or {}).get("test_metrics") or ckpt.get("test_metrics")
    if isinstance(test, dict) and all(isinstance(test.get(t), dict) for t in TRAITS):
        return {t: float(test[t]["mae"]) for t in TRAITS}
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
    fig = plt.figure(figsize=(10, 6.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    ax = fig.add_subplot(grid[0, :2])
    scores = [result[t] for t in TRAITS]
    err = result.get("test_error")
    ax.bar(range(5), scores, color="#4C72B0",
           yerr=[err[t] for t in TRAITS] if err else None, capsize=6,
           error_kw={"ecolor": "#333333", "label": "test MAE"})
    ax.set_xticks(range(5), [schemas.TRAIT_NAMES[t] for t in TRAITS], rotation=15)
    if result.get("label_scale", "unit") == "unit":
        ax.set_ylim(0, 1)
    for i, s in enumerate(scores):
        ax.text(i, s + 0.02, f"{s:.2f}", ha="center")
    ax.set_title(f"{Path(result['video']).name}: {result['model']}"
                 + ("  (bars: model's test MAE)" if err else ""))
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Big-Five scores for one video.")
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for prediction.json "
                        "and report.png")
    parser.add_argument("--model", default=None, help="registry name (data/models/NAME/best.pt) "
                        "or checkpoint path; default: best mean test CCC")
    args = parser.parse_args(argv)
    try:
        result = predict_video(args.video, model=args.model)
    except (StageInputError, ParamsError, SchemaError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # the engine's and sources' own errors: one line, not a traceback
        if type(exc).__name__ in ("EngineError", "SourceError"):
            log.error("%s", exc)
            return 2
        raise
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(result, args.out / "report.png")
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (args.out / "prediction.json").write_text(json.dumps(public, indent=2, default=str) + "\n")
    width = max(len(n) for n in schemas.TRAIT_NAMES.values())
    for t in TRAITS:
        print(f"{schemas.TRAIT_NAMES[t]:<{width}}  {result[t]:.3f}")
    print(f"model {result['model']}; wrote {args.out / 'prediction.json'} and "
          f"{args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
