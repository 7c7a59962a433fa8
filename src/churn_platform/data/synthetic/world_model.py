"""The synthetic world's model: event types, plans, the two regimes, and the state a simulation carries.

Each user has a latent log-engagement: a personal baseline, a slow decline for some users, and a persistent
AR(1) deviation. Engagement drives event counts; a daily churn hazard comes from the engagement of the last two
weeks and its trend against the last 30 days (what the user's recent events show), recent support tickets and
payment failures, plan and tenure. Everything the simulator knows lives in `WorldState`, so a world can be saved
and continued day by day. `synthetic` runs the model; `oracle` forecasts churn from its state.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from churn_platform.settings import Settings

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SECONDS_PER_DAY = 86_400
MICROS_PER_DAY = SECONDS_PER_DAY * 1_000_000

SUBSCRIPTION_EVENT_TYPES: tuple[str, ...] = (
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
PURCHASE_EVENT_TYPES: tuple[str, ...] = ("purchase",)
# One code per event type across the kinds of world (the codes of the subscription world's types come first).
EVENT_TYPES = SUBSCRIPTION_EVENT_TYPES + PURCHASE_EVENT_TYPES
EVENT_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
# Event types that carry a value (session minutes, a price for payments and plan changes, a purchase's amount).
VALUED_EVENT_TYPES = frozenset({"session", "payment", "payment_failed", "plan_upgrade", "plan_downgrade", "purchase"})

# The kinds of world: a subscription product (cancel events), or a shop without contracts (purchases only).
WorldKind = Literal["subscription", "purchases"]
# How often a purchases world's dormant customers come back: rarely, or commonly (after long silences).
Returns = Literal["rare", "common"]

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
    hazard_intercept: float = -6.2
    hazard_level: float = -1.6  # per unit of recent (two-week) log-engagement above the population mean
    hazard_trend: float = -1.8  # recent engagement vs its own 30-day average: falling engagement raises risk
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
    hazard_intercept=-6.2,
    hazard_level=-0.4,
    hazard_trend=-3.0,
    hazard_ticket=1.0,
    hazard_payment_failure=1.6,
    hazard_plan=(-0.2, 0.2, 0.8),
    plan_price_factor=1.2,
    payment_failure_scale=1.6,
    channel_mix=(0.2, 0.15, 0.45, 0.1, 0.1),
)

# Latent engagement dynamics (shared by both regimes).
ENGAGEMENT_PERSISTENCE = 0.985  # AR(1) coefficient of the daily deviation
ENGAGEMENT_NOISE = 0.09  # daily innovation of the deviation
RECENT_SMOOTHING = 1.0 / 14.0  # the two-week exponential average of engagement churn responds to
TREND_SMOOTHING = 1.0 / 30.0  # the 30-day exponential average the recent average is compared against
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
    launch_cohort: float = 0.35  # share of the initial users who sign up in the first weeks
    kind: WorldKind = "subscription"  # stored configs from before there were kinds are subscription worlds
    returns: Returns = "rare"  # purchases worlds: how often dormant customers reactivate

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


def world_config_from_settings(
    settings: Settings,
    *,
    users: int = WorldConfig.users,
    days: int = WorldConfig.days,
    seed: int = WorldConfig.seed,
    start_date: date = WorldConfig.start_date,
    horizon_days: int | None = None,
    drift_at: int | None = None,
    kind: WorldKind = WorldConfig.kind,
    returns: Returns = WorldConfig.returns,
) -> WorldConfig:
    """The world `churn generate` and the generate flow simulate. Its oracle forecasts churn over the platform's
    label horizon (CHURN_LABEL_HORIZON_DAYS) unless `horizon_days` says otherwise, so that the oracle AUC a model
    is measured against forecasts what the labels count."""
    horizon = settings.label_horizon_days if horizon_days is None else horizon_days
    return WorldConfig(
        users=users, days=days, seed=seed, start_date=start_date, horizon_days=horizon, drift_at=drift_at, kind=kind,
        returns=returns,
    )  # fmt: skip


@dataclass(kw_only=True)
class SimulatedState(ABC):
    """What every world's simulator carries: the clock, the random generator, and who arrived when and how.

    Each kind of world adds its own per-user latent arrays; all of it is saved and restored as one npz blob plus
    a few JSON scalars, so a world can be continued day by day.
    """

    day: int
    next_event_seq: int
    rng_state: dict[str, Any]
    signup_day: IntArray
    signup_second: IntArray
    channel: IntArray
    region: IntArray
    arrival_rate: float = 0.0  # expected new signups per day once the initial users have arrived

    @property
    def n_users(self) -> int:
        return int(self.signup_day.shape[0])

    @abstractmethod
    def active_users(self) -> int:
        """Users who have arrived and are active now (the summary's "active now")."""

    def signup_plans(self, users: IntArray) -> list[tuple[str | None, float | None]]:
        """Plan and plan price at signup of each user, for raw.users (None where the world has no plans)."""
        return [(None, None)] * int(users.shape[0])

    def to_bytes(self) -> bytes:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    def scalars(self) -> dict[str, Any]:
        return {"day": self.day, "next_event_seq": self.next_event_seq, "rng_state": self.rng_state,
                "arrival_rate": self.arrival_rate}  # fmt: skip

    @classmethod
    def from_bytes(cls, blob: bytes, scalars: dict[str, Any]) -> Self:
        with np.load(io.BytesIO(blob)) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        expected = {f.name for f in fields(cls)} - set(scalars)
        missing = sorted(name for name in expected - set(arrays) if name != "arrival_rate")
        if missing:
            raise ValueError(
                f"the stored world was simulated by an older version of the simulator (no {', '.join(missing)}):"
                " regenerate it with `churn generate --replace`"
            )
        return cls(**arrays, **scalars)


@dataclass(kw_only=True)
class WorldState(SimulatedState):
    """Everything the subscription simulator knows, per user, at the start of `day` (the next day to simulate)."""

    plan: IntArray
    initial_plan: IntArray
    baseline: FloatArray  # personal mean log-engagement
    decline_start: IntArray  # day a slow decline begins (a large number for users who never decline)
    decline_rate: FloatArray  # log-engagement lost per day once declining
    deviation: FloatArray  # AR(1) deviation of log-engagement
    engagement_recent: FloatArray  # 14-day exponential average of log-engagement, up to yesterday
    engagement_avg: FloatArray  # 30-day exponential average of log-engagement, up to yesterday
    ticket_pressure: FloatArray
    payment_failure_pressure: FloatArray
    payment_failure_prob: FloatArray
    churn_day: IntArray  # -1 while active

    def active_users(self) -> int:
        return int(((self.signup_day < self.day) & (self.churn_day < 0)).sum())

    def signup_plans(self, users: IntArray) -> list[tuple[str | None, float | None]]:
        # The plan at signup; later changes are plan_* events.
        plans = self.initial_plan[users]
        return [(PLANS[int(p)], float(PLAN_PRICES[int(p)])) for p in plans]


def initial_signup_days(rng: np.random.Generator, config: WorldConfig, cohort_days: int) -> tuple[IntArray, float]:
    """Signup days of a world's initial users, sorted (user ids follow signup order), and the steady arrival rate.

    A launch cohort arrives over the first `cohort_days`; the rest arrive steadily until 85% of the period, and
    new users keep arriving at that rate after it.
    """
    n = config.users
    arrival_span = max(1, int(config.days * 0.85))
    in_cohort = rng.random(n) < config.launch_cohort
    signup_days = np.where(in_cohort, rng.integers(0, cohort_days, n), rng.integers(0, arrival_span, n))
    return np.sort(signup_days).astype(np.int64), float((~in_cohort).sum() / arrival_span)


def arrivals_today(config: WorldConfig, state: SimulatedState, rng: np.random.Generator) -> int:
    """How many new users arrive today: none during the initial period (its users are drawn up front)."""
    if state.day < config.days:
        return 0
    return int(rng.poisson(state.arrival_rate))


def calendar_days(config: WorldConfig, days: IntArray) -> npt.NDArray[np.datetime64]:
    """The dates of day indices."""
    return np.datetime64(config.start_date, "D") + days


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
    user_index: npt.NDArray[np.int32]
    p_churn: npt.NDArray[np.float32]


@dataclass
class SimulatedDays:
    events: DayEvents
    oracle: list[DayOracle] = field(default_factory=list)
    new_users: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def log_engagement(state: WorldState, day: int, users: IntArray) -> FloatArray:
    """Today's log-engagement of the given users: baseline, minus any decline so far, plus the deviation."""
    decline = np.clip(day - state.decline_start[users], 0, None) * state.decline_rate[users]
    return state.baseline[users] - np.minimum(decline, 2.5) + state.deviation[users]


def hazard_log_odds(
    regime: Regime,
    engagement_recent: FloatArray,
    engagement_avg: FloatArray,
    tickets: FloatArray,
    payment_failures: FloatArray,
    plan: IntArray,
    tenure_days: FloatArray,
) -> FloatArray:
    """The daily churn hazard as log-odds, under a regime.

    Churn responds to the engagement a user has had lately (the two-week average up to yesterday) and to its
    trend against the 30-day average, not to today's unobserved engagement: users cancel after a spell of low
    use, which their recent events show.
    """
    log_odds: FloatArray = (
        regime.hazard_intercept
        + regime.hazard_level * (engagement_recent - POPULATION_ENGAGEMENT)
        + regime.hazard_trend * (engagement_recent - engagement_avg)
        + regime.hazard_ticket * tickets
        + regime.hazard_payment_failure * payment_failures
        + np.asarray(regime.hazard_plan)[plan]
        + regime.hazard_new_user * np.exp(-tenure_days / NEW_USER_TENURE_DAYS)
    )
    return log_odds


def sigmoid(x: FloatArray) -> FloatArray:
    """Log-odds to probability."""
    return 1.0 / (1.0 + np.exp(-x))
