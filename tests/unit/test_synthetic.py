"""The simulator on its own: determinism, continuation, churn behaviour, drift, and the oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.data import oracle, synthetic, world_model
from churn_platform.data.world_model import EVENT_CODE, WorldConfig, WorldState


def _run(config: WorldConfig, days: int | None = None) -> tuple[WorldState, world_model.SimulatedDays]:
    state = synthetic.new_world(config)
    return state, synthetic.simulate(config, state, config.days if days is None else days)


def _labels(config: WorldConfig, state: WorldState, sim: world_model.SimulatedDays) -> tuple[np.ndarray, np.ndarray]:
    """Realised labels (churn in the next H days) and oracle probabilities, for snapshots whose horizon passed."""
    ys, ps = [], []
    for o in sim.oracle:
        if o.day + config.horizon_days > state.day:
            continue
        churn_day = state.churn_day[o.user_index]
        ys.append((churn_day >= o.day) & (churn_day < o.day + config.horizon_days))
        ps.append(o.p_churn)
    return np.concatenate(ys), np.concatenate(ps)


@pytest.fixture(scope="module")
def default_world() -> tuple[WorldConfig, WorldState, world_model.SimulatedDays]:
    config = WorldConfig()
    state, sim = _run(config)
    return config, state, sim


def test_same_seed_gives_the_same_world_and_another_seed_does_not() -> None:
    config = WorldConfig(users=200, days=60, seed=11)
    _, first = _run(config)
    _, second = _run(config)
    _, other = _run(dataclasses.replace(config, seed=12))
    for name in ("user_index", "event_code", "timestamp_us", "seq"):
        np.testing.assert_array_equal(getattr(first.events, name), getattr(second.events, name))
    np.testing.assert_array_equal(first.events.value, second.events.value)
    assert len(first.events) != len(other.events) or not np.array_equal(
        first.events.timestamp_us, other.events.timestamp_us
    )


def test_a_saved_and_restored_world_continues_exactly_as_one_that_never_stopped() -> None:
    config = WorldConfig(users=150, days=40, seed=3)
    # Given one world run for 50 days straight (10 days past its initial period: arrivals continue)
    _, straight = _run(config, days=50)
    # And the same world run 40 days, saved to bytes, restored, and run 10 more
    state = synthetic.new_world(config)
    first = synthetic.simulate(config, state, 40)
    restored = WorldState.from_bytes(state.to_bytes(), state.scalars())
    second = synthetic.simulate(config, restored, 10)
    # Then the events are identical
    joined = world_model.DayEvents.concat([first.events, second.events])
    np.testing.assert_array_equal(joined.timestamp_us, straight.events.timestamp_us)
    np.testing.assert_array_equal(joined.user_index, straight.events.user_index)
    assert restored.n_users > config.users  # new users kept arriving after the initial period


def test_default_world_has_the_specified_size_and_churn_rate(default_world) -> None:  # type: ignore[no-untyped-def]
    config, state, sim = default_world
    assert state.n_users == 1_000
    assert 1.2e6 <= len(sim.events) <= 1.6e6, "about 1.4M events"
    labels, _ = _labels(config, state, sim)
    assert 0.05 <= labels.mean() <= 0.15


def test_a_churned_user_emits_cancel_and_nothing_after_it(default_world) -> None:  # type: ignore[no-untyped-def]
    _, state, sim = default_world
    events = sim.events
    cancels = events.event_code == EVENT_CODE["cancel"]
    assert cancels.sum() == (state.churn_day >= 0).sum()
    cancel_time = np.full(state.n_users, np.iinfo(np.int64).max)
    cancel_time[events.user_index[cancels]] = events.timestamp_us[cancels]
    last_time = np.zeros(state.n_users, dtype=np.int64)
    np.maximum.at(last_time, events.user_index, events.timestamp_us)
    churned = state.churn_day >= 0
    assert np.all(last_time[churned] == cancel_time[churned])


def test_no_event_before_signup(default_world) -> None:  # type: ignore[no-untyped-def]
    config, state, sim = default_world
    start_us = (np.datetime64(config.start_date, "us") - np.datetime64("1970-01-01", "us")).astype(np.int64)
    signup_us = start_us + (state.signup_day * 86_400 + state.signup_second) * 1_000_000
    assert np.all(sim.events.timestamp_us >= signup_us[sim.events.user_index])


def test_oracle_ranks_churners_well_but_not_perfectly(default_world) -> None:  # type: ignore[no-untyped-def]
    config, state, sim = default_world
    labels, probability = _labels(config, state, sim)
    auc = roc_auc_score(labels, probability)
    assert 0.70 <= auc <= 0.90, "predictable, not trivially so"
    # And roughly calibrated: the forecast's mean is within a third of the realised rate
    assert abs(probability.mean() - labels.mean()) < labels.mean() / 3


def test_drift_shifts_behaviour_that_a_drift_report_can_see() -> None:
    config = WorldConfig(users=1_000, days=240, seed=5, drift_at=120)
    _, sim = _run(config)
    events = sim.events
    day = (events.timestamp_us // world_model.MICROS_PER_DAY) - (
        np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")
    ).astype(np.int64)
    logins = events.event_code == EVENT_CODE["login"]
    sessions = events.event_code == EVENT_CODE["session"]
    before, after = day < config.drift_at, day >= config.drift_at
    logins_per_session_before = (logins & before).sum() / (sessions & before).sum()
    logins_per_session_after = (logins & after).sum() / (sessions & after).sum()
    assert logins_per_session_after > 1.4 * logins_per_session_before  # covariate shift
    minutes_before = np.nanmedian(events.value[sessions & before])
    minutes_after = np.nanmedian(events.value[sessions & after])
    assert minutes_after < 0.75 * minutes_before


def test_after_drift_the_old_relationship_predicts_churn_worse_than_the_new_one() -> None:
    # Given a drifted world, and at several snapshot days after the drift the probabilities computed by the
    # world's real (drifted) rules and by the pre-drift rules applied to the very same user states
    config = WorldConfig(users=4_000, days=150, seed=9, drift_at=60)
    undrifted = dataclasses.replace(config, drift_at=None)
    state = synthetic.new_world(config)
    synthetic.simulate(config, state, 90, with_oracle=False)
    snapshots = []
    for _ in range(3):
        active = np.flatnonzero((state.signup_day < state.day) & (state.churn_day < 0))
        new_rules = oracle.oracle_churn_probability(config, state, state.day, active)
        old_rules = oracle.oracle_churn_probability(undrifted, state, state.day, active)
        snapshots.append((state.day, active, new_rules, old_rules))
        synthetic.simulate(config, state, 15, with_oracle=False)
    synthetic.simulate(config, state, config.horizon_days, with_oracle=False)
    # When both are scored against the churn that then happened
    labels = np.concatenate(
        [(state.churn_day[a] >= d) & (state.churn_day[a] < d + config.horizon_days) for d, a, _, _ in snapshots]
    )
    auc_new = roc_auc_score(labels, np.concatenate([s[2] for s in snapshots]))
    auc_old = roc_auc_score(labels, np.concatenate([s[3] for s in snapshots]))
    # Then the relationship changed: the old rules rank churners clearly worse (an old model degrades)
    assert auc_new > auc_old + 0.02, (auc_new, auc_old)
