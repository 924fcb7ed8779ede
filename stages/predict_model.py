"""predict's model side: which trained model can score a clip, and its checkpoint, read once.

    loaded = load_model(find_checkpoint("hrnet_face", root))   # EngineError naming the file
    why = missing_inputs(set(loaded.needs), facts, config=loaded.config)   # '' when it can feed it
    scores, sources = model_scores(loaded, work_root, video_id, video)

A clip's facts (stages/predict.py, run_front_end: face share, audio, voiced share) against a
model's input keys: visual and AU inputs need a face, audio inputs an audio track that is not
silent, the per-video functionals either of the two, or the one their fitted columns are all of
(without it every functional the model reads is absent and the "scores" would be the same for
every such clip: a ridge's train mean, the trees' one leaf path). `clip_warnings` says in plain words what
the clip lacks, of what the scoring model reads (`model_reads`: a face model hears of no silent
track, an audio model of no missing face); stages/predict_caveats.py what makes a model's scores
for the clip shaky. `load_model` reads a checkpoint with models/checkpoints.py (weights_only) and
checks it before any work on a video; whatever a foreign, tampered or unfinished file makes fail,
there or while scoring, is one EngineError naming it; a non-finite output is refused.

A module of its own so that stages/predict.py stays under the file-size limit; it imports no
other stage (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np

from personality.common import StageInputError, find_checkpoint, get_logger, repo_root
from personality.schemas import AUDIO_FUNCTIONAL_PREFIXES, TRAITS

log = get_logger("predict")

__all__ = ["VISUAL_KEYS", "AUDIO_KEYS", "EITHER_KEYS", "trained_models", "validation_ranking",
           "choose_model", "clip_warnings", "model_reads", "missing_inputs", "LoadedModel",
           "load_model", "model_scores", "own_test_error", "evaluation", "test_error_interval",
           "clip_interval"]

VISUAL_KEYS = {"face", "face_seq", "frame", "aus", "aus_mask"}
AUDIO_KEYS = {"logmel", "wave", "audio_fn"}
# per-video functionals (stages/functionals.py): AU statistics and audio ones; a clip with neither
# a face nor usable audio gets every column absent, i.e. the checkpoint's train mean as "scores"
EITHER_KEYS = {"functionals"}


def enter_project() -> str | None:
    """predict reads the params.yaml and data/models of a project: the one the current folder is
    in, else the checkout this code is in (`PYTHONPATH=/repo python -m stages.predict ...` run
    from elsewhere), which it then works from (predict.main rebases the paths it was given on
    the folder it was run from). None when there is one; else why not."""
    if (repo_root() / "params.yaml").is_file():
        return None
    own = Path(__file__).resolve().parents[1]
    if (own / "dvc.yaml").is_file() and (own / "params.yaml").is_file():
        log.info("%s is not inside the project: using the one this code is in, %s",
                 Path.cwd(), own)
        os.chdir(own)
        return None
    return (f"{Path.cwd()} is not inside the project (no params.yaml here or above, nor beside "
            f"this code in {own}): run predict from the checkout")


def trained_models(root: Path) -> list[str]:
    """Names of every trained and retrained model with a checkpoint under `root`, sorted."""
    return sorted({p.parent.name for pattern in ("data/models/*/best.pt",
                                                 "data/retrained/models/*/best.pt")
                   for p in root.glob(pattern)})


def validation_ranking(root: Path, names: list[str]) -> list[tuple[str, float]]:
    """(model, mean val CCC) best first: evaluate's selection figures (metrics/evaluate.json),
    else the train stage's own (metrics/train/<model>.json). Models are chosen on validation:
    the test split is for the report only. A checkpoint that measured its own val CCC (trained
    with a val split) and disagrees with those figures is not the model they describe (metrics
    of another run: a `git checkout` without `dvc checkout`): its own figure ranks it. Ties go
    to the lower val MAE, as in evaluate's choice (models.report.rank_models)."""
    from models.report import rank_models

    val = (evaluation(root).get("selection") or {}).get("val") or {}
    figures = {}
    for name in names:
        ccc, mae = ((val.get(name) or {}).get(k) for k in ("ccc", "mae"))
        if ccc is None:
            ccc, mae = _train_figure(root, name), None
        own = _own_val_ccc(find_checkpoint(name, root))
        if own is not None and not (isinstance(ccc, (int, float)) and abs(own - ccc) <= 1e-4):
            _say_other_run(name, own, ccc)
            ccc, mae = own, None
        if isinstance(ccc, (int, float)):
            figures[name] = {"ccc": float(ccc),
                             "mae": float(mae) if isinstance(mae, (int, float)) else None}
    return [(name, figures[name]["ccc"]) for name in rank_models(figures)]


