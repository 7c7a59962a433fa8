"""Censored outcomes completed by a discrete-time hazard model (training.censoring), on worlds whose truth is known:
customers buy at rates their features reveal, and some have silently stopped."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.features.catalog import Catalog, DaysSinceLastEvent, EventCount
from churn_platform.features.training_sets import TrainingSet
from churn_platform.training.censoring import DecidingEvents, Periods, impute_censored
from churn_platform.training.split import training_split
from churn_platform.training.trainer import TrainConfig, train_model, with_censored_snapshots

HORIZON = 90


def _world(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, recency, days to the next purchase with no horizon, alive): a purchase rate the features show,
    exponential waiting times, and a third of the customers gone (they never buy again)."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(-3.0, 0.8, rows))  # purchases a day
    alive = rng.random(rows) > 1 / 3
    recency = np.where(alive, rng.exponential(1 / rate), rng.exponential(1 / rate) + rng.uniform(0, 120, rows))
    count_90d = rng.poisson(rate * 90 * np.where(alive, 1.0, 0.3))
    waiting = np.where(alive, rng.exponential(1 / rate), np.inf)
    return np.column_stack([count_90d, recency]).astype(np.float64), recency, waiting, alive


def test_periods_cut_the_horizon_into_thirty_days_and_a_remainder() -> None:
    assert Periods.of(180).starts.tolist() == [0, 30, 60, 90, 120, 150]
    periods = Periods.of(45)
    assert (periods.starts.tolist(), periods.ends.tolist()) == ([0, 30], [30, 45])
    assert Periods.of(30).ends.tolist() == [30]


@pytest.mark.parametrize("contractual", [False, True])
def test_censored_rows_keep_what_the_cut_saw_and_complete_the_rest_from_the_hazard(contractual: bool) -> None:
    x, recency, waiting, _ = _world(30_000, seed=3)
    decided_after = np.where(waiting < HORIZON, waiting, np.nan)
    rng = np.random.default_rng(4)
    # Two thirds fully observed; a third censored somewhere inside the horizon.
    censored = rng.random(len(x)) < 1 / 3
    observed = np.where(censored, rng.uniform(1, HORIZON - 1, len(x)), float(HORIZON))

    imputed = impute_censored(
        x, recency, decided_after, observed, horizon_days=HORIZON, contractual=contractual, censored=censored, seed=7
    )

    decided_by_cut = ~np.isnan(decided_after[censored]) & (decided_after[censored] < observed[censored])
    assert (imputed.decided == decided_by_cut).all()
    # What the cut saw is kept: a purchase decides "no churn" (a cancel would decide "churn" when contractual).
    assert (imputed.labels[decided_by_cut] == int(contractual)).all()
    # The rest are completed: the truth is "no deciding event within H".
    truth = np.isnan(decided_after[censored])
    positive = ~truth if contractual else truth
    undecided = ~decided_by_cut
    assert roc_auc_score(positive[undecided], imputed.p_positive[undecided]) > 0.75
    assert imputed.labels[undecided].mean() == pytest.approx(positive[undecided].mean(), abs=0.03)
    assert imputed.p_positive[undecided].mean() == pytest.approx(positive[undecided].mean(), abs=0.03)


def test_a_longer_silence_before_the_cut_makes_churn_likelier() -> None:
    x, recency, waiting, _ = _world(30_000, seed=5)
    decided_after = np.where(waiting < HORIZON, waiting, np.nan)
    probe = np.repeat(x[:1], 4, axis=0)
    rows = np.vstack([x, probe])
    observed = np.concatenate([np.full(len(x), float(HORIZON)), [5.0, 30.0, 60.0, 85.0]])
    undecided = np.concatenate([decided_after, np.full(4, np.nan)])
    censored = np.concatenate([np.zeros(len(x), dtype=bool), np.ones(4, dtype=bool)])

    imputed = impute_censored(
        rows,
        np.concatenate([recency, recency[:1].repeat(4)]),
        undecided,
        observed,
        horizon_days=HORIZON,
        contractual=False,
        censored=censored,
        seed=7,
    )

    # The same customer, silent through 5, 30, 60 and 85 of the 90 days: each step makes "silent through 90" likelier.
    assert np.all(np.diff(imputed.p_positive) > 0)


def test_a_window_without_any_deciding_event_is_refused_with_the_setting_to_turn_it_off() -> None:
    x, recency, _, _ = _world(100, seed=1)
    with pytest.raises(ValueError, match="CHURN_TRAIN_CENSORED=false"):
        impute_censored(
            x,
            recency,
            np.full(len(x), np.nan),
            np.full(len(x), float(HORIZON)),
            horizon_days=HORIZON,
            contractual=False,
            censored=np.zeros(len(x), dtype=bool),
            seed=7,
        )


CATALOG = Catalog("churn_test", (EventCount("purchase", 90), DaysSinceLastEvent()))
FIRST = date(2025, 1, 1)


def _weekly_snapshots(users: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """28 weekly snapshots of `users` customers of `_world`, labelled by the truth; and each row's waiting time."""
    stamps = [pd.Timestamp(FIRST + timedelta(days=d), tz="UTC") for d in range(0, 196, 7)]
    x, recency, waiting, _ = _world(users * len(stamps), seed=seed)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(users), len(stamps)).astype(str),
            "event_timestamp": stamps * users,
            "purchase_count_90d": x[:, 0],
            "days_since_last_event": recency,
            "churned": waiting >= HORIZON,
        }
    )
    return frame, waiting


