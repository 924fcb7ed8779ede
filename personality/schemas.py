"""The one place where artifact layouts live. Every stage checks what it reads and writes here.

An artifact is a Parquet file (`sharded=False`) or a folder of Parquet shards that
`pandas.read_parquet(folder)` reads whole (`sharded=True`). `columns` lists the columns a reader may
rely on, with a coarse kind (int, float, bool, str, bytes, list); extra columns are allowed.
Every per-frame artifact carries `video_id`, `frame_idx` and `t` (seconds).
"""
from __future__ import annotations

import dataclasses

import pandas as pd
from pandas.api import types as ptypes

TRAITS = ("O", "C", "E", "A", "N")
TRAIT_NAMES = {"O": "openness", "C": "conscientiousness", "E": "extraversion",
               "A": "agreeableness", "N": "neuroticism"}
SPLITS = ("train", "val", "test")

# OpenFace 2.0 AU names the `aus` stage writes, whatever its backend.
AU_INTENSITY = ("AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r",
                "AU12_r", "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r",
                "AU45_r")
AU_PRESENCE = tuple(a.replace("_r", "_c") for a in AU_INTENSITY)


# Per-video audio functionals of data/audio by feature set (params audio.feature_sets) -> prefix.
AUDIO_FUNCTIONAL_PREFIXES = {"librosa": "fn_", "egemaps": "egemaps_", "compare": "compare_"}

# openSMILE eGeMAPSv02 functionals (Eyben et al. 2016), official names in openSMILE's order; the
# audio stage writes them as egemaps_<name> (personality/smile.py checks opensmile agrees).
EGEMAPS_V02 = (
    "F0semitoneFrom27.5Hz_sma3nz_amean", "F0semitoneFrom27.5Hz_sma3nz_stddevNorm",
    "F0semitoneFrom27.5Hz_sma3nz_percentile20.0", "F0semitoneFrom27.5Hz_sma3nz_percentile50.0",
    "F0semitoneFrom27.5Hz_sma3nz_percentile80.0", "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2",
    "F0semitoneFrom27.5Hz_sma3nz_meanRisingSlope", "F0semitoneFrom27.5Hz_sma3nz_stddevRisingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_meanFallingSlope",
    "F0semitoneFrom27.5Hz_sma3nz_stddevFallingSlope", "loudness_sma3_amean",
    "loudness_sma3_stddevNorm", "loudness_sma3_percentile20.0", "loudness_sma3_percentile50.0",
    "loudness_sma3_percentile80.0", "loudness_sma3_pctlrange0-2", "loudness_sma3_meanRisingSlope",
    "loudness_sma3_stddevRisingSlope", "loudness_sma3_meanFallingSlope",
    "loudness_sma3_stddevFallingSlope", "spectralFlux_sma3_amean", "spectralFlux_sma3_stddevNorm",
    "mfcc1_sma3_amean", "mfcc1_sma3_stddevNorm", "mfcc2_sma3_amean", "mfcc2_sma3_stddevNorm",
    "mfcc3_sma3_amean", "mfcc3_sma3_stddevNorm", "mfcc4_sma3_amean", "mfcc4_sma3_stddevNorm",
    "jitterLocal_sma3nz_amean", "jitterLocal_sma3nz_stddevNorm", "shimmerLocaldB_sma3nz_amean",
    "shimmerLocaldB_sma3nz_stddevNorm", "HNRdBACF_sma3nz_amean", "HNRdBACF_sma3nz_stddevNorm",
    "logRelF0-H1-H2_sma3nz_amean", "logRelF0-H1-H2_sma3nz_stddevNorm",
    "logRelF0-H1-A3_sma3nz_amean", "logRelF0-H1-A3_sma3nz_stddevNorm", "F1frequency_sma3nz_amean",
    "F1frequency_sma3nz_stddevNorm", "F1bandwidth_sma3nz_amean", "F1bandwidth_sma3nz_stddevNorm",
    "F1amplitudeLogRelF0_sma3nz_amean", "F1amplitudeLogRelF0_sma3nz_stddevNorm",
    "F2frequency_sma3nz_amean", "F2frequency_sma3nz_stddevNorm", "F2bandwidth_sma3nz_amean",
    "F2bandwidth_sma3nz_stddevNorm", "F2amplitudeLogRelF0_sma3nz_amean",
    "F2amplitudeLogRelF0_sma3nz_stddevNorm", "F3frequency_sma3nz_amean",
    "F3frequency_sma3nz_stddevNorm", "F3bandwidth_sma3nz_amean", "F3bandwidth_sma3nz_stddevNorm",
    "F3amplitudeLogRelF0_sma3nz_amean", "F3amplitudeLogRelF0_sma3nz_stddevNorm",
    "alphaRatioV_sma3nz_amean", "alphaRatioV_sma3nz_stddevNorm", "hammarbergIndexV_sma3nz_amean",
    "hammarbergIndexV_sma3nz_stddevNorm", "slopeV0-500_sma3nz_amean",
    "slopeV0-500_sma3nz_stddevNorm", "slopeV500-1500_sma3nz_amean",
    "slopeV500-1500_sma3nz_stddevNorm", "spectralFluxV_sma3nz_amean",
    "spectralFluxV_sma3nz_stddevNorm", "mfcc1V_sma3nz_amean", "mfcc1V_sma3nz_stddevNorm",
    "mfcc2V_sma3nz_amean", "mfcc2V_sma3nz_stddevNorm", "mfcc3V_sma3nz_amean",
    "mfcc3V_sma3nz_stddevNorm", "mfcc4V_sma3nz_amean", "mfcc4V_sma3nz_stddevNorm",
    "alphaRatioUV_sma3nz_amean", "hammarbergIndexUV_sma3nz_amean", "slopeUV0-500_sma3nz_amean",
    "slopeUV500-1500_sma3nz_amean", "spectralFluxUV_sma3nz_amean", "loudnessPeaksPerSec",
    "VoicedSegmentsPerSec", "MeanVoicedSegmentLengthSec", "StddevVoicedSegmentLengthSec",
    "MeanUnvoicedSegmentLength", "StddevUnvoicedSegmentLength", "equivalentSoundLevel_dBp",
)


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    path: str  # relative to the repo root
    columns: dict[str, str]
    sharded: bool = False
    doc: str = ""
    # columns that may be absent (they depend on params), by name prefix -> kind: every present
    # column with the prefix must be of that kind
    prefixed: dict[str, str] = dataclasses.field(default_factory=dict)


