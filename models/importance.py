"""Which inputs a trained model's predictions follow, over many clips (the explain stage's numbers).

    from models.importance import (bootstrap_weights, correlations, paired_correlations,
                                   permuted_predictions, permutation_importance)

    W = bootstrap_weights(subjects, n_boot=200, seed=1234)        # (B, n) row counts
    corr = correlations(X, Y, W)                                  # X (n, F), Y (n, 5)
    r_pred, r_label, keep = paired_correlations(X, P, Y, subjects, n_boot=200, seed=1234)
    perm = permuted_predictions(model, views, "functionals", repeats=20, seed=0)  # (F, R, n, 5)
    imp = permutation_importance(y, base, perm, W)                # CCC drop per feature, trait

Intervals come from the same bootstrap over *subjects* as evaluate's (models/bootstrap.py): a
resample draws subjects with replacement and takes all their clips, which is the same as giving
each clip a weight (how often it was drawn). Every statistic here is therefore computed with row
weights: the point estimate with weight 1 everywhere, the resamples with their counts, all
resamples at once (no refitting: the model and its permuted predictions are fixed, only the
clips that score them are resampled).

- `correlations`: Pearson r of each feature with each target column (a trait's predictions or
  labels), NaN features (a clip without a face or audio) left out of that feature's r;
  `paired_correlations`: with the predictions and with the labels over the same clips (those
  with a prediction) and the same resamples.
- `permutation_importance` (Breiman 2001; Fisher et al. 2019's model reliance): a feature's
  values are shuffled across clips, R times, the model predicts again, and its importance for a
  trait is CCC(labels, predictions) - CCC(labels, predictions with the feature shuffled), the
  mean over the R shuffles. For a feature vector (functionals, audio_fn) a feature is one
  column; for an AU sequence (aus) it is one AU channel: each clip takes another clip's whole
  time course of that AU (cut to its own length by its mask). A model that offers `leaves` and
  `rescored` (functionals_gbt) is rescored per shuffled column through the trees that split on
  it only: the same numbers, 2.3x faster for the stage's 747 columns.
- `feature_clusters`: groups of functionals that stand in for each other (average-linkage
  clustering of 1 - |Spearman r| over the training clips, no labels), so that a cue read by many
  proxies (17 statistics of AU12, loudness in every log-mel band) is shuffled as one feature:
  grouped permutation importance (Gregorutti et al. 2015; scikit-learn's guide on permutation
  importance with multicollinear features clusters the same way).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.bootstrap import interval, subject_resamples
from models.explain import predict_views
from personality.common import progress
from personality.cue_check import top_indices  # noqa: F401  (re-exported: the stage's ranking)

__all__ = ["bootstrap_weights", "weighted_sum", "weighted_pearson", "weighted_ccc", "correlations",
           "paired_correlations", "permuted_predictions", "permutation_importance", "top_indices",
           "feature_clusters"]


def bootstrap_weights(subjects: Sequence, *, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) float: how often each row is drawn in each subject resample."""
    n = len(subjects)
    rows = subject_resamples(subjects, n_boot=n_boot, seed=seed)
    return np.stack([np.bincount(r, minlength=n) for r in rows]).astype(np.float64)


