"""How often can the explain stage's cue check pass on data like the default? A power analysis.

    .venv/bin/python bench/cue_check_power.py               # ~30 min on 2 cores
    .venv/bin/python bench/cue_check_power.py --runs 50     # half the cue-level runs, ~17 min
    .venv/bin/python bench/cue_check_power.py --runs 0 --out /tmp/ours.json
                                                            # our functionals' rows only, ~4 min

The check (docs/evaluation.md, personality/cue_check.py) asks, per trait, whether two of its
three heaviest planted cues are among its five most important features. It can only pass where
the training clips show a cue's link to the trait and the front-end measures the cue. This bench
separates the two, on the cue level (no rendering), with the stage's own procedure:
`FunctionalsRidge` (alphas by grouped CV), validation clips scored by the trained model, the train
clips cross-fitted (stages.explain.crossfit: subject folds, each standardised and refitted on
the others), permutation importance (models.importance) over both, top five per trait, with the
stage's settings from params.yaml (explain.repeats shuffles, crossfit_folds, cluster_distance,
top_k).

Cue-level features: one column per cue, the cue plus noise at the front-end's measured
reliability (the best |Pearson r| of any functional with that cue over the default train clips,
read from data/functionals and data/synthetic_cues; r = 1: a perfect front-end), and --nuisance
columns of pure noise standing in for the rest of the 189 functionals clusters. That field is
not ours (our nuisance clusters are not pure noise: many AU statistics read the face photo; and
a cue has several proxies), so the bench also runs the stage's check on our own functionals,
bare and with one column added that follows --sweep-cue at each --sweep reliability.

Rows, each with the default's shape (its subjects, clips per subject and splits):
  this draw: the default data's own latent cues and labels; only measurement noise is redrawn.
  new draws: cues and labels drawn again from the generator's law (personality.synthetic).
  our functionals: the stage's check itself, runs differing in their shuffle seeds (and the
    added column's noise); last, with the column a perfect reading of the rendered movement
    would give (per clip, the mean strength the renderer drew for --sweep-cue's expression unit,
    data/synthetic_cues.parquet: track_<cue>): the best any front-end could add for that cue.
Prints the share of runs in which each trait passes and writes
bench/results/cue_check_power.json, with, for every trait and heavy cue, the correlation the
default train split shows against its expected value.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
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

from personality.common import progress  # noqa: E402
from personality.cue_check import cue_hits, planted_cues, top_indices  # noqa: E402
from personality.schemas import TRAITS  # noqa: E402
from personality.synthetic import (CUES, LABEL_NOISE, LABEL_SCALE, LABEL_WEIGHTS,  # noqa: E402
                                   draw_cues, labels_from_cues)

OUT = ROOT / "bench" / "results" / "cue_check_power.json"
KEY = "functionals"


def stage_settings(root: Path):
    """The explain stage's parameters (params.yaml's `explain` section, ExplainParams): the
    bench uses their shuffles, cross-fitting folds, cluster cut and top k."""
    from personality.common import load_params
    from stages.explain import ExplainParams

    return load_params("explain", ExplainParams, path=root / "params.yaml")


def default_draw(root: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(clips: video_id, subject_id, split, O..N in manifest order; latent cues (n, 10);
    reliability per cue (10,)) of the default data in `root` (after `dvc repro`)."""
    paths = [root / "data" / f for f in ("manifest.parquet", "synthetic_cues.parquet",
                                         "functionals/functionals.parquet")]
    if not all(p.exists() for p in paths):
        raise SystemExit(f"{', '.join(str(p) for p in paths)}: run `make run` (dvc repro) first")
    manifest = pd.read_parquet(paths[0])
    latent = pd.read_parquet(paths[1]).set_index("video_id")
    if latent.empty:
        raise SystemExit(f"{paths[1]} is empty: the bench needs the default synthetic dataset")
    funcs = pd.read_parquet(paths[2])
    clips = manifest[["video_id", "subject_id", "split", *TRAITS]].reset_index(drop=True)
    cues = latent.loc[clips["video_id"], [f"cue_{c}" for c in CUES]].to_numpy(np.float64)
    train = clips["split"].eq("train").to_numpy()
    x = funcs.set_index("video_id").loc[clips["video_id"]].select_dtypes("number")
    return clips, cues, front_end_reliability(x.to_numpy(np.float64)[train], cues[train])


