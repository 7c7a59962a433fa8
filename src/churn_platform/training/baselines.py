"""The classical baselines a churn model is compared with: recency, and the BG/NBD model.

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive, a customer buys at a
Poisson rate lambda ~ Gamma(r, alpha); after each purchase they drop out with probability p ~ Beta(a, b). A
customer's history is (x, t_x, T): x repeat purchases, the last at t_x, observed for T since the first purchase.
Fitted by maximum likelihood with the paper's closed form; no sampler, no compiler. Time is in any unit (the
platform uses days); rates and alpha follow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1

logger = logging.getLogger(__name__)

Values = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike
HISTORY_COLUMNS = ("x", "t_x", "age")  # x, t_x and T of the paper (T is the customer's age)


def recency_scores(days_since_last_event: ArrayLike) -> Values:
    """The recency baseline: the longer since the last event, the likelier churn (never active ranks highest)."""
    days = np.asarray(days_since_last_event, dtype=np.float64)
    return np.where(np.isnan(days), np.nanmax(days, initial=0.0) + 1.0, days)


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float

    def metrics(self, prefix: str = "bgnbd_") -> dict[str, float]:
        return {f"{prefix}{name}": float(value) for name, value in vars(self).items()}


def _histories(x: ArrayLike, t_x: ArrayLike, age: ArrayLike) -> tuple[Values, Values, Values]:
    arrays = (np.asarray(v, dtype=np.float64) for v in (x, t_x, age))
    xs, ts, ages = np.broadcast_arrays(*arrays)
    return xs, ts, ages


def log_likelihood(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, age: ArrayLike) -> Values:
    """Each customer's log-likelihood (the paper's equation 6), computed in logs so large x does not overflow."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    xs, ts, ages = _histories(x, t_x, age)
    repeat = xs > 0
    common = gammaln(r + xs) - gammaln(r) + r * np.log(alpha)
    still_alive = betaln(a, b + xs) - betaln(a, b) - (r + xs) * np.log(alpha + ages)
    # Dropped out right after the last purchase: only possible with a repeat purchase (b + x - 1 > 0 then).
    dropped = betaln(a + 1, b + np.maximum(xs, 1) - 1) - betaln(a, b) - (r + xs) * np.log(alpha + ts)
    result: Values = common + np.logaddexp(still_alive, np.where(repeat, dropped, -np.inf))
    return result


def probability_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, age: ArrayLike) -> Values:
    """P(alive at T | x, t_x, T) (the paper's equation 11); 1 for a customer without a repeat purchase."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    xs, ts, ages = _histories(x, t_x, age)
    log_odds_dead = (
        np.log(a) - np.log(b + np.maximum(xs, 1) - 1) + (r + xs) * (np.log(alpha + ages) - np.log(alpha + ts))
    )
    alive: Values = np.where(xs > 0, expit(-log_odds_dead), 1.0)
    return alive


def probability_no_purchase(
    params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, age: ArrayLike, horizon: float
) -> Values:
    """P(no purchase in (T, T + horizon] | x, t_x, T): the BG/NBD probability of churn over the label horizon.

    A dead customer buys nothing. A customer alive at T has rate lambda ~ Gamma(r + x, alpha + T) given the history
    (the alive branch of the likelihood is lambda^x e^(-lambda T) (1-p)^x), and cannot drop out before a purchase,
    so P(no purchase | alive) = E[e^(-lambda H)] = ((alpha + T) / (alpha + T + H))^(r + x). Equivalently, the ratio
    of the likelihoods of (x, t_x, T + H) and (x, t_x, T), which the tests check.
    """
    xs, _, ages = _histories(x, t_x, age)
    alive = probability_alive(params, x, t_x, age)
    quiet_if_alive = np.exp((params.r + xs) * (np.log(params.alpha + ages) - np.log(params.alpha + ages + horizon)))
    result: Values = (1.0 - alive) + alive * quiet_if_alive
    return result


def expected_purchases(params: BgNbdParams, t: ArrayLike) -> Values:
    """E[X(t)]: expected repeat purchases of a new customer in (0, t] (the paper's equation 9)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    ts = np.asarray(t, dtype=np.float64)
    z = ts / (alpha + ts)
    result: Values = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + ts)) ** r * hyp2f1(r, b, a + b - 1, z))
    return result