_PER_FRAME = {"video_id": "str", "frame_idx": "int", "t": "float"}

ARTIFACTS: dict[str, ArtifactSpec] = {
    "manifest": ArtifactSpec(
        "data/manifest.parquet",
        {"video_id": "str", "path": "str", "split": "str", "subject_id": "str", "dataset": "str",
         **{t: "float" for t in TRAITS},
         "duration_s": "float", "fps": "float", "has_audio": "bool"},
        doc="one row per video; `path` relative to the repo root or absolute; traits in [0,1] "
            "(NaN for unlabelled videos)"),
    "clips": ArtifactSpec(
        "data/clips.parquet",
        {"video_id": "str", "path": "str", "dataset": "str", "duration_s": "float", "fps": "float",
         "has_audio": "bool", "source_stat": "str"},
        doc="the manifest's videos without labels and splits: what frames and audio read, so "
            "that a new split or label re-runs no front-end stage; source_stat: 'size:mtime_ns' "
            "of a video outside data/videos (a replaced clip re-runs the front-end), else ''"),
    "user_study": ArtifactSpec(
        "data/user_study.parquet",
        {"video_id": "str", "rater_id": "str", **{t: "float" for t in TRAITS}},
        doc="one row per (video, rater): Likert ratings on 1-5"),
    "synthetic_cues": ArtifactSpec(
        "data/synthetic_cues.parquet",
        {"video_id": "str", "subject_id": "str"},
        doc="the synthetic generator's latent cues per clip (`cue_*` columns): ground truth for "
            "tests and the data card"),
    "synthetic_tracks": ArtifactSpec(
        "data/synthetic_tracks.parquet",
        {**_PER_FRAME, **{f"unit_{u}": "float" for u in (
            "smile", "brow_raise", "brow_lower", "jaw", "blink", "yaw", "pitch")}},
        doc="the synthetic generator's expression-unit strengths per rendered frame (frame_idx "
            "and t of the clip's own frame rate): per-frame ground truth for the front-end "
            "(docs/frontend.md); empty for other sources"),
    "frames": ArtifactSpec(
        "data/frames", {**_PER_FRAME, "width": "int", "height": "int", "jpeg": "bytes"},
        sharded=True, doc="sampled frames as JPEG bytes (BGR-encoded, rotated for display, longer "
                          "side <= frames.max_side); one Parquet row group per video"),
    "faces": ArtifactSpec(
        "data/faces",
        {**_PER_FRAME, "width": "int", "height": "int", "face_found": "bool", "n_faces": "int",
         "confidence": "float",
         "box_x": "float", "box_y": "float", "box_w": "float", "box_h": "float",
         "yaw": "float", "pitch": "float", "roll": "float",
         "landmarks": "list", "crop": "bytes",
         **{f"bs_{n}": "float" for n in (
             "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
             "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
             "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
             "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
             "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft",
             "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
             "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
             "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
             "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
             "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
             "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
             "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight")}},
        sharded=True,
        doc="per sampled frame (every frame of data/frames, face or not): the kept face's box "
            "(pixels of the frame image), 478 landmarks as a flat float32 list (x, y, z) * 478 in "
            "pixels (z scaled like x), 52 MediaPipe blendshapes `bs_<name>` in [0,1], head pose "
            "(yaw, pitch, roll, degrees), detector confidence, faces counted, and an aligned crop "
            "(eyes level, faces.size square) as JPEG bytes; NaN / null / 0 faces where "
            "face_found is false"),
    "aus": ArtifactSpec(
        "data/aus",
        {**_PER_FRAME, "success": "bool", "confidence": "float",
         **{a: "float" for a in AU_INTENSITY}, **{a: "float" for a in AU_PRESENCE}},
        sharded=True,
        doc="OpenFace-named AU intensities AUxx_r on 0-5 and presences AUxx_c (0/1) per frame; "
            "NaN (not 0) where success is false (no face, or OpenFace's success == 0)"),
    "audio": ArtifactSpec(
        "data/audio",
        {"video_id": "str", "has_audio": "bool", "silent": "bool", "error": "str",
         "sr": "int", "hop_s": "float", "n_frames": "int", "n_mels": "int", "n_mfcc": "int",
         "duration_s": "float", "audio_offset_s": "float",
         "logmel": "list", "mfcc": "list", "f0": "list", "voicing": "list", "rms": "list",
         "centroid": "list", "flatness": "list", "zcr": "list",
         "wave": "list", "wave_scale": "float", "n_samples": "int"},
        sharded=True, prefixed=dict.fromkeys(AUDIO_FUNCTIONAL_PREFIXES.values(), "float"),
        doc="ONE ROW PER VIDEO (stages/audio.py's docstring has the details). Per-window lists, "
            "all on one grid of hop_s seconds, frame i centred on i * hop_s (the frames' t: "
            "audio_offset_s, the seconds the track was shifted by to start at the first frame, "
            "leading silence when > 0, dropped when < 0; NaN: not shifted, offset unknown or "
            "audio.align_to_frames false), n_frames = T: "
            "logmel float32 T*n_mels time-major (reshape (T, n_mels)), dB re 1; mfcc float32 "
            "T*3*n_mfcc time-major (reshape (T, 3*n_mfcc): MFCC, delta, delta-delta); f0 (Hz, NaN "
            "where unvoiced), voicing (0-1), rms, centroid (Hz), flatness, zcr: float32 of length "
            "T. wave: int16 (or float32, audio.wave_format) of exactly max_seconds * sr samples, "
            "zero-padded; times wave_scale gives amplitude; its first n_samples are the track "
            "(a late one's leading silence included). "
            "fn_<stream>_<stat> floats: streams rms_db, centroid, flatness, zcr, voicing, f0 "
            "(voiced frames), logmel_KK, mfcc_KK, mfcc_d_KK, mfcc_dd_KK; stats mean, std, p<q>; "
            "plus fn_active_frac, fn_voiced_frac, fn_voiced_onsets_per_s. audio.feature_sets "
            "picks the functionals: librosa (the lists and fn_*; without it the lists are empty), "
            "egemaps (egemaps_<name> for the EGEMAPS_V02 names), compare (compare_<ComParE_2016 "
            "name>). has_audio=false (no stream or unreadable), silent=true or error!='' rows "
            "have NaN functionals and empty lists"),
}


