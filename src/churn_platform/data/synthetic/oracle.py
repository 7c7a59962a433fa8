"""The simulator's own churn forecast: how likely each user is to churn within H days, given its full state.

No model that reads only events can rank churners better than one that knew this state, so the AUC of these
probabilities is the ceiling a trained model is measured against (the oracle AUC).
"""

from __future__ import annotations

import numpy as np

from churn_platform.data.synthetic.world_model import (
    BILLING_PERIOD_DAYS,
    ENGAGEMENT_NOISE,
    ENGAGEMENT_PERSISTENCE,
    NEW_USER_TENURE_DAYS,
    PAYMENT_FAILURE_DECAY,
    POPULATION_ENGAGEMENT,
    RECENT_SMOOTHING,
    TICKET_DECAY,
    TREND_SMOOTHING,
    FloatArray,
    IntArray,
    WorldConfig,
    WorldState,
    sigmoid,
)


def _decayed_sums(initial: FloatArray, inputs: FloatArray, decay: float) -> FloatArray:
    """x_k = decay * x_{k-1} + inputs_{k-1}, x_0 = initial, for k = 0..H-1, for all users at once (n x H)."""
    horizon = inputs.shape[1]
    k = np.arange(horizon)
    # weights[j, k] = decay^(k-1-j) for j < k: a lower-triangular convolution as one matrix product.
    exponent = k[None, :] - 1 - k[:, None]
    weights = np.where(exponent >= 0, decay ** np.clip(exponent, 0, None), 0.0)
    return initial[:, None] * decay ** k[None, :] + inputs @ weights


def _average_responses(horizon: int, smoothing: float) -> FloatArray:
    """How an exponential average of engagement on day k moves with the deviation's innovation on day i (H x H).

    The innovation drawn at the end of day i - 1 (i >= 1) adds persistence^(j - i) to engagement on each day
    j >= i, and the average at the start of day k takes in the engagement of days before k.
    """
    lag = np.arange(horizon)[None, :] - np.arange(horizon)[:, None]
    impulse = np.where(lag >= 0, ENGAGEMENT_PERSISTENCE ** np.clip(lag, 0, None), 0.0)
    impulse[0] = 0.0  # the deviation on day 0 is known: no innovation
    return _decayed_sums(np.zeros(horizon), smoothing * impulse, 1.0 - smoothing)


def oracle_churn_probability(config: WorldConfig, state: WorldState, day: int, users: IntArray) -> FloatArray:
    """P(churn within days day .. day + H - 1 | the simulator's state at the start of `day`).

    The future is forecast, not sampled: the AR(1) deviation decays towards zero, the two-week and 30-day
    averages follow the expected engagement path (with a lognormal correction for the variance the future
    innovations add to each day's log-odds), declines continue, ticket and payment-failure pressure decay while
    their expected new arrivals are added, and each day's hazard is evaluated under the regime in force that day.
    Survival multiplies across the horizon. Computed for all users and all horizon days at once (n x H arrays).
    """
    horizon = config.horizon_days
    k = np.arange(horizon)
    days = day + k
    regimes = [config.regime(int(d)) for d in days]
    per_day = {
        name: np.array([getattr(r, name) for r in regimes])[None, :]
        for name in ("hazard_intercept", "hazard_level", "hazard_trend", "hazard_ticket", "hazard_payment_failure",
                     "hazard_new_user", "ticket_rate", "payment_failure_scale")
    }  # fmt: skip
    plan_effect = np.array([r.hazard_plan for r in regimes]).T[state.plan[users]]  # n x H

    decline = np.clip(days[None, :] - state.decline_start[users][:, None], 0, None) * state.decline_rate[users][:, None]
    deviation = state.deviation[users][:, None] * ENGAGEMENT_PERSISTENCE ** k[None, :]
    engagement = state.baseline[users][:, None] - np.minimum(decline, 2.5) + deviation
    # The two-week and 30-day averages follow the expected engagement path.
    recent = _decayed_sums(state.engagement_recent[users], RECENT_SMOOTHING * engagement, 1.0 - RECENT_SMOOTHING)
    engagement_avg = _decayed_sums(state.engagement_avg[users], TREND_SMOOTHING * engagement, 1.0 - TREND_SMOOTHING)
    gap = engagement - engagement_avg
    tickets = _decayed_sums(state.ticket_pressure[users], per_day["ticket_rate"] * np.exp(-0.8 * gap), TICKET_DECAY)
    tenure = (days[None, :] - state.signup_day[users][:, None]).astype(np.float64)
    billing = ((tenure % BILLING_PERIOD_DAYS) == 0) & (tenure > 0)
    failures = billing * np.minimum(state.payment_failure_prob[users][:, None] * per_day["payment_failure_scale"], 1)
    payment_failures = _decayed_sums(state.payment_failure_pressure[users], failures, PAYMENT_FAILURE_DECAY)

    # Each day's log-odds is linear in the future innovations: its variance, exactly, per horizon day.
    innovation_weights = (per_day["hazard_level"] + per_day["hazard_trend"]) * _average_responses(
        horizon, RECENT_SMOOTHING
    ) - per_day["hazard_trend"] * _average_responses(horizon, TREND_SMOOTHING)
    log_odds_var = ENGAGEMENT_NOISE**2 * (innovation_weights**2).sum(axis=0)
    log_odds = (
        per_day["hazard_intercept"]
        + per_day["hazard_level"] * (recent - POPULATION_ENGAGEMENT)
        + per_day["hazard_trend"] * (recent - engagement_avg)
        + per_day["hazard_ticket"] * tickets
        + per_day["hazard_payment_failure"] * payment_failures
        + plan_effect
        + per_day["hazard_new_user"] * np.exp(-tenure / NEW_USER_TENURE_DAYS)
        # E[exp(x)] = exp(mean + var / 2) for Gaussian x: hazards are small, so this keeps the forecast unbiased.
        + 0.5 * log_odds_var[None, :]
    )
    survival: FloatArray = np.prod(1.0 - sigmoid(log_odds), axis=1)
    return 1.0 - survival
