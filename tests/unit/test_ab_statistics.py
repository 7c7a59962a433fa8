"""The A/B statistics against scipy, hand computations and brute force; the sequential test's false-positive rate
when read every day (A/A) and its power, split and paired."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from churn_platform.experiments import statistics as ab
from churn_platform.experiments.assignment import assign_arm

ALPHA, TAU = 0.05, 0.02


def test_the_sample_ratio_check_equals_scipy_flags_45_55_and_not_a_true_50_50() -> None:
    found = ab.sample_ratio_mismatch([4_500, 5_500], [0.5, 0.5])
    chi2, p_value = stats.chisquare([4_500, 5_500], [5_000, 5_000])
    assert (found.chi2, found.p_value) == pytest.approx((chi2, p_value), rel=1e-12)
    assert found.mismatch
    arms = [assign_arm("aa", "salt", f"user-{i}", 0.5) for i in range(10_000)]  # the service's own split
    split = ab.sample_ratio_mismatch([arms.count("control"), arms.count("variant")], [0.5, 0.5])
    assert not split.mismatch, split


def test_welch_equals_scipy_with_its_interval() -> None:
    rng = np.random.default_rng(1)
    control, variant = rng.gamma(2.0, 0.2, size=700), rng.gamma(2.0, 0.19, size=900)
    found = ab.welch(control, variant)
    expected = stats.ttest_ind(variant, control, equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert (found.statistic, found.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    assert (found.low, found.high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert found.estimate == pytest.approx(variant.mean() - control.mean(), rel=1e-12)


def test_the_paired_test_equals_scipy_and_sees_nothing_when_both_arms_run_one_model() -> None:
    rng = np.random.default_rng(2)
    control = rng.gamma(2.0, 0.2, size=800)
    variant = control * rng.normal(0.97, 0.05, size=800)  # the same users, scored by both models
    found = ab.paired(variant - control)
    expected = stats.ttest_rel(variant, control)
    interval = expected.confidence_interval(0.95)
    assert (found.statistic, found.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    assert (found.low, found.high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    # An A/A test under shadow scoring: every user's two scores are equal, so every difference is 0
    same = ab.paired(np.zeros(500))
    assert (same.estimate, same.p_value) == (0.0, 1.0)
    assert not ab.paired_msprt(np.zeros(500), TAU, ALPHA).rejects


def test_the_two_proportion_z_test_equals_the_chi_square_of_the_two_by_two_table() -> None:
    found = ab.two_proportions(120, 1_000, 90, 1_100)
    chi2, p_value, _, _ = stats.chi2_contingency([[120, 880], [90, 1_010]], correction=False)
    assert found.statistic**2 == pytest.approx(chi2, rel=1e-12)
    assert found.p_value == pytest.approx(p_value, rel=1e-12)
    assert found.estimate == pytest.approx(90 / 1_100 - 120 / 1_000)


def _arm(rng: np.random.Generator, users: int, rows_per_user: int, noise: float) -> ab.Outcomes:
    truth = np.repeat(rng.beta(1.2, 5.0, size=users), rows_per_user)
    labels = rng.random(truth.size) < truth
    scores = 1 / (1 + np.exp(-(np.log(truth / (1 - truth)) + rng.normal(0, noise, truth.size))))
    ids = np.repeat([f"u{i}" for i in range(users)], rows_per_user)
    return ab.Outcomes.of(ids, labels, scores)


def test_the_bootstrap_resamples_users_is_seeded_and_agrees_with_a_hand_bootstrap() -> None:
    rng = np.random.default_rng(2)
    control, variant = _arm(rng, 400, 1, 1.0), _arm(rng, 400, 1, 0.5)
    found = ab.bootstrap_auc_difference(control, variant, seed=5, resamples=2_000)
    assert found == ab.bootstrap_auc_difference(control, variant, seed=5, resamples=2_000)  # seeded
    assert found.estimate == pytest.approx(
        roc_auc_score(variant.labels, variant.scores) - roc_auc_score(control.labels, control.scores), abs=1e-12
    )
    hand = np.random.default_rng(9)  # the percentile interval, by hand, with another seed
    draws = []
    for _ in range(1_000):
        a, b = hand.integers(0, 400, 400), hand.integers(0, 400, 400)
        draws.append(
            roc_auc_score(variant.labels[b], variant.scores[b]) - roc_auc_score(control.labels[a], control.scores[a])
        )
    assert (found.low, found.high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), abs=0.01)
    # a user's rows move together: ten identical rows per user make the interval as wide as one row per user
    tenfold = ab.Outcomes.of(
        np.repeat(np.arange(400).astype(str), 10), np.repeat(control.labels, 10), np.repeat(control.scores, 10)
    )
    clustered = ab.bootstrap_auc_difference(tenfold, variant, seed=5, resamples=2_000)
    assert clustered.high - clustered.low == pytest.approx(found.high - found.low, rel=0.15)


def _brute_force_delong_variance(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong, DeLong and Clarke-Pearson (1988) by their definitions: psi over every (positive, negative) pair."""
    components = []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.vstack([components[0][0], components[1][0]]))
    s01 = np.cov(np.vstack([components[0][1], components[1][1]]))
    c = s10 / m + s01 / n
    return float(c[0, 0] + c[1, 1] - 2 * c[0, 1])