def matches_kind(series: pd.Series, kind: str) -> bool:
    """Whether a column's dtype fits a coarse kind. Object columns are checked on one value."""
    dtype = series.dtype
    if kind == "float":
        return ptypes.is_float_dtype(dtype) or ptypes.is_integer_dtype(dtype)
    if kind == "int":
        return ptypes.is_integer_dtype(dtype)
    if kind == "bool":
        return ptypes.is_bool_dtype(dtype)
    if kind == "str":
        return ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype)
    first = series.dropna()
    first = first.iloc[0] if len(first) else None
    if kind == "bytes":
        return first is None or isinstance(first, (bytes, bytearray))
    if kind == "list":
        return first is None or hasattr(first, "__len__")
    raise ValueError(f"unknown column kind {kind!r}")


# AU sequences that come with the data (sources `perfex`, `openface_csv`: no video to analyse).
# Written by ingest, empty for video sources; the `aus` stage passes them through unchanged.
ARTIFACTS["source_aus"] = ArtifactSpec(
    "data/source_aus",
    {"video_id": "str", "frame_idx": "int", "t": "float", "success": "bool",
     **{a: "float" for a in AU_INTENSITY}},
    sharded=True, doc="per frame: OpenFace AU intensities read from the source's CSVs")

# PerFeX-style augmented AU sequences of the TRAIN split only (stages/augment.py). `video_id` is the
# source clip, `aug_id` names the sequence within it; `frame_idx` counts steps of the augmented
# sequence, `t` is the source frame's time.
ARTIFACTS["augmented"] = ArtifactSpec(
    "data/augmented",
    {"video_id": "str", "aug_id": "str", "frame_idx": "int", "t": "float",
     **{a: "float" for a in AU_INTENSITY}},
    sharded=True, doc="per step of an augmented sequence: AU intensities (0-5, NaN where the "
                      "source frame had no face); train-split clips only")

