"""The simulator's own churn forecast: how likely each user is to churn within H days, given its full state.

No model that reads only events can rank churners better than one that knew this state, so the AUC of these
probabilities is the ceiling a trained model is measured against (the oracle AUC).
"""

from __future__ import annotations

import numpy as np

from churn_platform.data.world_model import (
    BILLING_PERIOD_DAYS,
    ENGAGEMENT_NOISE,
    ENGAGEMENT_PERSISTENCE,
    NEW_USER_TENURE_DAYS,
    PAYMENT_FAILURE_DECAY,
    POPULATION_ENGAGEMENT,
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


def oracle_churn_probability(config: WorldConfig, state: WorldState, day: int, users: IntArray) -> FloatArray:
    """P(churn within days day .. day + H - 1 | the simulator's state at the start of `day`).

    The future is forecast, not sampled: the AR(1) deviation decays towards zero (with a lognormal correction
    for its growing variance), declines continue, ticket and payment-failure pressure decay while their expected
    new arrivals are added, and each day's hazard is evaluated under the regime in force that day. Survival
    multiplies across the horizon. Computed for all users and all horizon days at once (n x H arrays).
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
    # The 30-day average follows the expected engagement path.
    engagement_avg = _decayed_sums(state.engagement_avg[users], TREND_SMOOTHING * engagement, 1.0 - TREND_SMOOTHING)
    gap = engagement - engagement_avg
    tickets = _decayed_sums(state.ticket_pressure[users], per_day["ticket_rate"] * np.exp(-0.8 * gap), TICKET_DECAY)
    tenure = (days[None, :] - state.signup_day[users][:, None]).astype(np.float64)
    billing = ((tenure % BILLING_PERIOD_DAYS) == 0) & (tenure > 0)
    failures = billing * np.minimum(state.payment_failure_prob[users][:, None] * per_day["payment_failure_scale"], 1)
    payment_failures = _decayed_sums(state.payment_failure_pressure[users], failures, PAYMENT_FAILURE_DECAY)

    deviation_var = ENGAGEMENT_NOISE**2 * (1 - ENGAGEMENT_PERSISTENCE ** (2 * k)) / (1 - ENGAGEMENT_PERSISTENCE**2)
    log_odds = (
        per_day["hazard_intercept"]
        + per_day["hazard_level"] * (engagement - POPULATION_ENGAGEMENT)
        + per_day["hazard_trend"] * gap
        + per_day["hazard_ticket"] * tickets
        + per_day["hazard_payment_failure"] * payment_failures
        + plan_effect
        + per_day["hazard_new_user"] * np.exp(-tenure / NEW_USER_TENURE_DAYS)
        # E[exp(b x)] for Gaussian x: hazards are small, so a lognormal correction keeps the forecast unbiased
        # (a quarter of the full term: the 30-day average absorbs part of every deviation).
        + 0.25 * (per_day["hazard_level"] + per_day["hazard_trend"]) ** 2 * deviation_var[None, :]
    )
    survival: FloatArray = np.prod(1.0 - sigmoid(log_odds), axis=1)
    return 1.0 - survival
