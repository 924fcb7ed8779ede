"""Cross-validation by subject, or training seeds, as a set of DVC experiments: one `dvc exp run
-S ingest.fold=k` per fold (or `-S train.seed=k` per seed), and a table of mean and sd of test CCC
per model over them.

    python scripts/cv.py                  # 5 folds of the default models (make cv)
    python scripts/cv.py --folds 5 --jobs 2
    python scripts/cv.py --collect        # only the table of finished cv-fold* experiments
    python scripts/cv.py --set 'train.models=[functionals_ridge,functionals_gbt]'
                                          # extra -S overrides for every fold (a subset of
                                          # models: the rest keep the rows of an earlier run)

Each fold is queued as
`dvc exp run --queue -n cv-fold<k> -S ingest.split_mode=kfold -S ingest.n_folds=N -S ingest.fold=k`:
subjects go into N folds (personality/datasets.py: kfold_splits), fold k is test, fold k+1 val, the
rest train. Ingest re-runs in each experiment (the split is decided there, once), but its
data/clips.parquet does not change with the fold, so frames, faces, aus and audio come from the
DVC cache; augment, train, retrain and evaluate run. Run the pipeline once first (`make cv` does).

Which sources it folds: ingest.split_mode=kfold splits the subjects of `synthetic`, `folder`,
`perfex` and `openface_csv` (ingest refuses a labels CSV that gives any row a `split`: k-fold
decides every subject's).
`chalearn16` and `udiva` bring their own split, so ingest refuses ingest.split_mode=kfold for
them rather than give every fold the same split (and this script refuses before queuing): ChaLearn folds by YouTube id through its own
params, one experiment per fold (`dvc exp run -n cv-fold<k> -S ingest.chalearn16.split_mode=kfold
-S ingest.chalearn16.fold=k`, then `--collect`); UDIVA keeps its official splits
(ingest.udiva.splits).

The table (stdout, and JSON in bench/results/cv.json): per model the test mean CCC of every fold,
their mean and standard deviation, and the mean val CCC; read from each experiment's
metrics/summary.json through its git ref (refs/exps/<commit>/cv-fold<k>). For folds, two more
columns: the folds' test predictions pooled (each subject scored once, by the fold that held them
out) with the subject-bootstrap interval evaluate draws, and each model's paired difference to
the one best on validation (models/pooled_cv.py; read from the DVC cache through each
experiment's dvc.lock).

The same over training seeds on the default split (make seeds):

    python scripts/cv.py --seeds 5 --jobs 2   # seed<k>, k = 1..5
    python scripts/cv.py --seeds 5 --collect --baseline REV   # re-read them (queued on REV)

queues seed<k> experiments: the data, the split and the front-end stay (DVC cache); every seed
a training draws from moves to k: `train.seed` (the networks' initialisation, batch order,
views), `retrain.seed` (the user-study fine-tuning) and functionals_gbt's own `seed` (its row
and feature subsampling). The ridge has no randomness. The table's spread is what the test CCC
of one trained model owes to its seeds, which the subject-bootstrap interval of one run does not
contain (bench/results/seeds.json).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # the project's packages (models, personality, stages)
from zoo import (dvc, experiment_refs, jobs_arg, queue_and_run,  # noqa: E402  (a sibling script)
                 show_json)

PREFIX = "cv-fold"
SEED_PREFIX = "seed"
COLUMN = {PREFIX: "fold", SEED_PREFIX: "seed"}  # the table's column per run, by prefix


def fold_experiments(n_folds: int, extra: list[str] = ()) -> dict[str, list[str]]:
    # register.enabled=false: a fold's model is a measurement, not a version to serve
    return {f"{PREFIX}{k}": ["ingest.split_mode=kfold", f"ingest.n_folds={n_folds}",
                             f"ingest.fold={k}", "register.enabled=false", *extra]
            for k in range(n_folds)}


def seed_experiments(n_seeds: int, extra: list[str] = ()) -> dict[str, list[str]]:
    """seed<k>: the default split, every seeded training from seed k (1..n_seeds); `++` adds
    the trees' seed to their config (`{}` by default) or overrides it."""
    return {f"{SEED_PREFIX}{k}": [f"train.seed={k}", f"retrain.seed={k}",
                                  f"++train.model_config.functionals_gbt.seed={k}",
                                  "register.enabled=false", *extra]
            for k in range(1, n_seeds + 1)}