# Video-level predictions of the trained models (stages/train.py): one file per model,
# data/predictions/<model>.parquet; reading the folder gives every model's rows.
ARTIFACTS["predictions"] = ArtifactSpec(
    "data/predictions",
    {"video_id": "str", "split": "str", **{t: "float" for t in TRAITS}, "model": "str"},
    sharded=True, doc="one row per (model, video with inputs): predicted traits in [0, 1]")

# Per-video behavioural features (stages/functionals.py has the table of every column): AU, head
# pose, blink and audio functionals, NaN where the video lacks the modality.
ARTIFACTS["functionals"] = ArtifactSpec(
    "data/functionals/functionals.parquet",
    {"video_id": "str", "AU12_r_mean": "float", "AU12_c_share": "float",
     "AU12_onsets_per_s": "float", "head_speed_mean": "float", "blink_rate": "float",
     "face_share": "float"},
    doc="ONE ROW PER VIDEO: AUxx_r_mean/_sd/_p50/_p90, AUxx_c_share, AUxx_onsets_per_s, "
        "head_<yaw|pitch|roll>_sd, head_speed_mean/_p90, blink_rate, face_share, the audio "
        "stage's functionals (fn_* with f0_semitone_mean/_sd, egemaps_*, compare_*: whichever "
        "audio.feature_sets wrote)",
    prefixed=dict.fromkeys(AUDIO_FUNCTIONAL_PREFIXES.values(), "float"))
