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

What a feature measures is decided two ways: by its name (`CUE_RULES`, `cluster_cue`: a cluster
of functionals takes the cue most of its cue-carrying members measure, none on a tie), and,
because the default data know their latent cues and face photos (`latent_cues`), by the data
(`measured_cues`, `measured_check`: the cue a column follows best on the train clips within face
photo, if at |Spearman r| >= 0.5, else the photo where it follows that). `cue_checks` runs every
variant for one model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personality.schemas import TRAITS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CUE_RULES", "cue_of", "cluster_cue", "planted_cues", "cue_hits", "same_cue",
           "chance_pass", "cue_check", "latent_cues", "measured_cues", "measured_check",
           "cue_checks"]

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


def chance_pass(measures: list[str], planted: list[str], k: int, need: int) -> float:
    """The chance that k features drawn at random (without replacement, every k-subset equally
    likely) measure at least `need` of the `planted` cues, exactly. measures (F,): the cue each
    feature measures ('' for none). With one feature per cue it is the hypergeometric tail
    (3 of 10 cues drawn, 3 planted, >= 2 hits: 22/120 = 18.3%); with clusters several features
    may measure one cue and a planted cue may have none, so it counts by inclusion-exclusion:
    the k-subsets that hit no planted cue outside T number C(F - features of those cues, k),
    and those that hit exactly the set S follow by Moebius inversion over the subsets T of S."""
    from itertools import combinations
    from math import comb

    n_feat, k = len(measures), min(k, len(measures))
    if n_feat == 0:
        return 0.0
    count = {c: sum(m == c for m in measures) for c in planted}  # features per planted cue

    def within(hit: tuple) -> int:  # k-subsets whose planted cues are all in `hit`
        return comb(n_feat - sum(n for c, n in count.items() if c not in hit), k)

    def exactly(hit: tuple) -> int:  # k-subsets whose planted cues are exactly `hit`
        return sum((-1) ** (len(hit) - t) * within(inner)
                   for t in range(len(hit) + 1) for inner in combinations(hit, t))

    passing = sum(exactly(hit) for size in range(need, len(planted) + 1)
                  for hit in combinations(planted, size))
    return passing / comb(n_feat, k)


def cue_check(importance: dict, features: list[str], weights: np.ndarray, cues: list[str], *,
              k_top: int = 5, k_planted: int = 3, need: int = 2, to_cue=cue_of) -> dict:
    """Per trait: the planted cues, the top features (by importance "value" (F, 5)) and their
    cues, hits, need, pass (hits >= need), the share of bootstrap resamples ("samples"
    (B, F, 5)) in which the check passes, and how often k_top of these features drawn at
    random would pass (chance_pass, exact). `to_cue`: what a feature measures (`same_cue` when
    the features are the cues themselves: grouped importance)."""
    planted = planted_cues(weights, cues, k_planted)
    top = top_indices(importance["value"], k_top)  # (k, 5)
    samples = importance.get("samples")
    measures = [to_cue(f) or "" for f in features]  # (F,) the cue of each feature
    out = {}
    for j, trait in enumerate(TRAITS):
        names = [features[i] for i in top[:, j]]
        hits = cue_hits(names, planted[j], to_cue)
        share = None
        if samples is not None:
            tops = top_indices(samples[:, :, j].T, k_top)  # (k, B)
            share = float(np.mean([cue_hits([features[i] for i in tops[:, b]], planted[j],
                                            to_cue) >= need for b in range(tops.shape[1])]))
        # chance: k_top features drawn at random pass this often (large clusters make it
        # easier; a planted cue no feature measures, harder)
        out[trait] = {"planted": planted[j], "top": names, "top_cues": [to_cue(n) for n in names],
                      "hits": hits, "need": need, "pass": hits >= need, "share_pass": share,
                      "chance_pass": chance_pass(measures, planted[j], k_top, need)}
    return out


def cluster_cue(members: list[str]) -> str:
    """The cue most members of a feature cluster measure, or '' when none does or two cues tie:
    a tie says the cluster is not about either (the default data's cluster of 11 lower-face
    statistics with one brow and one blink statistic follows the face photo, not a cue)."""
    counts = {cue: sum(cue_of(m) == cue for m in members) for cue, _ in CUE_RULES}
    best = max(counts.values())
    leaders = [cue for cue, n in counts.items() if n == best]
    return leaders[0] if best and len(leaders) == 1 else ""


def latent_cues(path: Path) -> pd.DataFrame | None:
    """The generator's latent cues per clip (ingest's data/synthetic_cues.parquet at `path`:
    video_id -> one column per cue of personality.synthetic.CUES, then `photo:<name>` 0/1 per
    face photo but the first where ingest wrote `face_photo`: who the clip shows, a nuisance a
    model may read), or None when ingest wrote none (a real dataset)."""
    import pandas as pd

    from personality.common import read_artifact
    from personality.synthetic import CUES

    columns = [f"cue_{c}" for c in CUES]
    table = read_artifact("synthetic_cues", path=path) if path.exists() else pd.DataFrame()
    if table.empty or not {"video_id", *columns} <= set(table.columns):
        return None
    out = table.set_index("video_id")[columns].set_axis(list(CUES), axis=1)
    if "face_photo" in table.columns:
        for name in sorted(table["face_photo"].unique())[1:]:
            out[f"photo:{name}"] = (table["face_photo"] == name).to_numpy(np.float64)
    return out


