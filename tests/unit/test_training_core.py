"""The pure parts of training: time splits, the feature encoder, metrics and candidate determinism."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from churn_platform.model.candidates import fit_candidate
from churn_platform.model.encoding import FeatureEncoder
from churn_platform.training.evaluation import best_f1_threshold, expected_calibration_error, top_share_metrics
from churn_platform.training.split import SplitError, time_split


def _days(first: date, count: int) -> pd.Series:
    return pd.Series(pd.to_datetime([first + timedelta(days=i) for i in range(count)], utc=True))


def test_split_leaves_a_full_horizon_between_train_validation_and_test() -> None:
    split = time_split(_days(date(2025, 1, 1), 200), gap_days=30, test_days=14, validation_days=21)

    assert split.test.last == date(2025, 7, 19) and (split.test.last - split.test.first).days == 13
    assert (split.test.first - split.validation.last).days - 1 == 30
    assert (split.validation.first - split.train.last).days - 1 == 30
    assert (split.validation.last - split.validation.first).days == 20
    train, validation, test = split.masks(_days(date(2025, 1, 1), 200))
    assert not (train & validation).any() and not (validation & test).any()
    assert train.sum() + validation.sum() + test.sum() == 200 - 60


def test_split_of_a_short_history_names_what_it_needs() -> None:
    with pytest.raises(SplitError, match=r"cover 60 days .* `time` needs 89 \(14 test \+ 14 validation \+ 2 x 30 gap"):
        time_split(_days(date(2025, 1, 1), 60), gap_days=30, test_days=14, validation_days=14)


def test_naive_timestamps_are_taken_as_utc() -> None:
    naive = pd.Series(pd.to_datetime(["2025-03-01 00:00", "2025-03-02 00:00", "2025-03-03 00:00"]))
    split = time_split(naive, gap_days=0, test_days=1, validation_days=1)
    assert (split.train.last, split.validation.first, split.test.first) == (
        date(2025, 3, 1),
        date(2025, 3, 2),
        date(2025, 3, 3),
    )


def test_empty_windows_are_refused() -> None:
    with pytest.raises(SplitError, match="at least one day"):
        time_split(_days(date(2025, 1, 1), 200), gap_days=30, test_days=14, validation_days=0)


def test_encoder_gives_the_same_matrix_for_a_frame_and_for_feature_dicts() -> None:
    train = pd.DataFrame({"logins": [1, 2, None], "trend": [0.5, None, 1.5], "plan": ["basic", "premium", None]})
    encoder = FeatureEncoder(["logins", "trend"], ["plan"]).fit(train)
    scoring = pd.DataFrame({"logins": [3, None], "trend": [1.0, 2.0], "plan": ["premium", "enterprise"]})

    from_frame = encoder.transform(scoring)
    from_rows = encoder.transform_rows(scoring.astype(object).where(scoring.notna(), None).to_dict("records"))

    np.testing.assert_array_equal(from_frame, from_rows)
    assert encoder.output_names_ == ["logins", "trend", "plan=basic", "plan=premium"]
    assert from_frame[1, 2:].tolist() == [0.0, 0.0]  # an unseen category is all zeros
    assert np.isnan(from_frame[1, 0])


def test_best_f1_threshold_is_the_brute_force_best() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    threshold = best_f1_threshold(y, p)
    brute = max(f1_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert f1_score(y, (p >= threshold).astype(int)) == pytest.approx(brute)


def test_calibration_error_and_lift_on_known_cases() -> None:
    p = np.repeat([0.1, 0.5], 1000)
    y = np.concatenate([np.tile([1] + [0] * 9, 100), np.tile([1, 0], 500)])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(2000, 0.9)) == pytest.approx(0.6)

    scores = np.arange(100, dtype=float)
    labels = (scores >= 90).astype(np.int64)  # the top 10% are all the positives
    lift, recall = top_share_metrics(labels, scores)
    assert (lift, recall) == (pytest.approx(10.0), pytest.approx(1.0))


@pytest.mark.parametrize("name", ["logistic_regression", "gradient_boosting"])
def test_a_candidate_fitted_twice_gives_identical_probabilities(name: str) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.poisson(3, 3000).astype(float)})
    y = (rng.random(3000) < 1 / (1 + np.exp(-(frame["a"] - 2)))).astype(np.int64)
    encoder = FeatureEncoder(["a", "b"], []).fit(frame)
    x = encoder.transform(frame)

    def fitted() -> np.ndarray:
        candidate = fit_candidate(name, encoder, x[:2000], y[:2000], x[2000:], y[2000:], seed=11)
        return candidate.model.predict_proba(frame.iloc[2000:])[:, 1]

    first, second = fitted(), fitted()
    np.testing.assert_array_equal(first, second)
    assert abs(first.mean() - y[2000:].mean()) < 0.05  # calibrated on validation: the mean matches the base rate