def run_refs(baseline: str, prefix: str, names: set[str] | None) -> dict[str, str]:
    """{run name: git ref} of the experiments on `baseline` named prefix<k>, in k's order."""
    refs = {n: r for n, r in experiment_refs(baseline, prefix_filter=prefix).items()
            if n.removeprefix(prefix).isdigit() and (names is None or n in names)}
    return {n: refs[n] for n in sorted(refs, key=lambda n: int(n.removeprefix(prefix)))}


def collect(baseline: str = "HEAD", prefix: str = PREFIX, names: set[str] | None = None
            ) -> tuple[list[dict], list[str]]:
    """Rows {model, per-run CCCs ("runs"), mean, sd, val mean} and the run names found: the
    experiments on `baseline` named prefix<k> (only `names`, where given)."""
    refs = run_refs(baseline, prefix, names)
    folds = list(refs)
    per_model: dict[str, dict[str, dict]] = {}
    for fold in folds:
        for model, entry in (show_json(refs[fold], "metrics/summary.json") or {}).items():
            per_model.setdefault(model, {})[fold] = entry
    rows = []
    for model, by_fold in sorted(per_model.items()):
        test = [by_fold[f]["ccc"] for f in folds if by_fold.get(f, {}).get("ccc") is not None]
        val = [by_fold[f]["val_ccc"] for f in folds
               if by_fold.get(f, {}).get("val_ccc") is not None]
        rows.append({"model": model, "runs": {f: by_fold.get(f, {}).get("ccc") for f in folds},
                     "test_ccc_mean": statistics.fmean(test) if test else None,
                     "test_ccc_sd": statistics.stdev(test) if len(test) > 1 else None,
                     "val_ccc_mean": statistics.fmean(val) if val else None,
                     "n_runs": len(test)})
    rows.sort(key=lambda r: -(r["val_ccc_mean"] if r["val_ccc_mean"] is not None else -1e9))
    return rows, folds


def _cache_file(cache: Path, md5: str) -> Path:
    """The DVC cache's copy of an output with this md5 (a lock file's value: checked to be one,
    so that no path outside the cache is read)."""
    if not re.fullmatch(r"[0-9a-f]{32}(\.dir)?", md5):
        raise ValueError(f"dvc.lock names md5 {md5!r}, which is no md5")
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def lock_of(ref: str) -> dict:
    """An experiment's dvc.lock, parsed."""
    import yaml

    return yaml.safe_load(subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=ROOT, text=True,
                                         capture_output=True, check=True).stdout) or {}


def fold_outputs(lock: dict, cache: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One fold experiment's manifest and predictions ({model: frame}: train's
    data/predictions/<model>.parquet, the predictions/<model>.parquet of a folder output such as
    retrain's and, on synthetic data, the ceiling's scores), read from the DVC `cache` through
    the experiment's dvc.lock (`lock`, parsed)."""
    import pandas as pd

    manifest, predictions, cues = None, {}, None
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path, md5 = out["path"], str(out.get("md5", ""))
            if path == "data/manifest.parquet":
                manifest = pd.read_parquet(_cache_file(cache, md5))
            elif path == "data/synthetic_cues.parquet":
                cues = _cache_file(cache, md5)
            elif path.startswith("data/predictions/") and path.endswith(".parquet"):
                # (a model outside this run's train.models keeps its stage's old lock entry,
                # whose file may be in no cache here: pool_folds drops any that is stale)
                if _cache_file(cache, md5).is_file():
                    predictions[Path(path).stem] = pd.read_parquet(_cache_file(cache, md5))
            elif md5.endswith(".dir") and _cache_file(cache, md5).is_file():
                # (a folder DVC does not cache, such as data/models/<model>, has no listing)
                for entry in json.loads(_cache_file(cache, md5).read_text()):
                    rel = Path(entry["relpath"])
                    if rel.parent.name == "predictions" and rel.suffix == ".parquet":
                        predictions[rel.stem] = pd.read_parquet(_cache_file(cache, entry["md5"]))
    if manifest is None:
        raise ValueError("a fold's dvc.lock has no data/manifest.parquet")
    if cues is not None:  # the synthetic set's ceiling, scored like a model (evaluate's row)
        from personality.law import law_scores

        law = law_scores(cues)
        scored = manifest[manifest["video_id"].isin(law.index)]
        predictions["ceiling"] = law.loc[scored["video_id"]].reset_index(drop=True).assign(
            video_id=scored["video_id"].to_numpy(), split=scored["split"].to_numpy())
    return manifest, predictions