def measured_cues(x: np.ndarray, latent: np.ndarray, cues: list[str], min_r: float,
                  strata: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """What each column of x (n, F) follows in the data, not by its name: the latent cue
    (latent (n, C), the generator's cues of the same n clips) with the largest |Spearman r|, or
    '' where that |r| is below min_r; and the |r| (F,). Pairwise over rows where both are
    finite (a clip without a face has NaN AU functionals). strata (n,): a nuisance the clips
    fall into (the face photo); every rank is then centred within its stratum first (a partial
    Spearman r), so that a level that differs between strata neither makes nor hides a cue."""
    import pandas as pd

    both = pd.concat([pd.DataFrame(x), pd.DataFrame(latent, columns=[f"cue{j}" for j in
                                                                       range(latent.shape[1])])],
                     axis=1)
    ranks = both.rank()
    if strata is not None:
        ranks = ranks - ranks.groupby(np.asarray(strata)).transform("mean")
    r = ranks.corr(method="pearson", min_periods=3).to_numpy()[:x.shape[1], x.shape[1]:]
    r = np.abs(np.nan_to_num(r, nan=0.0))  # (F, C); a constant column follows nothing
    best = r.argmax(axis=1)
    strength = r[np.arange(len(best)), best]
    return [cues[b] if v >= min_r else "" for b, v in zip(best, strength)], strength


def _photo_split(latent: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray | None]:
    """(cue columns, photo columns, photo index per row or None) of latent_cues' table."""
    photos = [c for c in latent.columns if c.startswith("photo:")]
    cues = [c for c in latent.columns if c not in photos]
    if not photos:
        return cues, photos, None
    codes = latent[photos].to_numpy(np.float64) @ np.arange(1, len(photos) + 1)  # 0: the first
    return cues, photos, codes


def measured_check(perm: dict, train: pd.DataFrame | None, latent: pd.DataFrame | None,
                   law: tuple[np.ndarray, list[str]], top_k: int, min_r: float) -> tuple | None:
    """The cluster check with each cluster's cue *measured* instead of named by CUE_RULES: the
    latent cue its medoid follows on the train clips at |Spearman r| >= min_r within face photo
    (measured_cues with the photo as strata, where latent_cues knows it), else `photo:<name>`
    where it follows the photo itself at >= min_r (an identity proxy: never a hit), else ''.
    (check, {cluster: [name, |r| within photo, |r| with the photo or None]}), or None without
    clusters or latent cues. train: the train clips' functionals, latent: latent_cues' table
    (both indexed by video_id)."""
    if latent is None or train is None or "clusters" not in perm:
        return None
    c = perm["clusters"]
    ids = [v for v in train.index if v in latent.index]
    x, known = train.loc[ids, c["medoids"]].to_numpy(np.float64), latent.loc[ids]
    cue_cols, photo_cols, strata = _photo_split(known)
    found, r = measured_cues(x, known[cue_cols].to_numpy(np.float64), cue_cols, min_r, strata)
    photo_r: list = [None] * len(found)
    if photo_cols:
        photo, photo_r = measured_cues(x, known[photo_cols].to_numpy(np.float64), photo_cols,
                                       min_r)
        found = [f or p for f, p in zip(found, photo)]  # a cue first, else the photo
    check = cue_check(perm["cluster_importance"], c["names"], *law, k_top=top_k,
                      to_cue=dict(zip(c["names"], found)).get)
    return check, {n: [f, float(v), None if p is None else float(p)]
                   for n, f, v, p in zip(c["names"], found, r, photo_r)}


def cue_checks(perm: dict, law: tuple[np.ndarray, list[str]], top_k: int,
               train: pd.DataFrame | None = None, latent: pd.DataFrame | None = None,
               min_r: float = 0.5) -> tuple[dict, dict | None]:
    """The planted-cue checks of one model's permutation result (perm: stages/explain.py's) under
    the law (LABEL_WEIGHTS, CUES): ({"cue_check" (clusters, else columns), "cue_check_columns",
    "cue_check_val" (clusters on the validation clips alone, when cross-fitted),
    "cue_check_measured" (clusters by measured cue: measured_check, when the latent cues are
    known), "cue_check_grouped" (by cue)}, the measured cue of each cluster or None)."""
    columns = cue_check(perm["importance"], perm["features"], *law, k_top=top_k)
    out = {"cue_check": columns, "cue_check_columns": columns}
    if "clusters" in perm:  # the check's features: clusters of interchangeable columns
        c = perm["clusters"]
        to_cue = dict(zip(c["names"], c["cues"])).get
        out["cue_check"] = cue_check(perm["cluster_importance"], c["names"], *law, k_top=top_k,
                                     to_cue=to_cue)
        if perm["cluster_importance_val"] is not None:  # cross-fitted: val beside it
            out["cue_check_val"] = cue_check(perm["cluster_importance_val"], c["names"], *law,
                                             k_top=top_k, to_cue=to_cue)
    if "cues" in perm:
        out["cue_check_grouped"] = cue_check(perm["cue_importance"], perm["cues"], *law, k_top=3,
                                             to_cue=same_cue)
    measured = measured_check(perm, train, latent, law, top_k, min_r)
    if measured is not None:
        out["cue_check_measured"] = measured[0]
    return out, (measured[1] if measured is not None else None)
