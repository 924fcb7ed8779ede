"""The default dataset's law: its ten latent cues, the weights that make the Big-Five labels of
them, and the labels' noise (personality/synthetic.py draws and renders the cues; docs/data_card.md
tells the story). A module of its own, light to import, so that evaluate can score the best any
predictor can do on these labels (`law_scores`: the ceiling row of metrics/results.md) without
importing the generator.

    from personality.law import law_scores
    law_scores(Path("data/synthetic_cues.parquet"))   # (n, 5) CCC-optimal scores by video_id
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from personality.ccc import ccc
from personality.schemas import TRAITS

VISUAL_CUES = ("smile", "brow_raise", "brow_lower", "blink_rate", "head_motion")
VOCAL_CUES = ("pitch", "pitch_var", "loudness", "speech_rate", "pause")
CUES = VISUAL_CUES + VOCAL_CUES

# Rows: traits O, C, E, A, N. Columns: CUES. Every trait mixes visual and vocal cues, so that a
# visual-only and an audio-only model each explain part of it and audio-visual explains more.
LABEL_WEIGHTS = np.array([
    # smile brow_r brow_l blink head | pitch p_var  loud  rate  pause
    [0.15,  0.55,  0.00,  0.00,  0.20,  0.00,  0.45,  0.00,  0.30,  0.00],  # O
    [0.00,  0.00,  0.20,  -0.30, -0.45, 0.00,  0.00,  0.00,  0.20,  -0.45],  # C
    [0.40,  0.00,  0.00,  0.00,  0.35,  0.00,  0.30,  0.50,  0.40,  0.00],  # E
    [0.55,  0.00,  -0.45, 0.00,  0.00,  0.25,  0.00,  -0.20, 0.00,  0.00],  # A
    [-0.20, 0.00,  0.40,  0.50,  0.00,  0.00,  -0.30, 0.00,  0.00,  0.35],  # N
])
LABEL_SCALE = 0.13  # sd of the explainable part of a trait on [0, 1]
LABEL_NOISE = np.array([0.07, 0.08, 0.06, 0.07, 0.08])  # sd of the unexplainable part, per trait
# CCC rewards a prediction whose spread matches the labels': the noise-free value (the least-
# squares optimum, sd s) scores 2s² / (2s² + σ²), the same value stretched to the labels' sd
# √(s² + σ²) scores their correlation s / √(s² + σ²), the most any predictor reaches in
# expectation. (5,): the stretch per trait, from the law's constants alone (no label).
CCC_STRETCH = np.sqrt(LABEL_SCALE ** 2 + LABEL_NOISE ** 2) / LABEL_SCALE


def explainable(cues: np.ndarray, weights: np.ndarray = LABEL_WEIGHTS) -> np.ndarray:
    """The noise-free trait values, (n, 5) on [0, 1]: 0.5 + 0.13 * normalised weighted cues."""
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    return 0.5 + LABEL_SCALE * cues @ unit.T


def labels_from_cues(cues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Big-Five labels, (n, 5) in [0, 1]."""
    noise = rng.standard_normal((len(cues), len(TRAITS))) * LABEL_NOISE
    return np.clip(explainable(cues) + noise, 0.0, 1.0)


def best_ccc_scores(cues: np.ndarray) -> np.ndarray:
    """The CCC-optimal scores (n, 5) of clips with latent `cues` (n, 10): the noise-free values
    stretched about 0.5 to the labels' spread (CCC_STRETCH)."""
    return 0.5 + (explainable(cues) - 0.5) * CCC_STRETCH


def noise_ceiling(n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Best CCC per trait of any predictor in expectation: that of the CCC-optimal scores (the
    noise-free values stretched to the labels' spread) against the labels."""
    rng = np.random.default_rng(seed)
    cues = rng.standard_normal((n, len(CUES)))
    best = best_ccc_scores(cues)
    labels = labels_from_cues(cues, rng)
    return {t: ccc(best[:, i], labels[:, i]) for i, t in enumerate(TRAITS)}


def law_scores(cues_file: Path) -> pd.DataFrame:
    """The CCC-optimal scores (`best_ccc_scores`: the labels before their noise, stretched to
    their spread; the best CCC any predictor reaches in expectation) of each clip of
    `cues_file` (data/synthetic_cues.parquet, ingest's latent cues): (n, 5), TRAITS columns,
    indexed by video_id; empty for a real dataset (no such table)."""
    columns = [f"cue_{c}" for c in CUES]
    table = pd.read_parquet(cues_file) if Path(cues_file).is_file() else pd.DataFrame()
    if table.empty or not set(columns) <= set(table.columns):
        return pd.DataFrame(columns=list(TRAITS), dtype=np.float64)
    return pd.DataFrame(best_ccc_scores(table[columns].to_numpy(np.float64)),
                        index=table["video_id"].to_numpy(), columns=list(TRAITS))