def test_delong_equals_its_brute_force_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    truth = rng.beta(1.2, 5.0, size=600)
    y = (rng.random(600) < truth).astype(int)
    a = np.round(truth + rng.normal(0, 0.1, 600), 2)  # rounded: ties
    b = np.round(truth + rng.normal(0, 0.05, 600), 2)
    found = ab.delong(y, a, b)
    assert found.variance == pytest.approx(_brute_force_delong_variance(y, a, b), rel=1e-10)
    assert (found.auc_control, found.auc_variant) == pytest.approx(
        (roc_auc_score(y, a), roc_auc_score(y, b)), abs=1e-12
    )
    assert found.p_value == pytest.approx(2 * stats.norm.sf(abs(found.z)), rel=1e-12)


def test_the_mixture_likelihood_ratio_equals_its_integral() -> None:
    d, v = 0.013, 0.00004

    def integrand(theta: float) -> float:
        return (
            stats.norm.pdf(d, theta, math.sqrt(v)) / stats.norm.pdf(d, 0, math.sqrt(v)) * stats.norm.pdf(theta, 0, TAU)
        )

    expected, _ = integrate.quad(integrand, -1, 1, points=[0, d])
    assert ab.msprt_likelihood_ratio(d, v, TAU) == pytest.approx(expected, rel=1e-7)


def _log_loss(rng: np.random.Generator, users: int, noise: float) -> np.ndarray:
    """Per-user log loss of a model whose scores are the truth blurred by `noise` on the log-odds scale."""
    truth = rng.beta(1.2, 5.0, size=users)
    y = rng.random(users) < truth
    p = 1 / (1 + np.exp(-(np.log(truth / (1 - truth)) + rng.normal(0, noise, users))))
    return np.where(y, -np.log(p), -np.log1p(-p))


def _declared_day(
    rng: np.random.Generator, days: int, per_day: int, noise_control: float, noise_variant: float
) -> int | None:
    """The first simulated day the sequential test rejects, read every day (None: never in `days`)."""
    control, variant, p_value = np.empty(0), np.empty(0), 1.0
    for day in range(1, days + 1):
        control = np.r_[control, _log_loss(rng, per_day, noise_control)]
        variant = np.r_[variant, _log_loss(rng, per_day, noise_variant)]
        found = ab.msprt(control, variant, TAU, ALPHA, p_value)
        p_value = found.p_value
        if found.rejects:
            return day
    return None


def test_an_a_a_experiment_read_every_day_declares_a_winner_in_at_most_five_percent_of_runs() -> None:
    rng = np.random.default_rng(2026)
    declared = [_declared_day(rng, days=30, per_day=200, noise_control=0.8, noise_variant=0.8) for _ in range(200)]
    false_positives = sum(day is not None for day in declared)
    print(f"A/A: {false_positives} of 200 experiments declared a winner over 30 daily looks")
    assert false_positives <= 0.05 * 200


def test_a_better_variant_is_found_and_the_paired_comparison_needs_fewer_users() -> None:
    # The variant's scores are the truth blurred half as much on the log-odds scale (0.4 against 0.8): log loss
    # lower by 0.03 per user (standard deviation about 0.6)
    rng = np.random.default_rng(7)
    split_days = [_declared_day(rng, days=60, per_day=400, noise_control=0.8, noise_variant=0.4) for _ in range(20)]
    assert all(day is not None for day in split_days), split_days
    split_users = float(np.median([2 * 400 * day for day in split_days if day is not None]))

    paired_users = []
    for _ in range(20):  # both models on the same users (shadow scoring): the paired differences
        differences, p_value = np.empty(0), 1.0
        for day in range(1, 61):
            truth = rng.beta(1.2, 5.0, size=200)
            y = rng.random(200) < truth
            logit = np.log(truth / (1 - truth))
            losses = []
            for noise in (0.8, 0.4):
                p = 1 / (1 + np.exp(-(logit + rng.normal(0, noise, 200))))
                losses.append(np.where(y, -np.log(p), -np.log1p(-p)))
            differences = np.r_[differences, losses[1] - losses[0]]
            found = ab.paired_msprt(differences, TAU, ALPHA, p_value)
            p_value = found.p_value
            if found.rejects:
                paired_users.append(200 * day)
                break
    assert len(paired_users) == 20
    print(f"declared after a median of {split_users:,.0f} users split, {np.median(paired_users):,.0f} paired")
    assert split_users <= 24_000  # the bound the docs state
    assert np.median(paired_users) < split_users
