"""How much more a linear model could read from our per-video functionals, and what choosing the
columns differently gets: functionals_ridge beside other column choices, one pooled
cross-validation by subject over every labelled clip of a run checkout.

    .venv/bin/python bench/functionals_headroom.py   # after `make run`: 2.6 min on 2 cores
    .venv/bin/python bench/functionals_headroom.py --root /path/to/checkout --folds 5

Each subject's clips are scored once, by the models of the fold that held the subject out
(`personality.splits.kfold_splits`' test folds, those of `make cv`). A fold's models are fitted
on the other folds' clips (train and val together: every choice is made by grouped CV inside
them, so no val split is needed), standardised with those clips' statistics. Intervals and
paired differences come from evaluate's subject bootstrap (models/pooled_cv.py).

Rows:
- ceiling: the law's CCC-optimal scores (personality.law): the most any model reaches.
- oracle columns: a ridge on, per latent cue, the one functional that follows that cue best over
  the fold's training clips. It reads the generator's latent cues to choose, which no model can:
  it prices reading the right columns, with our front-end's measurements of them. Default data
  only (data/synthetic_cues.parquet).
- functionals_ridge: the model (models/classical.py), its own procedure and grid.
- choices made without the cues, each by grouped CV inside the fold: every column (no set left
  out); more column sets to leave out; PLS (components); univariate screening (the k columns most
  correlated with a trait, redone inside every inner fold); cluster means (the non-spectral
  columns clustered by |r| over the training clips, one mean per cluster, the cut chosen); and
  per trait the best of the ridge, PLS and screening by a nested grouped CV (most of the run).
- beyond a linear model: functionals_gbt (the boosted trees), and the mean of the ridge's and the
  trees' scores, half and half.

Prints a table and writes bench/results/functionals_headroom.json and .png (the rows as bars with
their intervals).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.classical import (FunctionalsRidge, FunctionalsTrees, RidgeConfig,  # noqa: E402
                              TreesConfig, ccc_columns, group_folds, ridge_cv, ridge_solve,
                              standardised, stretch)
from models.importance import weighted_pearson  # noqa: E402
from models.pooled_cv import pooled_figures  # noqa: E402
from personality.law import CUES, law_scores  # noqa: E402
from personality.schemas import TRAITS  # noqa: E402
from personality.splits import kfold_splits  # noqa: E402

RIDGE = "functionals_ridge"
ORACLE = "oracle columns"
PER_TRAIT = "per-trait choice (nested)"
TREES = "functionals_gbt"
SPECTRAL = ("fn_logmel_", "fn_mfcc_")  # the ridge's second column set leaves these out
MORE_SETS = ((), SPECTRAL, (*SPECTRAL, "egemaps_mfcc"), (*SPECTRAL, "egemaps_"),
             (*SPECTRAL, "egemaps_", "fn_rms", "fn_centroid", "fn_zcr"))
ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


# --------------------------------------------------------------------------------------------------
# data


def load(root: Path) -> dict:
    """Every labelled clip of a run checkout: "x" (n, F) raw functionals, "columns" (F,), "y"
    (n, 5), "subjects" (n,), "video_ids" (n,), "cues" (n, 10) latent cues or None, "ceiling"
    (n, 5) the law's scores or None."""
    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    everyone = manifest["subject_id"].astype(str).tolist()  # kfold_splits draws over all of them
    manifest = manifest.dropna(subset=list(TRAITS)).reset_index(drop=True)
    table = pd.read_parquet(root / "data" / "functionals" / "functionals.parquet")
    columns = [c for c in table.columns if c != "video_id"]
    table = table.set_index("video_id").reindex(manifest["video_id"])
    ids = manifest["video_id"].to_numpy()
    cues_path = root / "data" / "synthetic_cues.parquet"
    cues = law = None
    if cues_path.is_file():
        frame = pd.read_parquet(cues_path).set_index("video_id")
        if set(f"cue_{c}" for c in CUES) <= set(frame.columns):
            cues = frame.reindex(ids)[[f"cue_{c}" for c in CUES]].to_numpy(np.float64)
            law = law_scores(cues_path).reindex(ids).to_numpy(np.float64)
    return {"x": table[columns].to_numpy(np.float64), "columns": columns,
            "y": manifest[list(TRAITS)].to_numpy(np.float64),
            "subjects": manifest["subject_id"].astype(str).to_numpy(), "video_ids": ids,
            "all_subjects": everyone,
            "cues": cues, "ceiling": law}


