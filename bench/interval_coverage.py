"""How often does evaluate's 95% interval over subjects contain the true value? A coverage bench.

    .venv/bin/python bench/interval_coverage.py                  # ~35 min on 1 core, all four laws
    .venv/bin/python bench/interval_coverage.py --law heavy --splits 400 --boot 500   # ~2 min

Simulated test splits like the default one (S subjects; S = 8 as the default test split, 34 as a
larger one), five traits, each drawn from a law with a known population CCC. Four laws:

"equal" (the law the default interval was chosen under): 3 clips per subject, normal draws,

    u ~ N(0, 1) per subject and trait               (the person's trait level)
    y = 0.5 + 0.12 (u + 0.5 e)                      (label; e ~ N(0, 1) per clip)
    p = 0.5 + 0.08 (r u + sqrt(1 - r^2) e') + 0.02  (a shrunk, biased prediction)

Three more laws, to see whether the choice holds off the law it was made under: "uneven", the
same formulas with 1 + Poisson(2) clips per subject (mean 3, from 1 to ~9, as YouTube videos
contribute unequal clip counts to First Impressions); "heavy", 3 clips each but u, e and e'
drawn from Student's t with 3 degrees of freedom scaled to unit variance (a few extreme people
and clips); "uneven_heavy", both at once.

All clipped to [0, 1]; r = 0.8 is the reviewer's law (CCC 0.62). The population CCC and MAE
(over clips, as the stage pools them) are measured on 200,000 subjects. Per split:
models/bootstrap.py's subject resamples and leave-one-subject-out jackknife, and its `interval`
with method "percentile", "bca" and "fisher_z" (the default: for CCC tanh(2 atanh(CCC) - mean
atanh(CCC*) +- t sd(atanh(CCC*))), t Student's 97.5% quantile for S - 1 degrees of freedom; the
same on log for MAE and on the raw scale for a difference), for the mean CCC over traits (what
results.md ranks by), trait O's CCC, and the mean MAE; for each also the
stage's "bootstrap_t" (each resample's leave-one-draw-out values vectorised here as `within_of`,
checked against the stage's own scoring; the interval is the stage's); beside them, not in the
stage, the basic interval (2 estimate - the percentile ends) and, for CCC, fisher_z with the
normal quantile 1.96 in place of t.
The resampled CCCs are computed here vectorised over resamples, each resample a (n,) vector of
how often it draws each clip (the same formula as models.metrics.ccc on the repeated rows:
population variances; checked equal to models.bootstrap.bootstrap_scores on the first split of
every cell) because the stage's loop would take an hour for these runs.

A second table: two models from the same law with independent errors (true difference 0), and
how often the interval of the difference in mean CCC excludes 0: how often results.md would rank
two equally good models (nominal 5%).

Writes bench/results/interval_coverage.json and a plot of the mean CCC's coverage per law,
subject count and method, interval_coverage.png. Monte-Carlo error of a coverage near 0.95 with 1000
splits: +-0.007 (one sd).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.bootstrap import (bootstrap_scores, interval, model_uncertainty,  # noqa: E402
                              subject_jackknife, subject_resamples)

OUT = ROOT / "bench" / "results" / "interval_coverage.json"
CLIPS = 3  # per subject under "equal"; the mean under "uneven"
TRAITS = 5
LAWS = ("equal", "uneven", "heavy", "uneven_heavy")
SIGNALS = (0.0, 0.4, 0.8, 0.95)  # r of the prediction with the person's trait level
SUBJECTS = (8, 34)
LEVEL = 0.95
METHODS = ("percentile", "bca", "basic", "fisher_z_normal", "bootstrap_t", "fisher_z")
EQUAL_METHODS = ("percentile", "bca", "basic", "bootstrap_t", "fisher_z")  # a difference's


def draw(rng: np.random.Generator, n_subjects: int, r: float, *, law: str = "equal",
         models: int = 1):
    """(subjects (n,), y (n, 5), [p (n, 5)] * models) of one simulated split under `law`."""
    counts = (1 + rng.poisson(CLIPS - 1, n_subjects) if law.startswith("uneven")
              else np.full(n_subjects, CLIPS))
    subjects = np.repeat(np.arange(n_subjects), counts)
    noise = rng.normal
    if law.endswith("heavy"):
        noise = lambda mean, sd, shape: sd * rng.standard_t(3, shape) / np.sqrt(3.0)  # noqa: E731
    u = noise(0, 1, (n_subjects, TRAITS))[subjects]  # (n, 5)
    y = np.clip(0.5 + 0.12 * (u + 0.5 * noise(0, 1, u.shape)), 0, 1)
    preds = [np.clip(0.5 + 0.08 * (r * u + np.sqrt(1 - r * r) * noise(0, 1, u.shape)) + 0.02,
                     0, 1) for _ in range(models)]
    return subjects, y, preds


def weighted_scores(weights: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """CCC and MAE (each (B, 5)) of B resamples given as weights (B, n): how often each resample
    draws each of the n clips: models.metrics' CCC (population variances) and MAE on the
    repeated rows."""
    w = weights / weights.sum(axis=1, keepdims=True)
    my, mp = w @ y, w @ p
    vy, vp = w @ (y * y) - my ** 2, w @ (p * p) - mp ** 2
    cov = w @ (y * p) - my * mp
    return {"ccc": 2 * cov / (vy + vp + (my - mp) ** 2), "mae": w @ np.abs(y - p)}


def resample_weights(subjects: np.ndarray, *, boot: int, seed: int) -> tuple[np.ndarray, ...]:
    """(bootstrap weights (B, n), jackknife weights (S, n)) from the stage's own row indices."""
    n = len(subjects)
    rows = subject_resamples(subjects, n_boot=boot, seed=seed)
    jack = subject_jackknife(subjects)
    return (np.stack([np.bincount(r, minlength=n) for r in rows]).astype(float),
            np.stack([np.bincount(j, minlength=n) for j in jack]).astype(float))


