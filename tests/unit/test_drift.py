"""The drift numbers monitoring stores: equal to scipy's tests and to PSI computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from churn_platform.monitoring import drift


@pytest.mark.parametrize(
    ("n_reference", "n_current"),
    [(300, 200), (9_000, 10_000), (20_000, 12_000), (50_000, 700)],
)
def test_ks_equals_scipy_on_continuous_and_tied_values(n_reference: int, n_current: int) -> None:
    rng = np.random.default_rng(n_reference + n_current)
    for reference, current in (
        (rng.normal(0, 1, n_reference), rng.normal(0.05, 1.1, n_current)),
        (rng.poisson(3, n_reference).astype(float), rng.poisson(3.2, n_current).astype(float)),  # ties
    ):
        expected = stats.ks_2samp(reference, current)
        statistic, p_value = drift.ks_2samp(reference, current)
        assert statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_psi_equals_the_hand_computed_value() -> None:
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3) + 0.0
    assert drift.psi([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]) == pytest.approx(by_hand, abs=1e-15)
    assert by_hand == pytest.approx(0.0510826, abs=1e-7)


def test_numeric_psi_bins_by_the_reference_deciles() -> None:
    reference = np.arange(100, dtype=float)  # deciles 9.9, 19.8, ..., 89.1: ten bins of ten values
    assert list(drift.numeric_bins(reference)) == pytest.approx([9.9 * k for k in range(1, 10)])
    current = np.concatenate([np.arange(50, dtype=float), np.full(50, 95.0), [np.nan] * 7])  # half in the top bin
    shares = np.array([0.1] * 5 + [0.0] * 4 + [0.5])
    by_hand = sum((max(c, drift.PSI_FLOOR) - 0.1) * math.log(max(c, drift.PSI_FLOOR) / 0.1) for c in shares)
    assert drift.numeric_psi(reference, current) == pytest.approx(by_hand, rel=1e-12)
    assert drift.numeric_psi(reference, reference) == 0.0


def test_chi_square_equals_scipy_and_counts_unseen_categories_apart() -> None:
    reference = pd.Series(["a"] * 500 + ["b"] * 300 + ["c"] * 200 + [None] * 10)
    current = pd.Series(["a"] * 380 + ["b"] * 420 + ["c"] * 150 + ["new"] * 50)
    categories, ref_counts, cur_counts = drift.category_counts(reference, current)
    assert categories == ["a", "b", "c", drift.OTHER]
    assert list(ref_counts) == [500, 300, 200, 0] and list(cur_counts) == [380, 420, 150, 50]

    statistic, p_value, shift = drift.chi_square(reference, current)
    expected = stats.chi2_contingency(np.array([[500, 300, 200, 0], [380, 420, 150, 50]]), correction=False)
    assert (statistic, p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    assert shift == pytest.approx(drift.psi([0.5, 0.3, 0.2, 0.0], [0.38, 0.42, 0.15, 0.05]), rel=1e-12)


def test_a_shifted_feature_drifts_and_a_stable_one_does_not() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    reference = pd.DataFrame(
        {"logins": rng.poisson(5, n), "spend": rng.gamma(2, 10, n), "plan": rng.choice(["basic", "pro"], n)}
    )
    current = pd.DataFrame(
        {
            "logins": rng.poisson(9, n),  # a real shift
            "spend": rng.gamma(2, 10, n),  # the same distribution
            "plan": rng.choice(["basic", "pro"], n, p=[0.5, 0.5]),
        }
    )
    found = drift.feature_drift(reference, current, ["logins", "spend"], ["plan"], drift.Thresholds())
    by_name = {f.feature: f for f in found.features}
    assert by_name["logins"].drifted and by_name["logins"].psi is not None and by_name["logins"].psi > 0.25
    assert not by_name["spend"].drifted and not by_name["plan"].drifted
    assert by_name["plan"].test == "chi_square" and by_name["logins"].test == "ks"
    assert found.share == pytest.approx(1 / 3) and found.drifted  # the default share threshold is 0.3
    assert found.drifted_features == ["logins"]


def test_a_tiny_significant_difference_is_not_drift() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"x": rng.normal(0, 1, 200_000)})
    current = pd.DataFrame({"x": rng.normal(0.03, 1, 200_000)})  # rejected by KS at any alpha, PSI ~0.001
    found = drift.feature_drift(reference, current, ["x"], [], drift.Thresholds())
    (x,) = found.features
    assert x.p_value is not None and x.p_value < 1e-6
    assert x.psi is not None and x.psi < 0.01 and not x.drifted


def test_a_feature_without_values_is_reported_not_tested() -> None:
    reference = pd.DataFrame({"gap": [np.nan] * 5, "plan": [None] * 5})
    current = pd.DataFrame({"gap": [1.0, 2.0], "plan": ["a", "b"]})
    found = drift.feature_drift(reference, current, ["gap"], ["plan"], drift.Thresholds())
    assert [(f.statistic, f.p_value, f.psi, f.reference_rows, f.drifted) for f in found.features] == [
        (None, None, None, 0, False)
    ] * 2
