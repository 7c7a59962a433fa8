"""The purchases world on its own: determinism, continuation, dormancy, reactivation, and its exact oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from churn_platform.data.synthetic import kinds, purchase_model, purchase_simulator, world_model
from churn_platform.data.synthetic.purchase_model import REACTIVATION_RATE, PurchaseState
from churn_platform.data.synthetic.purchase_oracle import no_purchase_probability
from churn_platform.data.synthetic.world_model import EVENT_CODE, WorldConfig, WorldState

PURCHASES = WorldConfig(users=300, days=120, seed=11, kind="purchases", horizon_days=30)


def _run(config: WorldConfig, days: int) -> tuple[PurchaseState, world_model.SimulatedDays]:
    state = purchase_simulator.new_world(config)
    return state, purchase_simulator.simulate(config, state, days)


def _restored(state: PurchaseState, rng_seed: int | None = None) -> PurchaseState:
    scalars = state.scalars()
    if rng_seed is not None:
        scalars["rng_state"] = np.random.default_rng(rng_seed).bit_generator.state
    restored = kinds.state_from_bytes(PURCHASES, state.to_bytes(), scalars)
    assert isinstance(restored, PurchaseState)
    return restored


def test_same_seed_gives_the_same_purchases_and_oracle_and_another_seed_does_not() -> None:
    _, first = _run(PURCHASES, 60)
    _, second = _run(PURCHASES, 60)
    _, other = _run(dataclasses.replace(PURCHASES, seed=12), 60)
    for name in ("user_index", "event_code", "timestamp_us", "value", "seq"):
        np.testing.assert_array_equal(getattr(first.events, name), getattr(second.events, name))
    for a, b in zip(first.oracle, second.oracle, strict=True):
        np.testing.assert_array_equal(a.user_index, b.user_index)
        np.testing.assert_array_equal(a.p_churn, b.p_churn)
    assert len(first.events) != len(other.events) or not np.array_equal(first.events.value, other.events.value)
    # Only purchases, each with an amount
    assert set(np.unique(first.events.event_code)) == {EVENT_CODE["purchase"]}
    assert np.all(first.events.value > 0)


def test_a_saved_and_restored_world_continues_exactly_as_one_that_never_stopped() -> None:
    # Given one world run 140 days straight (20 days past its initial period: acquisitions continue)
    _, straight = _run(PURCHASES, 140)
    # And the same world run 120 days, saved, restored as its kind, and run 20 more
    state, first = _run(PURCHASES, 120)
    restored = _restored(state)
    second = purchase_simulator.simulate(PURCHASES, restored, 20)
    # Then events and oracle are identical
    joined = world_model.DayEvents.concat([first.events, second.events])
    for name in ("user_index", "timestamp_us", "value", "seq"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(straight.events, name))
    for a, b in zip(first.oracle + second.oracle, straight.oracle, strict=True):
        np.testing.assert_array_equal(a.p_churn, b.p_churn)
    assert restored.n_users > PURCHASES.users  # new customers kept arriving after the initial period


def test_a_customer_acquired_on_a_day_makes_their_first_purchase_at_signup() -> None:
    state, sim = _run(PURCHASES, 120)
    first_purchase = np.full(state.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_purchase, sim.events.user_index, sim.events.timestamp_us)
    start_us = np.datetime64(PURCHASES.start_date, "us").astype(np.int64)
    signup_us = start_us + (state.signup_day * 86_400 + state.signup_second) * 1_000_000
    np.testing.assert_array_equal(first_purchase, signup_us)


def test_dormant_customers_emit_nothing() -> None:
    # Given a world stepped day by day, noting who was dormant at the start of each day
    config = dataclasses.replace(PURCHASES, returns="common")
    state = purchase_simulator.new_world(config)
    emitted_while_dormant, dormant_days, active_buyers = 0, 0, 0
    for _ in range(240):
        dormant_at_start = np.flatnonzero(state.dormant & (state.signup_day <= state.day))
        buyers = np.unique(purchase_simulator.simulate(config, state, 1, with_oracle=False).events.user_index)
        # Then nobody dormant at the start of a day buys on it
        emitted_while_dormant += np.isin(buyers, dormant_at_start).sum()
        dormant_days += dormant_at_start.shape[0]
        active_buyers += buyers.shape[0]
    assert emitted_while_dormant == 0
    assert dormant_days > 1_000 and active_buyers > 1_000  # and both kinds of customer-days were there


@pytest.mark.parametrize("returns", ["rare", "common"])
def test_dormant_customers_return_at_the_configured_rate(returns: world_model.Returns) -> None:
    # Given a world with many dormant customer-days
    config = WorldConfig(users=6_000, days=240, seed=5, kind="purchases", returns=returns)
    state = purchase_simulator.new_world(config)
    purchase_simulator.simulate(config, state, 240, with_oracle=False)
    returned, expected = 0, 0.0
    # When it runs on, counting the dormant customers who are active the next day
    for _ in range(120):
        dormant = np.flatnonzero(state.dormant & (state.signup_day <= state.day))
        purchase_simulator.simulate(config, state, 1, with_oracle=False)
        returned += int((~state.dormant[dormant]).sum())
        expected += float(state.reactivation[dormant].sum())
    # Then they come back at their own daily rates, which average the configured rate
    assert abs(returned - expected) < 4 * np.sqrt(expected), (returned, expected)
    assert expected > 150  # enough returns to tell a rate 30% off
    assert state.reactivation.mean() == pytest.approx(REACTIVATION_RATE[returns], rel=0.05)


def test_the_oracle_equals_how_often_re_simulated_futures_have_no_purchase() -> None:
    # Given a world's state on day 120, and the oracle's forecast for a few customers, dormant ones included
    state, _ = _run(PURCHASES, 120)
    population = np.flatnonzero(state.signup_day < state.day)
    chosen = np.concatenate([population[state.dormant[population]][:8], population[~state.dormant[population]][:24]])
    forecast = no_purchase_probability(PURCHASES, state, state.day, chosen)
    # When the same state is continued over the horizon many times, each with its own random future
    replicas = 1_500
    none = np.zeros(chosen.shape[0])
    for replica in range(replicas):
        future = _restored(state, rng_seed=replica)
        events = purchase_simulator.simulate(PURCHASES, future, PURCHASES.horizon_days, with_oracle=False).events
        none += ~np.isin(chosen, events.user_index)
    frequency = none / replicas
    # Then each customer's forecast is within Monte Carlo error of their frequency of no purchase
    error = np.sqrt(np.clip(forecast * (1 - forecast), 1e-4, None) / replicas)
    assert np.all(np.abs(forecast - frequency) < 4.5 * error + 1e-3), np.c_[forecast, frequency]
    # And the customers range from near-certain buyers to near-certain silence, with many in between
    assert forecast.min() < 0.1 and forecast.max() > 0.9
    assert ((forecast > 0.1) & (forecast < 0.9)).sum() >= 8


def test_stored_configs_from_before_kinds_load_as_subscription_worlds() -> None:
    stored = WorldConfig(users=10, days=5).to_json()
    del stored["kind"], stored["returns"]
    config = WorldConfig.from_json(stored)
    assert (config.kind, config.returns) == ("subscription", "rare")
    state = kinds.new_world(config)
    assert isinstance(state, WorldState)
    assert isinstance(kinds.state_from_bytes(config, state.to_bytes(), state.scalars()), WorldState)


def test_a_customers_gaps_are_as_regular_as_their_erlang_phases_make_them() -> None:
    # Given steady customers (acquired in the first month, rate above 1/20 a day, not fading, still active) over
    # 250 days far from the December season
    config = WorldConfig(users=6_000, days=250, seed=3, kind="purchases")
    state, sim = _run(config, 250)
    steady = (state.signup_day < 30) & (state.rate > 1 / 20) & (state.fade_start > 250) & ~state.dormant
    events = sim.events
    keep = steady[events.user_index]
    start_us = np.datetime64(config.start_date, "us").astype(np.int64)
    who, days = events.user_index[keep], (events.timestamp_us[keep] - start_us) / world_model.MICROS_PER_DAY
    order = np.lexsort((days, who))
    who, days = who[order], days[order]
    same = who[1:] == who[:-1]
    # When each gap between a customer's purchases is measured in the purchases they were expected to make in it
    # (their rate times the weekly pattern's days: the gap's "operational time", Erlang(k, k) by construction),
    # counting only gaps starting before day 150: every one of them ends within the 250 days, none is cut short
    calendar, _ = purchase_model.calendar_effects(config, np.arange(250, dtype=np.int64))
    expected_by = np.concatenate([[0.0], np.cumsum(calendar)])  # calendar days before each day, rate-weighted
    day = np.floor(days).astype(np.int64)
    same &= day[:-1] < 150
    gap_customer = who[1:][same]
    gaps = (expected_by[day[1:]] - expected_by[day[:-1]])[same] * state.rate[gap_customer]
    # Then each number of phases k gives gaps of mean 1 and coefficient of variation 1 / sqrt(k), not Poisson's 1
    for k in (2, 3, 4):
        of_k = gaps[state.phases[gap_customer] == k]
        assert of_k.shape[0] > 1_000
        assert of_k.mean() == pytest.approx(1.0, rel=0.05)
        assert of_k.std() / of_k.mean() == pytest.approx(1 / np.sqrt(k), rel=0.06), k