def front_end_reliability(x: np.ndarray, cues: np.ndarray) -> np.ndarray:
    """(10,): per cue the best |Pearson r| of any column of x (n, F) with it, over rows where
    the column is finite; constant columns count as 0."""
    best = np.zeros(cues.shape[1])
    for f in range(x.shape[1]):
        ok = np.isfinite(x[:, f])
        if ok.sum() < 3 or np.std(x[ok, f]) == 0:
            continue
        r = [abs(np.corrcoef(x[ok, f], cues[ok, c])[0, 1]) for c in range(cues.shape[1])]
        best = np.maximum(best, r)
    return best


def measured(cues: np.ndarray, reliability: np.ndarray, n_nuisance: int,
             rng: np.random.Generator) -> np.ndarray:
    """(n, 10 + n_nuisance) features: r * cue + sqrt(1 - r^2) * noise per cue (cues are unit
    variance, so each column follows its cue at r), then pure-noise columns."""
    n = len(cues)
    noise = rng.standard_normal(cues.shape) * np.sqrt(1 - reliability ** 2)
    return np.hstack([cues * reliability + noise, rng.standard_normal((n, n_nuisance))])


def importance(x: np.ndarray, clips: pd.DataFrame, *, repeats: int, seed: int,
               names: list[str] | None = None, groups: list[list[int]] | None = None,
               config: dict | None = None, folds: int = 5, model=None) -> np.ndarray:
    """(F or G, 5) CCC drop per feature (or group of features shuffled as one) and trait, the
    explain stage's way: the ridge (RidgeConfig(**config)) fitted on the train clips
    (standardised with their statistics) scores val, 5 cross-fitted refits score train, each
    part's clips shuffled among themselves. folds: the stage's explain.crossfit_folds; model: a
    fitted ridge to score val with instead of fitting one (the stage's checkpoint, in tests)."""
    from models.classical import FunctionalsRidge, RidgeConfig, standardised
    from models.explain import predict_views
    from models.importance import permutation_importance, permuted_predictions
    from stages.explain import Scored, crossfit

    names = names or [f"f{j}" for j in range(x.shape[1])]
    train = clips["split"].eq("train").to_numpy()
    val = clips["split"].eq("val").to_numpy()
    y = clips[list(TRAITS)].to_numpy(np.float64)
    z = standardised(x, train)  # (n, F) float32, train statistics
    net = model
    if net is None:
        cfg = config if config is not None else {"drop_options": ((),)}  # {}: the stage's own
        net = FunctionalsRidge(RidgeConfig(**cfg))
        net.fit(z[train].astype(np.float64), y[train], clips.loc[train, "subject_id"].to_numpy(),
                names)
        net.eval()
    ids = clips["video_id"].tolist()
    views = {ids[i]: {KEY: torch.from_numpy(z[i:i + 1])} for i in np.flatnonzero(val)}
    rows = pd.concat([clips[train].set_index("video_id"),
                      pd.DataFrame(x[train], index=clips.loc[train, "video_id"], columns=names)],
                     axis=1)
    parts = [Scored(net, views, y[val], list(clips.loc[val, "subject_id"]), "val")]
    parts += crossfit(net, KEY, list(rows.index), rows, names, folds=folds)
    with contextlib.redirect_stderr(io.StringIO()):  # the per-part bars of a few-ms job
        base = np.concatenate([predict_views(s.model, s.views) for s in parts])
        perm = np.concatenate([permuted_predictions(s.model, s.views, KEY, repeats=repeats,
                                                    seed=seed + i, groups=groups)
                               for i, s in enumerate(parts)], axis=2)  # (F or G, R, n, 5)
    y_all = np.concatenate([s.y for s in parts])
    return permutation_importance(y_all, base, perm, np.ones((1, len(y_all))))["value"]


