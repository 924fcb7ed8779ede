"""The subject bootstrap: whole subjects are resampled, intervals narrow with more subjects, paired
comparisons see through noise that is shared by two models, and the same seed gives the same
intervals."""
from __future__ import annotations

import numpy as np
import pytest

from models.bootstrap import (METHODS, bootstrap_scores, interval, model_uncertainty, paired,
                              subject_jackknife, subject_resamples, subjects_for)
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
        lo, hi = model_uncertainty(s["m"], "OCEAN", method="percentile")["mean"]["ccc"]
        point = np.mean([ccc(y[:, j], pred[:, j]) for j in range(5)])
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


@pytest.mark.parametrize("method", ["fisher_z", "percentile", "bca", "bootstrap_t"])
def test_one_subject_gives_no_interval_not_a_zero_width_one(rng, method):
    # every resample of one person is that person: the percentile method said [x, x], as if
    # the score were known exactly
    subjects, y, pred = _data(rng, 1)
    s = bootstrap_scores(y, {"m": pred}, subject_resamples(subjects, n_boot=50, seed=1),
                         jackknife=subject_jackknife(subjects),
                         subjects=subjects_for(method, subjects))
    ci = model_uncertainty(s["m"], "OCEAN", method=method)
    assert all(np.isnan(ci[t][m]).all() for t in (*"OCEAN", "mean") for m in ("ccc", "mae"))


def test_paired_comparison(rng):
    subjects, y, good = _data(rng, 20, noise=0.05)
    worse = np.clip(good + rng.normal(0, 0.15, y.shape), 0, 1)
    s = bootstrap_scores(y, {"good": good, "worse": worse, "same": good.copy()},
                         subject_resamples(subjects, n_boot=300, seed=2))
    cmp = paired(s["good"], s["worse"], method="percentile")
    assert cmp["p_better"] > 0.95 and cmp["delta_ccc"][0] > 0
    assert paired(s["good"], s["same"], method="percentile")["p_better"] == pytest.approx(0.5)


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
    assert paired(a, b, method="percentile")["p_lower_mae"] == pytest.approx(1.0)


