"""Classical models on the per-video functionals (data/functionals, stages/functionals.py): the
baseline of personality computing that every deep model must beat.

    python -m stages.train --model functionals_ridge     # or functionals_gbt

The `functionals` source gives one standardised vector per video, {"functionals": (F,) float32},
with the mean and sd of the train split kept in its fitted config (with the column list), so a
source rebuilt for one new clip transforms it the same way. NaN (a video without a face or without
audio) becomes 0 after standardisation: the train mean.

The models are fitted in closed form, not by gradient steps: train calls `fit_closed_form`
(models whose class sets `closed_form = True`) instead of the epoch loop. Every choice is made by
grouped K-fold cross-validation over the *subjects of the train split* (no clip of a held-out
subject is in its fold's training part); validation and test only score the result:

- `functionals_ridge`: ridge regression (intercept, standardised features), one alpha per trait
  from `alphas`, the one with the best out-of-fold CCC; with it a column set (`drop_options`)
  and a bound on the z-scores (`clip_options`), which `forward` applies to every clip. Each
  fold standardises with its own training rows (`fold_scaled`), as a new clip is standardised
  with statistics it took no part in.
- `functionals_gbt`: gradient-boosted regression trees (scikit-learn's GradientBoostingRegressor,
  squared error), one ensemble per trait, its number of trees chosen out of fold (staged
  predictions). The fitted trees are exported to tensors (feature, threshold, children, leaf
  value), so the checkpoint holds no pickle and the module predicts with plain torch indexing.

CCC rescaling (`rescale: true`): a shrunk regression (ridge, boosting with few trees) predicts
with a smaller spread than the labels', which CCC penalises even at the same correlation. Each
trait's deviations from the train mean are stretched by sd(labels) / sd(out-of-fold predictions),
a factor measured in the same cross-validation (clipped to [1, 3]); it changes no correlation.
The factors are folded into the stored weights (ridge) or leaf values (trees).

`refit` repeats a fitted model's training procedure on other rows, and `standardised` the
source's z-scores from other rows (the explain stage's cross-fitting). `FunctionalsTrees.leaves`
and `rescored` let permutation importance re-walk only the trees that split on a shuffled
column (models/importance.py).

One file because the source, both models and the closed-form fit share the grouped-CV and
rescaling helpers and the `_Closed` protocol that the train stage dispatches on.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.data import InputSource, SourceError, register_source, source_options
from models.registry import register
from personality.common import get_logger

__all__ = ["FunctionalsSource", "FunctionalsRidge", "FunctionalsTrees", "fit_closed_form",
           "refit", "standardised", "group_folds", "ccc_columns"]

log = get_logger("classical")
N_TRAITS = 5


# --------------------------------------------------------------------------------------------------
# the source


@dataclasses.dataclass(frozen=True)
class FunctionalsSourceConfig:
    include: tuple[str, ...] = ()  # keep columns starting with one of these (() = all)
    exclude: tuple[str, ...] = ()  # then drop columns starting with one of these
    columns: tuple[str, ...] = ()  # the exact columns (fitted: what training used)
    stats_split: str = "train"  # standardisation statistics from this split ("" = all given)
    mean: tuple[float, ...] = ()  # explicit statistics, one per column (fitted)
    std: tuple[float, ...] = ()
    path: str = "data/functionals/functionals.parquet"  # relative to the root


class FunctionalsSource(InputSource):
    """{"functionals": (F,) float32}: one standardised vector per video; V = 1 at evaluation."""

    keys = ("functionals",)

    def __init__(self, data: dict[str, np.ndarray], columns: list[str], mean: np.ndarray,
                 std: np.ndarray, cfg: FunctionalsSourceConfig,
                 missing: dict[str, np.ndarray] | None = None):
        self.data, self.columns, self.config = data, columns, cfg
        self.mean, self.std = mean, std
        self.missing = missing or {}  # video -> (F,) bool: NaN before the fill with the mean

    def has(self, video_id: str) -> bool:
        return video_id in self.data

    def fitted_config(self) -> dict[str, dict]:
        # float64 lists, as used: float32 copies would move standardised values by ~1e-6
        return {"functionals": {"columns": list(self.columns), "mean": self.mean.tolist(),
                                "std": self.std.tolist()}}

    def _vec(self, video_id: str) -> Tensor:
        try:
            return torch.from_numpy(self.data[video_id])
        except KeyError:
            raise SourceError(f"no functionals for video {video_id!r}: run the functionals "
                              "stage") from None

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, Tensor]:
        return {"functionals": self._vec(video_id)}

    def eval_items(self, video_id: str) -> dict[str, Tensor]:
        return {"functionals": self._vec(video_id)[None]}  # (1, F)


def _pick_columns(names: list[str], cfg: FunctionalsSourceConfig) -> list[str]:
    if cfg.columns:
        return list(cfg.columns)
    cols = [c for c in names if c != "video_id" and (
        not cfg.include or any(c.startswith(p) for p in cfg.include))]
    cols = [c for c in cols if not any(c.startswith(p) for p in cfg.exclude)]
    if not cols:
        raise SourceError(f"source_config.functionals: include {cfg.include} / exclude "
                          f"{cfg.exclude} leave no column")
    return cols


def _statistics(values: np.ndarray, fit_rows: np.ndarray, cfg: FunctionalsSourceConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    if cfg.mean:
        if len(cfg.mean) != values.shape[1] or len(cfg.std) != values.shape[1]:
            raise SourceError(f"source_config.functionals: {len(cfg.mean)} means / "
                              f"{len(cfg.std)} sds for {values.shape[1]} columns")
        return np.asarray(cfg.mean, np.float64), np.asarray(cfg.std, np.float64)
    fit = values[fit_rows]
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        mean = np.nan_to_num(np.nanmean(fit, axis=0)) if len(fit) else np.zeros(values.shape[1])
        std = np.nan_to_num(np.nanstd(fit, axis=0)) if len(fit) else np.ones(values.shape[1])
    return mean, np.where(std > 1e-8, std, 1.0)


@register_source("functionals", options=FunctionalsSourceConfig)
def functionals_source(*, root: Path, video_ids: list[str], config: dict) -> FunctionalsSource:
    """data/functionals for `video_ids`, standardised with the train split's statistics."""
    import pyarrow.parquet as pq

    from models.data_audio import _stats_ids

    cfg = source_options(FunctionalsSourceConfig, config, "source_config.functionals")
    path = root / cfg.path
    if not path.exists():
        raise SourceError(f"{path}: artifact 'functionals' not found; run the functionals stage")
    names = pq.read_schema(path).names
    columns = _pick_columns(names, cfg)
    absent = [c for c in columns if c not in names]
    if absent:  # e.g. a clip without an audio track: those features are missing, i.e. the mean
        log.warning("functionals: %d columns absent from %s (e.g. %s): taken as the train mean",
                    len(absent), path, absent[0])
    df = pq.read_table(path, columns=["video_id", *[c for c in columns if c in names]]).to_pandas()
    df = df[df["video_id"].isin(set(video_ids))]
    values = df.reindex(columns=columns).to_numpy(np.float64)  # (n, F), NaN where absent
    ids = df["video_id"].tolist()
    fit_ids = set() if cfg.mean else set(_stats_ids(root, ids, cfg.stats_split))  # stored stats
    mean, std = _statistics(values, np.array([v in fit_ids for v in ids], bool), cfg)
    return FunctionalsSource(dict(zip(ids, _zscores(values, mean, std))), columns, mean, std, cfg,
                             missing=dict(zip(ids, np.isnan(values))))