def passes(imp: np.ndarray, feature_cues: list[str] | None = None, top_k: int = 5,
           need: int = 2) -> np.ndarray:
    """(5,) bool: per trait, at least `need` of its 3 heaviest planted cues measured by one of
    its top_k features. feature_cues: the cue of each row of imp ("" for none); default: the
    cue-level layout, row j = CUES[j], then nuisance."""
    if feature_cues is None:
        feature_cues = list(CUES) + [""] * (len(imp) - len(CUES))
    planted = planted_cues(LABEL_WEIGHTS, list(CUES))
    top = top_indices(imp, top_k)  # (k, 5)
    return np.array([cue_hits(list(top[:, t]), planted[t], feature_cues.__getitem__) >= need
                     for t in range(len(TRAITS))])


def scenario(clips: pd.DataFrame, cues: np.ndarray | None, reliability: np.ndarray, *, runs: int,
             n_nuisance: int, settings, seed: int, desc: str) -> np.ndarray:
    """(runs, 5) bool pass table. cues None: cues and labels drawn anew each run from the
    generator's law on clips' subjects."""
    subjects = pd.factorize(clips["subject_id"])[0]
    out = np.zeros((runs, len(TRAITS)), bool)
    for run in progress(range(runs), desc=desc, unit="run"):
        rng = np.random.default_rng([seed, run])
        table = clips
        latent = cues
        if cues is None:
            latent = draw_cues(rng, subjects, subjects.max() + 1)
            table = clips.copy()
            table[list(TRAITS)] = labels_from_cues(latent, rng)
        x = measured(latent, reliability, n_nuisance, rng)
        imp = importance(x, table, repeats=settings.repeats, seed=seed + run,
                         folds=settings.crossfit_folds)
        out[run] = passes(imp, top_k=settings.top_k)
    return out


