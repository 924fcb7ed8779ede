"""Prediction intervals of one clip's scores (models/conformal.py): split-conformal half-widths
from validation residuals, their coverage of the test scores, and where evaluate writes them.

    .venv/bin/python -m pytest -q tests/test_conformal.py
"""
from __future__ import annotations

import numpy as np
import pytest

from models.conformal import coverage, half_widths
from personality.schemas import TRAITS
from tests.test_evaluate import NO_MLFLOW, ev, make_manifest, predictions, truth, write_root

T = list(TRAITS)


def test_the_half_width_is_the_conformal_order_statistic():
    """ceil((n + 1) * level)-th smallest |residual|: with 19 clips at 0.95 the largest, with 18
    none (no finite interval holds 95% of new clips); NaN labels are left out of their trait."""
    residual = np.arange(1, 20, dtype=float) / 100  # 0.01 .. 0.19
    y = np.zeros((19, 5))
    pred = np.tile(residual[:, None], (1, 5))
    pred[:, 1] *= -1  # the sign does not matter
    y[0, 2] = np.nan  # trait E: 18 labelled clips
    half = half_widths(y, pred, 0.95)
    assert half[0] == pytest.approx(0.19) and half[1] == pytest.approx(0.19)
    assert half[2] is None
    # ceil(10 * 0.8) = 8th smallest of 9 (0.08); E's 8 clips (0.02 .. 0.09): ceil(9 * 0.8) = 8th
    assert half_widths(y[:9], pred[:9], 0.8) == pytest.approx([0.08, 0.08, 0.09, 0.08, 0.08])


def test_coverage_counts_the_labelled_scores_inside():
    y = np.array([[0.5] * 5, [0.5] * 5, [np.nan] * 5])
    pred = np.array([[0.6] * 5, [0.8] * 5, [0.5] * 5])
    got = coverage(y, pred, [0.15, 0.15, 0.35, None, 0.05])
    assert (got["O"], got["E"], got["A"], got["N"]) == (0.5, 1.0, None, 0.0)
    assert got["mean"] == pytest.approx(4 / 8) and got["n"] == 8


def test_the_coverage_carries_an_interval_over_subjects():
    """The share inside is one of a few people's scores: its interval comes from resampling
    subjects (the t-corrected bootstrap of models/bootstrap.py), so it widens when people differ
    and is withheld with one subject."""
    from models.bootstrap import subject_jackknife, subject_resamples

    subjects = np.repeat(np.arange(8), 5)  # 8 people, 5 clips each
    y = np.zeros((40, 5))
    uneven = np.where(subjects[:, None] < 4, 0.0, 1.0) * np.ones((1, 5))  # half of them missed
    even = np.tile(np.r_[0.0, 0.0, 1.0, 1.0, 0.0][:, None], (8, 5))  # the same misses for each

    def ci(pred, who=subjects):
        return coverage(y, pred, [0.5] * 5, resamples=subject_resamples(who, n_boot=400, seed=3),
                        jackknife=subject_jackknife(who))

    wide, narrow = ci(uneven), ci(even)
    assert wide["mean"] == 0.5 and narrow["mean"] == pytest.approx(0.6)
    lo, hi = wide["mean_ci"]
    assert lo < 0.5 < hi and hi - lo > 0.4
    assert narrow["mean_ci"] == pytest.approx([0.6, 0.6])  # every person 3 of 5: no spread
    assert ci(uneven, np.zeros(40))["mean_ci"] == [None, None]  # one subject
    assert "mean_ci" not in coverage(y, uneven, [0.5] * 5)


