"""A seeded, vectorised simulator of a subscription product: users, their daily behaviour, and their churn.

One day at a time, for all users at once: who churns (from yesterday's state), which events each active user
emits, and how the latent state moves on. A churned user emits `cancel` and nothing after it. The model it runs
(event types, regimes, state) is in `world_model`; its churn forecast in `oracle`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from churn_platform.data.synthetic.oracle import oracle_churn_probability
from churn_platform.data.synthetic.world_model import (
    BILLING_PERIOD_DAYS,
    CHANNELS,
    ENGAGEMENT_NOISE,
    ENGAGEMENT_PERSISTENCE,
    EVENT_CODE,
    MICROS_PER_DAY,
    PAYMENT_FAILURE_DECAY,
    PLAN_PRICES,
    PLANS,
    POPULATION_ENGAGEMENT,
    RECENT_SMOOTHING,
    REGIONS,
    SECONDS_PER_DAY,
    SUBSCRIPTION_EVENT_TYPES,
    TICKET_DECAY,
    TREND_SMOOTHING,
    DayEvents,
    DayOracle,
    IntArray,
    Regime,
    SimulatedDays,
    WorldConfig,
    WorldState,
    arrivals_today,
    hazard_log_odds,
    initial_signup_days,
    log_engagement,
    sigmoid,
)


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
        "engagement_recent": baseline + deviation,
        "engagement_avg": baseline + deviation,
        "ticket_pressure": np.zeros(n),
        "payment_failure_pressure": np.zeros(n),
        "payment_failure_prob": rng.beta(1.2, 40.0, n),
        "churn_day": np.full(n, -1, dtype=np.int64),
    }


def new_world(config: WorldConfig) -> WorldState:
    """The initial state: every initial user drawn, signups spread over the simulated period."""
    rng = np.random.default_rng(config.seed)
    signup_days, arrival_rate = initial_signup_days(rng, config, cohort_days=7)
    users = _draw_users(rng, config.users, signup_days, config.regime(0))
    rng_state = dict(rng.bit_generator.state)
    return WorldState(day=0, next_event_seq=0, rng_state=rng_state, arrival_rate=arrival_rate, **users)


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
        # Kept for every simulated day until the load ends: stored compactly (as in the table: int, real).
        p_churn = oracle_churn_probability(config, state, day, existing).astype(np.float32)
        oracle = DayOracle(day, existing.astype(np.int32), p_churn)

    engagement = log_engagement(state, day, active)
    tenure = (day - state.signup_day[active]).astype(np.float64)
    hazard = sigmoid(
        hazard_log_odds(
            regime,
            state.engagement_recent[active],
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
    for name in SUBSCRIPTION_EVENT_TYPES:
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
    state.engagement_recent[active] += RECENT_SMOOTHING * (engagement - state.engagement_recent[active])
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
    n = arrivals_today(config, state, rng)
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