def pooled(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """CCC and MAE (each (5,)) over every clip once."""
    return {metric: v[0] for metric, v in weighted_scores(np.ones((1, len(y))), y, p).items()}


def population(r: float, law: str) -> dict:
    """The law's CCC and MAE over clips, on 200,000 subjects (MC error ~0.001)."""
    _, y, (p,) = draw(np.random.default_rng(99), 200_000, r, law=law)
    return {metric: float(v.mean()) for metric, v in pooled(y, p).items()}


def stats_of(y, p, boot_w, jack_w, subjects):
    """Point, bootstrap (B,), jackknife (S,) and bootstrap-t's within-resample values
    (within_of) of mean CCC, O's CCC and mean MAE."""
    point = pooled(y, p)
    boot, jack = weighted_scores(boot_w, y, p), weighted_scores(jack_w, y, p)
    both = lambda w: np.concatenate([weighted_scores(w, y, p)[m] for m in ("ccc", "mae")],  # noqa: E731
                                    axis=-1)  # (K, 10): the five CCCs, then the five MAEs
    values, drawn = within_of(both, subjects, boot_w)  # (B, S, 10), (B, S)
    within = {"ccc": values[..., :5], "mae": values[..., 5:]}
    out = {}
    for key, metric, col in (("mean_ccc", "ccc", None), ("O_ccc", "ccc", 0),
                             ("mean_mae", "mae", None)):
        pick = (lambda v: v.mean(axis=-1)) if col is None else (lambda v: v[..., col])
        out[key] = (float(pick(point[metric])), pick(boot[metric]), pick(jack[metric]),
                    (pick(within[metric]), drawn))  # inner: (B, S) each
    return out


def within_of(stat, subjects: np.ndarray, boot_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the stage's bootstrap-t reads (models.bootstrap.bootstrap_scores' "within" and
    "drawn"), vectorised: each resample's statistic with one copy of subject k left out (NaN
    where k was not drawn), (B, S, ...), and the draw counts (B, S). stat: weights (K, n) ->
    (K, ...)."""
    ids = np.unique(subjects)
    member = (subjects[None, :] == ids[:, None]).astype(float)  # (S, n)
    drawn = np.rint(boot_w @ member.T / member.sum(axis=1))  # (B, S)
    leave = boot_w[:, None, :] - member[None] * (drawn[..., None] > 0)  # (B, S, n)
    B, S, n = leave.shape
    values = stat(leave.reshape(B * S, n))
    values = values.reshape(B, S, *values.shape[1:])
    seen = (drawn > 0).reshape(B, S, *[1] * (values.ndim - 2))
    return np.where(seen, values, np.nan), drawn


def intervals(point: float, boot: np.ndarray, jack: np.ndarray, scale: str,
              within: tuple | None = None) -> dict:
    """The stage's (percentile, BCa, and fisher_z, its default: the bias-corrected interval with
    Student's t for the jackknife's S - 1 degrees of freedom on `scale`, atanh for a CCC, log for
    an MAE, identity for a difference); beside them, not in the stage, the basic interval
    (2 point - the percentile ends) and for a CCC fisher_z with the normal 1.96 in place of t."""
    pct = interval(boot, level=LEVEL)
    out = {"percentile": pct,
           "bca": interval(boot, level=LEVEL, method="bca", estimate=point, jackknife=jack),
           "basic": [2 * point - pct[1], 2 * point - pct[0]],
           "fisher_z": interval(boot, level=LEVEL, method="fisher_z", estimate=point,
                                jackknife=jack, scale=scale)}
    if within is not None:
        out["bootstrap_t"] = interval(boot, level=LEVEL, method="bootstrap_t", estimate=point,
                                      jackknife=jack, scale=scale, within=within)
    if scale == "atanh":  # no jackknife: the subject count is unknown, the normal quantile is used
        out["fisher_z_normal"] = interval(boot, level=LEVEL, method="fisher_z", estimate=point,
                                          scale="atanh")
    return out


def check_against_stage(y, p, subjects, seed, boot_w, jack_w) -> None:
    """The vectorised scores are the stage's: equal to bootstrap_scores on the same resamples,
    and so is the bootstrap-t interval of the mean CCC from within_of's values."""
    rows = subject_resamples(subjects, n_boot=len(boot_w), seed=seed)[:50]
    s = bootstrap_scores(y, {"m": p}, rows, jackknife=subject_jackknife(subjects),
                         subjects=subjects)["m"]
    stage = model_uncertainty(s, "OCEAN", level=LEVEL, method="bootstrap_t")["mean"]
    mine = stats_of(y, p, boot_w[:50], jack_w, subjects)
    for metric, scale in (("ccc", "atanh"), ("mae", "log")):
        point, boot, jack, inner = mine[f"mean_{metric}"]
        ours = intervals(point, boot, jack, scale, inner)["bootstrap_t"]
        assert np.allclose(stage[metric], ours, atol=1e-9, equal_nan=True), (stage, ours)
    for metric in ("ccc", "mae"):
        assert np.allclose(s[metric], weighted_scores(boot_w[:50], y, p)[metric], atol=1e-10)
        assert np.allclose(s["jack"][metric], weighted_scores(jack_w, y, p)[metric], atol=1e-10)
        assert np.allclose(s["point"][metric], pooled(y, p)[metric], atol=1e-10)


