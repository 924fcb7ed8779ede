"""The evaluation report's uncertainty in degenerate and unpaired cases (models/report.py), found in
review: a split of one subject gets no interval and no "better in" share (not a zero-width
interval and a confident ranking); two models are compared on the clips both predict (a model
lacking some videos was compared on other people); an unlabelled trait prints "n/a", not "nan";
the stage reads `evaluate.interval` (BCa or percentile)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.metrics import baseline_metrics, regression_metrics
from models.report import (add_split_intervals, add_uncertainty, flat_metrics, results_table,
                           summary_of)
from personality.schemas import TRAITS

T = list(TRAITS)


def manifest(rng: np.random.Generator, test_subjects: list[str], *, val_subjects=("v0", "v1"),
             clips: int = 3) -> pd.DataFrame:
    """12 train clips of 4 subjects; `clips` val and test clips per listed subject."""
    rows = [dict(video_id=f"tr{i:02d}", split="train", subject_id=f"a{i // 3}") for i in range(12)]
    for split, subjects in (("val", val_subjects), ("test", test_subjects)):
        rows += [dict(video_id=f"{split}_{s}_{k}", split=split, subject_id=s)
                 for s in subjects for k in range(clips)]
    m = pd.DataFrame(rows)
    m[T] = rng.uniform(0.1, 0.9, (len(m), len(T)))
    return m


def scored(m: pd.DataFrame, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(video_ids, y_true) of `split`, sorted as evaluate sorts them."""
    part = m[m["split"] == split].sort_values("video_id")
    return part["video_id"].to_numpy(), part[T].to_numpy(np.float64)


def report_for(m: pd.DataFrame, preds: dict[str, tuple[np.ndarray, np.ndarray]], best: str):
    """An evaluate.json-shaped report of `preds` on test with their paired comparisons."""
    vids, y = scored(m)
    truth = dict(zip(vids, y))
    report = {}
    for name, (ids, p) in preds.items():
        report[name] = {**regression_metrics(np.stack([truth[v] for v in ids]), p),
                        "n_videos": len(ids)}
    report["baseline"] = {**baseline_metrics(m.loc[m["split"] == "train", T].to_numpy(), y),
                          "n_videos": len(vids)}
    report["selection"] = {"best": best, "val": {n: {"ccc": 0.5 - i / 10}
                                                 for i, n in enumerate(preds)}}
    return report


def test_one_test_subject_has_no_interval_and_no_better_in_share(rng):
    m = manifest(rng, ["s1"])
    vids, y = scored(m)
    preds = {"A": (vids, y + rng.normal(0, 0.05, y.shape)),
             "B": (vids, y + rng.normal(0, 0.2, y.shape))}
    report = report_for(m, preds, best="A")
    add_uncertainty(report, preds, m, split="test", n_boot=200, level=0.95, seed=1, best="A")
    assert report["A"]["ci"]["n_subjects"] == 1
    for name in ("A", "B", "baseline"):
        assert report[name]["ci"]["mean"] == {"ccc": [None, None], "mae": [None, None],
                                              "acc": [None, None]}
        assert report[name]["ci"]["O"]["ccc"] == [None, None]
    vs = report["B"]["vs_best"]
    assert vs["p_better"] is None and vs["delta_ccc"] == [None, None] and vs["p_lower_mae"] is None
    assert vs["delta_ccc_point"] == pytest.approx(report["B"]["mean"]["ccc"]
                                                  - report["A"]["mean"]["ccc"])
    assert report["A"]["vs_baseline"]["p_better"] is None
    table = results_table(report, "test")
    row = next(line for line in table.splitlines() if line.startswith("| B "))
    assert "better in" not in row and "[n/a]" in row and "no ranking" in row
    assert "; one subject: no intervals." in table
    assert summary_of(report)["A"]["ccc_lo"] is None
    assert not any(k.endswith(("_lo", "_hi", "_p_better")) for k in flat_metrics(report["A"], "t"))
    # the val figures that choose the model: no interval from one val subject either
    val_ids, val_y = scored(m, "val")
    one_val = m[(m["split"] != "val") | (m["subject_id"] == "v0")]
    figures = {"A": {"ccc": 0.4}}
    add_split_intervals(figures, {"A": (val_ids[:3], val_y[:3])}, one_val, split="val",
                        n_boot=50, level=0.95, seed=1)
    assert figures["A"]["ccc_ci"] == [None, None]


