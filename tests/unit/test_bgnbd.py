"""BG/NBD against the published CDNOW estimates (Fader, Hardie & Lee 2005) and against its own likelihood."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from churn_platform.training.baselines import (
    BgNbdParams,
    bgnbd_baseline,
    conditional_expected_purchases,
    expected_purchases,
    fit_bgnbd,
    log_likelihood,
    probability_alive,
    probability_no_purchase,
)

CDNOW = Path(__file__).resolve().parents[1] / "data" / "cdnow_customers_summary.csv"
PUBLISHED = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # weeks; the paper's Table/section 4
PUBLISHED_LOG_LIKELIHOOD = -9582.4


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """2,357 CDNOW customers, 39 weeks of calibration: frequency = x, recency = t_x, T = T (weeks)."""
    return pd.read_csv(CDNOW)


def test_the_fit_on_cdnow_gives_the_published_estimates(cdnow: pd.DataFrame) -> None:
    fit = fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"])

    assert fit.customers == 2357 and fit.converged
    for name, published in vars(PUBLISHED).items():
        assert getattr(fit.params, name) == pytest.approx(published, rel=0.01), name
    assert fit.log_likelihood == pytest.approx(PUBLISHED_LOG_LIKELIHOOD, abs=0.5)
    summed = log_likelihood(PUBLISHED, cdnow["frequency"], cdnow["recency"], cdnow["T"]).sum()
    assert summed == pytest.approx(PUBLISHED_LOG_LIKELIHOOD, abs=0.5)


def test_expectations_match_the_papers_spreadsheet(cdnow: pd.DataFrame) -> None:
    # Hardie's BG/NBD spreadsheet (at the unrounded estimates): a customer with x = 2, t_x = 30.43, T = 38.86 buys
    # 1.226 times in the next 39 weeks; a new customer's expected repeat purchases over time
    params = fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"]).params
    assert conditional_expected_purchases(params, 39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=1e-3)
    weeks = [0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0]
    np.testing.assert_allclose(
        expected_purchases(params, weeks), [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576], atol=5e-4
    )


histories = st.tuples(st.integers(0, 60), st.floats(0.0, 1.0), st.floats(0.0, 300.0), st.floats(0.5, 90.0)).map(
    lambda h: (h[0], 0.0 if h[0] == 0 else h[1] * h[2], h[2], h[3])
)  # (x, t_x <= T, T, H); t_x = 0 when x = 0
parameters = st.builds(
    BgNbdParams, st.floats(0.05, 5.0), st.floats(0.5, 50.0), st.floats(0.05, 5.0), st.floats(0.05, 10.0)
)


@given(history=histories, params=parameters)
def test_no_purchase_in_the_horizon_is_the_ratio_of_likelihoods(
    history: tuple[int, float, float, float], params: BgNbdParams
) -> None:
    # (x, t_x, T + H) is the history (x, t_x, T) followed by H quiet days: its likelihood over that of (x, t_x, T)
    # is P(no purchase in (T, T + H]), computed here independently of the closed form under test.
    x, t_x, age, horizon = history
    ratio = np.exp(log_likelihood(params, x, t_x, age + horizon) - log_likelihood(params, x, t_x, age))
    assert probability_no_purchase(params, x, t_x, age, horizon) == pytest.approx(ratio, rel=1e-9, abs=1e-12)


@given(params=parameters, x=st.integers(1, 40), age=st.floats(1.0, 300.0))
def test_probability_alive_rises_with_the_last_purchase(params: BgNbdParams, x: int, age: float) -> None:
    # Same purchases and age: the more recent the last purchase (larger t_x), the likelier the customer is alive
    t_x = np.linspace(0.0, age, 25)
    alive = probability_alive(params, x, t_x, age)
    assert np.all(np.diff(alive) >= -1e-12)
    assert alive[-1] > alive[0]
    assert probability_alive(params, 0, 0.0, age) == 1.0  # no repeat purchase: no chance yet to drop out


def test_a_never_seen_customer_churns_with_the_prior_probability_of_silence() -> None:
    horizon = 30.0
    expected = (PUBLISHED.alpha / (PUBLISHED.alpha + horizon)) ** PUBLISHED.r  # E[exp(-lambda H)], lambda ~ Gamma
    assert probability_no_purchase(PUBLISHED, 0, 0.0, 0.0, horizon) == pytest.approx(expected, rel=1e-12)


def test_no_qualifying_event_gives_no_baseline_and_one_logged_line(caplog: pytest.LogCaptureFixture) -> None:
    empty = pd.DataFrame({"x": [], "t_x": [], "age": []})
    rows = pd.DataFrame({"x": [0, 0], "t_x": [0.0, 0.0], "age": [0.0, 0.0]})
    at = datetime(2025, 5, 1, tzinfo=UTC)

    with caplog.at_level(logging.INFO, logger="churn_platform.training.baselines"):
        result = bgnbd_baseline(empty, rows, fitted_as_of=at, horizon_days=30)

    assert result is None
    assert [r.getMessage() for r in caplog.records] == [f"no qualifying event before {at}: no BG/NBD baseline"]
