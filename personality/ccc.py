"""Lin's concordance correlation coefficient (CCC), the one definition of the project.

    from personality.ccc import ccc
    ccc(y_true, y_pred)        # 1-D arrays -> float in [-1, 1]

Population (ddof=0) moments. models.metrics.ccc (NaN targets dropped, inputs checked) and the
synthetic generator's noise ceiling (personality/synthetic.py) both compute it here; the
vectorised forms models.classical.ccc_columns and models.importance.weighted_ccc are the same
definition (tests/test_metrics.py checks it), scoring 0 where this gives NaN.
"""
from __future__ import annotations

import math

import numpy as np


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """CCC of two 1-D float arrays of one length, without NaN.

    0 for a constant prediction of a varying target; NaN when both are constant (0/0) or empty."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.size == 0:
        return math.nan
    mt, mp = t.mean(), p.mean()
    # a constant side has no covariance; computed, rounding would leave a +-1e-31 residue
    cov = 0.0 if np.ptp(t) == 0 or np.ptp(p) == 0 else float(np.mean((t - mt) * (p - mp)))
    denom = float(np.var(t) + np.var(p) + (mt - mp) ** 2)
    if denom == 0.0:
        return math.nan
    return 2.0 * cov / denom
