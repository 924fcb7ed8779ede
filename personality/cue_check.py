"""The planted-cue check of the explain stage: which synthetic cue each functional measures, and
whether a model's most important features find the cues the generator planted.

    from personality.cue_check import cue_of, cue_check
    cue_of("AU12_c_share")                      # -> "smile"
    check = cue_check({"value": imp, "samples": boot}, features, LABEL_WEIGHTS, list(CUES))

The default synthetic data follow a known law (`LABEL_WEIGHTS`, personality/synthetic.py). For
each trait the check asks whether at least two of its three heaviest planted cues (by |weight|)
are among the cues of its k most important features, how often that holds over bootstrap
resamples, and how often k features drawn at random would pass (chance). stages/explain.py runs
it; docs/evaluation.md shows the tables.
"""
from __future__ import annotations

import numpy as np

from personality.schemas import TRAITS

__all__ = ["CUE_RULES", "cue_of", "cluster_cue", "planted_cues", "cue_hits", "same_cue",
           "cue_check"]

# functional -> the synthetic cue it measures: (cue, exact names or prefixes ending in "_").
# Visual: personality/cues.py's statistics and the AUs they read (AU06, the cheek raiser, moves
# with every smile); vocal: docs/audio.md. Everything else (spectral shape, other AUs) is "".
CUE_RULES = (
    ("smile", ("AU12_", "AU06_")),
    ("brow_raise", ("AU01_", "AU02_")),
    ("brow_lower", ("AU04_",)),
    ("blink_rate", ("AU45_", "blink_rate")),
    ("head_motion", ("head_",)),
    ("loudness", ("fn_rms_db_mean", "fn_rms_db_p50", "fn_rms_db_p90",
                  "egemaps_loudness_sma3_amean", "egemaps_loudness_sma3_percentile50.0",
                  "egemaps_loudness_sma3_percentile80.0", "egemaps_equivalentSoundLevel_dBp")),
    # eGeMAPS (Eyben et al. 2016): loudness peaks per second is its pseudo-syllable rate
    ("speech_rate", ("fn_voiced_onsets_per_s", "egemaps_VoicedSegmentsPerSec",
                     "egemaps_loudnessPeaksPerSec")),
    ("pitch_var", ("fn_f0_std", "f0_semitone_sd",
                   "egemaps_F0semitoneFrom27.5Hz_sma3nz_stddevNorm",
                   "egemaps_F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2")),
    ("pause", ("fn_active_frac", "fn_voiced_frac", "egemaps_MeanUnvoicedSegmentLength",
               "egemaps_StddevUnvoicedSegmentLength")),
    ("pitch", ("fn_f0_mean", "fn_f0_p10", "fn_f0_p50", "fn_f0_p90", "f0_semitone_mean",
               "egemaps_F0semitoneFrom27.5Hz_sma3nz_amean",
               "egemaps_F0semitoneFrom27.5Hz_sma3nz_percentile20.0",
               "egemaps_F0semitoneFrom27.5Hz_sma3nz_percentile50.0",
               "egemaps_F0semitoneFrom27.5Hz_sma3nz_percentile80.0")),
)


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """(k, K): per column, the rows of the k largest values (ties by row order; NaN last)."""
    return np.argsort(-np.nan_to_num(values, nan=-np.inf), axis=0, kind="stable")[:k]


def cue_of(feature: str) -> str:
    """The synthetic cue a functional measures (CUE_RULES), or ''."""
    for cue, patterns in CUE_RULES:
        if any(feature == p or (p.endswith("_") and feature.startswith(p)) for p in patterns):
            return cue
    return ""


def planted_cues(weights: np.ndarray, cues: list[str], k: int = 3) -> list[list[str]]:
    """Per trait (row of weights (5, n_cues)), its k cues of largest |weight|, heaviest first."""
    return [[cues[j] for j in np.argsort(-np.abs(row), kind="stable")[:k]] for row in weights]


def cue_hits(top: list[str], planted: list[str], to_cue=cue_of) -> int:
    """How many of the `planted` cues are measured by one of the `top` features."""
    found = {to_cue(f) for f in top}
    return sum(c in found for c in planted)


def same_cue(name: str) -> str:
    """The identity: for features that are the cues themselves (grouped importance)."""
    return name


def cue_check(importance: dict, features: list[str], weights: np.ndarray, cues: list[str], *,
              k_top: int = 5, k_planted: int = 3, need: int = 2, to_cue=cue_of) -> dict:
    """Per trait: the planted cues, the top features (by importance "value" (F, 5)) and their
    cues, hits, pass (hits >= need), and the share of bootstrap resamples ("samples" (B, F, 5))
    in which the check passes. `to_cue`: what a feature measures (`same_cue` when the features are
    the cues themselves: grouped importance)."""
    planted = planted_cues(weights, cues, k_planted)
    top = top_indices(importance["value"], k_top)  # (k, 5)
    samples = importance.get("samples")
    draws = np.random.default_rng(0).random((2000, len(features))).argsort(axis=1)[:, :k_top]
    out = {}
    for j, trait in enumerate(TRAITS):
        names = [features[i] for i in top[:, j]]
        hits = cue_hits(names, planted[j], to_cue)
        share = None
        if samples is not None:
            tops = top_indices(samples[:, :, j].T, k_top)  # (k, B)
            share = float(np.mean([cue_hits([features[i] for i in tops[:, b]], planted[j],
                                            to_cue) >= need for b in range(tops.shape[1])]))
        # chance: k_top features drawn at random pass this often (large clusters make it easier)
        chance = float(np.mean([cue_hits([features[i] for i in d], planted[j], to_cue) >= need
                                for d in draws]))
        out[trait] = {"planted": planted[j], "top": names, "top_cues": [to_cue(n) for n in names],
                      "hits": hits, "pass": hits >= need, "share_pass": share,
                      "chance_pass": chance}
    return out


def cluster_cue(members: list[str]) -> str:
    """The cue most members of a feature cluster measure (ties: CUE_RULES order), or ''."""
    counts = {cue: sum(cue_of(m) == cue for m in members) for cue, _ in CUE_RULES}
    best = max(counts.values())
    return next(cue for cue, n in counts.items() if n == best) if best else ""