def test_a_model_against_its_own_refit_ties_despite_last_bit_noise(rng):
    """The same predictions summed in another order differ in the last bits; that must give
    P(better) 0.5 (fit_gap's ridge against its refit), not whichever way the bits fell."""
    subjects, y, pred = _data(rng, 12)
    refit = pred * (1 + 1e-13)  # in [0, 1]: moves each value by at most 1e-13
    s = bootstrap_scores(y, {"a": pred, "b": refit}, subject_resamples(subjects, n_boot=200, seed=4))
    assert not np.array_equal(s["a"]["ccc"], s["b"]["ccc"])  # the bits do differ
    cmp = paired(s["a"], s["b"], method="percentile")
    assert cmp["p_better"] == pytest.approx(0.5) and cmp["p_lower_mae"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# BCa: Efron's bias-corrected and accelerated interval (models/bootstrap.py)


def test_bca_matches_scipy_when_every_subject_has_one_clip(rng):
    """With one clip per subject, resampling subjects is the ordinary bootstrap, and the
    leave-one-subject-out jackknife scipy's: our BCa of one trait's CCC equals
    scipy.stats.bootstrap(method='BCa') up to Monte-Carlo error (both 10,000 resamples)."""
    from scipy import stats

    from models.bootstrap import subject_jackknife

    y = rng.uniform(0, 1, 30)
    p = np.clip(0.6 * y + 0.2 + rng.normal(0, 0.15, 30), 0, 1)

    def lin_ccc(a, b, axis=-1):
        ma, mb = a.mean(axis), b.mean(axis)
        cov = ((a - np.expand_dims(ma, axis)) * (b - np.expand_dims(mb, axis))).mean(axis)
        return 2 * cov / (a.var(axis) + b.var(axis) + (ma - mb) ** 2)

    want = stats.bootstrap((y, p), lin_ccc, paired=True, method="BCa", n_resamples=10_000,
                           rng=1).confidence_interval
    subjects = np.arange(30)
    s = bootstrap_scores(y[:, None], {"m": p[:, None]},
                         subject_resamples(subjects, n_boot=10_000, seed=2),
                         jackknife=subject_jackknife(subjects))["m"]
    got = model_uncertainty(s, "O", method="bca")["O"]["ccc"]
    assert got == pytest.approx([want.low, want.high], abs=1e-2)
    percentile = model_uncertainty(s, "O", method="percentile")["O"]["ccc"]
    assert abs(got[0] - percentile[0]) > 0.01  # the correction is larger than the tolerance


def test_bca_known_answers():
    """z0 = 1, a = 0: the tails move to Phi(2 -+ 1.96); a symmetric case is the percentile
    interval; the acceleration of a mean is the sample's skewness / 6 (Efron & Tibshirani 14.15)."""
    from statistics import NormalDist

    from models.bootstrap import acceleration

    samples = np.linspace(0.0, 1.0, 2001)
    estimate = float(np.quantile(samples, NormalDist().cdf(1.0)))  # 84% of samples below: z0 = 1
    flat = np.zeros(8)  # a jackknife without spread: no acceleration
    want = np.quantile(samples, [NormalDist().cdf(2 - 1.959964), NormalDist().cdf(2 + 1.959964)])
    assert interval(samples, method="bca", estimate=estimate, jackknife=flat) == \
        pytest.approx(want, abs=1e-3)
    assert interval(samples, method="bca", estimate=0.5, jackknife=flat) == \
        pytest.approx(interval(samples))
    x = np.array([0.0, 0.1, 0.2, 0.3, 1.5, 0.4, 0.2])
    leave_out = np.array([np.delete(x, i).mean() for i in range(len(x))])
    d = x - x.mean()
    assert acceleration(leave_out) == pytest.approx(np.sum(d ** 3) / (6 * np.sum(d ** 2) ** 1.5))


def test_bca_survives_nan_resamples_equal_resamples_and_nan_jackknife(rng):
    from models.bootstrap import acceleration

    samples = rng.normal(0.3, 0.1, 500)
    jack = rng.normal(0.3, 0.02, 8)
    clean = interval(samples, method="bca", estimate=0.32, jackknife=jack)
    holed = np.concatenate([samples, [np.nan] * 40])
    assert interval(holed, method="bca", estimate=0.32, jackknife=jack) == clean
    # every resample the same (one subject's worth of spread): that value, not NaN or an error
    assert interval(np.full(100, 0.4), method="bca", estimate=0.4, jackknife=np.full(8, 0.4)) == \
        pytest.approx([0.4, 0.4])
    # a subject whose removal leaves the statistic undefined is left out of the acceleration
    assert acceleration(np.append(jack, np.nan)) == pytest.approx(acceleration(jack))
    # every resample below the estimate: a finite interval inside the resamples' range
    lo, hi = interval(samples, method="bca", estimate=5.0, jackknife=jack)
    assert samples.min() <= lo <= hi <= samples.max()
    with pytest.raises(ValueError, match="bca"):
        interval(samples, method="bca")
    with pytest.raises(ValueError, match="method"):
        interval(samples, method="studentized")


@pytest.mark.parametrize("method", METHODS)
def test_a_trait_labelled_for_one_subject_has_no_interval(rng, method):
    """Trait O is labelled on subject 0's clips only: leaving subject 0 out leaves O's CCC (and
    the mean's) undefined, and every resample that scores O repeats subject 0, so O's interval
    was zero-width, [estimate, estimate], in every method (a review found it): certainty from
    one person. O, the mean over traits and the paired difference get none (NaN, as a split of
    one subject); the other traits keep theirs."""
    from models.bootstrap import subject_jackknife

    subjects, y, pred = _data(rng, 8)
    y[subjects != 0, 0] = np.nan
    other = np.clip(pred + rng.normal(0, 0.1, pred.shape), 0, 1)
    s = bootstrap_scores(y, {"a": pred, "b": other},
                         subject_resamples(subjects, n_boot=200, seed=3),
                         jackknife=subject_jackknife(subjects),
                         subjects=subjects_for(method, subjects))
    assert np.isnan(s["a"]["jack"]["ccc"][0, 0]) and np.isfinite(s["a"]["jack"]["ccc"][1:]).all()
    ci = model_uncertainty(s["a"], "OCEAN", method=method)
    for key in ("O", "mean"):
        assert np.isnan(ci[key]["ccc"]).all() and np.isnan(ci[key]["mae"]).all(), key
    for j, t in enumerate("CEAN", start=1):
        lo, hi = ci[t]["ccc"]
        assert lo < s["a"]["point"]["ccc"][j] < hi, t
    cmp = paired(s["a"], s["b"], method=method)
    assert np.isnan(cmp["delta_ccc"]).all()
    assert cmp["delta_ccc_point"] == pytest.approx(np.mean(s["a"]["point"]["ccc"])
                                                   - np.mean(s["b"]["point"]["ccc"]))


def test_fisher_z_counts_only_the_subjects_a_trait_rests_on(rng):
    """Trait O labelled for 3 of the split's 8 subjects: its Student's t had 7 degrees of freedom
    (2.36) where the interval rests on 3 people (2 df: 4.30), too narrow (a review found it);
    the traits labelled for all 8 keep their 7."""
    from models.bootstrap import subject_jackknife

    subjects, y, pred = _data(rng, 8)
    y[subjects > 2, 0] = np.nan
    s = bootstrap_scores(y, {"a": pred}, subject_resamples(subjects, n_boot=400, seed=3),
                         jackknife=subject_jackknife(subjects))
    ci = model_uncertainty(s["a"], "OCEAN", method="fisher_z")
    samples, point, jack = s["a"]["ccc"], s["a"]["point"]["ccc"], s["a"]["jack"]["ccc"]
    three = interval(samples[:, 0], method="fisher_z", estimate=point[0], jackknife=jack[:3, 0],
                     scale="atanh")
    assert ci["O"]["ccc"] == pytest.approx(three)
    eight = interval(samples[:, 1], method="fisher_z", estimate=point[1], jackknife=np.zeros(8),
                     scale="atanh")
    assert ci["C"]["ccc"] == pytest.approx(eight)


def test_fisher_z_known_answers():
    """Resamples symmetric about the estimate on Fisher's z: tanh(atanh(CCC) -+ 1.96 sd). The
    same resamples shifted down by d on z (the small-sample bias of a CCC) move the interval up
    by d on z. Anything but a CCC gets the basic interval: the percentile ends reflected."""
    z = np.linspace(-1.0, 1.0, 2001) * 0.3 + np.arctanh(0.6)
    sd = float(np.std(z))
    got = interval(np.tanh(z), method="fisher_z", estimate=0.6, scale="atanh")
    assert got == pytest.approx(np.tanh(np.arctanh(0.6) + np.array([-1.959964, 1.959964]) * sd))
    shifted = interval(np.tanh(z - 0.1), method="fisher_z", estimate=0.6, scale="atanh")
    assert np.arctanh(shifted) == pytest.approx(np.arctanh(got) + 0.1)
    # with the subjects known (a jackknife of 8), Student's t for 7 degrees of freedom: 2.3646
    eight = interval(np.tanh(z), method="fisher_z", estimate=0.6, scale="atanh",
                     jackknife=np.zeros(8))
    assert eight == pytest.approx(np.tanh(np.arctanh(0.6) + np.array([-2.364624, 2.364624]) * sd))
    # two people: 1 degree of freedom, 12.7062 (it was the normal's 1.96 under 3: an interval
    # resting on 2 people came out narrower than one resting on 3, and covered 75% of the time)
    two = interval(np.tanh(z), method="fisher_z", estimate=0.6, scale="atanh",
                   jackknife=np.array([0.0, 1.0]))
    assert two == pytest.approx(np.tanh(np.arctanh(0.6) + np.array([-12.7062, 12.7062]) * sd),
                                abs=1e-5)
    # a difference on its own scale: 2 estimate - mean -+ t sd; an error on the log scale, and an
    # error of exactly 0 somewhere (no log) on its own scale, kept at or above 0
    diffs = np.linspace(-0.1, 0.1, 201)
    got = interval(diffs, method="fisher_z", estimate=0.05, jackknife=np.zeros(8))
    assert got == pytest.approx(0.1 + np.array([-2.364624, 2.364624]) * np.std(diffs))
    errors = np.exp(np.linspace(-3.0, -2.0, 201))
    logged = interval(errors, method="fisher_z", estimate=0.08, scale="log")
    centre = 2 * np.log(0.08) - np.log(errors).mean()
    assert np.log(logged) == pytest.approx(centre + np.array([-1.959964, 1.959964])
                                           * np.log(errors).std())
    assert interval(np.array([0.0, 0.0, 0.05, 0.075]), method="fisher_z", estimate=0.025,
                    scale="log")[0] == 0.0
    with pytest.raises(ValueError, match="fisher_z"):
        interval(diffs, method="fisher_z")
    with pytest.raises(ValueError, match="scale"):
        interval(diffs, method="fisher_z", estimate=0.0, scale="sqrt")


def test_fisher_z_covers_a_good_models_ccc_where_percentile_does_not(rng):
    """bench/interval_coverage.py's finding, small: 8 subjects x 3 clips, a model at population
    CCC ~0.6 on every trait; over 40 simulated test splits the default interval of the mean CCC
    holds the population value far more often than the percentile interval (which sits low)."""
    from models.bootstrap import subject_jackknife

    def draw(n_subjects):
        subjects = np.repeat(np.arange(n_subjects), 3)
        u = rng.normal(0, 1, (n_subjects, 5))[subjects]
        y = np.clip(0.5 + 0.12 * (u + 0.5 * rng.normal(0, 1, u.shape)), 0, 1)
        p = np.clip(0.5 + 0.08 * (0.8 * u + 0.6 * rng.normal(0, 1, u.shape)) + 0.02, 0, 1)
        return subjects, y, p

    _, y, p = draw(20_000)
    truth = np.mean([ccc(y[:, j], p[:, j]) for j in range(5)])
    hits = {"fisher_z": 0, "percentile": 0}
    for k in range(40):
        subjects, y, p = draw(8)
        s = bootstrap_scores(y, {"m": p}, subject_resamples(subjects, n_boot=200, seed=k),
                             jackknife=subject_jackknife(subjects))["m"]
        for method in hits:
            lo, hi = model_uncertainty(s, "OCEAN", method=method)["mean"]["ccc"]
            hits[method] += lo <= truth <= hi
    assert hits["fisher_z"] >= 35 and hits["fisher_z"] >= hits["percentile"] + 8, hits


def _draws(rows, subjects):
    """A resample's draws, as subject_resamples concatenates them: whole subjects, one by one."""
    draws, start = [], 0
    while start < len(rows):
        size = int((subjects == subjects[rows[start]]).sum())
        draws.append(rows[start:start + size])
        start += size
    return draws


def _bootstrap_t_recipe(stat, rows, subjects, forward, back, n):
    """The bootstrap-t interval written out: every draw of a resample (a subject drawn twice is
    two draws) left out in turn for its own standard error, the pivots (f(stat*) - f(stat)) /
    se*, and f(stat) - t*(0.975) se .. f(stat) - t*(0.025) se, se the jackknife over subjects."""
    from models.bootstrap import subject_jackknife

    def jack_se(values):
        values = np.asarray(values)
        return np.sqrt((len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum())

    z = forward(stat(np.arange(n)))
    pivots = []
    for r in rows:
        draws = _draws(r, subjects)
        inner = [forward(stat(np.concatenate(draws[:i] + draws[i + 1:])))
                 for i in range(len(draws))]
        pivots.append((forward(stat(r)) - z) / jack_se(inner))
    se = jack_se([forward(stat(idx)) for idx in subject_jackknife(subjects)])
    high, low = np.quantile(pivots, [0.975, 0.025])
    return [back(z - high * se), back(z - low * se)]


def test_bootstrap_t_is_the_studentised_recipe_done_draw_by_draw(rng):
    """The stage's bootstrap-t equals the recipe written out, for a model's mean CCC (Fisher's
    z), its mean MAE (log) and the paired difference of two models' mean CCCs (each resample's
    own difference, left out draw by draw), with uneven clip counts and subject names that sort
    differently as text."""
    from models.bootstrap import subject_jackknife

    subjects = np.repeat(np.array([3, 10, 2, 7, 5, 1]), [1, 2, 3, 3, 2, 1])
    u = rng.normal(0, 1, (len(subjects), 5))
    y = np.clip(0.5 + 0.1 * u, 0, 1)
    pa = np.clip(0.5 + 0.08 * u + rng.normal(0, 0.05, u.shape), 0, 1)
    pb = np.clip(0.5 + 0.05 * u + rng.normal(0, 0.08, u.shape), 0, 1)
    rows = subject_resamples(subjects, n_boot=40, seed=4)
    s = bootstrap_scores(y, {"a": pa, "b": pb}, rows, jackknife=subject_jackknife(subjects),
                         subjects=subjects)

    def mean_ccc(p):
        return lambda idx: np.mean([ccc(y[idx, j], p[idx, j]) for j in range(5)])

    ci = model_uncertainty(s["a"], "OCEAN", method="bootstrap_t")["mean"]
    assert ci["ccc"] == pytest.approx(_bootstrap_t_recipe(
        mean_ccc(pa), rows, subjects, np.arctanh, np.tanh, len(y)), abs=1e-9)
    assert ci["mae"] == pytest.approx(_bootstrap_t_recipe(
        lambda idx: np.abs(y[idx] - pa[idx]).mean(), rows, subjects, np.log, np.exp, len(y)),
        abs=1e-9)
    delta = paired(s["a"], s["b"], method="bootstrap_t")["delta_ccc"]
    assert delta == pytest.approx(_bootstrap_t_recipe(
        lambda idx: mean_ccc(pa)(idx) - mean_ccc(pb)(idx), rows, subjects, lambda x: x,
        lambda x: x, len(y)), abs=1e-9)
    assert s["a"]["drawn"].sum(axis=1).tolist() == [6] * 40  # S draws in every resample


def test_bootstrap_t_gives_no_interval_where_resamples_of_one_person_are_common(rng):
    """With 2 subjects half the resamples draw one person twice, whose own standard error is 0:
    no interval (it was zero-width, a review found); likewise a trait labelled for 2 of 8
    subjects, while the other traits keep theirs."""
    from models.bootstrap import subject_jackknife

    for n_subjects, unlabelled in ((2, 0), (8, 6)):
        subjects, y, pred = _data(rng, n_subjects)
        y[np.isin(subjects, np.arange(unlabelled)), 0] = np.nan  # O of the first subjects
        s = bootstrap_scores(y, {"m": pred}, subject_resamples(subjects, n_boot=300, seed=2),
                             jackknife=subject_jackknife(subjects), subjects=subjects)["m"]
        ci = model_uncertainty(s, "OCEAN", method="bootstrap_t")
        assert np.isnan(ci["O"]["ccc"]).all() and np.isnan(ci["O"]["mae"]).all()
        if n_subjects == 8:
            lo, hi = ci["C"]["ccc"]
            assert lo < s["point"]["ccc"][1] < hi


def test_bootstrap_t_needs_each_resamples_own_scores(rng):
    from models.bootstrap import subject_jackknife

    subjects, y, pred = _data(rng, 6)
    plain = bootstrap_scores(y, {"m": pred}, subject_resamples(subjects, n_boot=50, seed=0),
                             jackknife=subject_jackknife(subjects))["m"]
    with pytest.raises(ValueError, match="bootstrap_t.*subjects=subjects"):
        model_uncertainty(plain, "OCEAN", method="bootstrap_t")