def base_seed(root: Path) -> int:
    """base.seed of the checkout's params.yaml (what ingest's folds were drawn with)."""
    import yaml

    return int(yaml.safe_load((root / "params.yaml").read_text())["base"]["seed"])


def outer_folds(subjects: np.ndarray, n_folds: int, seed: int,
                everyone: list[str] | None = None) -> np.ndarray:
    """(n,) the fold that tests each clip: kfold_splits' test fold of its subject, drawn over
    `everyone` (ingest draws over every subject of the manifest, unlabelled ones too)."""
    fold_of = np.full(len(subjects), -1)
    for k in range(n_folds):
        split = kfold_splits(everyone or list(subjects), n_folds=n_folds, fold=k, seed=seed)
        fold_of[[split[s] == "test" for s in subjects]] = k
    return fold_of


# --------------------------------------------------------------------------------------------------
# the candidates: (x_train (n, F) z-scores, y_train (n, 5), groups (n,), x_test, ctx) -> (m, 5)


def stretched(y: np.ndarray, oof: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """`raw` predictions stretched about the train mean by the out-of-fold factor, as the ridge
    does (models/classical.py, CCC rescaling), clipped to [0, 1]."""
    s = stretch(y, oof)
    return np.clip(y.mean(0) + (raw - y.mean(0)) * s, 0.0, 1.0)


def ridge_of(drop_options) -> Callable:
    def fit(xtr, ytr, groups, xte, ctx):
        model = FunctionalsRidge(RidgeConfig(drop_options=drop_options))
        model.fit(xtr, ytr, groups, ctx["columns"])
        with torch.inference_mode():  # forward: the ridge's clip of the z-scores, then W, b
            return np.clip(model({"functionals": torch.from_numpy(xte)}).numpy(), 0.0, 1.0)
    return fit


def ridge_per_trait(xtr, ytr, groups, xte, alphas=ALPHAS) -> np.ndarray:
    """Ridge with one alpha per trait (column of ytr (n, k)) and a clip of the z-scores (as
    functionals_ridge: one for all traits, from RidgeConfig's options) by grouped CV,
    stretched; (m, k)."""
    best = None
    for clip in RidgeConfig().clip_options:
        chosen, _, oof = ridge_cv(xtr, ytr, groups, alphas, 5, clip=clip)
        score = ccc_columns(ytr, stretched(ytr, oof, oof)).mean()
        if best is None or score > best[0] + 1e-12:
            best = (score, clip, chosen, oof)
    _, clip, chosen, oof = best
    if clip > 0:
        xtr, xte = np.clip(xtr, -clip, clip), np.clip(xte, -clip, clip)
    raw = np.zeros((len(xte), ytr.shape[1]))
    for t, alpha in enumerate(chosen):
        weight, bias = ridge_solve(xtr, ytr[:, [t]], alpha)
        raw[:, t] = (xte @ weight + bias)[:, 0]
    return stretched(ytr, oof, raw)


def abs_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Pearson r| (F, K) of every column of x (n, F) with every column of y (n, K); 0 for a
    constant column."""
    return np.abs(np.nan_to_num(weighted_pearson(x, y, np.ones((1, len(x))))[0]))


def oracle_columns(xtr, ytr, groups, xte, ctx):
    """Per latent cue the column that follows it best over these training clips (|Pearson r|)."""
    keep = np.unique(abs_pearson(xtr, ctx["cues_train"]).argmax(0))
    ctx["notes"].setdefault(ORACLE, []).append([ctx["columns"][i] for i in keep])
    return ridge_per_trait(xtr[:, keep], ytr, groups, xte[:, keep])


def pls(xtr, ytr, groups, xte, ctx, components=(1, 2, 3, 4, 6, 8, 12)):
    """PLS regression, one per trait, its number of components by grouped CV."""
    from sklearn.cross_decomposition import PLSRegression

    def fitted(k, rows, trait):
        return PLSRegression(k, scale=False).fit(xtr[rows], ytr[rows, trait])

    out, oof_best = np.zeros((len(xte), 5)), np.zeros_like(ytr)
    folds = group_folds(groups, 5)
    for t in range(5):
        oof = np.zeros((len(components), len(xtr)))
        for held in folds:
            rows = np.setdiff1d(np.arange(len(xtr)), held)
            for i, k in enumerate(components):
                oof[i, held] = fitted(k, rows, t).predict(xtr[held]).ravel()
        best = int(np.argmax([ccc_columns(ytr[:, [t]], o[:, None])[0] for o in oof]))
        oof_best[:, t] = oof[best]
        out[:, t] = fitted(components[best], np.arange(len(xtr)), t).predict(xte).ravel()
    return stretched(ytr, oof_best, out)


def _screened(xtr, ytr, groups, xte, k) -> np.ndarray:
    """Per trait, a ridge on the k columns most correlated with it over these rows; (m, 5)."""
    r = abs_pearson(xtr, ytr)
    out = np.zeros((len(xte), 5))
    for t in range(5):
        keep = np.argsort(-r[:, t])[:k]
        out[:, t] = ridge_per_trait(xtr[:, keep], ytr[:, [t]], groups, xte[:, keep])[:, 0]
    return out


def screening(xtr, ytr, groups, xte, ctx, ks=(10, 20, 40, 80, 160, 10_000)):
    """Univariate screening, k per trait by grouped CV, the screening redone in each inner fold."""
    oof = np.zeros((len(ks), *ytr.shape))
    for held in group_folds(groups, 5):
        rows = np.setdiff1d(np.arange(len(xtr)), held)
        for i, k in enumerate(ks):
            oof[i, held] = _screened(xtr[rows], ytr[rows], groups[rows], xtr[held], k)
    best = np.stack([ccc_columns(ytr, o) for o in oof]).argmax(0)  # (5,)
    full = {k: _screened(xtr, ytr, groups, xte, k) for k in {ks[i] for i in best}}
    return np.stack([full[ks[b]][:, t] for t, b in enumerate(best)], 1)


def cluster_scores(xtr, xte, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """Columns clustered by 1 - |Pearson r| over the training rows (average linkage, cut at
    `cut`); each cluster's score is the mean of its members signed to agree with its first, then
    z-scored: ((n, K), (m, K))."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    live = np.where(xtr.std(0) > 1e-9)[0]
    dist = 1 - np.abs(np.nan_to_num(np.corrcoef(xtr[:, live].T)))
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform((dist + dist.T) / 2, checks=False), "average"),
                      cut, "distance")
    train, test = [], []
    for c in np.unique(labels):
        members = live[labels == c]
        sign = np.sign(xtr[:, members].T @ (xtr[:, members[0]] - xtr[:, members[0]].mean()))
        sign[sign == 0] = 1.0
        train.append((xtr[:, members] * sign).mean(1))
        test.append((xte[:, members] * sign).mean(1))
    train, test = np.stack(train, 1), np.stack(test, 1)
    mean, sd = train.mean(0), train.std(0) + 1e-9
    return (train - mean) / sd, (test - mean) / sd


