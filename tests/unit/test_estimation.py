"""Confidence-based performance estimation: the expected figures of calibrated scores before outcomes arrive, and
corrected by the outcomes seen so far (partly observed horizons, a recalibration the outcomes must support)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.monitoring import estimation


def _pairwise_auc(p: np.ndarray, positive: np.ndarray | None = None) -> float:
    """The ratio of expectations by its definition: every ordered pair of distinct users, O(n^2)."""
    w = p if positive is None else positive
    churn, stay = w[:, None], 1.0 - w[None, :]
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


def test_the_expected_auc_of_other_churn_probabilities_equals_its_pairwise_definition() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(1.0, 4.0, size=300).round(2)
    positive = np.where(rng.random(300) < 0.2, 1.0, rng.random(300) * 0.3)  # some known churners
    assert estimation.expected_auc(p, positive) == pytest.approx(_pairwise_auc(p, positive), abs=1e-12)


HORIZON = 30


def _world(rng: np.random.Generator, n: int, intercept: float, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores, and each prediction's day of churn within the horizon (NaN: none) under a constant hazard with
    P(churn within H) = expit(intercept + slope logit(p))."""
    p = rng.beta(1.2, 5.0, size=n)
    churn = estimation.Recalibration(intercept, slope).churn_probability(p)
    hazard = -np.log1p(-churn) / HORIZON
    day = rng.exponential(1.0 / hazard)
    return p, np.where(day < HORIZON, day, np.nan)


def _seen(exposure: float | np.ndarray, churn_day: np.ndarray) -> estimation.SeenOutcomes:
    days = np.broadcast_to(np.asarray(exposure, dtype=float), churn_day.shape).copy()
    return estimation.SeenOutcomes(days, np.nan_to_num(churn_day, nan=np.inf) < days)


def test_with_no_outcome_seen_the_estimate_is_the_scores_alone_and_with_all_seen_the_realised_figures() -> None:
    rng = np.random.default_rng(11)
    p, churn_day = _world(rng, 3_000, 0.0, 1.0)
    identity = estimation.Recalibration()
    blind = estimation.estimate_with_outcomes(p, _seen(0.0, churn_day), HORIZON, True, identity)
    plain = estimation.estimate(p)
    assert (blind.roc_auc, blind.brier, blind.positive_rate) == pytest.approx(
        (plain.roc_auc, plain.brier, plain.positive_rate), abs=1e-12
    )
    y = ~np.isnan(churn_day)
    complete = estimation.estimate_with_outcomes(p, _seen(HORIZON, churn_day), HORIZON, True, identity)
    assert complete.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert complete.brier == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert complete.decided == y.sum()


def test_a_calibrated_model_keeps_its_calibration_and_a_changed_one_is_recalibrated() -> None:
    rng = np.random.default_rng(13)
    exposure = rng.uniform(0, HORIZON, size=20_000)  # the last H days' predictions, seen for 0 to H days
    p, churn_day = _world(rng, 20_000, 0.0, 1.0)
    kept = estimation.recalibrate(p, _seen(exposure, churn_day), HORIZON, True)
    assert (kept.intercept, kept.slope) == (0.0, 1.0) and kept.p_value >= estimation.RECALIBRATION_ALPHA

    p, churn_day = _world(rng, 20_000, -0.8, 0.4)  # a changed concept: the scores say much less than they did
    changed = estimation.recalibrate(p, _seen(exposure, churn_day), HORIZON, True)
    assert changed.p_value < 1e-6
    assert (changed.intercept, changed.slope) == pytest.approx((-0.8, 0.4), abs=0.15)


def test_partly_seen_outcomes_bring_a_changed_concept_into_the_estimate() -> None:
    rng = np.random.default_rng(17)
    p, churn_day = _world(rng, 20_000, -0.8, 0.4)
    y = ~np.isnan(churn_day)
    half = _seen(HORIZON / 2, churn_day)
    recalibrated = estimation.recalibrate(p, half, HORIZON, True)
    found = estimation.estimate_with_outcomes(p, half, HORIZON, True, recalibrated)
    assert found.roc_auc == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert estimation.estimate(p).roc_auc - roc_auc_score(y, p) > 0.05  # the scores alone cannot see it


def test_for_non_contractual_churn_a_seen_purchase_decides_the_label_negative() -> None:
    rng = np.random.default_rng(19)
    p = rng.beta(5.0, 2.0, size=5_000)  # P(no purchase within H)
    rate = -np.log(p) / HORIZON
    first_purchase = rng.exponential(1.0 / rate)
    decided_after = np.where(first_purchase < HORIZON, first_purchase, np.nan)
    y = np.isnan(decided_after)  # churned: no purchase within H
    identity = estimation.Recalibration()
    complete = estimation.estimate_with_outcomes(p, _seen(HORIZON, decided_after), HORIZON, False, identity)
    assert complete.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert complete.positive_rate == pytest.approx(y.mean(), abs=1e-12)
    kept = estimation.recalibrate(p, _seen(rng.uniform(0, HORIZON, 5_000), decided_after), HORIZON, False)
    assert (kept.intercept, kept.slope) == (0.0, 1.0)


def _daily_snapshots(seed: int, users: int = 1_500, days: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users with constant hazards, scored with their true P(churn within H) on every day they are still there:
    the last H days' predictions as of `days` (scores, their seen outcomes' exposure and decided day, user ids)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.2, 8.0, size=users)
    churns_at = rng.exponential(HORIZON / -np.log1p(-p))
    user = np.concatenate([np.flatnonzero(churns_at > t) for t in range(days - HORIZON, days)])
    t = np.concatenate([np.full(int((churns_at > t).sum()), t) for t in range(days - HORIZON, days)]).astype(float)
    after = churns_at[user] - t
    return p[user], np.where(after < HORIZON, after, np.nan), user, days - t


def test_a_user_scored_every_day_counts_once_so_a_calibrated_model_is_rarely_refitted() -> None:
    rejected = {True: 0, False: 0}
    for seed in range(100):
        p, decided_after, user, exposure = _daily_snapshots(seed)
        seen = _seen(exposure, decided_after)
        for by_user in (True, False):
            found = estimation.recalibrate(p, seen, HORIZON, True, user if by_user else None)
            rejected[by_user] += (found.intercept, found.slope) != (0.0, 1.0)
    assert rejected[True] <= 5  # nominal: 1 of 100
    assert rejected[False] >= 30  # every snapshot counted as a user: the ratio test sees evidence that is not there


def test_a_version_without_a_recent_prediction_keeps_its_calibration() -> None:
    # A version that stopped serving (a promoted challenger replaced it) has no prediction in the newest horizon
    empty = np.array([], dtype="float64")
    seen = estimation.SeenOutcomes(empty, np.array([], dtype=bool))

    found = estimation.recalibrate(empty, seen, 7, contractual=True, users=np.array([], dtype=object))

    assert (found.intercept, found.slope, found.decided) == (0.0, 1.0, 0)
