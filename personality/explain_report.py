"""What the explain stage (stages/explain.py) writes for people: metrics/explain.md's markdown
tables and each model's metrics/explain/<model>.csv and heat map.

    from personality.explain_report import markdown
    text = markdown(json.loads(Path("metrics/explain.json").read_text()))

The tables docs/evaluation.md shows: the planted-cue check per model (clusters of interchangeable
functionals, over the clips the importance was measured on; the validation clips alone beside it
when the importance is cross-fitted), the same check one column at a time and by cue, and each
model's strongest correlate per trait. Every value is printed with its interval (95% by default:
`explain.ci_level`), and each table names as many top features as `explain.top_k` keeps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from personality.common import atomic_write_text
from personality.cue_check import cue_of
from personality.schemas import TRAITS

__all__ = ["markdown", "clips_text", "importance_rows", "write_model_files"]


def _fmt_ci(v: float | None, lo: float | None, hi: float | None) -> str:
    """'0.123 [0.045, 0.210]'; n/a for a value JSON holds as null (NaN)."""
    f = [("n/a" if x is None else f"{x:.3f}") for x in (v, lo, hi)]
    return f"{f[0]} [{f[1]}, {f[2]}]"


def clips_text(imp: dict, val_alone: bool = False) -> str:
    """Which clips an importance was measured on: 'val, 28 clips', or with cross-fitting
    '125 clips: val 28 (the trained model), train 97 (5 refits, each without its subjects)'."""
    n_val = imp.get("n_val", imp["n_clips"])
    folds = imp.get("crossfit_folds") or 0
    if val_alone or not folds:
        return f"{imp['split']}, {n_val} clips"
    return (f"{imp['n_clips']} clips: {imp['split']} {n_val} (the trained model), train "
            f"{imp['n_clips'] - n_val} (cross-fitted: {folds} refits, each scoring the subjects "
            "it was not fitted on)")


def _level(report: dict) -> str:
    """The intervals' level as the stage's params set it: '95%'."""
    return f"{report['params']['ci_level']:.0%}"


def _check_table(check: dict, top: dict, cues: dict | None, title: str,
                 level: str = "95%", of_cues: bool = False) -> list[str]:
    """A cue check as markdown lines: per trait its planted cues, its top features with their
    cues (`cues` by name, else cue_of; of_cues: the features are the cues themselves) and
    importance, hits, the share of resamples and the chance of passing (the check's own)."""
    k = max(len(c["top"]) for c in check.values())  # explain.top_k, or the by-cue check's 3
    what = "cues" if of_cues else "features (cue)"
    lines = [title, "", f"| trait | heaviest planted cues | top {k} {what}: CCC drop "
             f"[{level} CI] | hits | ≥ {_need(check)} | share of resamples | chance |",
             "|---|---|---|---|---|---|---|"]
    for t, c in check.items():
        tops = "; ".join(f"{f if of_cues else _named(f, cues)}: {_fmt_ci(v, lo, hi)}"
                         for f, v, lo, hi in top[t][:k])
        lines.append(f"| {t} | {', '.join(c['planted'])} | {tops} | {c['hits']}/{len(c['planted'])} | "
                     f"{'yes' if c['pass'] else 'no'} | {c['share_pass']:.0%} | "
                     f"{c['chance_pass']:.0%} |")
    return lines + [""]


def _named(feature: str, cues: dict | None) -> str:
    """'AU12_r_p90 (+3) (smile)': a feature with its cue (`cues` by name, else cue_of)."""
    return f"{feature} ({(cues[feature] if cues else cue_of(feature)) or '-'})"


def _need(check: dict) -> int:
    """The hits a trait needs to pass (cue_check's `need`; 2 in a report written before the
    check recorded it)."""
    return next(iter(check.values())).get("need", 2)


def _measured_name(cue: str, r: float, photo: float | None = None) -> str:
    """A measured-check cell's cue: 'brow_raise, |r| 0.57, photo 0.77' (photo: where known)."""
    text = f"{cue or '-'}, \\|r\\| {r:.2f}"
    return text if photo is None else f"{text}, photo {photo:.2f}"


def _measured_tables(report: dict) -> list[str]:
    """The cluster check with each cluster's cue measured in the data instead of named."""
    lines = []
    min_r = report["params"]["measured_cue_r"]
    for model, check in (report.get("cue_check_measured") or {}).items():
        imp = report["models"][model]["permutation"]
        clusters = imp["clusters"]
        cues = {n: _measured_name(*m) for n, m in clusters["measured_cues"].items()}
        lines += _check_table(
            check, clusters["top"], cues,
            f"**Cue check by measured cue, {model}** (the same clusters and importances as the "
            "cue check; a cluster's cue is the latent cue its most central member follows best "
            "over the train clips, by \\|Spearman r\\| within face photo where ingest recorded it "
            f"(each photo's mean rank removed), if at least {min_r}; else photo:NAME where it follows which face "
            f"photo the clip shows at \\|r\\| >= {min_r}, never a hit; else -; photo: its "
            "\\|r\\| with the photo):", _level(report))
    return lines


def _cluster_tables(report: dict) -> list[str]:
    """The check the issue asked for (clusters named by the rules), the same with measured cues,
    and the rules' check on the validation clips alone."""
    return _rules_tables(report, False) + _measured_tables(report) + _rules_tables(report, True)


def _rules_tables(report: dict, val_alone: bool) -> list[str]:
    lines = []
    for model, check in (report.get("cue_check_val" if val_alone else "cue_check") or {}).items():
        imp = report["models"][model]["permutation"]
        clusters = imp.get("clusters")
        if clusters is None:
            continue  # no clusters: the column table below is the check
        alone = " on the validation clips alone" if val_alone else ""
        lines += _check_table(
            check, clusters["top_val" if val_alone else "top"], clusters["cues"],
            f"**Cue check{alone}, {model}** (features: {clusters['n_clusters']} clusters of "
            f"interchangeable functionals, |Spearman r| on train, cut at distance "
            f"{clusters['max_distance']}, each shuffled as one; named by its most central "
            f"member, (+k) other members; its cue: the one most of its members measure by the "
            f"rules, none on a tie; permutation importance on "
            f"{clips_text(imp, val_alone)}, {imp['repeats']} shuffles; {_level(report)} "
            "intervals over subjects):", _level(report))
    return lines


def _column_and_cue_tables(report: dict) -> list[str]:
    lines = []
    for model, check in (report.get("cue_check_columns") or {}).items():
        imp = report["models"][model]["permutation"]
        lines += _check_table(
            check, imp["top"], None,
            f"**Cue check one column at a time, {model}** (permutation importance on "
            f"{clips_text(imp)}, {imp['repeats']} shuffles; {_level(report)} intervals over "
            "subjects):", _level(report))
    for model, check in (report.get("cue_check_grouped") or {}).items():
        lines += _grouped_table(report, model, check)
    return lines


def _grouped_table(report: dict, model: str, check: dict) -> list[str]:
    """The check by cue: each cue's functionals shuffled together, the k most important of the
    cues the model's functionals measure; k, the number of cues and each trait's chance of
    passing come from the check (a model whose functionals measure fewer cues, or none of a
    planted cue, has another chance than 10 cues' 18%)."""
    imp = report["models"][model]["permutation"]
    k, need = max(len(c["top"]) for c in check.values()), _need(check)
    n_cues = len(next(iter(imp["cues"].values())))  # every cue, ranked, per trait
    return _check_table(
        check, imp["cues"], None,
        f"**Cue check by cue, {model}** (all functionals of a cue shuffled together; the {k} "
        f"most important of the {n_cues} cues its functionals measure; chance: how often {k} of "
        f"those {n_cues} cues drawn at random give ≥ {need} hits; {clips_text(imp)}):",
        _level(report), of_cues=True)


def markdown(report: dict) -> str:
    """metrics/explain.md: the cue checks and each model's strongest feature per trait."""
    lines = _cluster_tables(report) + _column_and_cue_tables(report)
    return "\n".join(lines + _correlate_table(report)) + "\n"


def _correlate_table(report: dict) -> list[str]:
    """Each model's strongest correlate per trait, with the clips its r rests on: the labelled
    clips of the correlation splits the model has a prediction for (its CSV's and heat map's r
    with the label are over the same clips)."""
    splits = "/".join(report["params"]["correlation_splits"])
    n_all = report["labels"]["n_clips"]
    lines = ["**Strongest correlate of each trait's prediction** (functional with the largest "
             f"|r| over the {splits} clips the model has a prediction for, of the {n_all} "
             "labelled ones; its CSV's and heat map's r with the label are over the same clips; "
             f"r [{_level(report)} CI])", "",
             "| model | clips | " + " | ".join(TRAITS) + " |", "|---|---|" + "---|" * len(TRAITS)]
    for model, entry in report["models"].items():
        cells = [f"{f[0]} {_fmt_ci(*f[1:])}" for f in
                 (entry["top_r_prediction"][t][0] for t in TRAITS)]
        lines.append(f"| {model} | {entry['n_clips']} | " + " | ".join(cells) + " |")
    return lines


def importance_rows(values: np.ndarray, k: int) -> list[int]:
    """Row indices of the union of each column's k most important features, ranked as
    explain.json's "top" ranks them (largest value first, not largest |value|: shuffling a
    feature with a negative importance made the predictions *better*, noise, not reliance), in
    first-seen order; NaN and exact zeros never shown (none: [])."""
    from personality.cue_check import top_indices

    rows: list[int] = []
    for j in range(values.shape[1]):
        for i in top_indices(values[:, j:j + 1], k)[:, 0]:
            if values[i, j] != 0 and np.isfinite(values[i, j]) and int(i) not in rows:
                rows.append(int(i))
    return rows


def write_model_files(root: Path, out_dir: Path, model: str, features: list[str], corr: dict,
                      labels_r: dict, perm: dict | None, p: Any) -> tuple[str, str]:
    """<root>/<out_dir>/<model>.csv (every feature x trait: r with prediction and label,
    importance, each with its interval) and .png (the top rows); paths relative to root.
    corr, labels_r: {"value", "lo", "hi"} (F, 5) over `features`, r with the prediction and
    with the label over the same clips (models/importance.paired_correlations); perm: the
    stage's permutation result or None; p: the stage's ExplainParams (top_k, dpi, the splits
    for the title). The
    features importance is measured on that are no functionals (an AU model's channels, AU12_r)
    get rows of their own, with no r: their importance would otherwise be in no file but the
    json (the AU models' CSV column and heat-map panel were empty)."""
    from personality.explain_plots import heatmap_png, top_features

    extra = [f for f in (perm["features"] if perm is not None else []) if f not in set(features)]
    names = list(features) + extra

    def padded(stat: dict) -> dict:  # no r for the extra rows
        return {s: np.vstack([stat[s], np.full((len(extra), len(TRAITS)), np.nan)])
                for s in ("value", "lo", "hi")}

    corr, labels_r = padded(corr), padded(labels_r)
    cols = {"r_prediction": corr, "r_label": labels_r}
    imp = None
    if perm is not None:  # importance on its own feature list (aus channels, audio_fn columns)
        pos = {f: i for i, f in enumerate(perm["features"])}
        imp = {s: np.array([perm["importance"][s][pos[f]] if f in pos else [np.nan] * 5
                            for f in names]) for s in ("value", "lo", "hi")}
        cols["importance"] = imp
    rows = [{"feature": f, "cue": cue_of(f), "trait": t,
             **{f"{c}{suffix}": float(stat[s][i, j]) for c, stat in cols.items()
                for s, suffix in (("value", ""), ("lo", "_lo"), ("hi", "_hi"))}}
            for i, f in enumerate(names) for j, t in enumerate(TRAITS)]
    out = root / out_dir
    csv = atomic_write_text(out / f"{model}.csv", pd.DataFrame(rows).to_csv(
        index=False, float_format="%.4g"))
    shown = []
    if imp is not None and np.isfinite(imp["value"]).any():
        shown = importance_rows(imp["value"], p.top_k)
    if not shown or extra:  # the functionals' r where importance is not on them
        shown += [i for i in top_features(corr["value"][:len(features)], features, p.top_k)
                  if i not in shown]
    panels = {"r with prediction": corr["value"][shown], "r with label": labels_r["value"][shown]}
    if imp is not None:
        panels["permutation importance (CCC drop)"] = imp["value"][shown]
    png = heatmap_png(panels, [names[i] for i in shown], path=out / f"{model}.png",
                      row_notes=[cue_of(names[i]) for i in shown], dpi=p.dpi,
                      title=f"{model}: top features per trait ({'/'.join(p.correlation_splits)}"
                            f" clips; importance on {p.permutation_split}"
                            f"{' + train, cross-fitted' if perm and perm['n_crossfit'] else ''})")
    return str(csv.relative_to(root)), str(png.relative_to(root))


def write_cluster_png(root: Path, out_dir: Path, model: str, perm: dict | None,
                      p: Any) -> str | None:
    """<root>/<out_dir>/<model>_clusters.png, relative to root: the clusters of interchangeable
    functionals (each shuffled as one: the importances the cue check ranks) among the `p.top_k`
    of any trait, x traits: the CCC drop and the lower end of its interval. The per-feature heat
    map's importance column shuffles one column at a time, which a cue read by many proxies
    survives (docs/evaluation.md), so it shows few cues; None for a model without clusters."""
    if perm is None or "clusters" not in perm:
        return None
    from personality.explain_plots import heatmap_png

    stat, clusters = perm["cluster_importance"], perm["clusters"]
    rows = importance_rows(stat["value"], p.top_k)  # (r,) cluster indices, trait by trait
    if not rows:
        return None
    level = round(100 * p.ci_level)
    panels = {"CCC drop when shuffled": stat["value"][rows],
              f"lower end of its {level}% interval": stat["lo"][rows]}
    clips = f"{p.permutation_split}{' + train, cross-fitted' if perm['n_crossfit'] else ''}"
    png = heatmap_png(panels, [clusters["names"][i] for i in rows],
                      path=root / out_dir / f"{model}_clusters.png",
                      row_notes=[clusters["cues"][i] or "" for i in rows], dpi=p.dpi,
                      title=f"{model}: top clusters of interchangeable functionals, each "
                            f"shuffled as one (importance on {clips})")
    return str(png.relative_to(root))