def weighted_sum(w: np.ndarray, a: np.ndarray, axis: int = -2) -> np.ndarray:
    """Sum over the rows (`axis`, length n) of a under each row weighting of w (B, n): a
    (..., n, K) -> (B, ..., K). One matrix product (BLAS) instead of
    np.einsum("bn,...nk->b...k"), whose loop took 17 of the explain stage's 134 s."""
    moved = np.moveaxis(a, axis, 0)  # (n, ...)
    return (w @ moved.reshape(len(moved), -1)).reshape(len(w), *moved.shape[1:])


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of every column of x (n, F) with every column of y (n, K) under each row
    weighting of w (B, n): (B, F, K). A NaN in x drops that row for that column only; y must be
    finite. NaN where a column is constant (or has < 2 rows) under a weighting."""
    m = np.isfinite(x).astype(np.float64)  # (n, F)
    x0 = np.nan_to_num(x)
    sw = w @ m  # (B, F) total weight per column
    sx, sxx = w @ (m * x0), w @ (m * x0 ** 2)  # (B, F)
    sy = weighted_sum(w, m[:, :, None] * y[:, None, :], axis=0)  # (B, F, K)
    syy = weighted_sum(w, m[:, :, None] * (y ** 2)[:, None, :], axis=0)
    sxy = weighted_sum(w, (m * x0)[:, :, None] * y[:, None, :], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = sw[..., None]
        cov = sxy / n - (sx / sw)[..., None] * sy / n
        vx = (sxx / sw - (sx / sw) ** 2)[..., None]
        vy = syy / n - (sy / n) ** 2
        r = cov / np.sqrt(vx * vy)
    return np.where((vx > 1e-12) & (vy > 1e-12), r, np.nan)


def weighted_ccc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Concordance correlation (population moments) of labels y (n, K) with predictions
    p (..., n, K) under each row weighting of w (B, n): (B, ..., K). With unit weights it is
    personality.ccc per column (to rounding), except 0 where both sides are constant."""
    total = w.sum(axis=1)  # (B,)
    lead = p.ndim - 2
    shape = (len(w),) + (1,) * lead + (y.shape[1],)  # broadcast y's moments over p's leading axes

    def mean(a: np.ndarray) -> np.ndarray:  # (..., n, K) -> (B, ..., K)
        return weighted_sum(w, a) / total.reshape(-1, *[1] * (a.ndim - 1))

    my, mp = mean(y).reshape(shape), mean(p)
    vy, vp = mean(y ** 2).reshape(shape) - my ** 2, mean(p ** 2) - mp ** 2
    cov = mean(p * y) - my * mp
    den = vy + vp + (my - mp) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 1e-12, 2 * cov / den, 0.0)