def cluster_means(xtr, ytr, groups, xte, ctx, cuts=(0.1, 0.2, 0.3, 0.5)):
    """A ridge on cluster means of the non-spectral columns; the cut by grouped CV (mean CCC)."""
    keep = np.array([not c.startswith(SPECTRAL) for c in ctx["columns"]])
    best = None
    for cut in cuts:
        ftr, fte = cluster_scores(xtr[:, keep], xte[:, keep], cut)
        _, _, oof = ridge_cv(ftr, ytr, groups, ALPHAS, 5)
        score = ccc_columns(ytr, stretched(ytr, oof, oof)).mean()
        if best is None or score > best[0]:
            best = (score, ftr, fte)
    return ridge_per_trait(best[1], ytr, groups, best[2])


def trees(xtr, ytr, groups, xte, ctx):
    """functionals_gbt: boosted trees, their count per trait by grouped CV (its default config)."""
    model = FunctionalsTrees(TreesConfig())
    model.fit(xtr, ytr, groups)
    with torch.inference_mode():
        scores = model.decode(model({"functionals": torch.from_numpy(xte.astype(np.float32))}))
    return scores.numpy().astype(np.float64)


def mean_of_ridge_and_trees(xtr, ytr, groups, xte, ctx):
    """The two default functionals models averaged, half and half (no weight to choose); their
    scores of this fold are reused where cross_validate has them (ctx["fold"])."""
    done = ctx.get("fold", {})
    return 0.5 * sum(done[n] if n in done else CANDIDATES[n](xtr, ytr, groups, xte, ctx)
                     for n in (RIDGE, TREES))