def test_paired_comparisons_score_both_models_on_the_clips_both_predict(rng):
    """B predicts exactly what A predicts, but only for 4 of the 8 subjects: on their common clips
    the two are the same model (before: "better in" 64% of resamples)."""
    m = manifest(rng, [f"s{k}" for k in range(8)])
    vids, y = scored(m)
    good = np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1)
    has = np.isin(m.set_index("video_id").loc[vids, "subject_id"], ["s0", "s1", "s2", "s3"])
    preds = {"A": (vids, good), "B": (vids[has], good[has])}
    report = report_for(m, preds, best="A")
    add_uncertainty(report, preds, m, split="test", n_boot=300, level=0.95, seed=1, best="A")
    vs = report["B"]["vs_best"]
    assert vs["p_better"] == pytest.approx(0.5) and vs["p_lower_mae"] == pytest.approx(0.5)
    assert vs["delta_ccc"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert vs["n_videos"] == 12 and vs["delta_ccc_point"] == pytest.approx(0.0, abs=1e-12)
    # the baseline, which predicts every clip, is compared on B's clips too
    assert report["B"]["vs_baseline"]["n_videos"] == 12
    assert report["A"]["vs_baseline"]["n_videos"] == 24
    row = next(line for line in results_table(report, "test").splitlines()
               if line.startswith("| B "))
    assert "Δ +0.000" in row and "on the 12 clips both predict" in row and "no ranking" in row
    add_uncertainty(report, preds, m, split="test", n_boot=300, level=0.95, seed=1, best="A",
                    method="bca")
    assert report["A"]["ci"]["interval_method"] == "bca"
    assert report["B"]["vs_best"]["delta_ccc"] == pytest.approx([0.0, 0.0], abs=1e-12)
    add_uncertainty(report, preds, m, split="test", n_boot=100, level=0.95, seed=1, best="A",
                    method="bootstrap_t")  # each resample's own jackknife, on the common clips
    assert report["B"]["vs_best"]["delta_ccc"] == pytest.approx([0.0, 0.0], abs=1e-12)
    # A's 8 subjects: B's 4 leave no interval (1 resample in 64 draws one person four times,
    # its own standard error 0, and a few such resamples make the 2.5% tail unbounded)
    lo, hi = report["A"]["vs_baseline"]["delta_ccc"]
    assert lo < report["A"]["vs_baseline"]["delta_ccc_point"] < hi


def test_an_unlabelled_trait_prints_n_a_not_nan(rng):
    m = manifest(rng, [f"s{k}" for k in range(8)])
    m.loc[m["split"] == "test", "N"] = np.nan
    vids, y = scored(m)
    filled = np.nan_to_num(y, nan=0.5)
    preds = {"A": (vids, filled + rng.normal(0, 0.05, y.shape)),
             "B": (vids, filled + rng.normal(0, 0.2, y.shape))}
    report = report_for(m, preds, best="A")
    add_uncertainty(report, preds, m, split="test", n_boot=100, level=0.95, seed=1, best="A")
    table = results_table(report, "test")
    assert "nan" not in table.lower()
    row = next(line for line in table.splitlines() if line.startswith("| B "))
    assert "Δ n/a" in row and "| n/a |" in row  # the difference, and "beats baseline"


def test_the_stage_reads_evaluate_interval(tmp_path, rng):
    from personality.common import ParamsError, load_params
    from stages import evaluate as ev

    m = manifest(rng, [f"s{k}" for k in range(6)], val_subjects=("v0", "v1", "v2"))
    m["path"], m["dataset"], m["label_scale"] = "x.mp4", "unit", "unit"
    (tmp_path / "data" / "predictions").mkdir(parents=True)
    m.to_parquet(tmp_path / "data" / "manifest.parquet", index=False)
    pred = m[["video_id", "split"]].copy()
    pred[T] = np.clip(m[T].to_numpy() + rng.normal(0, 0.1, (len(m), 5)), 0, 1)
    pred.to_parquet(tmp_path / "data" / "predictions" / "noisy.parquet", index=False)
    out = {}
    for method in ("percentile", "bca", "fisher_z", "bootstrap_t"):
        out[method] = ev.run(ev.EvaluateParams(mlflow=False, interval=method), root=tmp_path)
        assert out[method]["noisy"]["ci"]["interval_method"] == method
    ci = {method: report["noisy"]["ci"]["mean"]["ccc"] for method, report in out.items()}
    assert ci["bca"] != ci["percentile"] and ci["fisher_z"] not in (ci["bca"], ci["percentile"])
    assert ci["bootstrap_t"] not in (ci["bca"], ci["percentile"], ci["fisher_z"])
    assert all(np.isfinite(ci["bootstrap_t"])) and ci["bootstrap_t"][0] < ci["bootstrap_t"][1]
    for method in ("bca", "bootstrap_t"):
        assert (out[method]["selection"]["val"]["noisy"]["ccc_ci"]
                != out["percentile"]["selection"]["val"]["noisy"]["ccc_ci"])
    assert ev.EvaluateParams().interval == "fisher_z"  # bench/interval_coverage.py: why
    repo = Path(__file__).resolve().parents[1] / "params.yaml"
    assert load_params("evaluate", ev.EvaluateParams, path=repo).interval == "fisher_z"
    bad = tmp_path / "params.yaml"
    bad.write_text("evaluate:\n  interval: basic\n")
    with pytest.raises(ParamsError, match="evaluate.interval"):
        load_params("evaluate", ev.EvaluateParams, path=bad)


def test_a_tie_on_val_ccc_goes_to_the_lower_val_mae():
    """A val split of one clip gives every model CCC 0: the choice was the first name listed,
    however large its error (a tiny experiment registered its worst model)."""
    from models.report import select_best

    val = {"worst": {"ccc": 0.0, "mae": 0.40}, "best": {"ccc": 0.0, "mae": 0.10},
           "no_mae": {"ccc": 0.0, "mae": None}}
    assert select_best(val) == "best"
    assert select_best({**val, "higher": {"ccc": 0.01, "mae": 0.5}}) == "higher"


def two_models(rng: np.random.Generator):
    """(manifest, test labels (n, 5), predictions of a close model A and a noisy B, their report
    with intervals over 8 test subjects)."""
    m = manifest(rng, [f"s{k}" for k in range(8)])
    vids, y = scored(m)
    preds = {"A": (vids, y + rng.normal(0, 0.05, y.shape)),
             "B": (vids, y + rng.normal(0, 0.2, y.shape))}
    report = report_for(m, preds, best="A")
    add_uncertainty(report, preds, m, split="test", n_boot=200, level=0.95, seed=1, best="A")
    return m, y, preds, report


def test_acc_carries_its_interval_in_the_json_the_table_and_the_summary(rng, tmp_path,
                                                                        monkeypatch):
    """Test ACC was printed bare ("0.897") beside CCC's interval. ACC is 1 - MAE, so its interval
    is MAE's mirrored: in evaluate.json's ci, results.md, summary.json and the bar chart; null
    where ACC is (z-scored labels)."""
    m, y, preds, report = two_models(rng)
    for name in ("A", "B", "baseline"):
        ci = report[name]["ci"]
        for key in (*T, "mean"):
            lo, hi = ci[key]["acc"]
            assert (lo, hi) == pytest.approx((1 - ci[key]["mae"][1], 1 - ci[key]["mae"][0]))
            assert lo <= report[name][key]["acc"] <= hi
    lo, hi = report["A"]["ci"]["mean"]["acc"]
    row = next(line for line in results_table(report, "test").splitlines()
               if line.startswith("| A "))
    assert f"| {report['A']['mean']['acc']:.3f} [{lo:.3f}, {hi:.3f}] |" in row
    assert summary_of(report)["A"]["acc_lo"] == pytest.approx(lo)
    z = report_for(m, preds, best="A")
    for name in ("A", "B", "baseline"):
        for key in (*T, "mean"):
            z[name][key]["acc"] = math.nan  # as models.metrics.null_acc sets it for label_scale z
    add_uncertainty(z, preds, m, split="test", n_boot=50, level=0.95, seed=1, best="A")
    assert z["A"]["ci"]["mean"]["acc"] == [None, None]

    from personality import plots

    bars = []
    monkeypatch.setattr("matplotlib.axes.Axes.bar",
                        lambda ax, x, h, **kw: bars.append(kw.get("yerr")))
    plots.ccc_bars({"A": 0.5}, path=tmp_path / "bars.png", acc={"A": 0.9},
                   ccc_ci={"A": [0.4, 0.6]}, acc_ci={"A": [0.88, 0.91]})
    assert np.allclose(bars[1], [[0.02], [0.01]])  # the ACC panel's bar: below, above
    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title",
                        lambda ax, text, **kw: titles.append(text))
    plots.ccc_bars({"A": 0.5}, path=tmp_path / "bars.png", ccc_ci={"A": [0.4, 0.6]}, level=0.9)
    assert titles == ["bars: 90% bootstrap interval over subjects"]  # evaluate.ci_level's


