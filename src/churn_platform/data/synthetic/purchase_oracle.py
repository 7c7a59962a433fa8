"""The purchases world's own forecast: how likely each customer is to make no purchase within H days.

Given a customer's state at the start of day t (dormant, or active in phase j of a k-phase gap; rate, fading
path, hazards, reactivation rate, and the calendar everyone knows), the future is a Markov chain on k + 1 states
(the phases of the current gap, and dormant) whose per-day parameters are all known. On a day with rate lambda,
an active customer completes N ~ Poisson(k * lambda) phases, and buys when phase j + N reaches k; so without a
purchase they move from phase j to j + m with probability Poisson(m; k * lambda) for m <= k - 1 - j, then go dormant
with the day's hazard. A dormant customer comes back at the start of a new gap (phase 0). P(no purchase on days
t .. t+H-1) is then exact: the state vector times the product over the horizon of these (k+1) x (k+1)
"no purchase today, then move" matrices times a vector of ones, computed right to left for all customers at once
(O(n * H * k^2)). Its AUC is the ceiling a model that reads only purchases is measured against.
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
    k = state.phases[users]
    most = int(k.max(initial=1))
    phase_rates = model.purchase_rates(config, state, users, days, progress) * k[:, None]
    dropout = model.dropout_hazards(state, users, days, progress)
    back = state.reactivation[users]
    # allowed[m][j]: moving m phases from phase j stays within the gap (j + m <= k - 1), per user.
    allowed = [[(j + m <= k - 1).astype(np.float64) for j in range(most)] for m in range(most)]
    # v_active[j], v_dormant: P(no purchase on horizon days s .. H-1 | in phase j / dormant at the start of day s).
    v_active = np.ones((most, users.shape[0]))
    v_dormant = np.ones(users.shape[0])
    for s in range(config.horizon_days - 1, -1, -1):
        x, hazard = phase_rates[:, s], dropout[:, s]
        pmf = [np.exp(-x)]
        for m in range(1, most):
            pmf.append(pmf[-1] * x / m)
        # After today without a purchase: dormant with the day's hazard, else in the phase reached.
        after = (1.0 - hazard) * v_active + hazard * v_dormant
        moved = np.zeros_like(v_active)
        for j in range(most):
            for m in range(most - j):
                moved[j] += allowed[m][j] * pmf[m] * after[j + m]
        v_active, v_dormant = moved, (1.0 - back) * v_dormant + back * v_active[0]
    current = np.take_along_axis(v_active, state.phase[users][None, :], axis=0)[0]
    p_none: FloatArray = np.where(state.dormant[users], v_dormant, current)
    return p_none
