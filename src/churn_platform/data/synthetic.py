"""A seeded, vectorised simulator of a subscription product: users, their daily behaviour, and their churn.

Each user has a latent log-engagement: a personal baseline, a slow decline for some users, and a persistent
AR(1) deviation. Engagement drives event counts; a daily churn hazard comes from the engagement level and its
trend, recent support tickets and payment failures, plan and tenure. A churned user emits `cancel` and nothing
after it. Everything the simulator knows lives in `WorldState`, so a world can be saved and continued day by day.

Because the simulator knows each user's latent state, it can say how likely a churn is over the next H days:
`oracle_churn_probability` forecasts the hazard path from that state (expected future engagement, decayed ticket
and payment-failure pressure, tenure) and turns it into a probability. That is the ceiling a model reading only
events can approach (the oracle AUC).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SECONDS_PER_DAY = 86_400
MICROS_PER_DAY = SECONDS_PER_DAY * 1_000_000

EVENT_TYPES: tuple[str, ...] = (
    "login",
    "session",
    "feature_use",
    "support_ticket",
    "payment",
    "payment_failed",
    "plan_upgrade",
    "plan_downgrade",
    "cancel",
)
EVENT_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
# Event types that carry a value (session minutes, or a price for payments and plan changes).
VALUED_EVENT_TYPES = frozenset({"session", "payment", "payment_failed", "plan_upgrade", "plan_downgrade"})

PLANS: tuple[str, ...] = ("basic", "standard", "premium")
PLAN_PRICES = np.array([9.99, 19.99, 39.99])
CHANNELS: tuple[str, ...] = ("organic", "paid_search", "social", "referral", "partner")
REGIONS: tuple[str, ...] = ("north_america", "europe", "asia_pacific", "latin_america")
BILLING_PERIOD_DAYS = 30


@dataclass(frozen=True)
class Regime:
    """How behaviour turns into events, and events into churn. The drift scenario switches to a second regime."""

    # Events per active day at engagement exp(0): Poisson rates.
    login_rate: float = 1.45
    session_rate: float = 1.25
    feature_rate: float = 1.35
    session_minutes: float = 14.0
    ticket_rate: float = 0.012
    # Daily churn hazard, as log-odds: intercept plus effects.
    hazard_intercept: float = -6.9
    hazard_level: float = -1.6  # per unit of log-engagement above the population mean
    hazard_trend: float = -1.8  # engagement now vs its own 30-day average: falling engagement raises risk
    hazard_ticket: float = 0.55  # per recent support ticket (decayed count)
    hazard_payment_failure: float = 1.1  # per recent payment failure (decayed count)
    hazard_plan: tuple[float, float, float] = (0.25, 0.0, -0.2)
    hazard_new_user: float = 0.9  # extra risk in the first weeks, fading with tenure
    plan_price_factor: float = 1.0
    payment_failure_scale: float = 1.0
    # Acquisition mix of new signups.
    channel_mix: tuple[float, ...] = (0.35, 0.25, 0.15, 0.15, 0.10)


# The drift scenario: a mobile-app launch and a price rise. Logins jump and sessions shorten (a covariate shift
# Evidently sees), social signups grow, and churn now follows price, tickets and payment failures more than
# engagement trend (a concept shift, so a model trained before the drift degrades after it).
DRIFTED_REGIME = Regime(
    login_rate=2.9,
    session_rate=1.6,
    feature_rate=1.9,
    session_minutes=8.0,
    ticket_rate=0.02,
    hazard_intercept=-6.9,
    hazard_level=-0.6,
    hazard_trend=-3.0,
    hazard_ticket=1.0,
    hazard_payment_failure=1.6,
    hazard_plan=(-0.2, 0.2, 0.8),
    plan_price_factor=1.2,
    payment_failure_scale=1.6,
    channel_mix=(0.2, 0.15, 0.45, 0.1, 0.1),
)

# Latent engagement dynamics (shared by both regimes).
ENGAGEMENT_PERSISTENCE = 0.96  # AR(1) coefficient of the daily deviation
ENGAGEMENT_NOISE = 0.15  # daily innovation of the deviation
TREND_SMOOTHING = 1.0 / 30.0  # the 30-day exponential average engagement is compared against
TICKET_DECAY = 0.5 ** (1 / 10)  # support-ticket pressure halves in 10 days
PAYMENT_FAILURE_DECAY = 0.5 ** (1 / 7)  # payment-failure pressure halves in 7 days
NEW_USER_TENURE_DAYS = 45.0
POPULATION_ENGAGEMENT = 0.35  # mean log-engagement the level effect is centred on


@dataclass(frozen=True)
class WorldConfig:
    """The parameters of a world; with the seed they determine every event."""

    users: int = 1_000
    days: int = 365
    seed: int = 7
    start_date: date = date(2025, 1, 1)
    horizon_days: int = 30
    drift_at: int | None = None  # day index from which the drifted regime applies
    launch_cohort: float = 0.35  # share of the initial users who sign up in the first week

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["start_date"] = self.start_date.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["start_date"] = date.fromisoformat(values["start_date"])
        return cls(**values)

    def regime(self, day: int) -> Regime:
        return DRIFTED_REGIME if self.drift_at is not None and day >= self.drift_at else Regime()


@dataclass
class WorldState:
    """Everything the simulator knows, per user, at the start of `day` (the next day to simulate)."""

    day: int
    next_event_seq: int
    rng_state: dict[str, Any]
    signup_day: IntArray
    signup_second: IntArray
    plan: IntArray
    initial_plan: IntArray
    channel: IntArray
    region: IntArray
    baseline: FloatArray  # personal mean log-engagement
    decline_start: IntArray  # day a slow decline begins (a large number for users who never decline)
    decline_rate: FloatArray  # log-engagement lost per day once declining
    deviation: FloatArray  # AR(1) deviation of log-engagement
    engagement_avg: FloatArray  # 30-day exponential average of log-engagement
    ticket_pressure: FloatArray
    payment_failure_pressure: FloatArray
    payment_failure_prob: FloatArray
    churn_day: IntArray  # -1 while active
    arrival_rate: float = 0.0  # expected new signups per day once the initial users have arrived

    @property
    def n_users(self) -> int:
        return int(self.signup_day.shape[0])

    def to_bytes(self) -> bytes:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    def scalars(self) -> dict[str, Any]:
        return {"day": self.day, "next_event_seq": self.next_event_seq, "rng_state": self.rng_state,
                "arrival_rate": self.arrival_rate}  # fmt: skip

    @classmethod
    def from_bytes(cls, blob: bytes, scalars: dict[str, Any]) -> WorldState:
        with np.load(io.BytesIO(blob)) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        return cls(**arrays, **scalars)


@dataclass
class DayEvents:
    """The events of one or more simulated days, as parallel arrays (one row per event)."""

    user_index: IntArray
    event_code: npt.NDArray[np.int8]
    timestamp_us: IntArray  # microseconds since the Unix epoch, UTC
    value: FloatArray  # NaN where the event type carries no value
    seq: IntArray  # per-world event sequence number (the synthetic event id)

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    @classmethod
    def empty(cls) -> DayEvents:
        none = np.empty(0, dtype=np.int64)
        return cls(none, np.empty(0, dtype=np.int8), none, np.empty(0, dtype=np.float64), none)

    @classmethod
    def concat(cls, parts: list[DayEvents]) -> DayEvents:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


@dataclass
class DayOracle:
    """The simulator's churn probability over the next H days for each active user, as of the start of a day."""

    day: int
    user_index: IntArray
    p_churn: FloatArray


