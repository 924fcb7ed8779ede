"""models.metrics: hand-computed values on tiny arrays, agreement with scipy / sklearn, properties.

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (mean_absolute_error, mean_squared_error, precision_score, r2_score,
                             recall_score, roc_auc_score)

from models import metrics as M
from personality.schemas import TRAITS

# The worked example used below:
#   y_true = [0.2, 0.4, 0.6, 0.8], y_pred = [0.3, 0.3, 0.7, 0.9]
#   errors = [+0.1, -0.1, +0.1, +0.1]  -> MAE 0.1, ACC 0.9, MSE 0.01
#   mean_t = 0.5, mean_p = 0.55
#   dt = [-0.3, -0.1, 0.1, 0.3], dp = [-0.25, -0.25, 0.15, 0.35]
#   sum dt*dp = 0.075 + 0.025 + 0.015 + 0.105 = 0.22
#   sum dt^2 = 0.2, sum dp^2 = 0.0625 + 0.0625 + 0.0225 + 0.1225 = 0.27
#   PCC = 0.22 / sqrt(0.2 * 0.27) = 0.22 / sqrt(0.054)
#   CCC = 2 * (0.22/4) / (0.2/4 + 0.27/4 + 0.05^2) = 0.11 / (0.05 + 0.0675 + 0.0025) = 0.11 / 0.12
#   R^2 = 1 - (4 * 0.01) / 0.2 = 0.8
T1 = np.array([0.2, 0.4, 0.6, 0.8])
P1 = np.array([0.3, 0.3, 0.7, 0.9])


def test_hand_computed_single_trait():
    assert M.mae(T1, P1) == pytest.approx(0.1)
    assert M.acc(T1, P1) == pytest.approx(0.9)
    assert M.mse(T1, P1) == pytest.approx(0.01)
    assert M.pcc(T1, P1) == pytest.approx(0.22 / math.sqrt(0.054))
    assert M.ccc(T1, P1) == pytest.approx(0.11 / 0.12)
    assert M.r2(T1, P1) == pytest.approx(0.8)


def test_regression_metrics_dict_per_trait_and_mean():
    # O: the worked example; C: a perfect prediction (MAE 0, PCC = CCC = R^2 = 1);
    # E, A, N: the worked example again, so every mean is (4 * example + perfect) / 5.
    y_true = np.stack([T1, T1, T1, T1, T1], axis=1)  # (4, 5)
    y_pred = np.stack([P1, T1, P1, P1, P1], axis=1)
    m = M.regression_metrics(y_true, y_pred)
    assert list(m) == [*TRAITS, "mean"]
    assert set(m["O"]) == {"acc", "mae", "mse", "pcc", "ccc", "r2"}
    assert m["O"]["ccc"] == pytest.approx(0.11 / 0.12)
    assert m["C"] == pytest.approx({"acc": 1.0, "mae": 0.0, "mse": 0.0, "pcc": 1.0, "ccc": 1.0,
                                    "r2": 1.0})
    assert m["mean"]["mae"] == pytest.approx(4 * 0.1 / 5)  # 0.08
    assert m["mean"]["acc"] == pytest.approx(1 - 0.08)
    assert m["mean"]["r2"] == pytest.approx((4 * 0.8 + 1) / 5)  # 0.84
    assert m["mean"]["ccc"] == pytest.approx((4 * 0.11 / 0.12 + 1) / 5)
    # JSON-ready: plain floats, round-trips
    assert all(type(v) is float for d in m.values() for v in d.values())
    assert json.loads(json.dumps(m)) == m


def test_agrees_with_scipy_and_sklearn(rng):
    y_true = rng.uniform(0, 1, size=(40, 5))
    y_pred = np.clip(y_true + rng.normal(0, 0.15, size=(40, 5)), 0, 1)
    m = M.regression_metrics(y_true, y_pred)
    for j, trait in enumerate(TRAITS):
        t, p = y_true[:, j], y_pred[:, j]
        assert m[trait]["mae"] == pytest.approx(mean_absolute_error(t, p))
        assert m[trait]["acc"] == pytest.approx(1 - mean_absolute_error(t, p))
        assert m[trait]["mse"] == pytest.approx(mean_squared_error(t, p))
        assert m[trait]["r2"] == pytest.approx(r2_score(t, p))
        assert m[trait]["pcc"] == pytest.approx(pearsonr(t, p)[0])
        # CCC from its textbook form with numpy's population moments
        expected = 2 * np.cov(t, p, ddof=0)[0, 1] / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
        assert m[trait]["ccc"] == pytest.approx(expected)


def test_ccc_properties(rng):
    t = rng.uniform(0, 1, 50)
    p = np.clip(t + rng.normal(0, 0.1, 50), 0, 1)
    assert M.ccc(t, t) == pytest.approx(1.0)
    base = M.ccc(t, p)
    assert M.ccc(t, p + 0.2) < base  # a shift keeps PCC but costs CCC
    assert M.pcc(t, p + 0.2) == pytest.approx(M.pcc(t, p))
    assert M.ccc(t, 0.5 * p) < base  # so does a scale
    assert M.ccc(t, p) == pytest.approx(M.ccc(p, t))  # symmetric
    assert M.ccc(t, 2 * t.mean() - t) == pytest.approx(-1.0)  # mirrored about its own mean
    assert -1.0 <= base <= 1.0
    assert abs(base) <= abs(M.pcc(t, p)) + 1e-12  # |CCC| <= |PCC| always


def test_constant_prediction_edge_cases():
    # documented: PCC is NaN (undefined, as scipy), CCC is 0 (cov = 0), R^2 stays defined
    const = np.full(4, 0.5)
    assert math.isnan(M.pcc(T1, const))
    assert M.ccc(T1, const) == 0.0
    # the mean predictor has R^2 = 0 exactly: SS_res = SS_tot
    assert M.r2(T1, const) == pytest.approx(0.0)
    # constant target: R^2 undefined (NaN, sklearn would say 0 or 1), PCC NaN
    assert math.isnan(M.r2(const, T1))
    assert math.isnan(M.pcc(const, T1))
    # both the same constant: CCC is 0/0
    assert math.isnan(M.ccc(const, const))
    # both constant but different: var terms 0, (0.5 - 0.3)^2 > 0, cov 0 -> CCC 0
    assert M.ccc(const, np.full(4, 0.3)) == 0.0
    # a single row: no correlation
    assert math.isnan(M.pcc([0.5], [0.4]))
    assert M.mae([0.5], [0.4]) == pytest.approx(0.1)


def test_nan_targets_drop_rows_per_trait(rng):
    y_true = rng.uniform(0, 1, size=(12, 5))
    y_pred = rng.uniform(0, 1, size=(12, 5))
    y_true[[0, 3], 1] = np.nan  # C misses two labels
    y_true[:, 4] = np.nan  # N has none
    y_pred[0, 1] = np.nan  # a NaN prediction on an unlabelled row is ignored
    m = M.regression_metrics(y_true, y_pred)
    keep = np.ones(12, bool)
    keep[[0, 3]] = False
    assert m["C"]["mae"] == pytest.approx(mean_absolute_error(y_true[keep, 1], y_pred[keep, 1]))
    assert m["C"]["r2"] == pytest.approx(r2_score(y_true[keep, 1], y_pred[keep, 1]))
    assert m["O"]["mae"] == pytest.approx(mean_absolute_error(y_true[:, 0], y_pred[:, 0]))
    assert all(math.isnan(v) for v in m["N"].values())
    # a plain mean: the unlabelled trait shows as NaN, never averaged away
    assert math.isnan(m["mean"]["mae"])
    assert M.json_safe(m)["N"]["mae"] is None
    json.dumps(M.json_safe(m), allow_nan=False)


def test_nan_prediction_on_labelled_row_is_an_error():
    y = np.full((3, 5), 0.5)
    p = y.copy()
    p[1, 2] = np.nan
    with pytest.raises(ValueError, match="trait E.*not finite"):
        M.regression_metrics(y, p)


@pytest.mark.parametrize("shape_true,shape_pred", [((4, 5), (4, 4)), ((4, 5), (3, 5)),
                                                   ((4,), (4,)), ((4, 5, 1), (4, 5, 1))])
def test_shape_mismatch_names_the_problem(shape_true, shape_pred):
    with pytest.raises(ValueError, match=r"shape"):
        M.regression_metrics(np.zeros(shape_true), np.zeros(shape_pred))
    with pytest.raises(ValueError, match=r"shape"):
        M.bin_metrics(np.zeros(shape_true), np.zeros(shape_pred))


def test_metrics_error_is_a_value_error():
    with pytest.raises(M.MetricsError, match=r"\(4, 5\).*\(3, 5\)"):
        M.regression_metrics(np.zeros((4, 5)), np.zeros((3, 5)))


# ---------------------------------------------------------------------------------------------
# 5-bin view


def test_to_bins_hand_values():
    p = [0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 0.99, 1.0, -0.1, 1.2]
    # floor(4p): 0, 0.96->0, 1, 2, 2.96->2, 3, 3.96->3, 4; then clipped: -0.4->0, 4.8->4
    assert M.to_bins(p).tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 0, 4]
    # Likert 1-5 mapped to (L - 1) / 4 lands exactly in bin L - 1
    assert M.to_bins((np.arange(1, 6) - 1) / 4).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="NaN"):
        M.to_bins([0.5, np.nan])


def test_bin_values_round_trip():
    assert M.to_bins(M.bin_values()).tolist() == [0, 1, 2, 3, 4]
    assert np.all((M.bin_values() >= 0) & (M.bin_values() <= 1))


def test_precision_recall_hand_values():
    t = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    # accuracy: rows 0, 2, 3 right -> 3/5
    # precision: bin 0 predicted at rows 0, 4 (1 right) -> 1/2; bin 1 at rows 1-3 (2 right) -> 2/3;
    #            bin 2 never predicted -> 0 (zero_division=0); macro = (1/2 + 2/3 + 0) / 3
    # recall:    bin 0 true at rows 0, 1 (1 found) -> 1/2; bin 1 at 2, 3 (both) -> 1; bin 2 -> 0;
    #            macro = (1/2 + 1 + 0) / 3 = 1/2
    assert M.accuracy(t, p) == pytest.approx(0.6)
    assert M.macro_precision(t, p) == pytest.approx((0.5 + 2 / 3) / 3)
    assert M.macro_recall(t, p) == pytest.approx(0.5)
    assert M.macro_precision(t, p) == pytest.approx(
        precision_score(t, p, average="macro", zero_division=0))
    assert M.macro_recall(t, p) == pytest.approx(recall_score(t, p, average="macro",
                                                              zero_division=0))


def test_binary_auc_hand_value_with_a_tie():
    # positives score 0.9 and 0.4, negatives 0.1 and 0.4: pairs (0.9>0.1), (0.9>0.4), (0.4>0.1) win,
    # (0.4 = 0.4) ties for one half -> AUC = 3.5 / 4
    t = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.4, 0.4])
    proba = np.stack([1 - s, s], axis=1)  # (4, 2)
    # OvR over 2 bins: bin 1's AUC is 0.875, bin 0's (scored by 1 - s) is the same -> 0.875
    assert M.roc_auc_ovr(t, proba) == pytest.approx(0.875)
    assert roc_auc_score(t, s) == pytest.approx(0.875)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_bin_metrics_agree_with_sklearn(rng):
    n = 60
    y_true = rng.uniform(0, 1, size=(n, 5))
    y_true[:5] = np.linspace(0, 1, 5)[:, None]  # every bin, bin 4 (p = 1) included, occurs
    y_pred = np.clip(y_true + rng.normal(0, 0.2, size=(n, 5)), 0, 1)
    proba = _softmax(rng.normal(size=(n, 5, 5)) + 2 * np.eye(5)[M.to_bins(y_true)])
    b = M.bin_metrics(y_true, y_pred, proba=proba)
    assert list(b) == [*TRAITS, "mean"]
    for j, trait in enumerate(TRAITS):
        tb, pb = M.to_bins(y_true[:, j]), M.to_bins(y_pred[:, j])
        assert b[trait]["accuracy"] == pytest.approx(np.mean(tb == pb))
        assert b[trait]["precision"] == pytest.approx(
            precision_score(tb, pb, average="macro", zero_division=0))
        assert b[trait]["recall"] == pytest.approx(
            recall_score(tb, pb, average="macro", zero_division=0))
        assert b[trait]["auc"] == pytest.approx(
            roc_auc_score(tb, proba[:, j], multi_class="ovr", average="macro", labels=range(5)))
    assert b["mean"]["accuracy"] == pytest.approx(np.mean([b[t]["accuracy"] for t in TRAITS]))


def test_bin_metrics_without_proba_and_with_nan_targets(rng):
    y_true = rng.uniform(0, 1, size=(10, 5))
    y_true[2, 0] = np.nan
    y_pred = y_true.copy()
    y_pred[2, 0] = 0.3  # unlabelled row: its prediction is not scored
    b = M.bin_metrics(y_true, y_pred)
    assert all(b[t]["accuracy"] == 1.0 for t in TRAITS)
    assert math.isnan(b["O"]["auc"])
    with pytest.raises(ValueError, match=r"proba must have shape \(10, 5, 5\)"):
        M.bin_metrics(y_true, y_pred, proba=np.zeros((10, 5)))


def test_auc_skips_absent_bins_and_needs_two():
    t = np.array([0, 0, 1, 1])  # bins 2-4 never occur
    proba = np.zeros((4, 5))
    proba[:, 1] = [0.1, 0.2, 0.8, 0.9]
    proba[:, 0] = 1 - proba[:, 1]
    assert M.roc_auc_ovr(t, proba) == pytest.approx(1.0)
    assert math.isnan(M.roc_auc_ovr(np.array([2, 2, 2]), np.zeros((3, 5))))


# ---------------------------------------------------------------------------------------------
# baselines


def test_train_mean_baseline_hand_values():
    train = np.array([[0.2, 0.1, 0.0, 1.0, 0.5],
                      [0.4, np.nan, 1.0, 1.0, 0.5],
                      [0.6, 0.3, 0.5, 1.0, 0.5]])
    # means: O (0.2+0.4+0.6)/3 = 0.4; C NaN skipped -> (0.1+0.3)/2 = 0.2; E 0.5; A 1.0; N 0.5
    pred = M.train_mean_baseline(train, 2)
    assert pred.shape == (2, 5)
    np.testing.assert_allclose(pred, [[0.4, 0.2, 0.5, 1.0, 0.5]] * 2)
    with pytest.raises(ValueError, match="trait C"):
        M.train_mean_baseline(np.array([[0.5, np.nan, 0.5, 0.5, 0.5]]), 1)


def test_baseline_metrics(rng):
    train = rng.uniform(0, 1, size=(30, 5))
    test = rng.uniform(0, 1, size=(8, 5))
    base = M.baseline_metrics(train, test)
    mean = train.mean(axis=0)
    for j, trait in enumerate(TRAITS):
        assert base[trait]["mae"] == pytest.approx(np.mean(np.abs(test[:, j] - mean[j])))
        assert math.isnan(base[trait]["pcc"])  # constant prediction
        assert base[trait]["ccc"] == 0.0
        assert base[trait]["r2"] <= 0.0  # never better than the test mean itself


def test_majority_class_accuracy_hand_values():
    train = np.full((5, 5), 0.6)  # every trait: bin 2
    train[:, 1] = [0.1, 0.1, 0.3, 0.3, 0.9]  # C: bins 0, 0, 1, 1, 3 -> tie 0/1 -> lower, bin 0
    test = np.full((4, 5), 0.6)
    test[:, 0] = [0.6, 0.6, 0.1, np.nan]  # O: bins 2, 2, 0 (+ unlabelled) -> 2 of 3 right
    test[:, 1] = [0.1, 0.2, 0.3, 0.9]  # C: bins 0, 0, 1, 3 -> 2 of 4 right
    m = M.majority_class_accuracy(train, test)
    assert m["O"] == {"accuracy": pytest.approx(2 / 3), "majority_bin": 2}
    assert m["C"] == {"accuracy": 0.5, "majority_bin": 0}
    assert m["E"]["accuracy"] == 1.0
    assert m["mean"]["accuracy"] == pytest.approx((2 / 3 + 0.5 + 1 + 1 + 1) / 5)


def test_json_safe():
    obj = {"a": {"x": float("nan"), "y": np.float32(0.5), "z": [np.inf, 1]}, "b": np.int64(3)}
    assert M.json_safe(obj) == {"a": {"x": None, "y": 0.5, "z": [None, 1]}, "b": 3}


def test_the_vectorised_cccs_are_the_one_definition():
    """models.classical.ccc_columns (alpha search) and models.importance.weighted_ccc (explain)
    compute personality.ccc, column by column; only a both-constant column differs (0, not NaN)."""
    from models.classical import ccc_columns
    from models.importance import weighted_ccc
    from personality.ccc import ccc as one_ccc

    rng = np.random.default_rng(3)
    y = rng.normal(size=(40, 4))
    p = 0.6 * y + rng.normal(size=(40, 4))
    y[:, 3] = p[:, 3] = 1.0  # both constant
    expected = np.array([one_ccc(y[:, k], p[:, k]) for k in range(4)])
    assert np.isnan(expected[3])
    np.testing.assert_allclose(ccc_columns(y, p)[:3], expected[:3], rtol=1e-12)
    np.testing.assert_allclose(weighted_ccc(y, p, np.ones((1, 40)))[0, :3], expected[:3],
                               rtol=1e-9)
    assert ccc_columns(y, p)[3] == 0.0 and weighted_ccc(y, p, np.ones((1, 40)))[0, 3] == 0.0


def test_split_scores_give_no_baseline_without_train_labels():
    """test_only on a corpus without a train split: a 'train-mean' baseline from the test labels
    themselves would be R2 0 by construction; there is none instead."""
    from models.metrics import split_scores

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, (12, 5))
    pred = np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1)
    assert split_scores(y, pred, None, None)["baseline"] == {}
    with_train = split_scores(y, pred, None, rng.uniform(0, 1, (20, 5)))
    assert set(with_train["baseline"]) == {"ccc", "mae", "acc", "mse", "r2", "bin_accuracy"}
    assert split_scores(np.full((3, 5), np.nan), pred[:3], None, None) == {}
    assert split_scores(y, pred, None, np.full((6, 5), np.nan))["baseline"] == {}