def _summary(point: np.ndarray, samples: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """{"value": point, "lo", "hi"}: the central `level` interval of samples (B, ...)."""
    flat = samples.reshape(len(samples), -1)
    bounds = np.array([interval(flat[:, j], level=level) for j in range(flat.shape[1])])
    return {"value": point, "lo": bounds[:, 0].reshape(point.shape),
            "hi": bounds[:, 1].reshape(point.shape)}


def correlations(x: np.ndarray, y: np.ndarray, w: np.ndarray, *,
                 level: float = 0.95) -> dict[str, np.ndarray]:
    """Pearson r (F, K) of features x (n, F) with targets y (n, K) and its subject-bootstrap
    interval (w: bootstrap_weights): {"value", "lo", "hi"} each (F, K)."""
    point = weighted_pearson(x, y, np.ones((1, len(x))))[0]
    return _summary(point, weighted_pearson(x, y, w), level)


def paired_correlations(x: np.ndarray, pred: np.ndarray, labels: np.ndarray,
                        subjects: Sequence, *, n_boot: int, seed: int, level: float = 0.95
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """(r with the predictions, r with the labels, keep): `correlations` of features x (n, F)
    with predictions pred (n, K) and with labels (n, K), both over the same rows, those where
    every prediction is finite (keep (n,) bool: a clip the model has no prediction for), and
    under the same subject resamples (bootstrap_weights of those rows' subjects): the two
    columns a reader compares rest on the same people. A NaN feature leaves that row out of
    both of its r's alike; labels must be finite."""
    keep = np.isfinite(pred).all(axis=1)
    w = bootstrap_weights([g for g, k in zip(subjects, keep) if k], n_boot=n_boot, seed=seed)
    # features and labels column-major, as a DataFrame's columns come: the sums then run in
    # the order they run over the table itself (with no clip dropped, the label's r is the
    # stage's all-clips r to the bit, not 1e-14 apart)
    xk = np.asfortranarray(x[keep])  # (m, F)
    return (correlations(xk, pred[keep], w, level=level),
            correlations(xk, np.asfortranarray(labels[keep]), w, level=level), keep)


def _donor(x: Tensor, shape: torch.Size) -> Tensor:
    """Another clip's views (V_d, ..., F) fitted to this clip's view shape (V, ..., F): views
    repeated or cut, other axes cut or zero-padded."""
    v = torch.clamp(torch.arange(shape[0]), max=x.shape[0] - 1)
    x = x[v]
    out = torch.zeros(shape, dtype=x.dtype)
    cut = tuple(slice(0, min(a, b)) for a, b in zip(shape, x.shape))
    out[cut] = x[cut]
    return out


def _one_view_batch(views: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor] | None:
    """Every clip's single view stacked, {key: (n, ...)}, trimmed like the engine's collate to
    the longest real sequence; None when a clip has several views or shapes differ."""
    from models.batching import collate

    items = list(views.values())
    if any(t.shape[0] != 1 for it in items for t in it.values()):
        return None
    first = {k: t.shape for k, t in items[0].items()}
    if any({k: t.shape for k, t in it.items()} != first for it in items):
        return None
    return collate([{k: t[0] for k, t in it.items()} for it in items])


@torch.inference_mode()
def _forward(model: nn.Module, batch: Mapping[str, Tensor], chunk: int = 2048) -> np.ndarray:
    """Decoded scores of a stacked batch, in chunks, as float32 like the engine's: (B, 5)."""
    model.eval()
    n = len(next(iter(batch.values())))
    return np.concatenate([_decoded(model, model({k: t[i:i + chunk] for k, t in batch.items()}))
                           for i in range(0, n, chunk)])


def _decoded(model: nn.Module, scores: Tensor) -> np.ndarray:
    """model.decode(scores) as the engine reports it: through float32, (B, 5) float64."""
    return model.decode(scores).float().cpu().numpy().astype(np.float64)


@torch.inference_mode()
def _rescored(model: nn.Module, leaves: Tensor, x: Tensor, cols: list[int]) -> np.ndarray:
    return _decoded(model, model.rescored(leaves, x, cols))


@torch.inference_mode()
def _base_leaves(model: nn.Module, stacked: Mapping[str, Tensor] | None, key: str,
                 repeats: int) -> Tensor | None:
    """The leaves of the unshuffled clips, repeated like _shuffled's copies ((R * n, ...)), for
    a model with `leaves` and `rescored` whose only input is `key`; else None."""
    if stacked is None or set(stacked) != {key} or not (hasattr(model, "rescored")
                                                         and hasattr(model, "leaves")):
        return None
    model.eval()
    return torch.cat([model.leaves(stacked[key])] * repeats)


def _shuffled(x: Tensor, perms: list[np.ndarray], cols: list[int], mask: Tensor | None) -> Tensor:
    """R copies of x (n, ..., F), features `cols` of clip i taken together from clip perm[i]:
    (R * n, ..., F)."""
    copies = []
    for perm in perms:
        xr = x.clone()
        xr[..., cols] = x[torch.from_numpy(perm)][..., cols]
        if mask is not None:  # the donor's steps past this clip's length are padding
            xr[..., cols] *= mask.to(x.dtype)[..., None]
        copies.append(xr)
    return torch.cat(copies)


def permuted_predictions(model: nn.Module, views: Mapping[str, Mapping[str, Tensor]], key: str,
                         *, repeats: int, seed: int, desc: str = "permute",
                         groups: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Predictions with feature f of views[.][key] (its last axis) taken from another clip, for
    every feature f and each of `repeats` shuffles of the clips: (F, R, n, 5). `groups`: lists
    of features shuffled together (one clip gives all of them) instead: (G, R, n, 5). A `key_mask`
    (B, T) zeroes what the donor brings past the clip's own length. Clips with one view each
    (vectors; AU sequences no longer than seq_len) run as one stacked batch per feature; others
    go through the engine's view averaging (slower, same numbers)."""
    ids = list(views)
    n, n_feat = len(ids), int(next(iter(views.values()))[key].shape[-1])
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(repeats)]
    stacked = _one_view_batch(views)
    groups = [list(g) for g in groups] if groups is not None else [[f] for f in range(n_feat)]
    out = np.zeros((len(groups), repeats, n, 5))
    # models that can rescore only what a column touches (boosted trees: rescored) skip the
    # trees that never split on it: the same numbers, 2.3x faster for the stage's 747 columns
    leaves = _base_leaves(model, stacked, key, repeats)
    with progress(total=len(groups), desc=desc, unit="feature") as bar:
        for g, cols in enumerate(groups):
            if leaves is not None:
                x = _shuffled(stacked[key], perms, cols, None)
                out[g] = _rescored(model, leaves, x, cols).reshape(repeats, n, 5)
            elif stacked is not None:
                batch = {k: torch.cat([t] * repeats) for k, t in stacked.items() if k != key}
                batch[key] = _shuffled(stacked[key], perms, cols, stacked.get(f"{key}_mask"))
                out[g] = _forward(model, batch).reshape(repeats, n, 5)
            else:
                out[g] = _views_path(model, views, ids, key, perms, cols)
            bar.update(1)
    return out


def _views_path(model: nn.Module, views: Mapping[str, Mapping[str, Tensor]], ids: list[str],
                key: str, perms: list[np.ndarray], cols: list[int]) -> np.ndarray:
    """permuted_predictions for clips with several views: each clip's views keep their own, the
    donor's views are repeated or cut to their count: (R, n, 5)."""
    table = {}
    for r, perm in enumerate(perms):
        for i, vid in enumerate(ids):
            own = views[vid]
            x = own[key].clone()
            x[..., cols] = _donor(views[ids[perm[i]]][key], x.shape)[..., cols]
            mask = own.get(f"{key}_mask")
            if mask is not None:
                x[..., cols] *= mask.to(x.dtype)[..., None]
            table[f"{r}/{vid}"] = {**own, key: x}
    return predict_views(model, table, batch_size=1024).reshape(len(perms), len(ids), 5)


def permutation_importance(y: np.ndarray, base: np.ndarray, perm: np.ndarray, w: np.ndarray, *,
                           level: float = 0.95, chunk: int = 32) -> dict[str, np.ndarray]:
    """CCC drop per feature and trait, mean over the shuffles: {"value", "lo", "hi"} (F, K) with
    the subject-bootstrap interval (w: bootstrap_weights), plus "samples" (B, F, K) for
    statistics of the ranking itself. y, base: (n, K); perm: (F, R, n, K)."""
    one = np.ones((1, len(y)))
    point = weighted_ccc(y, base, one)[0] - weighted_ccc(y, perm, one)[0].mean(axis=1)  # (F, K)
    base_b = weighted_ccc(y, base, w)  # (B, K)
    samples = np.empty((len(w), *point.shape))
    for lo in range(0, len(perm), chunk):  # bounds memory: (B, chunk, R, K) at a time
        part = weighted_ccc(y, perm[lo:lo + chunk], w).mean(axis=2)  # (B, chunk, K)
        samples[:, lo:lo + chunk] = base_b[:, None, :] - part
    return {**_summary(point, samples, level), "samples": samples}


def _abs_spearman(x: np.ndarray) -> np.ndarray:
    """|Spearman r| (F, F) of the columns of x (n, F), pairwise over rows where both are finite;
    0 where a column is constant or has fewer than 3 shared rows."""
    import pandas as pd

    r = pd.DataFrame(x).rank().corr(method="pearson", min_periods=3).to_numpy()
    r = np.abs(np.nan_to_num(r, nan=0.0))
    np.fill_diagonal(r, 1.0)
    return r


def feature_clusters(x: np.ndarray, max_distance: float) -> tuple[list[list[int]], list[int]]:
    """Clusters of interchangeable columns of x (n, F): average-linkage hierarchical clustering
    on the distance 1 - |Spearman r|, cut at `max_distance` (0.3: a cluster's members correlate
    at |r| >= 0.7 on average). Returns (clusters: column indices, ascending, clusters ordered by
    their first column; medoids: per cluster the member with the largest mean |r| to the
    others, which names it)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n_feat = x.shape[1]
    if n_feat == 1:
        return [[0]], [0]
    r = _abs_spearman(x)
    dist = np.clip(1.0 - r, 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform(dist, checks=False), method="average"),
                      t=max_distance, criterion="distance")
    clusters = sorted(([int(i) for i in np.flatnonzero(labels == c)] for c in np.unique(labels)),
                      key=lambda members: members[0])
    medoids = [m[int(np.argmax(r[np.ix_(m, m)].mean(axis=1)))] for m in clusters]
    return clusters, medoids
