"""The request path's arithmetic: a registered model's calibrated P(churn) in plain numpy.

scikit-learn's `predict_proba` on one row spends about a millisecond in input validation and the layers of
CalibratedClassifierCV -> FrozenEstimator -> Pipeline, and a HistGradientBoostingClassifier walks its trees one
Python call per tree. For the two model shapes training registers, the same numbers come from a few array
operations over parameters read once at load time: the logistic pipeline (median imputation with indicators, an
elementwise transform, standard scaling, the linear decision) and the boosted trees (all trees walked level by
level at once, NaN routed as the trees say). Platt calibration on top: p = 1 / (1 + exp(a * f + b)).

A compiled scorer is only used after it has reproduced `predict_proba` on the smoke rows (models.smoke_check);
any other model shape, or a mismatch, keeps scikit-learn's own path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

FloatMatrix = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float64]
Scorer = Callable[[FloatMatrix], FloatArray]  # encoded matrix -> P(churn) per row


def compile_scorer(classifier: Any) -> Scorer | None:
    """A numpy scorer equivalent to `classifier.predict_proba(x)[:, 1]`, or None for a shape it does not know."""
    if not isinstance(classifier, CalibratedClassifierCV) or len(classifier.calibrated_classifiers_) != 1:
        return None
    calibrated = classifier.calibrated_classifiers_[0]
    if len(calibrated.calibrators) != 1 or not hasattr(calibrated.calibrators[0], "a_"):
        return None  # not a binary sigmoid (Platt) calibration
    a, b = float(calibrated.calibrators[0].a_), float(calibrated.calibrators[0].b_)
    estimator = calibrated.estimator
    if isinstance(estimator, FrozenEstimator):
        estimator = estimator.estimator
    decision = _linear_decision(estimator) or _tree_decision(estimator)
    if decision is None:
        return None
    function = decision

    def score(x: FloatMatrix) -> FloatArray:
        probability: FloatArray = expit(-(a * function(x) + b))
        return probability

    return score


def _linear_decision(estimator: Any) -> Callable[[FloatMatrix], FloatArray] | None:
    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 4:
        return None
    imputer, transform, scaler, model = (step for _, step in estimator.steps)
    if not (
        isinstance(imputer, SimpleImputer)
        and imputer.strategy in ("median", "mean", "constant", "most_frequent")
        and isinstance(transform, FunctionTransformer)
        and transform.func is not None
        and transform.kw_args is None
        and isinstance(scaler, StandardScaler)
        and isinstance(model, LogisticRegression)
        and model.coef_.shape[0] == 1
    ):
        return None
    fill = np.asarray(imputer.statistics_, dtype=np.float64)
    flagged = np.asarray(imputer.indicator_.features_ if imputer.indicator_ is not None else [], dtype=np.intp)
    mean = np.asarray(scaler.mean_ if scaler.with_mean else 0.0, dtype=np.float64)
    scale = np.asarray(scaler.scale_ if scaler.with_std else 1.0, dtype=np.float64)
    weights = model.coef_[0].astype(np.float64)
    intercept = float(model.intercept_[0])
    elementwise = transform.func

    def decision(x: FloatMatrix) -> FloatArray:
        missing = np.isnan(x)
        filled = np.where(missing, fill, x)
        columns = np.hstack([filled, missing[:, flagged].astype(np.float64)])
        z = (elementwise(columns) - mean) / scale
        result: FloatArray = z @ weights + intercept
        return result

    return decision


def _tree_decision(estimator: Any) -> Callable[[FloatMatrix], FloatArray] | None:
    if not isinstance(estimator, HistGradientBoostingClassifier) or estimator.n_trees_per_iteration_ != 1:
        return None
    predictors = [iteration[0] for iteration in estimator._predictors]
    nodes = [predictor.nodes for predictor in predictors]
    if any(n["is_categorical"].any() for n in nodes):
        return None
    offsets = np.cumsum([0, *(len(n) for n in nodes[:-1])])
    table = np.concatenate(nodes)
    shift = np.repeat(offsets, [len(n) for n in nodes])
    feature = table["feature_idx"].astype(np.intp)
    threshold = table["num_threshold"].astype(np.float64)
    missing_left = table["missing_go_to_left"].astype(bool)
    is_leaf = table["is_leaf"].astype(bool)
    # A leaf points at itself, so walking on past it changes nothing.
    own = np.arange(len(table))
    left = np.where(is_leaf, own, table["left"].astype(np.intp) + shift)
    right = np.where(is_leaf, own, table["right"].astype(np.intp) + shift)
    value = table["value"].astype(np.float64)
    roots = offsets.astype(np.intp)
    depth = int(table["depth"].max())
    baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])

    def decision(x: FloatMatrix) -> FloatArray:
        node = np.broadcast_to(roots, (len(x), len(roots))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(depth):
            at = x[rows, feature[node]]
            go_left = np.where(np.isnan(at), missing_left[node], at <= threshold[node])
            node = np.where(go_left, left[node], right[node])
        result: FloatArray = value[node].sum(axis=1) + baseline
        return result

    return decision
