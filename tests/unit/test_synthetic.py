"""The simulator on its own: determinism, continuation, churn behaviour, drift, and the oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churn_platform.data.synthetic import oracle, simulator, world_model
from churn_platform.data.synthetic.world_model import EVENT_CODE, WorldConfig, WorldState


def _run(config: WorldConfig, days: int | None = None) -> tuple[WorldState, world_model.SimulatedDays]:
    state = simulator.new_world(config)
    return state, simulator.simulate(config, state, config.days if days is None else days)


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
    state = simulator.new_world(config)
    first = simulator.simulate(config, state, 40)
    restored = WorldState.from_bytes(state.to_bytes(), state.scalars())
    second = simulator.simulate(config, restored, 10)
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
    assert 0.08 <= labels.mean() <= 0.15


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
    start_us = np.datetime64(config.start_date, "us").astype(np.int64)  # microseconds since the epoch
    signup_us = start_us + (state.signup_day * 86_400 + state.signup_second) * 1_000_000
    assert np.all(sim.events.timestamp_us >= signup_us[sim.events.user_index])


def test_oracle_ranks_churners_well_but_not_perfectly(default_world) -> None:  # type: ignore[no-untyped-def]
    config, state, sim = default_world
    labels, probability = _labels(config, state, sim)
    auc = roc_auc_score(labels, probability)
    assert 0.70 <= auc <= 0.90, "predictable, not trivially so"
    # And calibrated: the forecast's mean is within a tenth of the realised rate
    assert abs(probability.mean() - labels.mean()) < labels.mean() / 10


def test_the_oracle_matches_the_simulators_own_churn_frequencies() -> None:
    # Given a world's state on day 120, and the oracle's forecast for its active users
    config = WorldConfig(users=2_000, seed=13)
    state = simulator.new_world(config)
    simulator.simulate(config, state, 120, with_oracle=False)
    active = np.flatnonzero((state.signup_day < state.day) & (state.churn_day < 0))
    forecast = oracle.oracle_churn_probability(config, state, state.day, active)
    # When the same state is continued over the horizon 50 times, each with its own random future
    churned = np.zeros(active.shape[0])
    for replica in range(50):
        scalars = {**state.scalars(), "rng_state": np.random.default_rng(replica).bit_generator.state}
        future = WorldState.from_bytes(state.to_bytes(), scalars)
        simulator.simulate(config, future, config.horizon_days, with_oracle=False)
        churned += future.churn_day[active] >= 0
    frequency = churned / 50
    # Then the forecast agrees with how often the simulator churns each user: overall and from low to high risk
    assert abs(forecast.mean() - frequency.mean()) < 0.05 * frequency.mean()
    quintile = np.searchsorted(np.quantile(forecast, [0.2, 0.4, 0.6, 0.8]), forecast)
    for q in range(5):
        in_q = quintile == q
        assert abs(forecast[in_q].mean() - frequency[in_q].mean()) < 0.15 * frequency[in_q].mean(), q


def _window_counts(config: WorldConfig, state: WorldState, events: world_model.DayEvents) -> np.ndarray:
    """Per event type, user and day d: that user's events of the type on the days before d (cumulative)."""
    epoch_day = (np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)
    day = events.timestamp_us // world_model.MICROS_PER_DAY - epoch_day
    daily = np.zeros((len(world_model.EVENT_TYPES), state.n_users, config.days + 1))
    np.add.at(daily, (events.event_code, events.user_index, day + 1), 1)
    return np.cumsum(daily, axis=2)


def test_recent_behaviour_reveals_nearly_all_the_oracle_knows() -> None:
    # Given a world, and a logistic regression on each user's event counts over the last 7 and 30 days and
    # tenure, trained on earlier snapshots and tested on the last 4 labelled weeks (a horizon apart)
    config = WorldConfig(users=3_000, seed=7)
    state, sim = _run(config)
    cumulative = _window_counts(config, state, sim.events)[
        [EVENT_CODE[t] for t in ("login", "session", "feature_use", "support_ticket", "payment_failed")]
    ]
    last_labelled = config.days - config.horizon_days
    test_days = range(last_labelled - 27, last_labelled + 1)

    def snapshots(days: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [o for o in sim.oracle if o.day in days]
        counts = [
            np.log1p(np.vstack([cumulative[:, o.user_index, o.day] - cumulative[:, o.user_index, o.day - w]
                                for w in (7, 30)]).T)
            for o in rows
        ]  # fmt: skip
        tenure = [np.log1p(o.day - state.signup_day[o.user_index]) for o in rows]
        churn = [state.churn_day[o.user_index] for o in rows]
        labels = [(c >= o.day) & (c < o.day + config.horizon_days) for c, o in zip(churn, rows, strict=True)]
        features = np.column_stack([np.vstack(counts), np.concatenate(tenure)])
        return features, np.concatenate(labels), np.concatenate([o.p_churn for o in rows])

    x_train, y_train, _ = snapshots(range(30, test_days[0] - config.horizon_days, 2))
    x_test, y_test, oracle_test = snapshots(test_days)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000)).fit(x_train, y_train)
    # When both rank the test snapshots
    model_auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    oracle_auc = roc_auc_score(y_test, oracle_test)
    # Then the events reveal nearly everything the simulator's state does: churn follows visible behaviour
    assert model_auc >= 0.95 * oracle_auc, (model_auc, oracle_auc)
    assert oracle_auc < 0.9, "and churn stays uncertain: no label leaks into the state"


def test_drift_shifts_behaviour_that_a_drift_report_can_see() -> None:
    drift_at = 120
    config = WorldConfig(users=1_000, days=240, seed=5, drift_at=drift_at)
    _, sim = _run(config)
    events = sim.events
    day = (events.timestamp_us // world_model.MICROS_PER_DAY) - (
        np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")
    ).astype(np.int64)
    logins = events.event_code == EVENT_CODE["login"]
    sessions = events.event_code == EVENT_CODE["session"]
    before, after = day < drift_at, day >= drift_at
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
    state = simulator.new_world(config)
    simulator.simulate(config, state, 90, with_oracle=False)
    snapshots = []
    for _ in range(3):
        active = np.flatnonzero((state.signup_day < state.day) & (state.churn_day < 0))
        new_rules = oracle.oracle_churn_probability(config, state, state.day, active)
        old_rules = oracle.oracle_churn_probability(undrifted, state, state.day, active)
        snapshots.append((state.day, active, new_rules, old_rules))
        simulator.simulate(config, state, 15, with_oracle=False)
    simulator.simulate(config, state, config.horizon_days, with_oracle=False)
    # When both are scored against the churn that then happened
    labels = np.concatenate(
        [(state.churn_day[a] >= d) & (state.churn_day[a] < d + config.horizon_days) for d, a, _, _ in snapshots]
    )
    auc_new = roc_auc_score(labels, np.concatenate([s[2] for s in snapshots]))
    auc_old = roc_auc_score(labels, np.concatenate([s[3] for s in snapshots]))
    # Then the relationship changed: the old rules rank churners clearly worse (an old model degrades)
    assert auc_new > auc_old + 0.02, (auc_new, auc_old)