def pooled(refs: dict[str, str], ranked: list[str]) -> tuple[dict[str, dict], dict]:
    """The fold experiments' test predictions pooled, with intervals (models/pooled_cv.py) drawn
    as evaluate draws them (params.yaml: evaluate.bootstrap, ci_level, interval; base.seed):
    (figures per model, with differences to ranked[0], the best on validation; the paired
    differences among the `ranked` models); ({}, {}) and why, on stderr, where an experiment's
    outputs are not in this DVC cache."""
    from models.pooled_cv import draw, pairwise, pool_folds, pooled_figures
    from personality.common import load_params_file

    params = load_params_file(ROOT / "params.yaml")
    evaluate = params.get("evaluate") or {}
    cache = Path(dvc("cache", "dir").stdout.strip())
    try:
        pooled_clips = pool_folds([fold_outputs(lock_of(ref), cache) for ref in refs.values()])
    except (OSError, ValueError, subprocess.CalledProcessError) as err:
        print(f"no pooled figures: {err}", file=sys.stderr)
        return {}, {}
    for k, model, why in pooled_clips["stale"]:
        print(f"pooled figures: {model}'s predictions of fold {k} left out: {why}",
              file=sys.stderr)
    if pooled_clips["missing_subjects"]:
        print(f"pooled figures: {len(pooled_clips['missing_subjects'])} labelled subjects are in "
              "no finished fold's test split (e.g. "
              f"{pooled_clips['missing_subjects'][0]}): the pooled figures rest on the others",
              file=sys.stderr)
    drawn = dict(n_boot=int(evaluate.get("bootstrap", 1000)),
                 seed=int((params.get("base") or {}).get("seed", 1234)),
                 method=str(evaluate.get("interval", "fisher_z")))
    drawn["draws"] = draw(pooled_clips, **drawn)  # one bootstrap for the figures and the pairs
    level = float(evaluate.get("ci_level", 0.95))
    return (pooled_figures(pooled_clips, best=ranked[0] if ranked else None, level=level,
                           **drawn),
            pairwise(pooled_clips, ranked, level=level, **drawn))


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _with_ci(entry: dict) -> str:
    """A pooled entry's "ccc [lo, hi]" (the value alone without an interval)."""
    lo, hi = entry["ccc_ci"]
    return _f(entry["ccc"]) + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")


def _difference(versus: dict | None) -> str | None:
    """A paired comparison's "+d [lo, hi]", with "no ranking" where the interval holds 0; None
    where it has no point or no interval."""
    if not versus or versus["delta_ccc_point"] is None or None in versus["delta_ccc"]:
        return None
    lo, hi = versus["delta_ccc"]
    inside = "; inside the interval: no ranking" if lo <= 0.0 <= hi else ""
    return f"{versus['delta_ccc_point']:+.3f} [{lo:+.3f}, {hi:+.3f}]{inside}"


def _pooled_cells(entry: dict | None, is_best: bool, n_folds: int) -> list[str]:
    """The pooled CCC [CI] (with the folds it rests on when not all `n_folds`) and its
    difference to the model best on validation, as table cells."""
    if not entry:
        return ["-", "-"]
    ccc = _with_ci(entry)
    if entry.get("n_folds", n_folds) < n_folds:
        ccc += f" ({entry['n_folds']} of {n_folds} folds)"
    if is_best:
        return [ccc, "best on val"]
    difference = _difference(entry.get("vs_best"))
    return [ccc, "-" if difference is None else f"Δ {difference}"]