def nested_scores(name: str, xtr, ytr, groups, ctx) -> np.ndarray:
    """(5,) per-trait CCC of candidate `name`'s whole procedure (its own inner choices too) over
    an inner grouped CV of these rows."""
    inner = {**ctx, "fold": {}}  # the outer fold's predictions are of other rows
    oof = np.zeros_like(ytr)
    for held in group_folds(groups, 5):
        rows = np.setdiff1d(np.arange(len(xtr)), held)
        oof[held] = CANDIDATES[name](xtr[rows], ytr[rows], groups[rows], xtr[held], inner)
    return ccc_columns(ytr, oof)


def per_trait_choice(xtr, ytr, groups, xte, ctx, names=(RIDGE, "PLS", "univariate screening")):
    """Per trait, the best of `names` by nested grouped CV over these rows, then fitted on all
    (or taken from ctx["fold"], where cross_validate already fitted it on these rows)."""
    best = np.stack([nested_scores(n, xtr, ytr, groups, ctx) for n in names]).argmax(0)  # (5,)
    ctx["notes"].setdefault(PER_TRAIT, []).append([names[b] for b in best])
    done = ctx.get("fold", {})
    full = {b: done[names[b]] if names[b] in done
            else CANDIDATES[names[b]](xtr, ytr, groups, xte, ctx) for b in set(best.tolist())}
    return np.stack([full[b][:, t] for t, b in enumerate(best.tolist())], 1)


CANDIDATES: dict[str, Callable] = {
    RIDGE: ridge_of(RidgeConfig().drop_options),
    ORACLE: oracle_columns,
    "ridge, every column": ridge_of(((),)),
    "ridge, 5 column sets": ridge_of(MORE_SETS),
    "PLS": pls,
    "univariate screening": screening,
    "cluster means": cluster_means,
    PER_TRAIT: per_trait_choice,
    TREES: trees,
    "mean of ridge and trees": mean_of_ridge_and_trees,
}


# --------------------------------------------------------------------------------------------------
# the run


