"""The candidate models: a scaled logistic regression and a gradient-boosted model, both weighting the rare churn
class up, then calibrated on the validation window so their probabilities mean what they say."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from churn_platform.model.encoding import FeatureEncoder, FloatMatrix

Labels = npt.NDArray[np.int64]
Folds = Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]  # (rows fitted on, rows scored) per fold


def signed_log1p(x: FloatMatrix) -> FloatMatrix:
    """log(1 + |x|) with x's sign: counts and sums are heavy-tailed; a linear model sees them on a log scale."""
    return np.sign(x) * np.log1p(np.abs(x))  # type: ignore[no-any-return]


def logistic_regression(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("log", FunctionTransformer(signed_log1p)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(class_weight="balanced", C=1.0, max_iter=2_000, random_state=seed)),
        ]
    )


def gradient_boosting(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        class_weight="balanced",
        learning_rate=0.05,
        max_iter=300,
        max_leaf_nodes=31,
        min_samples_leaf=200,
        l2_regularization=1.0,
        early_stopping=False,  # a fixed number of rounds: no random inner split, the same model every run
        random_state=seed,
    )


CANDIDATES: dict[str, Callable[[int], Any]] = {
    "logistic_regression": logistic_regression,
    "gradient_boosting": gradient_boosting,
}


@dataclass
class FittedCandidate:
    """A candidate fitted on the training window and calibrated on the validation window (or on out-of-fold
    predictions of the training window)."""

    name: str
    model: Pipeline  # encode -> calibrated classifier; takes a DataFrame of features
    validation_scores: npt.NDArray[np.float64]  # uncalibrated, for ranking

    @property
    def encoder(self) -> FeatureEncoder:
        encoder: FeatureEncoder = self.model.named_steps["encode"]
        return encoder

    @property
    def classifier(self) -> ClassifierMixin:
        classifier: ClassifierMixin = self.model.named_steps["classify"]
        return classifier

    def calibrated(self, decision_scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """P(churn) the model gives rows with these (uncalibrated) decision scores: its one sigmoid applied."""
        calibrator = self.classifier.calibrated_classifiers_[0].calibrators[0]  # type: ignore[attr-defined]
        return np.asarray(calibrator.predict(decision_scores), dtype=np.float64)


def fit_candidate(
    name: str,
    encoder: FeatureEncoder,
    x_train: FloatMatrix,
    y_train: Labels,
    x_validation: FloatMatrix,
    y_validation: Labels,
    seed: int,
) -> FittedCandidate:
    """Fit on the training window; calibrate (Platt scaling, monotone so ranking is kept) on validation."""
    estimator = CANDIDATES[name](seed)
    estimator.fit(x_train, y_train)
    scores = estimator.predict_proba(x_validation)[:, 1]
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method="sigmoid")
    calibrated.fit(x_validation, y_validation)
    return FittedCandidate(name, Pipeline([("encode", encoder), ("classify", calibrated)]), scores)


def fit_candidate_on_folds(
    name: str,
    encoder: FeatureEncoder,
    x_train: FloatMatrix,
    y_train: Labels,
    folds: Folds,
    out_of_fold: npt.NDArray[np.float64],
    seed: int,
) -> FittedCandidate:
    """Fit on the whole training window; calibrate (Platt) on the out-of-fold decision scores of `folds`.

    scikit-learn's CalibratedClassifierCV with ensemble=False does exactly that (cross_val_predict over the folds,
    one sigmoid on those predictions, then one fit on all rows): one estimator and one sigmoid, the shape that
    compiled scoring and exact explanations read. An ensemble of K fold models would be K times slower to serve
    and has no exact additive explanation. The cost is K + 1 fits. `out_of_fold` are the candidate's decision
    scores over the same folds (training.folds), kept as its validation scores.
    """
    return FittedCandidate(name, calibrated_on_folds(name, encoder, x_train, y_train, folds, seed), out_of_fold)


def calibrated_on_folds(
    name: str, encoder: FeatureEncoder, x: FloatMatrix, y: Labels, folds: Folds, seed: int
) -> Pipeline:
    """The candidate fitted on all rows, with one sigmoid fitted on its out-of-fold decision scores (K + 1 fits)."""
    calibrated = CalibratedClassifierCV(CANDIDATES[name](seed), method="sigmoid", cv=list(folds), ensemble=False)
    calibrated.fit(x, y)
    return Pipeline([("encode", encoder), ("classify", calibrated)])
