"""Confidence-based performance estimation: the expected figures of calibrated scores before outcomes arrive."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.monitoring import estimation


def _pairwise_auc(p: np.ndarray) -> float:
    """The ratio of expectations by its definition: every ordered pair of distinct users, O(n^2)."""
    churn, stay = p[:, None], 1.0 - p[None, :]
    weight = churn * stay
    np.fill_diagonal(weight, 0.0)
    ranked = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    return float(np.sum(weight * ranked) / np.sum(weight))


def test_the_expected_auc_equals_its_pairwise_definition_with_ties() -> None:
    p = np.random.default_rng(3).beta(1.0, 4.0, size=400).round(2)  # rounded: many ties
    assert estimation.expected_auc(p) == pytest.approx(_pairwise_auc(p), abs=1e-12)


def test_the_estimate_matches_outcomes_drawn_from_calibrated_scores() -> None:
    rng = np.random.default_rng(7)
    p = rng.beta(1.2, 5.0, size=5_000)
    drawn = [rng.random(p.size) < p for _ in range(200)]
    found = estimation.estimate(p)
    assert found.roc_auc == pytest.approx(np.mean([roc_auc_score(y, p) for y in drawn]), abs=0.003)
    assert found.brier == pytest.approx(np.mean([np.mean((p - y) ** 2) for y in drawn]), abs=0.002)
    assert found.positive_rate == pytest.approx(np.mean([y.mean() for y in drawn]), abs=0.002)


def test_scores_that_order_no_pair_have_no_estimated_auc() -> None:
    assert estimation.expected_auc(np.zeros(10)) is None
    assert estimation.expected_auc(np.ones(10)) is None
    assert estimation.expected_auc(np.full(10, 0.3)) == pytest.approx(0.5)
