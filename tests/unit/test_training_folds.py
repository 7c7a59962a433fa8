"""The trainer with the `folds` validation design, end to end on a small synthetic frame (no services): model
choice by user folds, a refit calibrated on out-of-fold scores, the served shape kept, and the refit on every
labelled row that gets registered."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from churn_platform.features.catalog import Catalog, DaysSinceLastEvent, EventCount, UserAttribute
from churn_platform.features.training_sets import TrainingSet
from churn_platform.model.candidates import CANDIDATES, calibrated_on_folds
from churn_platform.model.scoring import compile_scorer
from churn_platform.training.evaluation import best_f1_threshold
from churn_platform.training.folds import user_folds
from churn_platform.training.trainer import TrainConfig, encoder_for, train_model

CATALOG = Catalog("churn_test", (EventCount("login", 7), DaysSinceLastEvent(), UserAttribute("plan")))
FIRST = date(2025, 1, 1)


def _training_set(users: int = 240, days: int = 154, horizon: int = 30, seed: int = 1) -> TrainingSet:
    """Weekly snapshots of `users` whose churn risk is a persistent trait the features reveal, with noise."""
    rng = np.random.default_rng(seed)
    stamps = [pd.Timestamp(FIRST + timedelta(days=d), tz="UTC") for d in range(0, days, 7)]
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(users), len(stamps)), "event_timestamp": stamps * users})
    risk = np.repeat(rng.normal(size=users), len(stamps)) + rng.normal(scale=0.5, size=len(frame))
    frame["login_count_7d"] = rng.poisson(np.exp(1.0 - 0.5 * risk))
    frame["days_since_last_event"] = np.clip(np.round(10 + 6 * risk + rng.normal(scale=3, size=len(frame))), 0, None)
    frame["plan"] = rng.choice(["basic", "premium"], len(frame))
    frame["churned"] = rng.random(len(frame)) < 1 / (1 + np.exp(-(1.5 * risk - 2)))
    return TrainingSet(frame, CATALOG.name, "hash", horizon)


def test_folds_design_trains_on_everything_a_horizon_before_test_and_calibrates_out_of_fold() -> None:
    training = _training_set()
    config = TrainConfig(seed=3, test_days=21, validation_days=21, validation="folds", folds=4, refit=False)

    trained = train_model(training, CATALOG, config)

    frame, split = training.frame, trained.split
    days = frame["event_timestamp"].dt.date
    assert split.design == "folds" and split.validation is None and trained.folds == 4
    assert (split.test.first - split.train.last).days == 31  # one gap of H = 30 days
    assert trained.rows == {
        "train": int((days <= split.train.last).sum()),
        "test": int((days >= split.test.first).sum()),
    }
    assert set(trained.validation) == set(CANDIDATES)
    best_auc = max(values["roc_auc"] for values in trained.validation.values())
    assert trained.validation[trained.candidate]["roc_auc"] == best_auc > 0.7
    # One estimator and one sigmoid: the shape compiled scoring (and exact explanations) read
    classifier = trained.model.named_steps["classify"]
    x_test = trained.model.named_steps["encode"].transform(trained.test_frame)
    scorer = compile_scorer(classifier)
    assert scorer is not None
    np.testing.assert_allclose(scorer(x_test), trained.test_frame["p_model"], rtol=1e-9)
    # Calibrated: on the unseen test window the mean probability is the churn rate, though the classes are weighted
    assert abs(trained.test_frame["p_model"].mean() - trained.test_frame["churned"].mean()) < 0.04
    assert trained.evaluation.roc_auc > trained.baseline_roc_auc - 0.05 and 0 < trained.evaluation.threshold < 1


def test_the_sigmoid_is_fitted_on_out_of_fold_scores_not_on_the_refit_in_sample() -> None:
    training = _training_set(seed=2)
    config = TrainConfig(seed=5, test_days=21, validation_days=21, validation="folds", folds=5,
                         candidates=("gradient_boosting",), refit=False)  # fmt: skip

    trained = train_model(training, CATALOG, config)

    train = training.frame[training.frame["event_timestamp"].dt.date <= trained.split.train.last]
    y = train["churned"].to_numpy(dtype=np.int64)
    x = encoder_for(CATALOG).fit(train).transform(train)
    folds = user_folds(train["user_id"].to_numpy(), y, folds=5, seed=5)
    out_of_fold = cross_val_predict(CANDIDATES["gradient_boosting"](5), x, y, cv=folds, method="decision_function")
    platt = LogisticRegression(C=np.inf).fit(out_of_fold.reshape(-1, 1), y)
    calibrator = trained.model.named_steps["classify"].calibrated_classifiers_[0].calibrators[0]
    # scikit-learn's sigmoid is p = 1 / (1 + exp(a f + b)); a logistic regression's is 1 / (1 + exp(-(w f + c)))
    assert calibrator.a_ == pytest.approx(-platt.coef_[0, 0], rel=0.02)
    assert calibrator.b_ == pytest.approx(-platt.intercept_[0], rel=0.02, abs=0.02)
    # and the decision threshold is the F1-best on those out-of-fold scores, as calibrated
    assert trained.evaluation.threshold == pytest.approx(best_f1_threshold(y, calibrator.predict(out_of_fold)))


def test_auto_falls_back_to_folds_when_the_history_is_too_short_for_a_validation_window() -> None:
    training = _training_set(horizon=60)  # 148 labelled days: `time` needs 21 + 21 + 2 x 60 + 1 = 163
    trained = train_model(training, CATALOG, TrainConfig(seed=3, test_days=21, validation_days=21,
                                                         candidates=("logistic_regression",)))  # fmt: skip
    assert trained.split.design == "folds" and trained.folds == 5

    longer = _training_set(days=175, horizon=60)  # 169 days: `time` fits
    trained = train_model(longer, CATALOG, TrainConfig(seed=3, test_days=21, validation_days=21,
                                                       candidates=("logistic_regression",)))  # fmt: skip
    assert trained.split.design == "time" and trained.folds is None and "validation" in trained.rows


def test_the_registered_model_is_refitted_on_every_labelled_row_and_the_test_figures_are_the_evaluated_ones() -> None:
    training = _training_set(seed=4)
    config = TrainConfig(seed=6, test_days=21, validation_days=21, validation="folds", folds=4,
                         candidates=("logistic_regression",))  # fmt: skip

    trained = train_model(training, CATALOG, config)

    frame, split = training.frame, trained.split
    assert trained.refitted and trained.rows["refit"] == len(frame)
    # The test figures are the model's fitted before the test window, which the refit is not
    evaluated = trained.evaluated_model.predict_proba(trained.test_frame)[:, 1]
    np.testing.assert_allclose(evaluated, trained.test_frame["p_model"], rtol=1e-12)
    assert not np.allclose(trained.model.predict_proba(trained.test_frame)[:, 1], evaluated)
    # The refit is the chosen candidate on all rows (test window included), calibrated on out-of-fold scores
    y = frame["churned"].to_numpy(dtype=np.int64)
    encoder = encoder_for(CATALOG).fit(frame)
    folds = user_folds(frame["user_id"].to_numpy(), y, folds=4, seed=6)
    expected = calibrated_on_folds("logistic_regression", encoder, encoder.transform(frame), y, folds, 6)
    np.testing.assert_allclose(trained.model.predict_proba(frame)[:, 1], expected.predict_proba(frame)[:, 1])
    # and its outcomes reach past the test window: a comparison on those rows must not score it again
    assert trained.outcomes_seen_through == split.test.last + timedelta(days=training.horizon_days)
    assert split.outcomes_seen_through < split.test.first


def test_without_refit_the_registered_model_is_the_evaluated_one() -> None:
    config = TrainConfig(seed=6, test_days=21, validation_days=21, validation="folds", folds=4,
                         candidates=("logistic_regression",), refit=False)  # fmt: skip

    trained = train_model(_training_set(seed=4), CATALOG, config)

    assert trained.model is trained.evaluated_model and not trained.refitted and "refit" not in trained.rows
    assert trained.outcomes_seen_through == trained.split.outcomes_seen_through
