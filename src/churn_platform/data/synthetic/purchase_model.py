"""The purchases world's model: customers of a shop or app without contracts, who buy and go quiet unobserved.

Each customer buys at a personal rate (Gamma heterogeneity, as BG/NBD and Pareto/NBD assume) times a yearly
season (a November-December peak) and a weekly pattern, spending lognormal amounts around a personal mean. Their
gaps are more regular than a Poisson process's (replenishment): a gap is Erlang-k, k phases each completed at k
times the customer's current rate, so a customer's rhythm shows in their history. An active customer turns
dormant with a daily hazard: a small sudden part (higher in the first weeks, for small baskets and some
acquisition channels) and, for most customers, a fade: their purchase rate and baskets decline over weeks while
their hazard rises steeply towards the fade's end, so a dropout is mostly announced by the recent purchases
(ignored by BG/NBD). Dormant customers emit nothing, and come back at a small (`returns="rare"`) or large
(`"common"`) rate, starting a new gap on their own path where it is. Everything here is known to the oracle: given
a customer's state (including the phase of the current gap), the per-day rates and hazards over a horizon are
deterministic, which makes the oracle exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from churn_platform.data.synthetic.world_model import (
    FloatArray,
    IntArray,
    Returns,
    SimulatedState,
    WorldConfig,
    calendar_days,
)

# Purchase rate: Gamma across customers, a mean gap of about five weeks and a long tail of rare buyers.
MEAN_PURCHASE_GAP_DAYS = 25.0
RATE_SHAPE = 3.0
# Regularity: a gap between purchases is Erlang with this many phases (coefficient of variation 1 / sqrt(k)),
# drawn per customer: a weekly shopper is more regular than an occasional one, all more than Poisson (k = 1).
GAP_PHASES = np.array([2, 3, 4])
GAP_PHASE_MIX = (0.3, 0.4, 0.3)
# Part of a customer's rate shows in what is known about them: referral customers buy more often, social ones
# less; big baskets come less often.
CHANNEL_RATE = np.array([1.0, 0.9, 0.7, 1.4, 1.0])  # organic, paid_search, social, referral, partner
BASKET_RATE_POWER = -0.5
# The season: purchase rates peak in early December (x 1 + lift), amounts a little too.
SEASON_PEAK_DAY_OF_YEAR = 340
SEASON_WIDTH_DAYS = 22.0
SEASON_RATE_LIFT = 0.9
SEASON_AMOUNT_LIFT = 0.25
WEEKDAY_RATE = np.array([0.9, 0.9, 0.95, 1.0, 1.1, 1.2, 0.95])  # Monday .. Sunday
# Amounts: lognormal around a customer's own mean basket.
MEAN_BASKET = 40.0
BASKET_SPREAD = 0.6  # sd of the log mean basket across customers
AMOUNT_SPREAD = 0.3  # sd of a purchase's log amount around the customer's mean
# Sudden dropout (active -> dormant, unannounced), per day: a base hazard times the customer's multipliers.
BASE_HAZARD = 1.0 / 8000.0
CHANNEL_HAZARD = np.array([1.0, 1.3, 1.7, 0.6, 1.0])  # organic, paid_search, social, referral, partner
BASKET_HAZARD_POWER = -0.6  # a basket half the mean basket drops out 1.5 x as often
NEW_CUSTOMER_LIFT = 3.0  # first-weeks effect: x 4 on the first day, fading with tenure
NEW_CUSTOMER_DAYS = 21.0
# Fading: most customers begin, some time after their first purchase, to buy less and less and smaller baskets;
# progress p = 1 - exp(-days into the fade / the customer's fade scale). The fade's own dropout hazard grows
# as p ** FADE_HAZARD_POWER, so a fading customer goes dormant near its end, when their purchases already show it.
FADING_SHARE = 0.8
FADE_ONSET_MEAN_DAYS = 200.0
FADE_SCALE_DAYS = (30.0, 60.0)
FADE_RATE_DEPTH = 0.98  # at full fade the rate is 2% of the customer's own
FADE_BASKET_DEPTH = 0.85  # and baskets 15% of their usual size (the small things still bought here)
FADE_HAZARD = 1.0 / 15.0  # the fade's daily dropout hazard at full fade
FADE_HAZARD_POWER = 8.0
NEVER = np.iinfo(np.int64).max // 4
# Reactivation (dormant -> active), per day: the world's rate times a customer's Gamma(2, 1/2) factor.
REACTIVATION_RATE: dict[Returns, float] = {"rare": 1.0 / 1000.0, "common": 1.0 / 150.0}


@dataclass(kw_only=True)
class PurchaseState(SimulatedState):
    """Everything the purchases simulator knows, per customer, at the start of `day`."""

    rate: FloatArray  # the customer's own purchases per day (before season, weekday and fading)
    phases: IntArray  # k: a gap between purchases has k phases
    phase: IntArray  # phases of the current gap completed so far (0 .. k - 1)
    basket_log_mean: FloatArray  # log of the customer's mean amount
    base_hazard: FloatArray  # daily dropout hazard before the first-weeks effect and fading
    fade_start: IntArray  # day the customer's fading begins (NEVER for customers who never fade)
    fade_scale: FloatArray  # days over which a fade progresses (1 - 1/e of the way)
    reactivation: FloatArray  # daily probability that a dormant customer becomes active again
    dormant: npt.NDArray[np.bool_]

    def active_users(self) -> int:
        return int(((self.signup_day < self.day) & ~self.dormant).sum())


def calendar_effects(config: WorldConfig, days: IntArray) -> tuple[FloatArray, FloatArray]:
    """Per day index: the purchase-rate multiplier (season x weekday) and the amount multiplier (season)."""
    dates = calendar_days(config, days)
    day_of_year = (dates - dates.astype("datetime64[Y]")).astype(np.int64)
    distance = np.abs(day_of_year - SEASON_PEAK_DAY_OF_YEAR)
    distance = np.minimum(distance, 365 - distance)  # the peak's tail wraps around the new year
    season = np.exp(-0.5 * (distance / SEASON_WIDTH_DAYS) ** 2)
    weekday = (dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return (1.0 + SEASON_RATE_LIFT * season) * WEEKDAY_RATE[weekday], 1.0 + SEASON_AMOUNT_LIFT * season


def fade_progress(state: PurchaseState, users: IntArray, days: IntArray) -> FloatArray:
    """How far each customer's fade has gone on each day (0 before it starts), users x days."""
    into_fade = np.clip(days[None, :] - state.fade_start[users][:, None], 0, None).astype(np.float64)
    progress: FloatArray = 1.0 - np.exp(-into_fade / state.fade_scale[users][:, None])
    return progress


def purchase_rates(
    config: WorldConfig, state: PurchaseState, users: IntArray, days: IntArray, progress: FloatArray
) -> FloatArray:
    """Expected purchases of active customers on each day, users x days (a gap's k phases each go k times as fast)."""
    calendar, _ = calendar_effects(config, days)
    rates: FloatArray = state.rate[users][:, None] * calendar[None, :] * (1.0 - FADE_RATE_DEPTH * progress)
    return rates


def dropout_hazards(state: PurchaseState, users: IntArray, days: IntArray, progress: FloatArray) -> FloatArray:
    """Probability that an active customer turns dormant at the end of each day, users x days."""
    tenure = (days[None, :] - state.signup_day[users][:, None]).astype(np.float64)
    new_customer = 1.0 + NEW_CUSTOMER_LIFT * np.exp(-np.clip(tenure, 0, None) / NEW_CUSTOMER_DAYS)
    sudden = state.base_hazard[users][:, None] * new_customer
    hazard: FloatArray = np.minimum(sudden + FADE_HAZARD * progress**FADE_HAZARD_POWER, 1.0)
    return hazard