def test_each_trait_carries_its_interval_in_the_table_and_the_scatter_titles(rng, tmp_path,
                                                                             monkeypatch):
    """Per-trait CCC was in evaluate.json's ci only: results.md showed the mean, and the MLflow
    scatter grid titled each trait "CCC 0.611" bare. Now results.md has a table of each trait's
    CCC with its interval (the first table's model order) and each scatter title carries it."""
    m, y, preds, report = two_models(rng)
    table = results_table(report, "test").split("test CCC per trait [95% CI]:")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["| model", "| train-mean baseline", "| A", "| B"]
    lo, hi = report["B"]["ci"]["E"]["ccc"]
    assert rows[3].split(" | ")[3] == f"{report['B']['E']['ccc']:.3f} [{lo:.3f}, {hi:.3f}]"

    from models.report import trait_intervals
    from personality import plots

    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title",
                        lambda ax, text, **kw: titles.append(text))
    plots.scatter_grid(y, preds["B"][1], path=tmp_path / "s.png",
                       ccc={t: report["B"][t]["ccc"] for t in T},
                       ccc_ci=trait_intervals(report["B"]))
    assert titles[2] == f"extraversion\nCCC {report['B']['E']['ccc']:.3f} [{lo:.3f}, {hi:.3f}]"


def test_validation_s_choice_says_how_sure_it_is(rng):
    """Validation chose a model by its point CCC alone; with 8 val subjects that choice can be a
    coin toss. Each model now carries the share of val resamples in which it has the highest
    mean CCC (ties split, a NaN never wins), and results.md prints them."""
    from models.report import chosen_shares

    shares = chosen_shares({"a": np.array([0.5, 0.2, 0.4, np.nan]),
                            "b": np.array([0.3, 0.2, 0.6, np.nan]),
                            "c": np.array([np.nan, 0.1, 0.1, np.nan])})
    assert shares == {"a": pytest.approx(1.5 / 4), "b": pytest.approx(1.5 / 4), "c": 0.0}
    m = manifest(rng, [f"s{k}" for k in range(8)], val_subjects=[f"v{k}" for k in range(8)])
    vids, y = scored(m, "val")
    preds = {"close": (vids, y + rng.normal(0, 0.05, y.shape)),
             "twin": (vids, y + rng.normal(0, 0.05, y.shape)),
             "noisy": (vids, y + rng.normal(0, 0.4, y.shape))}
    figures = {name: {} for name in preds}
    add_split_intervals(figures, preds, m, split="val", n_boot=200, level=0.95, seed=1)
    got = {name: f["chosen_share"] for name, f in figures.items()}
    assert got["noisy"] == 0.0 and got["close"] + got["twin"] == pytest.approx(1.0)
    assert 0.05 < got["close"] < 0.95  # two equally good models: no sure choice
    report = {"baseline": {"mean": {"ccc": 0.0}, "ci": {"n_boot": 200}},
              "selection": {"best": "close", "val": {n: {"ccc": 0.5, **f}
                                                     for n, f in figures.items()}}}
    line = next(x for x in results_table(report, "test").splitlines()
                if x.startswith("Validation's choice"))
    assert "close" in line and "twin" in line and "noisy" not in line  # under 0.5%: left out
    one = {name: {} for name in preds}
    add_split_intervals(one, preds, m.assign(  # every val clip one person's
        subject_id=lambda d: d["subject_id"].where(d["split"] != "val", "v0")),
        split="val", n_boot=50, level=0.95, seed=1)
    assert all(f["chosen_share"] is None for f in one.values())