def _train_figure(root: Path, name: str) -> float | None:
    """The train stage's mean val CCC of `name` (metrics/train/<name>.json), or None."""
    path = root / "metrics" / "train" / f"{name}.json"
    try:
        return json.loads(path.read_text())["val"]["model"]["ccc"] if path.exists() else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _own_val_ccc(path: Path) -> float | None:
    """The mean val CCC a checkpoint recorded for its weights (its history's row of the best
    epoch); None when it has none (trained without a val split: retrained models) or cannot be
    read (choose_model says why)."""
    from models.engine import EngineError

    try:
        ckpt = _read_once(path)
    except EngineError:
        return None
    rows = [row for row in ckpt.get("history") or []
            if isinstance(row, dict) and row.get("epoch") == ckpt.get("best_epoch")]
    value = rows[-1].get("val_ccc") if rows else None
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _read_once(path: Path) -> dict:
    """The checkpoint at `path`, read once per version of the file and process (ranking and
    model choice both read it, for every video of a batch). EngineError when unreadable."""
    try:
        stat = path.stat()
    except OSError:
        stat = None
    return _read_version(str(path), stat and stat.st_mtime_ns, stat and stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_version(path: str, mtime_ns: int | None, size: int | None) -> dict:
    from models.engine import read_checkpoint

    return read_checkpoint(path)


@functools.lru_cache(maxsize=64)
def _say_other_run(name: str, own: float, metrics: float | None) -> None:
    """Warn once per process (a batch asks per video) that the metrics describe another run."""
    log.warning("%s: its checkpoint's val CCC is %.4f, the metrics' %s: they come from another "
                "run (`dvc checkout` or `dvc repro` makes them agree); ranked by the "
                "checkpoint's", name, own, "none" if metrics is None else f"{metrics:.4f}")


def _inputs_of(path: Path) -> set[str]:
    """The inputs a checkpoint's model reads: as stored, else as its model is registered."""
    from models.registry import model_spec

    ckpt = _read_once(path)
    inputs = ckpt.get("inputs") or []
    if not inputs and isinstance(ckpt.get("model_name"), str):
        try:
            inputs = list(model_spec(ckpt["model_name"]).inputs)
        except (KeyError, ValueError):  # an unknown model: load_checkpoint names it later
            pass
    return set(inputs)


def choose_model(root: Path, facts: dict) -> tuple[str, Path, list[str]]:
    """The best validation model among those whose inputs the clip has (`missing_inputs`: a face
    for visual and AU models, usable audio for audio models, either for functionals models, or
    the one modality all their columns are of),
    its checkpoint, and why better ones were passed over (unreadable checkpoints: said aloud)."""
    from models.engine import EngineError

    names = trained_models(root)
    if not names:
        raise StageInputError(f"no trained model under {root / 'data'}: run `make run` "
                              "or pass --model PATH")
    ranked = [n for n, _ in validation_ranking(root, names)] or names
    passed_over: list[str] = []
    cannot: dict[str, list[str]] = {}  # what the clip lacks -> the better models that need it
    for name in ranked:
        path = find_checkpoint(name, root)
        try:
            inputs = _inputs_of(path)
            config = _read_once(path).get("source_config")  # a functionals model's columns
        except EngineError as exc:  # a broken file: the next model, said aloud
            passed_over.append(f"the checkpoint of {name}, better on validation, is unreadable,"
                               f" so it was passed over: {exc}")
            log.warning("%s", passed_over[-1])
            continue
        why = missing_inputs(inputs, facts, config=config if isinstance(config, dict) else None)
        if not why:
            # the clip's lack decided the choice: said here, for the warnings of the model
            # chosen leave out what it does not read (a face-less clip scored by an audio model)
            return name, path, passed_over + [
                f"{', '.join(better)} {'ranks' if len(better) == 1 else 'rank'} higher on "
                f"validation but cannot score this clip: {lack}"
                for lack, better in cannot.items()]
        cannot.setdefault(why.split(";")[0], []).append(name)
    raise StageInputError(f"{facts.get('video')}: no trained model can score it: "
                          + "; ".join([*clip_warnings(facts), *passed_over]))


def evaluation(root: Path) -> dict:
    """metrics/evaluate.json under `root`, parsed ({} when missing or unreadable)."""
    path = root / "metrics" / "evaluate.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


MIN_FACE_SHARE = 0.5  # below this share of sampled frames with a face, the report warns
# from this share of sampled frames with more than one face on, the report warns: faces.select
# keeps one face per frame, not one person per clip (two people of about the same size: either)
SEVERAL_FACES_SHARE = 0.1


def clip_warnings(facts: dict, reads: frozenset | None = None) -> list[str]:
    """What the clip lacks or what was cut, in plain words; never a modality to fall back on that
    is missing too. `reads`: the modalities the scoring model reads (`model_reads`: "face",
    "audio"); None before a model is chosen, when the clip's lacks are said for any model. A
    lack or damage in a modality the model never reads is no warning (a face model's scores do
    not move with a silent track); a model left with none of what it reads (also a functionals
    model whose columns are all of the missing modality) cannot score the clip: missing_inputs
    refuses it."""
    face, voice = facts.get("face_share"), _usable_audio(facts)
    sees, hears = _reads_face(reads), _reads_audio(reads)
    n = facts.get("n_frames", 0)
    out = [_lack_warning(f"no face in any of the {n} sampled frames", reads, "face",
                         voice, facts)] if face == 0 else []
    if sees and face is not None and 0 < face < MIN_FACE_SHARE:
        out.append(f"a face in only {100 * face:.0f}% of the sampled frames: visual scores rest "
                   "on few frames")
    several = (facts.get("faces_summary") or {}).get("frames_with_several_faces") or 0
    if sees and several and several >= SEVERAL_FACES_SHARE * n:
        out.append(f"more than one face in {several} of the {n} sampled frames: one face per "
                   "frame was scored (faces.select), not necessarily the same person's "
                   "throughout")
    if not voice and face != 0:
        out.append(_lack_warning(_audio_lack(facts), reads, "audio", bool(face), facts))
    elif hears and voice and facts.get("voiced_share") is not None \
            and facts["voiced_share"] < 0.05:
        out.append(f"almost no voiced speech ({100 * facts['voiced_share']:.0f}% of the audio)")
    if facts.get("ends_at_s") is not None:
        declared = facts.get("declared_s", facts.get("duration_s", 0))  # older results: no key
        out.append(f"the video ends at {facts['ends_at_s']:.1f} s of its declared "
                   f"{declared:.1f} s: the file looks truncated")
    elif facts.get("cut"):  # container_end.cut_short's words
        out.append(f"the file {facts['cut']}: it looks truncated")
    cut = facts.get("audio_cut_at_s")
    if hears and cut:
        out.append(f"audio features stop at {cut:.0f} s (audio.max_feature_seconds) of a "
                   f"{facts.get('duration_s', 0):.0f} s clip")
    # "N corrupt video packet(s) skipped ...", "... audio ... as silence", "recorded at 8000 Hz"
    damaged = (list(facts.get("video_notes") or []) if sees else []) + \
        (list(facts.get("audio_notes") or []) if hears else [])
    return [w for w in out if w] + damaged


def _lack_warning(lack: str, reads: frozenset | None, modality: str, other: bool,
                  facts: dict) -> str:
    """The warning for a clip without `modality` ("face" or "audio"), `other` whether it has the
    other one, worded for the model that scores it; '' when that model never reads `modality`."""
    rest = "the voice" if modality == "face" else "the face"
    if reads is None:  # no model chosen yet: what any model could do
        if modality == "face" and not other:
            return f"{lack} and {_audio_lack(facts)}: nothing to score"
        return lack + (f": scores can come from {rest} alone" if other else "")
    if modality not in reads:
        return ""
    if reads == {modality}:  # such a model is refused (missing_inputs): this says why
        return f"{lack}: the model reads only {'the face' if modality == 'face' else 'audio'}"
    return lack + (f": its scores come from {rest} alone" if other else "")


def _reads_face(reads: frozenset | None) -> bool:
    return reads is None or "face" in reads


def _reads_audio(reads: frozenset | None) -> bool:
    return reads is None or "audio" in reads


# column prefixes of the audio's per-video functionals (stages/functionals.audio_functionals:
# the audio stage's fn_*, egemaps_*, compare_*, and the semitone pitch beside fn_*)
AUDIO_COLUMNS = (*AUDIO_FUNCTIONAL_PREFIXES.values(), "f0_semitone_")


def model_reads(needs: set[str] | frozenset, config: dict | None = None) -> frozenset:
    """The modalities a model's scores come from: "face" for visual and AU inputs, "audio" for
    log-mel, wave and audio functionals, and for the per-video functionals whichever of the two
    their columns hold (`config`: the checkpoint's source config, whose fitted `columns` say;
    both when it keeps none)."""
    reads = {"face"} if needs & VISUAL_KEYS else set()
    reads |= {"audio"} if needs & AUDIO_KEYS else set()
    if needs & EITHER_KEYS:
        fitted = (config or {}).get("functionals")
        columns = fitted.get("columns") if isinstance(fitted, dict) else None
        # choose_model reads a checkpoint unchecked (load_model checks the one chosen)
        columns = [c for c in columns if isinstance(c, str)] if isinstance(
            columns, (list, tuple)) else []
        audio = [c.startswith(AUDIO_COLUMNS) for c in columns]
        reads |= {"face", "audio"} if not columns else \
            {m for m, present in (("audio", any(audio)), ("face", not all(audio))) if present}
    return frozenset(reads)


def _usable_audio(facts: dict) -> bool:
    return bool(facts.get("has_audio")) and not facts.get("audio_silent")


def _audio_lack(facts: dict) -> str:
    if not facts.get("has_audio"):
        return "no audio track"
    error = facts.get("audio_error")
    return f"the audio track is unusable ({error})" if error else "the audio track is silent"


def missing_inputs(needs: set[str], facts: dict, *, probed_only: bool = False,
                   config: dict | None = None) -> str:
    """'' when the clip offers what a model with inputs `needs` reads, else why not.
    `probed_only`: `facts` are the file's probe, before the front-end: only a missing audio
    track is known yet. `config`: the checkpoint's source config; a per-video functionals model
    whose fitted columns are all of one modality (`model_reads`) needs that one, as a model of
    that modality's inputs does: without it every column it reads is absent (0 after
    standardisation), so it would give every such clip the same scores (a ridge its train mean)."""
    own = model_reads(needs & EITHER_KEYS, config)  # {} without functionals
    why = " (its functionals are all {} ones)" if len(own) == 1 else ""
    needs_face = bool(needs & VISUAL_KEYS) or own == {"face"}
    needs_audio = bool(needs & AUDIO_KEYS) or own == {"audio"}
    if probed_only:
        return (f"no audio track; this model needs audio{why.format('audio')}"
                if needs_audio and not facts.get("has_audio") else "")
    if own and not facts.get("face_share") and not _usable_audio(facts):
        return "no face and no usable audio: nothing to score"
    if needs_face and not facts.get("face_share"):
        return f"no face was found in any of its sampled frames; this model needs one" \
               f"{why.format('face')}"
    if needs_audio and not _usable_audio(facts):
        # names what the audio stage found: a track under one f0 frame says its length
        return f"{_audio_lack(facts)}; this model needs audio{why.format('audio')}"
    return ""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A checkpoint read, rebuilt and checked once (`load_model`)."""

    path: Path
    net: object  # the torch module, eval mode
    ckpt: dict
    needs: frozenset  # its input keys
    config: dict  # its sources' inference config (models.data.for_inference)

    @property
    def reads(self) -> frozenset:
        """The modalities its scores come from ("face", "audio"): `model_reads`."""
        return model_reads(self.needs, self.config)


def load_model(path: Path) -> LoadedModel:
    """Read, rebuild and check the checkpoint at `path` (models/checkpoints.py's load_checkpoint
    and require_finished): a file that is not a usable checkpoint of ours is an EngineError with
    one line naming it, whatever went wrong inside (a foreign model_config, a wrong shape, no or
    unknown inputs, a bad source_config)."""
    from models.checkpoints import load_checkpoint, require_finished
    from models.data import check_source_options, for_inference, source_keys
    from models.engine import EngineError

    try:
        net, ckpt = load_checkpoint(path)
        require_finished(ckpt, path)
        needs = ckpt.get("inputs")
        if not isinstance(needs, list) or not needs or not all(isinstance(k, str) for k in needs):
            raise EngineError(f"{path}: names no model inputs (inputs: {needs!r})")
        unknown = sorted(set(needs) - set(source_keys()))
        if unknown:
            raise EngineError(f"{path}: unknown model input(s) {', '.join(unknown)} (known: "
                              f"{', '.join(source_keys())})")
        config = for_inference(ckpt.get("source_config"))
        check_source_options(needs, config)  # a bad option now, not after the front-end
        check_clip_lengths(net, needs, config)
    except MemoryError:  # the machine's, not the file's
        raise
    except Exception as exc:  # noqa: BLE001 - anything a foreign file triggers: one line
        raise _named(path, exc, "not a usable checkpoint") from None
    return LoadedModel(Path(path), net, ckpt, frozenset(needs), config)


def check_clip_lengths(net, needs, config: dict) -> None:
    """EngineError when the clips the checkpoint's source config cuts for an input that is never
    padded (a face clip: models/inference.py, PADDED) are shorter than the network takes
    (min_lengths): every video would be refused at scoring, after its front-end had run.
    Train refuses such a config (check_train_lengths); this is a checkpoint from before it, or
    one edited since."""
    from models.data import train_lengths
    from models.engine import EngineError
    from models.inference import PADDED, min_lengths

    need = {k: n for k, n in min_lengths(net).items() if k in needs and k not in PADDED}
    for key, (option, value) in train_lengths(need, config).items():
        if value < need[key]:
            raise EngineError(f"its {key} clips are {value} steps (source_config.{key}.{option}), "
                              f"under the {need[key]} {type(net).__name__} takes (min_lengths): "
                              "it could score no video")


def _named(path: Path, exc: BaseException, what: str):
    """EngineError for `exc`, on one line, naming `path` (when the message does not already)."""
    from models.engine import EngineError

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines[:2])[:300] or type(exc).__name__
    if type(exc).__name__ not in ("EngineError", "SourceError", "StageInputError"):
        text = f"{type(exc).__name__}: {text}"
    return EngineError(text if str(path) in text else f"{path}: {what}: {text}")


def model_scores(loaded: LoadedModel, work_root: Path, vid: str, video: Path):
    """(the five scores (5,), the sources built) of clip `vid`. Whatever the checkpoint's inputs
    or model make fail here is one EngineError naming it; so is an output that is not finite
    (NaN weights): never printed or written as scores."""
    from models.data import build_sources
    from models.engine import EngineError, predict_videos

    try:
        sources = build_sources(sorted(loaded.needs), root=work_root, video_ids=[vid],
                                config=loaded.config)
        scores = np.asarray(predict_videos(loaded.net, sources, [vid])[0], dtype=float)  # (5,)
    except MemoryError:  # the machine's, not the checkpoint's
        raise
    except Exception as exc:  # noqa: BLE001 - the checkpoint's config or model failed on it
        raise _named(loaded.path, exc, f"cannot score {video} with it") from None
    if scores.shape != (len(TRAITS),):
        raise EngineError(f"{loaded.path}: model output has shape {scores.shape} for {video}, "
                          f"not one score per trait ({len(TRAITS)},); refused")
    if not np.isfinite(scores).all():
        raise EngineError(f"{loaded.path}: model output is not finite (scores "
                          f"{np.round(scores, 3).tolist()} for {video}); refused")
    return scores, sources


def own_test_error(root: Path, name: str, ckpt: dict) -> dict[str, float] | None:
    """Per-trait test MAE measured for *this* checkpoint (written into it when its training run
    finished), or None: a number measured for another run of the model is never quoted."""
    error = ckpt.get("test_error")
    if isinstance(error, dict) and all(isinstance(error.get(t), (int, float)) for t in TRAITS):
        return {t: float(error[t]) for t in TRAITS}
    return None


def test_error_interval(report: dict, name: str, error: dict[str, float] | None
                        ) -> dict[str, list[float]] | None:
    """Per-trait 95% interval [low, high] of `error` (the checkpoint's own test MAE), from
    metrics/evaluate.json's bootstrap over test subjects (`report`: `evaluation`), but only
    where evaluate measured this
    very run: its MAE equals the checkpoint's for every trait (to 1e-6). Otherwise None: an
    interval around another run's figure is not this checkpoint's."""
    figures = _measured_here(report, name, error)
    try:
        intervals = {t: [float(v) for v in figures["ci"][t]["mae"]] for t in TRAITS}
    except (KeyError, TypeError, ValueError):  # none measured here, or withheld (one subject)
        return None
    return intervals if all(len(v) == 2 for v in intervals.values()) else None


def _measured_here(report: dict, name: str, error: dict[str, float] | None) -> dict | None:
    """evaluate.json's (`report`) entry of `name` where evaluate measured this very run: its
    test MAE equals the checkpoint's own (`error`) for every trait (to 1e-6); else None."""
    figures = report.get(name) if error else None
    try:
        if figures is None or any(abs(figures[t]["mae"] - error[t]) > 1e-6 for t in TRAITS):
            return None
    except (KeyError, TypeError):
        return None
    return figures


def clip_interval(report: dict, name: str, error: dict[str, float] | None, scores: dict,
                  unit_scale: bool) -> dict | None:
    """The clip's prediction interval: each score ± its model's split-conformal half-width
    (models/conformal.py, from the model's val residuals: metrics/evaluate.json's
    selection.val.<name>.interval_half_width; `report`: `evaluation`), clipped to [0, 1] on the
    unit scale:
    {"level", trait: [low, high] (None where val gave no half-width)}. Only where evaluate
    measured this very run (`_measured_here`, test_error_interval's check; a test split of one
    subject, whose MAE interval is withheld, keeps its val half-widths), else None."""
    half = ((((report.get("selection") or {}).get("val") or {}).get(name) or {})
            .get("interval_half_width"))
    level = ((report.get(name) or {}).get("prediction_interval") or {}).get("level")
    if not half or level is None or _measured_here(report, name, error) is None:
        return None
    out: dict = {"level": level}
    for t, h in zip(TRAITS, half):
        low, high = (scores[t] - h, scores[t] + h) if h is not None else (None, None)
        out[t] = (None if h is None else [max(low, 0.0), min(high, 1.0)] if unit_scale
                  else [low, high])
    return out