def test_the_trainer_adds_the_snapshots_between_its_window_and_the_cut_labelled_as_the_cut_knew_them() -> None:
    frame, waiting = _weekly_snapshots(300, seed=9)
    decided = pd.Series(
        np.where(waiting < HORIZON, waiting, np.nan),
        index=pd.MultiIndex.from_frame(frame[["user_id", "event_timestamp"]]),
    )
    asked: list[pd.DataFrame] = []

    def lookup(rows: pd.DataFrame) -> np.ndarray:
        asked.append(rows)
        return decided.loc[pd.MultiIndex.from_frame(rows)].to_numpy()

    config = TrainConfig(seed=3, test_days=21, validation="folds", folds=3, refit=False)
    training = TrainingSet(frame, CATALOG.name, "hash", HORIZON)
    trained = train_model(training, CATALOG, config, deciding=DecidingEvents(lookup, contractual=False))
    without = train_model(training, CATALOG, replace(config, censored=False))

    split = trained.split
    snapshot_days = frame["event_timestamp"].dt.date
    between = (snapshot_days > split.train.last) & (snapshot_days < split.cut)
    assert trained.rows["censored"] == between.sum() > 0
    assert trained.rows["train"] == without.rows["train"] == (snapshot_days <= split.train.last).sum()
    assert "censored" not in without.rows and without.censoring == {}
    # Only rows before the cut were asked about, and the completed outcomes rank the true ones.
    assert (asked[0]["event_timestamp"].dt.date < split.cut).all()
    assert trained.censoring["censored_completion_roc_auc"] > 0.75
    assert trained.metrics()["censored_rows"] == between.sum()


def test_outcomes_after_the_cut_change_nothing() -> None:
    x, recency, waiting, _ = _world(20_000, seed=11)
    decided_after = np.where(waiting < HORIZON, waiting, np.nan)
    rng = np.random.default_rng(12)
    censored = rng.random(len(x)) < 1 / 2
    observed = np.where(censored, rng.uniform(1, HORIZON - 1, len(x)), float(HORIZON))
    after_cut = censored & ~(decided_after < observed)
    # What the data says after the cut: the deciding event at another time after it, or none within H.
    moved = decided_after.copy()
    moved[after_cut] = np.where(np.isnan(decided_after[after_cut]), observed[after_cut] + 0.5, np.nan)

    def imputed(decided: np.ndarray) -> np.ndarray:
        return impute_censored(
            x, recency, decided, observed, horizon_days=HORIZON, contractual=False, censored=censored, seed=7
        ).p_positive

    np.testing.assert_array_equal(imputed(decided_after), imputed(moved))


def test_a_deciding_event_counts_when_it_is_before_the_cut_not_at_it_and_the_cut_decides_not_the_label() -> None:
    frame, _ = _weekly_snapshots(200, seed=13)
    split = training_split(
        frame["event_timestamp"], validation="folds", gap_days=HORIZON, test_days=21, validation_days=1
    )
    cut = pd.Timestamp(split.cut, tz="UTC")
    day = frame["event_timestamp"].dt.date
    between = ((day > split.train.last) & (day < split.cut)).to_numpy()
    frame.loc[between, "churned"] = True  # what the data knows now: every late snapshot churned; the cut knew better
    to_cut = ((cut - frame["event_timestamp"]) / pd.Timedelta(days=1)).to_numpy()
    # Between rows: a third decide half a day before the cut, a third exactly at it, a third never.
    kind = np.arange(len(frame)) % 3
    decided_after = np.where(kind == 0, to_cut - 0.5, np.where(kind == 1, to_cut, np.nan))
    decided_after[~between] = np.where(np.arange((~between).sum()) % 2 == 0, 5.0, np.nan)
    decided = pd.Series(decided_after, index=pd.MultiIndex.from_frame(frame[["user_id", "event_timestamp"]]))

    def lookup(rows: pd.DataFrame) -> np.ndarray:
        return decided.loc[pd.MultiIndex.from_frame(rows)].to_numpy()

    train = frame[(day <= split.train.last).to_numpy()]
    config = TrainConfig(seed=3, test_days=21, validation="folds", folds=3, refit=False)
    extended, figures = with_censored_snapshots(
        frame, split, train, CATALOG, DecidingEvents(lookup, contractual=False), config, HORIZON
    )

    added = extended.iloc[len(train) :]
    kinds = kind[between]
    assert figures["censored_decided_rows"] == (kinds == 0).sum()
    # Bought before the cut: not churned, whatever the data says now.
    assert not added["churned"].to_numpy()[kinds == 0].any()
    # Exactly at the cut is after it: completed, not decided (so some are drawn as churned).
    assert added["churned"].to_numpy()[kinds == 1].any()