def coverage_cell(law: str, n_subjects: int, r: float, truth: dict, *, splits: int, boot: int,
                  seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    hits: dict = {}
    for k in range(splits):
        subjects, y, (p,) = draw(rng, n_subjects, r, law=law)
        boot_w, jack_w = resample_weights(subjects, boot=boot, seed=seed * 100_000 + k)
        if k == 0:
            check_against_stage(y, p, subjects, seed * 100_000 + k, boot_w, jack_w)
        for stat, (point, b, j, inner) in stats_of(y, p, boot_w, jack_w, subjects).items():
            target = truth["mae" if stat.endswith("mae") else "ccc"]
            scale = "atanh" if stat.endswith("ccc") else "log"
            for method, (lo, hi) in intervals(point, b, j, scale, inner).items():
                h = hits.setdefault((stat, method), {"cover": 0, "below": 0, "above": 0,
                                                     "width": 0.0, "none": 0})
                if not (np.isfinite(lo) and np.isfinite(hi)):  # no interval (bootstrap-t):
                    h["none"] += 1                              # a miss, counted apart
                    continue
                h["cover"] += lo <= target <= hi
                h["below"] += hi < target  # the whole interval below the truth
                h["above"] += lo > target
                h["width"] += hi - lo
    return [{"law": law, "n_subjects": n_subjects, "signal_r": r,
             "true": truth["mae" if s.endswith("mae") else "ccc"], "statistic": s, "method": m,
             "coverage": h["cover"] / splits, "below": h["below"] / splits,
             "above": h["above"] / splits, "none": h["none"] / splits,
             "mean_width": h["width"] / max(1, splits - h["none"])}
            for (s, m), h in hits.items()]


def equal_models_cell(law: str, n_subjects: int, *, splits: int, boot: int,
                      seed: int) -> list[dict]:
    """Two models of the same law (r 0.8), independent errors: share of splits whose interval
    of the difference in mean CCC excludes 0."""
    rng = np.random.default_rng(seed)
    ranked = dict.fromkeys(EQUAL_METHODS, 0)
    width, given = dict.fromkeys(ranked, 0.0), dict.fromkeys(ranked, 0)
    for k in range(splits):
        subjects, y, (pa, pb) = draw(rng, n_subjects, 0.8, law=law, models=2)
        boot_w, jack_w = resample_weights(subjects, boot=boot, seed=seed * 100_000 + k)
        diff = lambda w: (weighted_scores(w, y, pa)["ccc"]  # noqa: E731
                          - weighted_scores(w, y, pb)["ccc"]).mean(axis=-1)
        point = float((pooled(y, pa)["ccc"] - pooled(y, pb)["ccc"]).mean())
        found = intervals(point, diff(boot_w), diff(jack_w), "identity",
                          within_of(diff, subjects, boot_w))
        for method in ranked:
            lo, hi = found[method]
            if np.isfinite(lo) and np.isfinite(hi):  # no interval: no ranking either
                ranked[method] += not lo <= 0 <= hi
                width[method], given[method] = width[method] + hi - lo, given[method] + 1
    return [{"law": law, "n_subjects": n_subjects, "method": m, "ranked": ranked[m] / splits,
             "mean_width": width[m] / max(1, given[m])} for m in ranked]


def print_tables(rows: list[dict], equal: list[dict]) -> None:
    by = {(r["law"], r["n_subjects"], r["signal_r"], r["statistic"], r["method"]): r for r in rows}
    print("\ncoverage of the nominal 95% interval (below: the whole interval under the truth) "
          "and mean width\n")
    print("| law | subjects | true | statistic | percentile | BCa | basic "
          "| fisher_z with 1.96, not t | bootstrap-t | fisher_z (the stage's default) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (law, n, r, stat, method), row in by.items():
        if method != "percentile":
            continue
        cells = []
        for m in METHODS:
            x = by.get((law, n, r, stat, m))
            none = f", none {x['none']:.3f}" if x and x["none"] else ""  # bootstrap-t's refusals
            cells.append("-" if x is None else f"{x['coverage']:.3f} (below {x['below']:.3f}"
                         f"{none}) w {x['mean_width']:.3f}")
        print(f"| {law} | {n} | {row['true']:.3f} | {stat} | " + " | ".join(cells) + " |")
    print("\ntwo equally good models: share of splits whose interval of the difference in mean "
          "CCC excludes 0 (nominal 0.05)\n")
    print("| law | subjects | percentile | BCa | basic | bootstrap-t | fisher_z |")
    print("|---|---|---|---|---|---|---|")
    for law, n in sorted({(e["law"], e["n_subjects"]) for e in equal}):
        cell = {e["method"]: e for e in equal if (e["law"], e["n_subjects"]) == (law, n)}
        print(f"| {law} | {n} | " + " | ".join(
            f"{cell[m]['ranked']:.3f} (w {cell[m]['mean_width']:.3f})"
            for m in EQUAL_METHODS) + " |")


def plot_coverage(rows: list[dict], path: Path) -> None:
    """Coverage of the mean CCC against its true value, one panel per law and subject count,
    one line per method, the nominal 0.95 dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    laws = list(dict.fromkeys(r["law"] for r in rows))
    fig, axes = plt.subplots(len(SUBJECTS), len(laws), figsize=(3.2 * len(laws), 5.6),
                             sharex=True, sharey=True, squeeze=False)
    for row_axes, n in zip(axes, SUBJECTS):
        for ax, law in zip(row_axes, laws):
            for method in METHODS:
                cells = sorted((r["true"], r["coverage"]) for r in rows if r["law"] == law
                               and r["n_subjects"] == n and r["statistic"] == "mean_ccc"
                               and r["method"] == method)
                ax.plot(*zip(*cells), marker="o", ms=3, label=method,
                        lw=2.2 if method == "fisher_z" else 1)
            ax.axhline(LEVEL, ls="--", color="grey", lw=0.8)
            ax.set_title(f"{law}, {n} subjects", fontsize=9)
            ax.set_ylim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("true mean CCC")
    for ax in axes[:, 0]:
        ax.set_ylabel("coverage of the 95% interval")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_law(law: str, *, splits: int, boot: int, start: float) -> tuple[list, list]:
    """Coverage rows and equal-model rows of one law; the seeds of "equal" are those the bench
    had before it had a second law, so its figures are reproduced."""
    offset = 5000 * LAWS.index(law)
    rows, equal = [], []
    for i, r in enumerate(SIGNALS):
        truth = population(r, law)
        for n in SUBJECTS:
            rows += coverage_cell(law, n, r, truth, splits=splits, boot=boot,
                                  seed=offset + 10 * i + n)
            print(f"{law}: r {r} ({truth['ccc']:.3f}), {n} subjects: "
                  f"{time.time() - start:.0f} s", flush=True)
    for n in SUBJECTS:
        equal += equal_models_cell(law, n, splits=splits, boot=boot, seed=offset + 1000 + n)
    return rows, equal


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=1000, help="simulated splits per cell")
    ap.add_argument("--boot", type=int, default=1000, help="subject resamples per split")
    ap.add_argument("--law", choices=LAWS, action="append",
                    help="simulation law, repeatable (default: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    laws = args.law or list(LAWS)
    start = time.time()
    rows, equal = [], []
    for law in laws:
        law_rows, law_equal = run_law(law, splits=args.splits, boot=args.boot, start=start)
        rows, equal = rows + law_rows, equal + law_equal
    seconds = time.time() - start
    print_tables(rows, equal)
    print(f"\n{args.splits} splits per cell, {args.boot} resamples each, {seconds:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": {"splits": args.splits, "boot": args.boot, "laws": laws,
                     "clips_per_subject": CLIPS, "traits": TRAITS, "level": LEVEL,
                     "signals": SIGNALS, "subjects": SUBJECTS},
        "coverage": rows, "equal_models": equal, "seconds": round(seconds, 1)}, indent=1))
    plot_coverage(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
