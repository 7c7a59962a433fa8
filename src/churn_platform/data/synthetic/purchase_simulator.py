"""A seeded, vectorised simulator of the purchases world: customers arrive with a first purchase, buy, go dormant.

One day at a time, for all customers at once: the oracle's forecast from the state at the start of the day, the
day's purchases of active customers, then the day's transitions (active -> dormant, dormant -> active). The
model (rates, hazards, calendar) is in `purchase_model`; the forecast in `purchase_oracle`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from churn_platform.data.synthetic import purchase_model as model
from churn_platform.data.synthetic.purchase_model import PurchaseState
from churn_platform.data.synthetic.purchase_oracle import no_purchase_probability
from churn_platform.data.synthetic.world_model import (
    CHANNELS,
    EVENT_CODE,
    MICROS_PER_DAY,
    REGIONS,
    SECONDS_PER_DAY,
    DayEvents,
    DayOracle,
    IntArray,
    SimulatedDays,
    WorldConfig,
    arrivals_today,
    initial_signup_days,
)

CHANNEL_MIX = (0.35, 0.25, 0.15, 0.15, 0.10)
REGION_MIX = (0.4, 0.3, 0.2, 0.1)
# The initial cohort of a new shop arrives over its first four weeks.
COHORT_DAYS = 28


def _draw_customers(rng: np.random.Generator, config: WorldConfig, signup_days: IntArray) -> dict[str, Any]:
    """Traits and initial state of new customers (active: their first purchase is their acquisition)."""
    n = signup_days.shape[0]
    channel = np.asarray(rng.choice(len(CHANNELS), size=n, p=CHANNEL_MIX), dtype=np.int64)
    basket_log_mean = np.log(model.MEAN_BASKET) - model.BASKET_SPREAD**2 / 2 + rng.normal(0.0, model.BASKET_SPREAD, n)
    basket_ratio = np.exp(basket_log_mean - np.log(model.MEAN_BASKET))
    basket_hazard = basket_ratio**model.BASKET_HAZARD_POWER
    fading = rng.random(n) < model.FADING_SHARE
    onset = signup_days + np.ceil(rng.exponential(model.FADE_ONSET_MEAN_DAYS, n)).astype(np.int64)
    return {
        "signup_day": signup_days.astype(np.int64),
        "signup_second": rng.integers(0, SECONDS_PER_DAY, n).astype(np.int64),
        "channel": channel,
        "region": np.asarray(rng.choice(len(REGIONS), size=n, p=REGION_MIX), dtype=np.int64),
        "rate": rng.gamma(model.RATE_SHAPE, 1.0 / (model.MEAN_PURCHASE_GAP_DAYS * model.RATE_SHAPE), n)
        * model.CHANNEL_RATE[channel]
        * basket_ratio**model.BASKET_RATE_POWER,
        "phases": np.asarray(rng.choice(model.GAP_PHASES, size=n, p=model.GAP_PHASE_MIX), dtype=np.int64),
        "phase": np.zeros(n, dtype=np.int64),
        "basket_log_mean": basket_log_mean,
        "base_hazard": model.BASE_HAZARD * model.CHANNEL_HAZARD[channel] * basket_hazard,
        "fade_start": np.where(fading, onset, model.NEVER).astype(np.int64),
        "fade_scale": rng.uniform(*model.FADE_SCALE_DAYS, n),
        "reactivation": model.REACTIVATION_RATE[config.returns] * rng.gamma(2.0, 0.5, n),
        "dormant": np.zeros(n, dtype=np.bool_),
    }


def new_world(config: WorldConfig) -> PurchaseState:
    """The initial state: every initial customer drawn, acquisitions spread over the simulated period."""
    rng = np.random.default_rng(config.seed)
    signup_days, arrival_rate = initial_signup_days(rng, config, cohort_days=COHORT_DAYS)
    customers = _draw_customers(rng, config, signup_days)
    return PurchaseState(
        day=0, next_event_seq=0, rng_state=dict(rng.bit_generator.state), arrival_rate=arrival_rate, **customers
    )


def _add_arrivals(config: WorldConfig, state: PurchaseState, rng: np.random.Generator) -> None:
    """After the initial period, new customers keep arriving at the initial steady rate."""
    n = arrivals_today(config, state, rng)
    if n == 0:
        return
    customers = _draw_customers(rng, config, np.full(n, state.day, dtype=np.int64))
    for name, values in customers.items():
        setattr(state, name, np.concatenate([getattr(state, name), values]))


def _purchases(
    config: WorldConfig, state: PurchaseState, rng: np.random.Generator, active: IntArray
) -> tuple[IntArray, IntArray, np.ndarray]:
    """Today's purchases of active customers: (customer, second of the day, amount) per purchase.

    A customer acquired today makes exactly their first purchase, at their signup second. The others complete
    Poisson(k x rate) phases of their current gap, and buy each time a gap's k phases are done.
    """
    day = state.day
    today = np.array([day], dtype=np.int64)
    progress = model.fade_progress(state, active, today)
    acquired_today = state.signup_day[active] == day
    k = state.phases[active]
    expected = model.purchase_rates(config, state, active, today, progress)[:, 0] * k
    reached = state.phase[active] + np.where(acquired_today, 0, rng.poisson(expected))
    counts = np.where(acquired_today, 1, reached // k)
    state.phase[active] = reached % k
    rows = np.repeat(np.arange(active.shape[0]), counts)
    customers = active[rows]
    seconds = np.where(
        acquired_today[rows], state.signup_second[customers], rng.integers(0, SECONDS_PER_DAY, rows.shape[0])
    )
    # Amounts: the customer's mean basket, higher in season, smaller as a fade goes on.
    _, amount_effect = model.calendar_effects(config, today)
    fade_basket = 1.0 - model.FADE_BASKET_DEPTH * progress[rows, 0]
    log_amount = state.basket_log_mean[customers] + np.log(amount_effect[0] * fade_basket) - model.AMOUNT_SPREAD**2 / 2
    amounts = np.round(rng.lognormal(log_amount, model.AMOUNT_SPREAD), 2)
    return customers, seconds, amounts


def simulate_day(
    config: WorldConfig, state: PurchaseState, rng: np.random.Generator, *, with_oracle: bool
) -> tuple[DayEvents, DayOracle | None]:
    """Advance the world by one day: the oracle's forecast, purchases, then the day's transitions."""
    day = state.day
    oracle = None
    if with_oracle:
        # The population: every customer acquired before today, dormant ones included.
        population = np.flatnonzero(state.signup_day < day)
        p_none = no_purchase_probability(config, state, day, population).astype(np.float32)
        oracle = DayOracle(day, population.astype(np.int32), p_none)

    arrived = np.flatnonzero(state.signup_day <= day)
    active = arrived[~state.dormant[arrived]]
    customers, seconds, amounts = _purchases(config, state, rng, active)
    epoch_day = (np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)
    n = customers.shape[0]
    order = np.lexsort((seconds, customers))  # a customer's purchases in time order
    events = DayEvents(
        user_index=customers[order].astype(np.int64),
        event_code=np.full(n, EVENT_CODE["purchase"], dtype=np.int8),
        timestamp_us=((epoch_day + day) * MICROS_PER_DAY + seconds[order] * 1_000_000).astype(np.int64),
        value=amounts[order],
        seq=np.arange(state.next_event_seq, state.next_event_seq + n, dtype=np.int64),
    )
    state.next_event_seq += n

    # The day's transitions, from the state at its start: active customers may go quiet, dormant ones return.
    draws = rng.random(arrived.shape[0])
    today = np.array([day], dtype=np.int64)
    hazard = model.dropout_hazards(state, arrived, today, model.fade_progress(state, arrived, today))[:, 0]
    was_dormant = state.dormant[arrived]
    state.dormant[arrived] = np.where(was_dormant, draws >= state.reactivation[arrived], draws < hazard)
    state.phase[arrived[was_dormant & ~state.dormant[arrived]]] = 0  # a returning customer starts a new gap
    state.day += 1
    return events, oracle


def simulate(config: WorldConfig, state: PurchaseState, days: int, *, with_oracle: bool = True) -> SimulatedDays:
    """Simulate `days` more days from `state` (mutated in place), returning their events and oracle rows."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    parts: list[DayEvents] = []
    oracle: list[DayOracle] = []
    first_new = state.n_users
    for _ in range(days):
        _add_arrivals(config, state, rng)
        events, day_oracle = simulate_day(config, state, rng, with_oracle=with_oracle)
        parts.append(events)
        if day_oracle is not None:
            oracle.append(day_oracle)
    state.rng_state = dict(rng.bit_generator.state)
    return SimulatedDays(DayEvents.concat(parts), oracle, np.arange(first_new, state.n_users, dtype=np.int64))