def our_functionals(root: Path, clips: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(n, F) raw data/functionals in clips' order, NaN where none, and the column names."""
    funcs = pd.read_parquet(root / "data" / "functionals" / "functionals.parquet")
    names = [c for c in funcs.columns if c != "video_id"]
    return funcs.set_index("video_id").loc[clips["video_id"], names].to_numpy(np.float64), names


def injected_name(cue: str) -> str:
    """A column name CUE_RULES reads as `cue` (visual cues: their first AU or head prefix)."""
    from personality.cue_check import CUE_RULES

    prefix = dict(CUE_RULES)[cue][0]
    if not prefix.endswith("_"):
        raise SystemExit(f"--sweep-cue {cue}: only cues named by a prefix (the visual ones)")
    return f"{prefix}injected"


def real_row(cue: str, reliability: float | None) -> str:
    """A table row's name on our functionals."""
    return "our functionals" + (" (stage)" if reliability is None
                                else f" + {cue} at r {reliability:.2f}")


def rendered_column(root: Path, clips: pd.DataFrame, cue: str) -> np.ndarray | None:
    """(n,) the per-clip mean strength of `cue`'s expression unit as the renderer drew it
    (data/synthetic_cues.parquet, `track_<cue>`: ingest's mean of the frames' unit strengths) in
    clips' order, the column a front-end that read every frame's movement exactly would give
    (docs/frontend.md's "limit"); None where the cue has no unit of its name."""
    import pyarrow.parquet as pq

    path, unit = root / "data" / "synthetic_cues.parquet", f"track_{cue}"
    if not path.exists() or unit not in pq.read_schema(path).names:
        return None
    means = pd.read_parquet(path, columns=["video_id", unit]).set_index("video_id")[unit]
    return means.loc[clips["video_id"]].to_numpy(np.float64)


def noisy_column(cues: np.ndarray, cue: str, reliability: float, seed: int
                 ) -> Callable[[int], np.ndarray]:
    """run -> (n,) a column following `cue` at `reliability`, its noise drawn per run."""
    def column(run: int) -> np.ndarray:
        noise = np.random.default_rng([seed, run, 7]).standard_normal(len(cues))
        return reliability * cues[:, CUES.index(cue)] + np.sqrt(1 - reliability ** 2) * noise
    return column


def real_scenario(functionals: tuple[np.ndarray, list[str]], clips: pd.DataFrame, label: str,
                  cue: str, added: np.ndarray | Callable[[int], np.ndarray] | None, *,
                  runs: int, settings, seed: int) -> np.ndarray:
    """(runs, 5) bool: the check of the stage's ridge on our own functionals (our_functionals),
    clustered and named as the stage does (stages.explain.clusters_of), with one more column
    read as `cue`: added None (none: the stage's own check), an (n,) array (the same column
    every run), or run -> (n,) (a column drawn per run). Runs differ in their shuffle seeds
    (and in a drawn column); a fixed feature set is clustered once."""
    from stages.explain import clusters_of

    x, names = functionals
    train = clips["split"].eq("train").to_numpy()
    groups = None
    out = np.zeros((runs, len(TRAITS)), bool)
    for run in progress(range(runs), desc=label, unit="run"):
        xr, nr = x, names
        if added is not None:
            column = added(run) if callable(added) else added
            xr, nr = np.c_[x, column], [*names, injected_name(cue)]
        if groups is None or callable(added):
            groups = clusters_of(nr, pd.DataFrame(xr[train], columns=nr),
                                 settings.cluster_distance)
        imp = importance(xr, clips, repeats=settings.repeats, seed=seed + run, names=nr,
                         groups=groups["groups"], config={}, folds=settings.crossfit_folds)
        out[run] = passes(imp, groups["cues"], top_k=settings.top_k)
    return out


def train_links(clips: pd.DataFrame, cues: np.ndarray) -> list[dict]:
    """Per trait and heavy planted cue: Pearson r of the latent cue with the label over the
    default train clips, beside its expected value under the law."""
    train = clips["split"].eq("train").to_numpy()
    planted = planted_cues(LABEL_WEIGHTS, list(CUES))
    out = []
    for t, trait in enumerate(TRAITS):
        unit = LABEL_WEIGHTS[t] / np.linalg.norm(LABEL_WEIGHTS[t])
        signal = LABEL_SCALE / np.hypot(LABEL_SCALE, LABEL_NOISE[t])  # r(noise-free, label)
        for c in planted[t]:
            j = CUES.index(c)
            r = np.corrcoef(cues[train, j], clips.loc[train, trait])[0, 1]
            out.append({"trait": trait, "cue": c, "expected_r": round(float(unit[j] * signal), 3),
                        "train_r": round(float(r), 3)})
    return out


def scenarios(cues: np.ndarray, reliability: np.ndarray, sweep_cue: str, sweep: list[float]
              ) -> list[tuple[str, np.ndarray | None, np.ndarray]]:
    """(name, latent cues or None for new draws, reliability per cue) of each table row."""
    perfect = np.ones_like(reliability)
    rows = [("this draw, measured", cues, reliability),
            ("this draw, perfect front-end", cues, perfect)]
    for r in sweep:
        rel = reliability.copy()
        rel[CUES.index(sweep_cue)] = r
        rows.append((f"this draw, {sweep_cue} at r {r:.2f}", cues, rel))
    return rows + [("new draws, measured", None, reliability),
                   ("new draws, perfect front-end", None, perfect)]


def pass_table(args: argparse.Namespace, settings, clips: pd.DataFrame, cues: np.ndarray,
               reliability: np.ndarray) -> dict[str, dict[str, float]]:
    """{row: {trait: share of runs passing, "all five": ...}}: the cue-level scenarios, then
    (--real-runs > 0) the stage's own check on our functionals, bare and with the swept cue."""
    runs = {}
    train = clips["split"].eq("train").to_numpy()
    if args.runs:
        for name, latent, rel in scenarios(cues, reliability, args.sweep_cue, args.sweep):
            runs[name] = scenario(clips, latent, rel, runs=args.runs, n_nuisance=args.nuisance,
                                  settings=settings, seed=args.seed, desc=name)
    if args.real_runs:
        functionals = our_functionals(args.root, clips)  # read once for every row
        cue = args.sweep_cue
        rows = [(real_row(cue, None), None)]
        rows += [(real_row(cue, r), noisy_column(cues, cue, r, args.seed)) for r in args.sweep]
        rendered = rendered_column(args.root, clips, cue)
        if rendered is not None:  # the limit of any front-end reading this unit's movement
            r = abs(np.corrcoef(rendered[train], cues[train, CUES.index(cue)])[0, 1])
            rows.append((f"our functionals + {cue} as rendered (r {r:.2f})", rendered))
        for label, added in rows:
            runs[label] = real_scenario(functionals, clips, label, cue, added,
                                        runs=args.real_runs, settings=settings, seed=args.seed)
    return {name: {**{t: float(ok[:, i].mean()) for i, t in enumerate(TRAITS)},
                   "all five": float(ok.all(axis=1).mean())} for name, ok in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100,
                    help="runs per cue-level scenario (0: none)")
    ap.add_argument("--real-runs", type=int, default=20,
                    help="runs per scenario on our own functionals (0: none)")
    ap.add_argument("--nuisance", type=int, default=179, help="pure-noise columns (189 clusters "
                    "of the real check minus the 10 cues)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="shuffles per feature (0: the stage's explain.repeats)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-cue", default="brow_lower", choices=CUES,
                    help="a cue whose reliability alone is raised, on this draw")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.7, 0.85, 1.0],
                    help="reliabilities of --sweep-cue to try")
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--out", type=Path, default=OUT, help="the JSON written (a partial run, e.g. "
                    "--runs 0, is best written elsewhere than the full run's file)")
    args = ap.parse_args(argv)

    clips, cues, reliability = default_draw(args.root)
    settings = stage_settings(args.root)
    if args.repeats:
        settings = dataclasses.replace(settings, repeats=args.repeats)
    started = time.time()
    table = pass_table(args, settings, clips, cues, reliability)
    print(f"share of runs passing (>= 2 of the 3 heaviest cues in the top {settings.top_k}): "
          f"{args.runs} runs per cue-level row ({args.nuisance} nuisance columns), "
          f"{args.real_runs} per row on our functionals; {settings.repeats} shuffles, "
          f"{settings.crossfit_folds} cross-fitting folds; {time.time() - started:.0f} s")
    print("| scenario | " + " | ".join([*TRAITS, "all five"]) + " |")
    print("|---" * (len(TRAITS) + 2) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{100 * v:.0f}%" for v in row.values()) + " |")
    print("front-end reliability per cue: "
          + ", ".join(f"{c} {r:.2f}" for c, r in zip(CUES, reliability)))
    links = train_links(clips, cues)
    print("default train split, r(latent cue, label): "
          + "; ".join(f"{x['trait']} {x['cue']} {x['train_r']:+.2f} (law {x['expected_r']:+.2f})"
                      for x in links))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {**{k: v for k, v in vars(args).items() if k not in ("root", "out")},
              "repeats": settings.repeats, "crossfit_folds": settings.crossfit_folds,
              "seconds": round(time.time() - started, 1),
              "reliability": dict(zip(CUES, reliability.round(3).tolist())),
              "pass_share": table, "train_links": links}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