def cross_validate(data: dict, folds: np.ndarray, names: list[str]) -> tuple[dict, dict]:
    """{name: (n, 5) out-of-fold predictions}, {name: seconds}; notes in data["notes"]."""
    preds = {n: np.full(data["y"].shape, np.nan) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    data["notes"] = {}
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        z = standardised(data["x"], train).astype(np.float64)  # NaN -> 0: the train mean
        ctx = {"columns": data["columns"], "notes": data["notes"], "fold": {},
               "cues_train": None if data["cues"] is None else data["cues"][train]}
        for name in names:
            start = time.perf_counter()
            ctx["fold"][name] = CANDIDATES[name](z[train], data["y"][train],
                                                 data["subjects"][train], z[test], ctx)
            preds[name][test] = ctx["fold"][name]
            seconds[name] += time.perf_counter() - start
        print(f"fold {k}: {int(test.sum())} clips scored", flush=True)
    return preds, seconds


def figures(data: dict, folds: np.ndarray, preds: dict, *, n_boot: int, seed: int) -> dict:
    """pooled_figures of every candidate (and the ceiling), paired against functionals_ridge."""
    predictions = dict(preds)
    if data["ceiling"] is not None:
        predictions["ceiling"] = data["ceiling"]
    pooled = {"labels": data["y"], "subjects": data["subjects"], "video_ids": data["video_ids"],
              "folds": folds, "predictions": predictions}
    return pooled_figures(pooled, n_boot=n_boot, level=0.95, seed=seed, best=RIDGE)


def table(result: dict, order: list[str]) -> str:
    def ci(pair):
        return "[-]" if pair is None or None in pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"

    lines = ["| model | pooled CCC [95% CI] | " + " | ".join(TRAITS) + " | vs functionals_ridge |",
             "|---|---|" + "---|" * len(TRAITS) + "---|"]
    for name in order:
        row = result[name]
        vs = row.get("vs_best")
        delta = ("-" if vs is None else
                 f"{vs['delta_ccc_point']:+.3f} [{vs['delta_ccc'][0]:+.3f}, "
                 f"{vs['delta_ccc'][1]:+.3f}]")
        traits = " | ".join(f"{row['per_trait'][t]['ccc']:.3f}" for t in TRAITS)
        lines.append(f"| {name} | {row['ccc']:.3f} {ci(row['ccc_ci'])} | {traits} | {delta} |")
    return "\n".join(lines)


def plot(result: dict, order: list[str], path: Path) -> Path:
    """The pooled CCC of each row with its interval, as evaluate's bar chart."""
    from personality.plots import ccc_bars

    first = result[RIDGE]
    return ccc_bars({n: result[n]["ccc"] for n in order},
                    ccc_ci={n: result[n]["ccc_ci"] for n in order}, path=path, dpi=100,
                    title=f"functionals, {first['n_folds']} folds pooled: {first['n_videos']} "
                          f"clips of {first['n_subjects']} subjects")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="a checkout after `make run`")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None,
                        help="the folds' seed (default: base.seed of the root's params.yaml)")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="these candidates (and functionals_ridge)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "functionals_headroom.json")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(CANDIDATES)
    if unknown:
        parser.error(f"--only: no candidate {sorted(unknown)} (there are {list(CANDIDATES)})")
    data = load(args.root)
    names = [RIDGE, *[n for n in CANDIDATES if n != RIDGE and (not args.only or n in args.only)
                      and not (n == ORACLE and data["cues"] is None)]]  # a real dataset: no cues
    seed = args.seed if args.seed is not None else base_seed(args.root)
    folds = outer_folds(data["subjects"], args.folds, seed, data["all_subjects"])
    preds, seconds = cross_validate(data, folds, names)
    result = figures(data, folds, preds, n_boot=args.boot, seed=seed)
    order = (["ceiling"] if "ceiling" in result else []) + names
    print(table(result, order))
    out = {"root": str(args.root), "n_clips": len(data["y"]),
           "n_subjects": len(np.unique(data["subjects"])), "folds": args.folds,
           "seed": seed, "figures": result, "seconds": seconds,
           "oracle_columns": data["notes"].get(ORACLE, []),
           "per_trait_choice": data["notes"].get(PER_TRAIT, [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} and {plot(result, order, args.out.with_suffix('.png'))}")
    return out


if __name__ == "__main__":
    main()
