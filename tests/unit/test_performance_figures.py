"""Realised-performance figures: calibration error by hand, the others as scikit-learn computes them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from churn_platform.monitoring import performance


def test_calibration_error_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0])  # bins 0, 1, 1, 9, 9
    by_hand = 1 / 5 * abs(0 - 0.05) + 2 / 5 * abs(0.5 - 0.135) + 2 / 5 * abs(1 - 0.975)
    assert performance.calibration_error(y, p) == pytest.approx(by_hand, abs=1e-12)


def test_figures_equal_sklearn_and_one_class_has_no_auc() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    found = performance.figures(y, p)
    assert found.roc_auc == pytest.approx(roc_auc_score(y, p))
    assert found.pr_auc == pytest.approx(average_precision_score(y, p))
    assert found.log_loss == pytest.approx(log_loss(y, p))
    assert (found.rows, found.positives, found.positive_rate) == (500, y.sum(), pytest.approx(y.mean()))
    single = performance.figures(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.0]))
    assert single.roc_auc is None and single.pr_auc is None and np.isfinite(single.log_loss)