def _zscores(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.nan_to_num((values - mean) / std).astype(np.float32)  # NaN -> 0: the fit mean


def standardised(values: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """values (n, F) as the functionals source gives them when its statistics come from the rows
    `fit_rows` (n,) bool: z-scored with their mean and sd, NaN -> 0, float32. The explain
    stage's cross-fitting standardises each fold with its own training rows."""
    mean, std = _statistics(values, fit_rows, FunctionalsSourceConfig())
    return _zscores(values, mean, std)


# --------------------------------------------------------------------------------------------------
# cross-validation helpers (pure numpy)


def ccc_columns(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per column concordance correlation of (n, k) arrays (population variances) -> (k,):
    personality.ccc column by column, vectorised for the alpha search, except that a column
    where both sides are constant scores 0 (no concordance to reward), not NaN."""
    my, mp = y.mean(0), p.mean(0)
    cov = ((y - my) * (p - mp)).mean(0)
    den = y.var(0) + p.var(0) + (my - mp) ** 2
    return np.where(den > 0, 2 * cov / np.where(den > 0, den, 1), 0.0)


def group_folds(groups: Sequence, k: int) -> list[np.ndarray]:
    """Held-out row indices of k folds with no group split across folds (GroupKFold's greedy
    balance, deterministic)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    if len(groups) < 2:
        return []  # nothing to cross-validate: the first candidate, no rescaling
    if len(np.unique(groups)) < 2:  # one subject (tiny test data): rows stand in for subjects
        log.warning("grouped CV: one subject in the train split; folds over clips instead")
        groups = np.arange(len(groups))
    k = max(2, min(k, len(np.unique(groups))))
    return [test for _, test in GroupKFold(n_splits=k).split(groups, groups=groups)]


def stretch(y: np.ndarray, oof: np.ndarray) -> np.ndarray:
    """(k,) factors sd(y) / sd(out-of-fold predictions), clipped to [1, 3] (1 without any)."""
    if not oof.any():
        return np.ones(y.shape[1])
    return np.clip(y.std(0) / np.maximum(oof.std(0), 1e-12), 1.0, 3.0)


# --------------------------------------------------------------------------------------------------
# ridge


def ridge_solve(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept: (W (F, k), b (k,)) minimising
    |y - xW - b|^2 + alpha |W|^2. Uses the n x n dual form (F > n here)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc @ xc.T  # (n, n)
    coef = xc.T @ np.linalg.solve(gram + alpha * np.eye(len(x)), yc)  # (F, k)
    return coef, my - mx @ coef


def fold_scaled(x: np.ndarray, fit_rows: np.ndarray, clip: float = 0.0) -> np.ndarray:
    """x (n, F) z-scored again with the mean and sd of its rows `fit_rows` (indices), NaN (a
    missing value) then 0, the fold's mean, and clipped to [-clip, clip] (0: not clipped): how a
    cross-validation fold sees standardised features when its held-out rows took no part in the
    standardisation, as a new clip's do (the source fills a missing value the same way)."""
    if np.isnan(x).any():  # the source's own statistics (NaN-aware; a constant sd is 1)
        mean, sd = _statistics(x, fit_rows, FunctionalsSourceConfig())
    else:  # the same figures without the NaN-aware passes (bit for bit as before)
        mean, sd = x[fit_rows].mean(0), x[fit_rows].std(0)
    z = np.nan_to_num((x - mean) / np.where(sd > 1e-8, sd, 1.0))
    return np.clip(z, -clip, clip) if clip > 0 else z


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: Sequence, alphas: Sequence[float],
             folds: int, clip: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trait: the alpha with the best out-of-fold CCC, (A, k) CCC table, oof predictions at
    the chosen alphas (n, k). Each fold standardises x with its own training rows (and clips
    at `clip` sd), so the out-of-fold rows are scaled as unseen clips are: standardising once
    over all rows let the held-out rows bound their own z-scores (at sqrt(n - 1)) and chose
    alphas for tails that new clips do not respect."""
    oof = np.zeros((len(alphas), *y.shape))
    for held in group_folds(groups, folds):
        keep = np.setdiff1d(np.arange(len(x)), held)
        z = fold_scaled(x, keep, clip)
        for i, a in enumerate(alphas):
            w, b = ridge_solve(z[keep], y[keep], a)
            oof[i, held] = z[held] @ w + b
    table = np.stack([ccc_columns(y, oof[i]) for i in range(len(alphas))])  # (A, k)
    best = table.argmax(0)  # (k,)
    return np.asarray(alphas, float)[best], table, oof[best, :, np.arange(y.shape[1])].T


HeadKind = Literal["regression", "regression_z"]


def _bound(value: Any) -> bool:
    """A clip bound: a number >= 0 (0: no clip; NaN and booleans are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass
class RidgeConfig:
    n_features: int = 0  # set by the fit (the functionals source's column count)
    head: HeadKind = "regression"  # regression: clipped to [0, 1]; regression_z: unbounded
    alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    folds: int = 5  # grouped CV folds over the train split's subjects
    rescale: bool = True  # CCC rescaling (module docstring)
    # candidate column sets, as prefixes to leave out: the grouped CV picks one (for all traits).
    # The second drops the 515 spectral functionals (log-mel band and MFCC statistics).
    drop_options: tuple[tuple[str, ...], ...] = ((), ("fn_logmel_", "fn_mfcc_"))
    # candidate bounds on the standardised features (0: none), picked by the grouped CV with the
    # column set: a heavy-tailed column (eGeMAPS' stddevNorm of a near-zero slope) puts a new
    # clip 20-450 sd out where the train rows reach 9.8, and a ridge reads it linearly
    clip_options: tuple[float, ...] = (0.0, 3.0, 5.0)
    chosen_alpha: tuple[float, ...] = ()  # per trait, set by the fit (for the record)
    chosen_drop: tuple[str, ...] = ()  # set by the fit
    chosen_clip: float = 0.0  # set by the fit; forward clips the features to +-this (0: not)

    def __post_init__(self) -> None:
        self.alphas, self.chosen_alpha = tuple(self.alphas), tuple(self.chosen_alpha)
        self.drop_options = tuple(tuple(d) for d in self.drop_options) or ((),)
        self.chosen_drop = tuple(self.chosen_drop)
        if not isinstance(self.clip_options, (list, tuple)) or not all(
                _bound(c) for c in self.clip_options):
            raise ValueError(f"functionals_ridge: clip_options must be a list of numbers >= 0 "
                             f"(0: no clip), got {self.clip_options!r}")
        self.clip_options = tuple(self.clip_options) or (0.0,)
        if not _bound(self.chosen_clip):
            raise ValueError(f"functionals_ridge: chosen_clip must be a number >= 0, got "
                             f"{self.chosen_clip!r}")
        if self.head not in ("regression", "regression_z") or not self.alphas or self.folds < 2:
            raise ValueError("functionals_ridge: head regression|regression_z, alphas, folds >= 2")
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0
                   for a in self.alphas):
            raise ValueError(f"functionals_ridge: alphas must be numbers > 0, got {self.alphas}")


class _Closed(nn.Module):
    """The registry protocol for closed-form models: forward -> (B, 5) scores."""

    closed_form = True
    inputs = ("functionals",)
    config: Any

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        valid = ~torch.isnan(targets)
        return (((outputs - targets.nan_to_num(0.0)) ** 2) * valid).sum() / valid.sum().clamp_min(1)

    @property
    def clamps_to_scale(self) -> bool:
        """Whether decode clips the raw output to [0, 1] (predict names a score it clipped)."""
        return self.config.head == "regression"

    def decode(self, outputs: Tensor) -> Tensor:
        return outputs.clamp(0.0, 1.0) if self.clamps_to_scale else outputs

    def proba(self, outputs: Tensor) -> None:
        return None

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.decode(self(batch))


class FunctionalsRidge(_Closed):
    """scores = x W + b on the standardised functionals; W, b float64 buffers set by `fit`."""

    def __init__(self, config: RidgeConfig):
        super().__init__()
        self.config = config
        self.register_buffer("weight", torch.zeros(config.n_features, N_TRAITS, dtype=torch.float64))
        self.register_buffer("bias", torch.full((N_TRAITS,), 0.5, dtype=torch.float64))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.linear_input(batch["functionals"]) @ self.weight + self.bias  # (B, 5)

    def linear_input(self, x: Tensor) -> Tensor:
        """x (B, F) as the weights read it: float64, clipped to +-chosen_clip sd (if any)."""
        c = float(self.config.chosen_clip)
        x = x.to(torch.float64)
        return x.clamp(-c, c) if c > 0 else x

    def fit(self, x: np.ndarray, y: np.ndarray, groups: Sequence,
            columns: Sequence[str] | None = None) -> dict:
        """Column set, clip and alpha per trait by grouped CV, then the ridge on every train row
        (left out columns get weight 0); returns the CV facts. x: (n, F) standardised, NaN where
        a value was missing (each fold fills it with its own mean; 0 is the whole split's)."""
        cfg = self.config
        score, drop, clip, keep, alphas, table, oof, s = self._search(x, y, groups, columns)
        x = np.nan_to_num(x)  # a missing value: the train mean, as the source gives it
        xc = np.clip(x, -clip, clip) if clip > 0 else x  # as forward will read it
        w = np.zeros((x.shape[1], y.shape[1]))
        b = np.zeros(y.shape[1])
        for k, a in enumerate(alphas):
            wk, b[k:k + 1] = ridge_solve(xc[:, keep], y[:, k:k + 1], a)
            w[keep, k] = wk[:, 0]
        cfg.chosen_drop, cfg.chosen_clip = tuple(drop), float(clip)
        centre = (xc @ w + b).mean(0)  # = the train mean of y
        cfg.n_features = x.shape[1]
        self.weight = torch.zeros(x.shape[1], N_TRAITS, dtype=torch.float64)  # the fitted shape
        self.weight.copy_(torch.from_numpy(w * s))
        self.bias.copy_(torch.from_numpy(centre + s * (b - centre)))
        cfg.chosen_alpha = tuple(float(a) for a in alphas)
        return {"cv_ccc": score, "alpha": alphas.tolist(), "left_out": list(drop),
                "clip": float(clip), "stretch": s.round(3).tolist(), "cv_table": table.tolist()}

    def _search(self, x: np.ndarray, y: np.ndarray, groups: Sequence,
                columns: Sequence[str] | None) -> tuple:
        """The grouped CV over column sets x clip bounds (alphas per trait inside each):
        (score, drop, clip, keep (F,) bool, alphas (k,), table (A, k), oof (n, k), stretch (k,))
        of the best mean out-of-fold CCC after rescaling; the first one on a tie."""
        cfg = self.config
        columns = list(columns) if columns is not None else [""] * x.shape[1]
        best = None
        for drop in cfg.drop_options:
            keep = np.array([not any(c.startswith(p) for p in drop if p) for c in columns], bool)
            if not keep.any():
                continue
            for clip in cfg.clip_options:
                alphas, table, oof = ridge_cv(x[:, keep], y, groups, cfg.alphas, cfg.folds,
                                              clip=float(clip))
                s = stretch(y, oof) if cfg.rescale else np.ones(y.shape[1])
                score = float(ccc_columns(y, oof.mean(0) + (oof - oof.mean(0)) * s).mean())
                if best is None or score > best[0] + 1e-12:
                    best = (score, drop, float(clip), keep, alphas, table, oof, s)
        return best


# --------------------------------------------------------------------------------------------------
# gradient-boosted trees, exported to tensors


@dataclasses.dataclass
class TreesConfig:
    n_features: int = 0  # set by the fit
    head: HeadKind = "regression"
    max_trees: int = 150  # boosting stages tried; the CV picks how many to keep per trait
    depth: int = 3  # max depth of each tree
    learning_rate: float = 0.1
    subsample: float = 0.8  # stochastic gradient boosting: share of rows per tree
    max_features: float = 0.3  # share of features tried per split
    min_samples_leaf: int = 5
    folds: int = 5
    rescale: bool = True
    seed: int = 0  # the boosting's random state (row / feature subsampling)
    n_trees: int = 0  # trees per trait kept (padded to the largest), set by the fit
    n_nodes: int = 0  # nodes per tree (padded), set by the fit

    def __post_init__(self) -> None:
        if self.head not in ("regression", "regression_z") or self.max_trees < 1 or self.depth < 1:
            raise ValueError("functionals_gbt: head regression|regression_z, max_trees, depth >= 1")


def _sklearn_float(x: Tensor) -> Tensor:
    """x as float64 after a round trip through float32: the precision sklearn's trees split at."""
    return x.to(torch.float32).to(torch.float64)


def _boost(x: np.ndarray, y: np.ndarray, cfg: TreesConfig, n: int | None = None):
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        loss="squared_error", n_estimators=n or cfg.max_trees, max_depth=cfg.depth,
        learning_rate=cfg.learning_rate, subsample=cfg.subsample, max_features=cfg.max_features,
        min_samples_leaf=cfg.min_samples_leaf, random_state=cfg.seed).fit(x, y)


def trees_cv(x: np.ndarray, y: np.ndarray, groups: Sequence, cfg: TreesConfig
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per trait: the number of trees (1..max_trees) with the best out-of-fold CCC, and the
    out-of-fold predictions (n, k) at that number."""
    x32 = x.astype(np.float32)
    oof = np.zeros((cfg.max_trees, *y.shape))  # (stages, n, k)
    for held in group_folds(groups, cfg.folds):
        keep = np.setdiff1d(np.arange(len(x)), held)
        for k in range(y.shape[1]):
            model = _boost(x32[keep], y[keep, k], cfg)
            for i, p in enumerate(model.staged_predict(x32[held])):
                oof[i, held, k] = p
    table = np.stack([ccc_columns(y, oof[i]) for i in range(cfg.max_trees)])  # (stages, k)
    best = table.argmax(0)
    return best + 1, oof[best, :, np.arange(y.shape[1])].T


def export_trees(model) -> dict[str, np.ndarray]:
    """A fitted GradientBoostingRegressor as arrays (trees, nodes): feature, threshold, left,
    right (a leaf points to itself, threshold +inf), value (times the learning rate)."""
    trees = [est[0].tree_ for est in model.estimators_]
    m = max(t.node_count for t in trees)
    out = {"feature": np.zeros((len(trees), m), np.int64),
           "threshold": np.full((len(trees), m), np.inf),
           "left": np.tile(np.arange(m), (len(trees), 1)),
           "right": np.tile(np.arange(m), (len(trees), 1)),
           "value": np.zeros((len(trees), m))}
    for i, t in enumerate(trees):
        n = t.node_count
        inner = t.children_left >= 0
        out["feature"][i, :n] = np.where(inner, t.feature, 0)
        out["threshold"][i, :n] = np.where(inner, t.threshold, np.inf)
        out["left"][i, :n] = np.where(inner, t.children_left, np.arange(n))
        out["right"][i, :n] = np.where(inner, t.children_right, np.arange(n))
        out["value"][i, :n] = t.value[:, 0, 0] * model.learning_rate
    return out


class FunctionalsTrees(_Closed):
    """One boosted tree ensemble per trait as buffers (trait, tree, node); forward walks every
    tree `depth` steps with tensor indexing and sums the leaf values."""

    _ARRAYS = ("feature", "threshold", "left", "right", "value")

    def __init__(self, config: TreesConfig):
        super().__init__()
        self.config = config
        shape = (N_TRAITS, config.n_trees, config.n_nodes)
        for name in self._ARRAYS:
            dtype = torch.float64 if name in ("threshold", "value") else torch.int64
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.register_buffer("init", torch.full((N_TRAITS,), 0.5, dtype=torch.float64))

    # rows walked at once: the walk's temporaries, (rows, trait, tree) int64, stay ~1 MB, in
    # cache and below the allocator's mmap threshold; 2048 rows at once spent half their time in
    # page faults (127 ms against 54 ms for 2048 rows of 747 functionals, 750 trees)
    ROWS_PER_WALK = 128

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self._score(self.leaves(batch["functionals"]))  # (B, F) -> (B, K)

    def leaves(self, x: Tensor) -> Tensor:
        """(B, K * N): the flat address of the leaf each row of x (B, F) reaches in every tree."""
        arrays = self._walk_arrays()
        return self._blocks(lambda part: self._leaves(part, arrays), _sklearn_float(x))

    def rescored(self, leaves: Tensor, x: Tensor, cols: Sequence[int]) -> Tensor:
        """forward({"functionals": x}) (B, K) for rows x (B, F) that differ from the rows behind
        `leaves` (B, K * N: `leaves`) only in the columns `cols`: only the trees that split on
        one of them are walked again (a column is in ~1% of the trees), the others keep their
        leaves; the same leaves summed in the same order as forward, so the same bits. The
        explain stage's permutation importance shuffles one column at a time."""
        K, N, M = self.feature.shape
        # split nodes: a leaf, and every padding node or tree, points to one child on both sides
        inner = self.left != self.right  # (K, N, M)
        cols = torch.as_tensor(list(cols), dtype=torch.long, device=self.feature.device)
        used = (inner & torch.isin(self.feature, cols)).any(-1)
        trees = used.reshape(-1).nonzero().flatten()  # (T,) flat tree numbers k * N + n
        out = leaves.clone()
        if len(trees) and N:
            arrays = self._walk_arrays()
            out[:, trees] = self._blocks(lambda part: self._leaves(part, arrays, trees),
                                         _sklearn_float(x))
        return self._score(out)

    def _blocks(self, fn, x: Tensor) -> Tensor:
        """fn over ROWS_PER_WALK rows at a time, concatenated (see ROWS_PER_WALK)."""
        step = self.ROWS_PER_WALK
        if len(x) <= step:
            return fn(x)
        return torch.cat([fn(x[i:i + step]) for i in range(0, len(x), step)])

    def _walk_arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        """(child, feature, threshold) over flat node addresses (trait k, tree n, node m) ->
        (k * N + n) * M + m, read with one `take` per array: 3.5x faster than indexing with
        three broadcast index tensors, same numbers to the bit. child[2 a]: right, [2 a + 1]:
        left. Built once per call of leaves / rescored, not per block of rows."""
        child = torch.stack([self.right.reshape(-1), self.left.reshape(-1)], -1).reshape(-1)
        return child, self.feature.reshape(-1), self.threshold.reshape(-1)

    def _leaves(self, x: Tensor, arrays: tuple[Tensor, Tensor, Tensor],
                trees: Tensor | None = None) -> Tensor:
        """(B, T) leaf addresses of x (B, F) float64 in `trees` (flat tree numbers; None: all);
        arrays: _walk_arrays()."""
        K, N, M = self.feature.shape
        child, feature, threshold = arrays
        start = (torch.arange(K * N, device=x.device) if trees is None else trees) * M  # (T,)
        idx = start.expand(x.shape[0], len(start))  # (B, T): every tree starts at its root
        for _ in range(self.config.depth):
            go_left = x.gather(1, feature.take(idx)) <= threshold.take(idx)
            idx = start + child.take(idx * 2 + go_left)
        return idx

    def _score(self, leaves: Tensor) -> Tensor:
        """(B, K) scores from every tree's leaf address (B, K * N)."""
        K, N, _ = self.feature.shape
        if N == 0:  # no trees (a fit that kept none): the train mean
            return self.init.expand(len(leaves), K).clone()
        return self.init + self.value.reshape(-1).take(leaves).view(-1, K, N).sum(-1)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: Sequence) -> dict:
        cfg = self.config
        counts, oof = trees_cv(x, y, groups, cfg)
        s = stretch(y, oof) if cfg.rescale else np.ones(y.shape[1])
        exported, inits = [], []
        for k in range(y.shape[1]):
            model = _boost(x.astype(np.float32), y[:, k], cfg, int(counts[k]))
            exported.append(export_trees(model))
            inits.append(float(model.init_.constant_.ravel()[0]))
        cfg.n_trees = max(len(e["value"]) for e in exported)
        cfg.n_nodes = max(e["value"].shape[1] for e in exported)
        self.__init__(cfg)  # buffers of the fitted shape
        for k, e in enumerate(exported):
            t, m = e["value"].shape
            for name in self._ARRAYS:  # padding trees: one leaf of value 0
                getattr(self, name)[k, :t, :m] = torch.from_numpy(
                    e[name] * (s[k] if name == "value" else 1))
            self.left[k, t:] = 0
            self.right[k, t:] = 0
        self.init.copy_(torch.from_numpy(np.asarray(inits)))  # the train mean of each trait
        oof_s = oof.mean(0) + (oof - oof.mean(0)) * s
        return {"cv_ccc": float(ccc_columns(y, oof_s).mean()), "n_trees": counts.tolist(),
                "stretch": s.tolist()}


# --------------------------------------------------------------------------------------------------
# registration and the fit the train stage calls


@register("functionals_ridge", modality="audio-visual", inputs=("functionals",),
          source="personality computing's classical baseline (Vinciarelli & Mohammadi 2014)",
          card="ridge on per-video AU / head / blink / audio functionals, alpha per trait by "
               "grouped CV on train, closed form")
def functionals_ridge(**config: Any) -> FunctionalsRidge:
    return FunctionalsRidge(RidgeConfig(**config))


@register("functionals_gbt", modality="audio-visual", inputs=("functionals",),
          source="gradient boosting (Friedman 2001), scikit-learn, exported to tensors",
          card="boosted regression trees on the per-video functionals, trees per trait by "
               "grouped CV on train")
def functionals_gbt(**config: Any) -> FunctionalsTrees:
    return FunctionalsTrees(TreesConfig(**config))


def _matrix(sources: Sequence[InputSource], ids: Sequence[str]) -> np.ndarray:
    from models.batching import merge_views

    rows = [merge_views([s.eval_items(v) for s in sources], v)["functionals"][0] for v in ids]
    return torch.stack(rows).numpy().astype(np.float64)  # (n, F)


def fit_closed_form(model: _Closed, sources: Sequence[InputSource], *, train_ids: Sequence[str],
                    train_targets: np.ndarray, groups: Sequence, val_ids: Sequence[str] = (),
                    val_targets: np.ndarray | None = None, config: Any = None,
                    out_dir: str | Path | None = None, meta: dict | None = None,
                    tracker: Any = None, desc: str = "train") -> dict:
    """Fit a closed-form model on the train rows (choices by CV over `groups`), score val, write
    best.pt = last.pt; the same result dict as `models.engine.fit` (one "epoch")."""
    from models.engine import evaluate, save_checkpoint
    from models.checkpoints import model_config_of

    y = np.asarray(train_targets, np.float64)
    labelled = ~np.isnan(y).any(axis=1)
    x = _matrix(sources, [v for v, ok in zip(train_ids, labelled) if ok])
    g = np.asarray(groups)[labelled]
    source = next((s for s in sources if isinstance(s, FunctionalsSource)), None)
    columns = source.columns if source is not None else None
    ids = [v for v, ok in zip(train_ids, labelled) if ok]
    facts = _fit_rows(model, _with_missing(x, source, ids), y[labelled], g, columns)
    model.eval()
    meta = dict(meta or {})
    meta["model_config"] = model_config_of(model)
    row = {"epoch": 1, "train_loss": float(np.mean((_predict(model, x) - y[labelled]) ** 2)),
           "lr": 0.0, "cv_ccc": facts["cv_ccc"]}
    metric = getattr(config, "val_metric", "ccc")
    if len(val_ids) and val_targets is not None:
        vm = evaluate(model, sources, val_ids, val_targets)
        row.update({f"val_{k}": v for k, v in vm.items()})
    best = float(row.get(f"val_{metric}", facts["cv_ccc"]))
    log.info("%s: grouped %d-fold CV on train: ccc %.3f (%s); val ccc %.3f", desc,
             len(group_folds(g, model.config.folds)), facts["cv_ccc"],
             ", ".join(f"{k} {v}" for k, v in facts.items() if k not in ("cv_ccc", "cv_table")),
             row.get("val_ccc", math.nan))
    train_mean = [float(v) for v in np.nanmean(y, axis=0)]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for name in ("best.pt", "last.pt"):
            save_checkpoint(out / name, model=model, model_name=meta.get("model_name", "model"),
                            model_config=meta["model_config"], epoch=1, best_epoch=1,
                            best_metric=best, val_metric_name=metric, train_mean=train_mean,
                            inputs=meta.get("inputs", ()), source_config=meta.get("source_config"),
                            params=meta.get("params"), label_scale=meta.get("label_scale", "unit"),
                            history=[row], frontend=meta.get("frontend"))
    if tracker is not None:
        tracker.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"
                             and v is not None and math.isfinite(float(v))}, step=1)
    return {"history": [row], "best_epoch": 1, "best_metric": best, "epochs_run": 1,
            "last_epoch": 1, "stopped_early": False, "train_mean": train_mean,
            "best_path": str(out / "best.pt") if out else None,
            "last_path": str(out / "last.pt") if out else None, "model_config": meta["model_config"]}


def refit(model: _Closed, x: np.ndarray, y: np.ndarray, groups: Sequence,
          columns: Sequence[str] | None = None) -> _Closed:
    """A new model of `model`'s class and configuration fitted on (x (n, F), y (n, 5)) by the
    same procedure: its grid (alphas, column sets, tree counts) searched again by grouped CV over
    `groups`, then every row (x with NaN where a value was missing, as fit_closed_form gives
    it). The explain stage's cross-fitting: a copy that never saw a subject scores that
    subject's clips. `columns`: the functionals' names (the ridge's column sets)."""
    fresh = type(model)(dataclasses.replace(model.config))
    _fit_rows(fresh, x, y, groups, columns)
    return fresh.eval()


def _with_missing(x: np.ndarray, source: FunctionalsSource | None,
                  ids: Sequence[str]) -> np.ndarray:
    """x (n, F) with NaN again where the source filled a missing value with the train mean,
    so that the ridge's CV folds fill it with their own (`fold_scaled`)."""
    if source is None or not source.missing or x.shape[1] != len(source.columns):
        return x
    mask = np.stack([source.missing.get(v, np.zeros(x.shape[1], bool)) for v in ids])
    return np.where(mask, np.nan, x)


def _fit_rows(model: _Closed, x: np.ndarray, y: np.ndarray, groups: Sequence,
              columns: Sequence[str] | None) -> dict:
    """model.fit on (x, y): the ridge also takes the column names (its column sets) and the
    NaN of missing values; the trees take the filled values."""
    if isinstance(model, FunctionalsRidge):
        return model.fit(x, y, groups, columns)
    return model.fit(np.nan_to_num(x), y, groups)


def _predict(model: _Closed, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.decode(model({"functionals": torch.from_numpy(x.astype(np.float32))})).numpy()