@dataclass
class SimulatedDays:
    events: DayEvents
    oracle: list[DayOracle] = field(default_factory=list)
    new_users: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def _draw_users(rng: np.random.Generator, n: int, signup_days: IntArray, regime: Regime) -> dict[str, Any]:
    """Static traits and initial latent state of `n` new users."""
    channel = rng.choice(len(CHANNELS), size=n, p=regime.channel_mix)
    plan = rng.choice(len(PLANS), size=n, p=[0.5, 0.33, 0.17])
    # Referral and organic users engage more; paid and social less. Premium users more.
    channel_effect = np.array([0.15, -0.05, -0.2, 0.2, 0.0])[channel]
    plan_effect = np.array([-0.1, 0.05, 0.2])[plan]
    baseline = POPULATION_ENGAGEMENT + channel_effect + plan_effect + rng.normal(0.0, 0.45, n)
    declining = rng.random(n) < 0.3
    decline_start = np.where(declining, signup_days + rng.integers(20, 400, n), np.iinfo(np.int64).max // 4)
    deviation = rng.normal(0.0, ENGAGEMENT_NOISE / np.sqrt(1 - ENGAGEMENT_PERSISTENCE**2), n)
    return {
        "signup_day": signup_days.astype(np.int64),
        "signup_second": rng.integers(0, SECONDS_PER_DAY, n).astype(np.int64),
        "plan": plan.astype(np.int64),
        "initial_plan": plan.astype(np.int64),
        "channel": channel.astype(np.int64),
        "region": rng.choice(len(REGIONS), size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64),
        "baseline": baseline,
        "decline_start": decline_start.astype(np.int64),
        "decline_rate": np.where(declining, rng.uniform(0.004, 0.02, n), 0.0),
        "deviation": deviation,
        "engagement_avg": baseline + deviation,
        "ticket_pressure": np.zeros(n),
        "payment_failure_pressure": np.zeros(n),
        "payment_failure_prob": rng.beta(1.2, 40.0, n),
        "churn_day": np.full(n, -1, dtype=np.int64),
    }


def new_world(config: WorldConfig) -> WorldState:
    """The initial state: every initial user drawn, signups spread over the simulated period."""
    rng = np.random.default_rng(config.seed)
    n = config.users
    # A launch cohort in the first week, the rest arriving steadily until 85% of the period.
    arrival_span = max(1, int(config.days * 0.85))
    in_cohort = rng.random(n) < config.launch_cohort
    signup_days = np.where(in_cohort, rng.integers(0, 7, n), rng.integers(0, arrival_span, n))
    signup_days = np.sort(signup_days)  # user ids follow signup order
    users = _draw_users(rng, n, signup_days, config.regime(0))
    return WorldState(
        day=0,
        next_event_seq=0,
        rng_state=dict(rng.bit_generator.state),
        arrival_rate=float((~in_cohort).sum() / arrival_span),
        **users,
    )


def _log_engagement(state: WorldState, day: int, users: IntArray) -> FloatArray:
    decline = np.clip(day - state.decline_start[users], 0, None) * state.decline_rate[users]
    return state.baseline[users] - np.minimum(decline, 2.5) + state.deviation[users]


def _hazard_log_odds(
    regime: Regime,
    engagement: FloatArray,
    engagement_avg: FloatArray,
    tickets: FloatArray,
    payment_failures: FloatArray,
    plan: IntArray,
    tenure_days: FloatArray,
) -> FloatArray:
    log_odds: FloatArray = (
        regime.hazard_intercept
        + regime.hazard_level * (engagement - POPULATION_ENGAGEMENT)
        + regime.hazard_trend * (engagement - engagement_avg)
        + regime.hazard_ticket * tickets
        + regime.hazard_payment_failure * payment_failures
        + np.asarray(regime.hazard_plan)[plan]
        + regime.hazard_new_user * np.exp(-tenure_days / NEW_USER_TENURE_DAYS)
    )
    return log_odds


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


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
    survival: FloatArray = np.prod(1.0 - _sigmoid(log_odds), axis=1)
    return 1.0 - survival


def _day_bounds(state: WorldState, day: int, users: IntArray, cancel_second: IntArray) -> tuple[IntArray, IntArray]:
    """Per user, the window of seconds within the day in which events can happen (after signup, before cancel)."""
    low = np.where(state.signup_day[users] == day, state.signup_second[users], 0)
    high = np.where(cancel_second >= 0, cancel_second, SECONDS_PER_DAY)
    return low, np.maximum(high, low + 1)


def simulate_day(
    config: WorldConfig, state: WorldState, rng: np.random.Generator, *, with_oracle: bool
) -> tuple[DayEvents, DayOracle | None]:
    """Advance the world by one day: churn decisions, events, and the latent state's update."""
    day = state.day
    regime = config.regime(day)
    active = np.flatnonzero((state.signup_day <= day) & (state.churn_day < 0))
    # Existing users (signed up before today) face today's hazard from yesterday's state.
    oracle = None
    if with_oracle:
        existing = active[state.signup_day[active] < day]
        oracle = DayOracle(day, existing, oracle_churn_probability(config, state, day, existing))

    engagement = _log_engagement(state, day, active)
    tenure = (day - state.signup_day[active]).astype(np.float64)
    hazard = _sigmoid(
        _hazard_log_odds(
            regime,
            engagement,
            state.engagement_avg[active],
            state.ticket_pressure[active],
            state.payment_failure_pressure[active],
            state.plan[active],
            tenure,
        )
    )
    churns = (rng.random(active.shape[0]) < hazard) & (tenure > 0)
    cancel_second = np.where(churns, rng.integers(0, SECONDS_PER_DAY, active.shape[0]), -1)
    low, high = _day_bounds(state, day, active, cancel_second)

    intensity = np.exp(engagement)
    counts = {
        "login": rng.poisson(regime.login_rate * intensity),
        "session": rng.poisson(regime.session_rate * intensity),
        "feature_use": rng.poisson(regime.feature_rate * intensity**1.2),
        "support_ticket": rng.poisson(regime.ticket_rate * np.exp(-0.8 * (engagement - state.engagement_avg[active]))),
    }
    billing_today = ((day - state.signup_day[active]) % BILLING_PERIOD_DAYS == 0) & (tenure > 0)
    failed = billing_today & (
        rng.random(active.shape[0]) < np.minimum(state.payment_failure_prob[active] * regime.payment_failure_scale, 1)
    )
    counts["payment"] = (billing_today & ~failed).astype(np.int64)
    counts["payment_failed"] = failed.astype(np.int64)
    upgrade_p = 0.0015 * np.exp(1.2 * (engagement - state.engagement_avg[active]) + 0.3 * engagement)
    change = rng.random(active.shape[0])
    plan = state.plan[active]
    upgrades = (change < upgrade_p) & (plan < len(PLANS) - 1)
    downgrades = (change > 1 - 0.0015 * np.exp(-1.5 * (engagement - state.engagement_avg[active]))) & (plan > 0)
    counts["plan_upgrade"] = upgrades.astype(np.int64)
    counts["plan_downgrade"] = downgrades.astype(np.int64)
    counts["cancel"] = churns.astype(np.int64)

    price = PLAN_PRICES[plan] * regime.plan_price_factor
    new_price = PLAN_PRICES[np.clip(plan + upgrades - downgrades, 0, len(PLANS) - 1)] * regime.plan_price_factor
    minutes_scale = regime.session_minutes * np.exp(0.3 * (engagement - POPULATION_ENGAGEMENT))

    parts_user, parts_code, parts_value, parts_second = [], [], [], []
    for name in EVENT_TYPES:
        c = counts[name]
        idx = np.repeat(np.arange(active.shape[0]), c)
        if idx.shape[0] == 0:
            continue
        n = idx.shape[0]
        if name == "cancel":
            seconds = cancel_second[idx]
        else:
            seconds = low[idx] + (rng.random(n) * (high[idx] - low[idx])).astype(np.int64)
        if name == "session":
            value = np.round(rng.lognormal(np.log(minutes_scale[idx]), 0.6), 1)
        elif name in ("payment", "payment_failed"):
            value = np.round(price[idx], 2)
        elif name in ("plan_upgrade", "plan_downgrade"):
            value = np.round(new_price[idx], 2)
        else:
            value = np.full(n, np.nan)
        parts_user.append(active[idx])
        parts_code.append(np.full(n, EVENT_CODE[name], dtype=np.int8))
        parts_value.append(value)
        parts_second.append(seconds)

    if parts_user:
        user_index = np.concatenate(parts_user)
        seconds = np.concatenate(parts_second)
        epoch_day = (np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)
        timestamp_us = (epoch_day + day) * MICROS_PER_DAY + seconds * 1_000_000
        events = DayEvents(
            user_index=user_index.astype(np.int64),
            event_code=np.concatenate(parts_code),
            timestamp_us=timestamp_us.astype(np.int64),
            value=np.concatenate(parts_value),
            seq=np.arange(state.next_event_seq, state.next_event_seq + user_index.shape[0], dtype=np.int64),
        )
    else:
        events = DayEvents.empty()
    state.next_event_seq += len(events)

    # The latent state moves on.
    stay = active[~churns]
    state.churn_day[active[churns]] = day
    state.plan[active] = np.clip(plan + upgrades - downgrades, 0, len(PLANS) - 1)
    state.engagement_avg[active] += TREND_SMOOTHING * (engagement - state.engagement_avg[active])
    state.ticket_pressure[active] = state.ticket_pressure[active] * TICKET_DECAY + counts["support_ticket"]
    state.payment_failure_pressure[active] = state.payment_failure_pressure[active] * PAYMENT_FAILURE_DECAY + failed
    state.deviation[stay] = state.deviation[stay] * ENGAGEMENT_PERSISTENCE + rng.normal(
        0.0, ENGAGEMENT_NOISE, stay.shape[0]
    )
    state.day += 1
    return events, oracle


def _add_arrivals(config: WorldConfig, state: WorldState, rng: np.random.Generator) -> IntArray:
    """After the initial period, new users keep arriving at the initial steady rate."""
    if state.day < config.days:
        return np.empty(0, dtype=np.int64)
    n = int(rng.poisson(state.arrival_rate))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    first = state.n_users
    users = _draw_users(rng, n, np.full(n, state.day, dtype=np.int64), config.regime(state.day))
    for name, values in users.items():
        setattr(state, name, np.concatenate([getattr(state, name), values]))
    return np.arange(first, first + n, dtype=np.int64)


def simulate(config: WorldConfig, state: WorldState, days: int, *, with_oracle: bool = True) -> SimulatedDays:
    """Simulate `days` more days from `state` (mutated in place), returning their events and oracle rows."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    parts: list[DayEvents] = []
    oracle: list[DayOracle] = []
    new_users: list[IntArray] = []
    for _ in range(days):
        new_users.append(_add_arrivals(config, state, rng))
        events, day_oracle = simulate_day(config, state, rng, with_oracle=with_oracle)
        parts.append(events)
        if day_oracle is not None:
            oracle.append(day_oracle)
    state.rng_state = dict(rng.bit_generator.state)
    return SimulatedDays(DayEvents.concat(parts), oracle, np.concatenate(new_users))