def test_the_coverage_interval_counts_every_person_in_its_degrees_of_freedom():
    """Six of eight people have the overall share (4 of 5 inside): leaving one of them out does
    not move it, yet they are people the share rests on; the t has 7 degrees of freedom, not 1
    (the normal's 1.96, a narrower interval)."""
    from scipy.stats import t as student_t

    from models.bootstrap import subject_jackknife, subject_resamples

    subjects = np.repeat(np.arange(8), 5)
    per_person = [4, 4, 4, 4, 4, 4, 3, 5]  # scores inside, of 5 each: 0.8 overall
    inside = np.concatenate([np.r_[np.zeros(k), np.ones(5 - k)] for k in per_person])
    y, pred = np.zeros((40, 5)), np.tile(inside[:, None], (1, 5))  # residual 0 inside, 1 outside
    resamples = subject_resamples(subjects, n_boot=500, seed=5)
    got = coverage(y, pred, [0.5] * 5, resamples=resamples,
                   jackknife=subject_jackknife(subjects))
    shares = np.array([1 - pred[r].mean() for r in resamples])
    half = student_t.ppf(0.975, 7) * shares.std()
    centre = 2 * 0.8 - shares.mean()
    assert got["mean"] == pytest.approx(0.8)
    assert got["mean_ci"] == pytest.approx([centre - half, centre + half])


def test_evaluate_writes_val_half_widths_and_their_test_coverage(tmp_path, rng):
    """The half-widths come from the val residuals only (a test label changed moves no
    half-width), the coverage from the test scores; results.md prints both."""
    m = make_manifest(rng, n_per_split=(12, 40, 40))
    y = truth(m)
    noisy = np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1)
    write_root(tmp_path, m, {"noisy": predictions(m, noisy, "noisy")})
    report = ev.run(NO_MLFLOW, root=tmp_path)
    labels = m[T].to_numpy()  # NaN where unlabelled (truth() fills them for the predictions)
    val = (m["split"] == "val").to_numpy()
    want = half_widths(labels[val], noisy[val], 0.8)  # evaluate.prediction_level's default
    got = report["noisy"]["prediction_interval"]
    assert [got["half_width"][t] for t in T] == pytest.approx(want)
    assert report["selection"]["val"]["noisy"]["interval_n_val"] == 40
    test = (m["split"] == "test").to_numpy()
    cov = dict(got["coverage"])
    lo, hi = cov.pop("mean_ci")  # the share's interval over the test subjects
    assert cov == pytest.approx(coverage(labels[test], noisy[test], want))
    assert got["level"] == 0.8 and 0.6 < cov["mean"] <= 1.0
    assert 0.0 <= lo < cov["mean"] < hi <= 1.0
    md = (tmp_path / "metrics" / "results.md").read_text()
    row = next(x for x in md.split("prediction interval")[1].splitlines()
               if x.startswith("| noisy"))
    assert f"±{want[0]:.3f}" in row
    assert f"{100 * cov['mean']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] of" in row
    assert "[its 95% interval over subjects]" in md
    m.loc[test, "O"] = 0.5  # test labels never move a half-width
    write_root(tmp_path, m, {"noisy": predictions(m, noisy, "noisy")})
    again = ev.run(NO_MLFLOW, root=tmp_path)["noisy"]["prediction_interval"]
    assert again["half_width"] == got["half_width"]


def test_no_coverage_is_claimed_on_the_half_widths_own_clips(tmp_path, rng):
    """With evaluate.split val the scored clips are the ones the half-widths came from: their
    coverage holds by construction, so none is reported. interval_n_val counts the clips the
    model predicts, not every labelled one."""
    import dataclasses

    m = make_manifest(rng, n_per_split=(12, 40, 40))
    y = truth(m)
    noisy = predictions(m, np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1), "noisy")
    val_ids = m.loc[m["split"] == "val", "video_id"]
    write_root(tmp_path, m, {"noisy": noisy[~noisy["video_id"].isin(val_ids[:5])]})
    report = ev.run(dataclasses.replace(NO_MLFLOW, split="val"), root=tmp_path)
    assert report["noisy"]["prediction_interval"]["coverage"] is None
    assert report["selection"]["val"]["noisy"]["interval_n_val"] == 35
    md = (tmp_path / "metrics" / "results.md").read_text()
    assert "n/a: the half-widths' own clips" in md