def markdown(rows: list[dict], folds: list[str], prefix: str = PREFIX,
             best: str | None = None) -> str:
    """The table: per model val mean, test mean ± sd and each run's test CCC; with pooled
    figures (folds, rows' "pooled"), the pooled test CCC with its interval and its paired
    difference to `best`, the model best on validation."""
    has_pooled = any(r.get("pooled") for r in rows)
    level = next((r["pooled"]["level"] for r in rows if r.get("pooled")), 0.95)
    extra = [f"pooled test CCC [{level:.0%} CI]", f"vs {best} (pooled)"] if has_pooled else []
    head = ("| model | val CCC (mean) | test CCC mean ± sd | "
            + " | ".join([*(f"{COLUMN[prefix]} {f.removeprefix(prefix)}" for f in folds),
                          *extra]) + " |")
    lines = [head, "|" + "---|" * (3 + len(folds) + len(extra))]
    for r in rows:
        sd = f" ± {r['test_ccc_sd']:.3f}" if r["test_ccc_sd"] is not None else ""
        cells = [_f(r["runs"][f]) for f in folds]
        if has_pooled:
            cells += _pooled_cells(r.get("pooled"), r["model"] == best, len(folds))
        lines.append(f"| {r['model']} | {_f(r['val_ccc_mean'])} | {_f(r['test_ccc_mean'])}{sd} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def trait_markdown(rows: list[dict]) -> str:
    """Per model and trait, the pooled test CCC with its interval ("" without pooled figures)."""
    pooled_rows = [r for r in rows if (r.get("pooled") or {}).get("per_trait")]
    if not pooled_rows:
        return ""
    traits = list(pooled_rows[0]["pooled"]["per_trait"])
    return "\n".join([f"| model (pooled test CCC per trait) | {' | '.join(traits)} |",
                      "|---|" + "---|" * len(traits),
                      *(f"| {r['model']} | " + " | ".join(_with_ci(r["pooled"]["per_trait"][t])
                                                         for t in traits) + " |"
                        for r in pooled_rows)])


def retrain_markdown(rows: list[dict]) -> str:
    """Each retrained model's pooled, paired difference to its base model ("" without any)."""
    lines = []
    for r in rows:
        versus = (r.get("pooled") or {}).get("vs_base")
        difference = _difference(versus)
        if difference is not None:
            lines.append(f"| {r['model']} | {versus['model']} | {difference} | "
                         f"{100 * versus['p_better']:.0f}% |")
    if not lines:
        return ""
    head = "| retrained model | its base | pooled test CCC Δ [CI], paired | better in |"
    return "\n".join([head, "|---|---|---|---|", *lines])


def plot_pooled(rows: list[dict], path: Path) -> Path | None:
    """The pooled test CCC of each model with its interval, as a bar chart (personality.plots
    .ccc_bars) at `path`; None when no row has pooled figures."""
    from personality.plots import ccc_bars

    pooled_rows = [r for r in rows if (r.get("pooled") or {}).get("ccc") is not None]
    if not pooled_rows:
        return None
    first = pooled_rows[0]["pooled"]
    return ccc_bars({r["model"]: r["pooled"]["ccc"] for r in pooled_rows},
                    ccc_ci={r["model"]: r["pooled"]["ccc_ci"] for r in pooled_rows},
                    level=first["level"], path=path, dpi=100,
                    title=f"test CCC of {first['n_folds']} folds pooled: {first['n_videos']} "
                          f"clips of {first['n_subjects']} subjects")


def plot_pairs(pairs: dict[str, dict[str, dict]], path: Path) -> Path | None:
    """The paired differences among the models (models.pooled_cv.pairwise) as a heat map at
    `path`, with how many hold on stdout; None without any."""
    import numpy as np

    from personality.plots import delta_matrix

    names = list(dict.fromkeys([*pairs, *(b for versus in pairs.values() for b in versus)]))
    if len(names) < 2:
        return None
    delta = np.full((len(names),) * 2, np.nan)
    holds = np.zeros_like(delta, bool)
    for a, versus in pairs.items():
        for b, got in versus.items():
            i, j = names.index(a), names.index(b)
            lo, hi = got["delta_ccc"]
            if got["delta_ccc_point"] is None or lo is None or hi is None:
                continue
            delta[i, j], delta[j, i] = got["delta_ccc_point"], -got["delta_ccc_point"]
            holds[i, j] = holds[j, i] = not lo <= 0.0 <= hi
    print(f"\n{int(holds.sum()) // 2} of {len(names) * (len(names) - 1) // 2} pairs of models "
          "differ in pooled test CCC with an interval that excludes 0 (bench/results/"
          "cv_pairs.png)")
    return delta_matrix(names, delta, holds, path=path, title="pooled test CCC, paired: row - "
                        "column (models in order of mean val CCC)")


def fold_refusal(overrides: list[str]) -> str | None:
    """Why ingest would refuse ingest.split_mode=kfold for the source these experiments ingest
    (params.yaml's ingest.source, or an `ingest.source=` override), or None."""
    from personality.common import load_params_file
    from stages.ingest import FIXED_SPLIT_SOURCES

    source = str((load_params_file(ROOT / "params.yaml").get("ingest") or {}).get("source", ""))
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "ingest.source":
            source = value.strip()
    if source in FIXED_SPLIT_SOURCES:
        return (f"ingest.source={source}: {FIXED_SPLIT_SOURCES[source]}; make cv folds the "
                "synthetic, folder, perfex and openface_csv sources")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=0, help="instead of folds: this many "
                        "training seeds on the default split")
    parser.add_argument("--jobs", type=jobs_arg, default=2, help="experiments run at once")
    parser.add_argument("--collect", action="store_true", help="only print the table")
    parser.add_argument("--baseline", default="HEAD", help="--collect: the commit the "
                        "experiments were queued on")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra -S override for every experiment (repeatable)")
    args = parser.parse_args(argv)
    if args.folds < 3:
        parser.error("--folds must be >= 3 (test, val and train folds)")
    if args.seeds == 1 or args.seeds < 0:
        parser.error("--seeds must be >= 2 (a spread needs two runs)")
    prefix, wanted = (SEED_PREFIX, args.seeds) if args.seeds else (PREFIX, args.folds)
    baseline, names = args.baseline, None
    if not args.collect and not args.seeds:
        refusal = fold_refusal(args.set)
        if refusal:
            parser.error(refusal)  # before queuing N experiments that would each fail at ingest
    if not args.collect:
        runs = (seed_experiments(args.seeds, args.set) if args.seeds
                else fold_experiments(args.folds, args.set))
        baseline, names = queue_and_run(runs, args.jobs, prefix=prefix), set(runs)
    rows, folds = collect(baseline, prefix, names)
    if not folds:
        print(f"no {prefix}<k> experiments on {baseline} (--baseline: the commit they were "
              "queued on)")
        return 1
    ranked = [r["model"] for r in rows if r["val_ccc_mean"] is not None]  # best on val first
    best, pairs = (ranked[0] if ranked else None), {}
    if prefix == PREFIX and len(folds) > 1:  # seeds share one test split: nothing to pool
        figures, pairs = pooled(run_refs(baseline, prefix, names), ranked)
        for r in rows:
            r["pooled"] = figures.get(r["model"])
    print(markdown(rows, folds, prefix, best))
    for extra_table in (trait_markdown(rows), retrain_markdown(rows)):
        if extra_table:
            print("\n" + extra_table)
    out = ROOT / "bench" / "results" / ("seeds.json" if args.seeds else "cv.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"baseline": baseline, "runs": folds, "rows": rows,
                               **({"pairwise": pairs} if pairs else {})}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    for plot in (plot_pooled(rows, out.with_suffix(".png")),
                 plot_pairs(pairs, out.with_name("cv_pairs.png"))):
        if plot is not None:
            print(f"wrote {plot.relative_to(ROOT)}")
    return 0 if len(folds) == wanted or args.collect else 1


if __name__ == "__main__":
    sys.exit(main())
