"""The subject bootstrap: whole subjects are resampled, intervals narrow with more subjects, paired
comparisons see through noise that is shared by two models, and the same seed gives the same
intervals."""
from __future__ import annotations

import numpy as np
import pytest

from models.bootstrap import (bootstrap_scores, interval, model_uncertainty, paired,
                              subject_resamples)
from models.metrics import ccc


def test_resamples_take_every_clip_of_a_drawn_subject():
    subjects = np.array(["a", "a", "a", "b", "c", "c"])
    for rows in subject_resamples(subjects, n_boot=50, seed=0):
        drawn = subjects[rows]
        for s in set(drawn):  # a drawn subject's clips come in whole multiples of its clip count
            assert (drawn == s).sum() % (subjects == s).sum() == 0
    a = subject_resamples(subjects, n_boot=5, seed=3)
    b = subject_resamples(subjects, n_boot=5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _data(rng, n_subjects, clips=3, noise=0.1):
    subjects = np.repeat(np.arange(n_subjects), clips)
    person = rng.uniform(0.2, 0.8, (n_subjects, 5))[subjects]
    y = np.clip(person + rng.normal(0, 0.05, person.shape), 0, 1)
    return subjects, y, np.clip(y + rng.normal(0, noise, y.shape), 0, 1)


def test_interval_contains_the_estimate_and_narrows_with_subjects(rng):
    widths = []
    for n in (8, 80):
        subjects, y, pred = _data(rng, n)
        s = bootstrap_scores(y, {"m": pred}, subject_resamples(subjects, n_boot=400, seed=1))
        lo, hi = model_uncertainty(s["m"], "OCEAN")["mean"]["ccc"]
        point = np.mean([ccc(y[:, j], pred[:, j]) for j in range(5)])
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_paired_comparison(rng):
    subjects, y, good = _data(rng, 20, noise=0.05)
    worse = np.clip(good + rng.normal(0, 0.15, y.shape), 0, 1)
    s = bootstrap_scores(y, {"good": good, "worse": worse, "same": good.copy()},
                         subject_resamples(subjects, n_boot=300, seed=2))
    cmp = paired(s["good"], s["worse"])
    assert cmp["p_better"] > 0.95 and cmp["delta_ccc"][0] > 0
    assert paired(s["good"], s["same"])["p_better"] == pytest.approx(0.5)


def test_missing_predictions_are_left_out_not_scored(rng):
    subjects, y, pred = _data(rng, 10)
    holes = pred.copy()
    holes[::4] = np.nan
    s = bootstrap_scores(y, {"m": holes}, subject_resamples(subjects, n_boot=20, seed=0))
    assert np.isfinite(s["m"]["ccc"]).all()
    assert interval(np.array([np.nan, np.nan])) != interval(np.array([0.1, 0.2]))


def test_paired_ignores_resamples_without_a_score():
    """A resample where a model has no MAE (NaN) is no vote: 2 of 2 scored resamples favour a."""
    ccc = np.full((3, 5), 0.5)
    a = {"ccc": ccc, "mae": np.array([[0.1] * 5, [np.nan] * 5, [0.1] * 5])}
    b = {"ccc": ccc, "mae": np.full((3, 5), 0.2)}
    assert paired(a, b)["p_lower_mae"] == pytest.approx(1.0)


def test_a_model_against_its_own_refit_ties_despite_last_bit_noise(rng):
    """The same predictions summed in another order differ in the last bits; that must give
    P(better) 0.5 (fit_gap's ridge against its refit), not whichever way the bits fell."""
    subjects, y, pred = _data(rng, 12)
    refit = pred * (1 + 1e-13)  # in [0, 1]: moves each value by at most 1e-13
    s = bootstrap_scores(y, {"a": pred, "b": refit}, subject_resamples(subjects, n_boot=200, seed=4))
    assert not np.array_equal(s["a"]["ccc"], s["b"]["ccc"])  # the bits do differ
    cmp = paired(s["a"], s["b"])
    assert cmp["p_better"] == pytest.approx(0.5) and cmp["p_lower_mae"] == pytest.approx(0.5)