def conditional_expected_purchases(
    params: BgNbdParams, t: float, x: ArrayLike, t_x: ArrayLike, age: ArrayLike
) -> Values:
    """E[Y(t) | x, t_x, T]: expected purchases in (T, T + t] given the history (the paper's equation 10)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    xs, ts, ages = _histories(x, t_x, age)
    z = t / (alpha + ages + t)
    bracket = 1 - ((alpha + ages) / (alpha + ages + t)) ** (r + xs) * hyp2f1(r + xs, b + xs, a + b + xs - 1, z)
    result: Values = (a + b + xs - 1) / (a - 1) * bracket * probability_alive(params, xs, ts, ages)
    return result


@dataclass(frozen=True)
class BgNbdFit:
    params: BgNbdParams
    log_likelihood: float  # total over the customers fitted on
    customers: int
    converged: bool


LOG_PARAM_BOUNDS = (-12.0, 12.0)  # keeps exp(.) finite when the data push a parameter to its edge


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, age: ArrayLike) -> BgNbdFit:
    """Maximum likelihood on log-parameters (L-BFGS-B); identical histories are counted once with a weight."""
    xs, ts, ages = _histories(x, t_x, age)
    if xs.size == 0:
        raise ValueError("no customer histories to fit BG/NBD on")
    distinct = pd.DataFrame({"x": xs, "t_x": ts, "age": ages}).value_counts().reset_index(name="weight")
    dx, dt, dage = (distinct[c].to_numpy(dtype=np.float64) for c in HISTORY_COLUMNS)
    weight = distinct["weight"].to_numpy(dtype=np.float64)

    def negative_mean(log_params: Values) -> float:
        params = BgNbdParams(*np.exp(log_params))
        return float(-(weight * log_likelihood(params, dx, dt, dage)).sum() / xs.size)

    found: Any = minimize(
        negative_mean, x0=np.zeros(4), method="L-BFGS-B", bounds=[LOG_PARAM_BOUNDS] * 4, options={"maxiter": 1000}
    )
    params = BgNbdParams(*(float(v) for v in np.exp(found.x)))
    if not found.success:
        logger.warning("BG/NBD fit did not converge (%s); using the last parameters %s", found.message, params)
    total = float((weight * log_likelihood(params, dx, dt, dage)).sum())
    return BgNbdFit(params, total, int(xs.size), bool(found.success))


@dataclass(frozen=True)
class BgNbdBaseline:
    """A BG/NBD fitted on the customers known at `fitted_as_of`, and its churn probability for each scored row."""

    fit: BgNbdFit
    fitted_as_of: datetime
    p_churn: Values  # P(no qualifying event in the label horizon), one per scored row


# (rows to score: user_id, event_timestamp; fit on histories before this time; label horizon in days) -> baseline,
# or None for data without any qualifying event before the fit time.
BaselineLookup = Callable[[pd.DataFrame, datetime, int], BgNbdBaseline | None]


def bgnbd_baseline(
    customers: pd.DataFrame, rows: pd.DataFrame, *, fitted_as_of: datetime, horizon_days: int
) -> BgNbdBaseline | None:
    """Fit on `customers` (one history per customer known at the fit time), score `rows` (a history per row at its
    own time) over the horizon. Histories are frames with the columns x, t_x, age (in days)."""
    if customers.empty:
        logger.warning("no qualifying event before %s: no BG/NBD baseline", fitted_as_of)
        return None
    fit = fit_bgnbd(customers["x"], customers["t_x"], customers["age"])
    p_churn = probability_no_purchase(fit.params, rows["x"], rows["t_x"], rows["age"], horizon=float(horizon_days))
    return BgNbdBaseline(fit, fitted_as_of, p_churn)
