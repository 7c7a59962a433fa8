"""The purchases world's own forecast: how likely each customer is to make no purchase within H days.

Given a customer's state at the start of day t (active or dormant, rate, fading path, hazards, reactivation rate,
and the calendar everyone knows), the future is a two-state (active/dormant) Markov-modulated Poisson process
whose per-day parameters are all known. P(no purchase on days t .. t+H-1) is then exact: the state vector times
the product over the horizon of the 2x2 "no purchase today, then move" matrices

    [[exp(-rate_k) * (1 - hazard_k), exp(-rate_k) * hazard_k],
     [reactivation,                  1 - reactivation        ]]

times a vector of ones, computed right to left for all customers at once (O(n * H)). Its AUC is the ceiling a
model that reads only purchases is measured against.
"""

from __future__ import annotations

import numpy as np

from churn_platform.data.synthetic import purchase_model as model
from churn_platform.data.synthetic.purchase_model import PurchaseState
from churn_platform.data.synthetic.world_model import FloatArray, IntArray, WorldConfig


def no_purchase_probability(config: WorldConfig, state: PurchaseState, day: int, users: IntArray) -> FloatArray:
    """P(no purchase within days day .. day + H - 1 | the simulator's state at the start of `day`), per user."""
    days = day + np.arange(config.horizon_days, dtype=np.int64)
    progress = model.fade_progress(state, users, days)
    quiet_if_active = np.exp(-model.purchase_rates(config, state, users, days, progress))
    dropout = model.dropout_hazards(state, users, days, progress)
    back = state.reactivation[users]
    # v_active[k], v_dormant[k]: P(no purchase on horizon days k .. H-1 | active / dormant at the start of day k).
    v_active = np.ones(users.shape[0])
    v_dormant = np.ones(users.shape[0])
    for k in range(config.horizon_days - 1, -1, -1):
        v_active, v_dormant = (
            quiet_if_active[:, k] * ((1.0 - dropout[:, k]) * v_active + dropout[:, k] * v_dormant),
            (1.0 - back) * v_dormant + back * v_active,
        )
    p_none: FloatArray = np.where(state.dormant[users], v_dormant, v_active)
    return p_none
