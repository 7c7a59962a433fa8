"""The validation designs of a training split: the arithmetic of `time` and `folds`, what `auto` picks, the error
that says which option makes a history trainable, user folds, and that no label used in training looks into the
test window."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn_platform.training.folds import FoldError, user_folds
from churn_platform.training.split import SplitError, training_split


def _days(first: date, count: int, every: int = 1) -> pd.Series:
    return pd.Series(pd.to_datetime([first + timedelta(days=i) for i in range(0, count, every)], utc=True))


def test_folds_design_needs_one_gap_and_trains_on_every_day_a_horizon_before_test() -> None:
    split = training_split(
        _days(date(2025, 1, 1), 300), validation="folds", gap_days=180, test_days=28, validation_days=28
    )

    assert split.design == "folds" and split.validation is None
    assert (split.test.first, split.test.last) == (date(2025, 9, 30), date(2025, 10, 27))
    assert split.train == type(split.train)(date(2025, 1, 1), date(2025, 4, 2))
    assert (split.test.first - split.train.last).days - 1 == 180  # exactly one gap of H
    assert split.outcomes_seen_through == split.test.first - timedelta(days=1)
    train, validation, test = split.masks(_days(date(2025, 1, 1), 300))
    assert not validation.any() and train.sum() == 92 and test.sum() == 28


def test_folds_fits_exactly_test_plus_gap_plus_one_days() -> None:
    fits = training_split(_days(date(2025, 1, 1), 209), validation="folds", gap_days=180, test_days=28,
                          validation_days=28)  # fmt: skip
    assert fits.train.first == fits.train.last == date(2025, 1, 1)
    with pytest.raises(SplitError, match=r"cover 208 days"):
        training_split(_days(date(2025, 1, 1), 208), validation="folds", gap_days=180, test_days=28,
                       validation_days=28)  # fmt: skip


def test_time_design_error_names_both_designs_with_numbers_and_the_setting() -> None:
    with pytest.raises(SplitError) as refused:
        training_split(_days(date(2025, 1, 1), 300), validation="time", gap_days=180, test_days=28, validation_days=28)

    assert str(refused.value) == (
        "labelled snapshots cover 300 days (2025-01-01..2025-10-27); `time` needs 417 (28 test + 28 validation"
        " + 2 x 180 gap + 1); `folds` needs 209 (28 test + 180 gap + 1): set CHURN_TRAIN_VALIDATION=folds (or auto)"
    )


def test_when_even_folds_cannot_fit_the_error_says_which_test_window_or_horizon_would() -> None:
    with pytest.raises(SplitError) as refused:
        training_split(_days(date(2025, 1, 1), 150), validation="auto", gap_days=180, test_days=28, validation_days=28)
    message = str(refused.value)
    assert "cover 150 days" in message and "`time` needs 417" in message and "`folds` needs 209" in message
    # 150 days hold 28 test + a horizon of at most 121 + 1; the gap of 180 alone is longer than the history
    assert "CHURN_LABEL_HORIZON_DAYS=121" in message and "CHURN_TRAIN_TEST_DAYS" not in message

    with pytest.raises(SplitError) as refused:
        training_split(_days(date(2025, 1, 1), 200), validation="time", gap_days=180, test_days=28, validation_days=28)
    message = str(refused.value)
    assert "CHURN_TRAIN_VALIDATION=folds (or auto) fits with a test window of at most 19 days" in message
    assert "CHURN_TRAIN_TEST_DAYS=19" in message and "CHURN_LABEL_HORIZON_DAYS=171" in message


@pytest.mark.parametrize(("covered", "expected"), [(417, "time"), (416, "folds"), (209, "folds")])
def test_auto_takes_time_when_the_history_fits_it_else_folds(covered: int, expected: str) -> None:
    split = training_split(
        _days(date(2025, 1, 1), covered), validation="auto", gap_days=180, test_days=28, validation_days=28
    )
    assert split.design == expected
    assert (split.validation is None) == (expected == "folds")


@settings(max_examples=300, deadline=None)
@given(
    first=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 1, 1)),
    span=st.integers(min_value=1, max_value=900),
    every=st.integers(min_value=1, max_value=14),  # snapshot days one in `every`, as training samples them
    extra=st.sets(st.integers(min_value=0, max_value=900), max_size=20),  # and irregular days besides
    horizon=st.integers(min_value=0, max_value=400),
    test_days=st.integers(min_value=1, max_value=60),
    validation_days=st.integers(min_value=1, max_value=60),
    choice=st.sampled_from(["auto", "time", "folds"]),
)
def test_no_label_used_in_training_looks_into_the_test_window(
    first: date,
    span: int,
    every: int,
    extra: set[int],
    horizon: int,
    test_days: int,
    validation_days: int,
    choice: str,
) -> None:
    days = sorted({first + timedelta(days=o) for o in {*range(0, span, every), *extra}})
    stamps = pd.Series(pd.to_datetime(days, utc=True))
    covered = (days[-1] - days[0]).days + 1
    needs_time = test_days + validation_days + 2 * horizon + 1
    needs_folds = test_days + horizon + 1
    try:
        split = training_split(
            stamps, validation=choice, gap_days=horizon, test_days=test_days, validation_days=validation_days
        )
    except SplitError:
        needed = {"time": needs_time, "folds": needs_folds, "auto": needs_folds}[choice]
        assert covered < needed
        return
    expected = "folds" if choice == "folds" or (choice == "auto" and covered < needs_time) else "time"
    assert split.design == expected
    train, validation, test = split.masks(stamps)
    assert not (train & test).any() and not (validation & test).any() and not (train & validation).any()
    # Test is the latest `test_days` days; nothing after the horizon gap is left out of train (folds) ...
    assert all(d >= days[-1] - timedelta(days=test_days - 1) for d, t in zip(days, test, strict=True) if t)
    label_end = {d: d + timedelta(days=horizon) for d in days}  # a label at d looks at (d, d + H]
    used = [d for d, t, v in zip(days, train, validation, strict=True) if t or v]
    assert all(label_end[d] < split.test.first for d in used)
    assert all(label_end[d] <= split.outcomes_seen_through for d in used)
    if split.validation is not None:  # ... and with a validation window, no training label looks into it
        assert all(label_end[d] < split.validation.first for d, t in zip(days, train, strict=True) if t)
    else:
        assert all(t or s or label_end[d] >= split.test.first for d, t, s in zip(days, train, test, strict=True))


def test_user_folds_never_put_a_user_on_both_sides_and_hold_both_classes() -> None:
    rng = np.random.default_rng(4)
    users = rng.integers(0, 400, 6000)
    labels = (rng.random(6000) < 0.06).astype(np.int64)

    folds = user_folds(users, labels, folds=5, seed=11)

    assert len(folds) == 5
    scored_rows = np.concatenate([scored for _, scored in folds])
    assert sorted(scored_rows.tolist()) == list(range(6000))  # every row is scored exactly once
    for fitted, scored in folds:
        assert not set(users[fitted]) & set(users[scored])
        assert len(np.intersect1d(fitted, scored)) == 0 and len(fitted) + len(scored) == 6000
        assert set(labels[scored]) == {0, 1}
    owner = {}
    for k, (_, scored) in enumerate(folds):
        for user in set(users[scored].tolist()):
            assert owner.setdefault(user, k) == k
    again = user_folds(users, labels, folds=5, seed=11)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))  # the seed decides
    other = user_folds(users, labels, folds=5, seed=12)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_user_folds_deal_churned_users_evenly() -> None:
    users = np.arange(100)
    labels = (users < 10).astype(np.int64)  # ten churned users, one row each

    folds = user_folds(users, labels, folds=5, seed=3)

    assert [int(labels[scored].sum()) for _, scored in folds] == [2, 2, 2, 2, 2]


def test_too_few_users_or_churners_for_the_folds_are_refused_with_the_setting() -> None:
    with pytest.raises(FoldError, match=r"holds 3 users: lower CHURN_TRAIN_FOLDS"):
        user_folds(np.array([1, 1, 2, 3]), np.array([0, 1, 0, 1]), folds=5, seed=1)
    with pytest.raises(FoldError, match=r"one class only .* lower CHURN_TRAIN_FOLDS"):
        user_folds(np.arange(10), (np.arange(10) < 2).astype(np.int64), folds=5, seed=1)
