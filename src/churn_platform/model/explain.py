"""Why one user got their churn score: per-feature contributions in log-odds of the served probability.

Both candidates are explained exactly. The logistic regression by its weights times the user's standardised
columns (Shapley values of a linear model against the training mean); the gradient-boosted trees by path-dependent
TreeSHAP (Lundberg et al. 2018). Platt calibration makes the served log-odds affine in the decision function, so
the contributions are rescaled by it and stay additive: base_value + sum(contributions) == logit(probability).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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

from churn_platform.model.encoding import FeatureEncoder

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Explanation:
    """One user's score taken apart: base_value + sum of the contributions == log_odds == logit(probability)."""

    method: str
    base_value: float
    contributions: list[tuple[str, float]]  # (feature, log-odds), largest |contribution| first
    log_odds: float
    probability: float


class LinearShap:
    """w_k * z_k over the standardised columns: the Shapley values of a linear model against the training mean.

    Exact in the decision function: base_value + sum(contributions(x)) == decision_function(x), per input column
    (a missing-value indicator column is added to the input column whose missingness it flags).
    """

    method = "exact (linear model, log-odds)"

    def __init__(self, pipeline: Pipeline) -> None:
        steps = [step for _, step in pipeline.steps]
        imputer, scaler, model = steps[0], steps[-2], steps[-1]
        if not (
            isinstance(imputer, SimpleImputer)
            and all(isinstance(s, FunctionTransformer) for s in steps[1:-2])  # assumed elementwise, as signed_log1p is
            and isinstance(scaler, StandardScaler)
            and scaler.with_mean
            and isinstance(model, LogisticRegression)
        ):
            raise TypeError(f"cannot explain a pipeline of {[type(s).__name__ for s in steps]} exactly")
        if model.coef_.shape[0] != 1:
            raise ValueError("only a binary LogisticRegression can be explained")
        self._transform = pipeline[:-1]
        self._weights: FloatArray = model.coef_[0].astype(np.float64)
        self.base_value = float(model.intercept_[0])
        self._n_inputs = int(imputer.n_features_in_)
        flagged = imputer.indicator_.features_ if imputer.indicator_ is not None else []
        # The imputer's output: every input column (keep_empty_features keeps the all-missing ones), then one
        # indicator per input column that had missing values in training.
        self._input_of_column: IntArray = np.concatenate([np.arange(self._n_inputs), flagged]).astype(np.intp)
        if len(self._input_of_column) != len(self._weights):
            raise ValueError("the imputer dropped columns (keep_empty_features=False?): columns cannot be mapped")

    def contributions(self, x: FloatArray) -> FloatArray:
        z = self._transform.transform(x.reshape(1, -1))[0]
        return _sum_by(self._input_of_column, self._weights * z, self._n_inputs)


class TreeShap:
    """Path-dependent TreeSHAP for a binary HistGradientBoostingClassifier, vectorised over all leaves.

    For one leaf, with z_j the product of the cover fractions of the path's splits on feature j and o_j whether x
    follows all of them, E[leaf | x_S] = v * prod_{j in S} o_j * prod_{j not in S} z_j. Its Shapley value for
    feature i is v * (o_i - z_i) * integral_0^1 prod_{j != i} (z_j + (o_j - z_j) t) dt (the Beta integral gives
    the Shapley weights), a polynomial of degree < depth that Gauss-Legendre quadrature integrates exactly.
    The per-leaf arrays are built once; one explanation is a few numpy operations over them. Exact in the raw
    score: base_value + sum(contributions(x)) == decision_function(x).
    """

    method = "TreeSHAP, path-dependent (log-odds)"

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        if model.n_trees_per_iteration_ != 1 or model.is_categorical_ is not None:
            raise ValueError("only a binary HistGradientBoostingClassifier on numeric features can be explained")
        self._n_features = int(model.n_features_in_)
        # sklearn's private fitted state (1.9): one TreePredictor per iteration, raw score = baseline + sum of leaves
        trees = [predictor.nodes for iteration in model._predictors for predictor in iteration]
        nodes = np.concatenate(trees)
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        self._split_feature: IntArray = nodes["feature_idx"].astype(np.intp)
        self._threshold: FloatArray = nodes["num_threshold"].astype(np.float64)
        self._missing_left: BoolArray = nodes["missing_go_to_left"].astype(bool)
        offsets = np.cumsum([0] + [len(tree) for tree in trees])[:-1]
        self._build_leaf_arrays([leaf for t, o in zip(trees, offsets, strict=True) for leaf in _leaf_paths(t, o)])
        # Without x every split goes by cover: the base value is the cover-weighted mean of the leaves.
        self.base_value = float(np.ravel(model._baseline_prediction)[0]) + float(
            self._slot_cover.prod(axis=0) @ self._leaf_value
        )

    def _build_leaf_arrays(self, leaves: list[_LeafPath]) -> None:
        """Leaves along the last axis; slot d of a leaf is the d-th distinct feature on its path."""
        depth = max([1, *(len(leaf.features) for leaf in leaves)])
        splits = max([1, *(len(codes) for leaf in leaves for codes in leaf.split_codes)])
        self._leaf_value: FloatArray = np.array([leaf.value for leaf in leaves], dtype=np.float64)
        self._slot_feature: IntArray = np.zeros((depth, len(leaves)), dtype=np.intp)
        self._slot_cover: FloatArray = np.ones((depth, len(leaves)))  # padding slots: z = o = 1, a factor of one
        self._padding = 2 * len(self._split_feature)
        self._split_codes: IntArray = np.full((splits, depth, len(leaves)), self._padding, dtype=np.intp)
        for i, leaf in enumerate(leaves):
            self._slot_feature[: len(leaf.features), i] = leaf.features
            self._slot_cover[: len(leaf.features), i] = leaf.covers
            for d, codes in enumerate(leaf.split_codes):
                self._split_codes[: len(codes), d, i] = codes
        points, weights = np.polynomial.legendre.leggauss(depth // 2 + 1)
        self._points: FloatArray = (points[:, None] + 1.0) / 2.0  # Gauss-Legendre on [0, 1]
        self._weights: FloatArray = weights / 2.0

    def contributions(self, x: FloatArray) -> FloatArray:
        value = x[self._split_feature]
        # The predictor's routing: NaN goes where the split sent missing values, else left iff x <= threshold.
        goes_left = np.where(np.isnan(value), self._missing_left, value <= self._threshold)
        followed = np.ones(self._padding + 1, dtype=bool)  # by split code; the padding code is always followed
        followed[1::2], followed[0:-1:2] = goes_left, ~goes_left
        z = self._slot_cover
        gap = np.logical_and.reduce(followed[self._split_codes], axis=0) - z  # o - z, per (slot, leaf)
        factor = z[:, None, :] + gap[:, None, :] * self._points  # (slot, quadrature point, leaf)
        # prod over the other slots = (prod over the slots before) * (prod over the slots after)
        others = np.empty_like(factor)
        others[0] = 1.0
        for d in range(1, len(factor)):
            np.multiply(others[d - 1], factor[d - 1], out=others[d])
        after = np.ones_like(factor[0])
        for d in range(len(factor) - 2, -1, -1):
            after *= factor[d + 1]
            others[d] *= after
        phi = self._leaf_value * gap * (self._weights @ others)
        return _sum_by(self._slot_feature.ravel(), phi.ravel(), self._n_features)


@dataclass
class _LeafPath:
    value: float
    features: list[int]  # the distinct features split on along the path, in order of first split
    covers: list[float]  # per feature: the product of its splits' cover fractions, count(child) / count(parent)
    split_codes: list[list[int]]  # per feature: its splits on the path, as 2 * node + (1 if going left)


def _leaf_paths(nodes: Any, offset: int) -> list[_LeafPath]:
    """Every leaf of one predictor's tree with its path of (feature, cover fraction, split code) edges."""
    leaves: list[_LeafPath] = []
    stack: list[tuple[int, list[tuple[int, float, int]]]] = [(0, [])]
    while stack:
        index, edges = stack.pop()
        node = nodes[index]
        if node["is_leaf"]:
            leaves.append(_merge_path(float(node["value"]), edges))
            continue
        for child, left in ((int(node["left"]), 1), (int(node["right"]), 0)):
            fraction = float(nodes[child]["count"]) / float(node["count"])
            stack.append((child, [*edges, (int(node["feature_idx"]), fraction, 2 * (offset + index) + left)]))
    return leaves


def _merge_path(value: float, edges: list[tuple[int, float, int]]) -> _LeafPath:
    """Merge the splits on one feature: x follows all of them or not, their cover fractions multiply."""
    features = list(dict.fromkeys(feature for feature, _, _ in edges))
    covers = [1.0] * len(features)
    codes: list[list[int]] = [[] for _ in features]
    for feature, fraction, code in edges:
        covers[features.index(feature)] *= fraction
        codes[features.index(feature)].append(code)
    return _LeafPath(value, features, covers, codes)


class ModelExplainer:
    """Explains one user's calibrated churn score for a trained candidate (encode -> calibrated classifier).

    Built once per model (the tree arrays are precomputed), then `explain` is cheap enough for every request.
    Raises TypeError for a model type it cannot explain exactly, ValueError for a calibration it cannot invert.
    """

    def __init__(self, model: Pipeline) -> None:
        if not isinstance(model, Pipeline) or "encode" not in model.named_steps or "classify" not in model.named_steps:
            raise TypeError(f"cannot explain a {type(model).__name__}: expected a Pipeline of encode -> classify")
        encoder, classifier = model.named_steps["encode"], model.named_steps["classify"]
        if not isinstance(encoder, FeatureEncoder) or not isinstance(classifier, CalibratedClassifierCV):
            raise TypeError(f"cannot explain {type(encoder).__name__} -> {type(classifier).__name__}")
        self._encoder = encoder
        self._slope, self._intercept, estimator = _platt_scaling(classifier)
        self.attribution = _attribution_for(estimator)
        self._feature_names = encoder.feature_names
        self._feature_of_column = _feature_of_encoded_column(encoder)

    def explain(self, row: Mapping[str, Any]) -> Explanation:
        x = self._encoder.transform_rows([row])
        # Platt scaling: p = 1 / (1 + exp(a f + b)), so logit(p) = -(a f + b) is affine in the decision f.
        per_column = -self._slope * self.attribution.contributions(x[0])
        per_feature = _sum_by(self._feature_of_column, per_column, len(self._feature_names))
        base_value = -(self._slope * self.attribution.base_value + self._intercept)
        order = sorted(range(len(per_feature)), key=lambda i: -abs(per_feature[i]))
        log_odds = base_value + float(per_feature.sum())
        # The served probability itself, to rounding: scoring again through sklearn would cost more than explaining.
        return Explanation(
            method=self.attribution.method,
            base_value=base_value,
            contributions=[(self._feature_names[i], float(per_feature[i])) for i in order],
            log_odds=log_odds,
            probability=float(expit(log_odds)),
        )


def _platt_scaling(classifier: CalibratedClassifierCV) -> tuple[float, float, Any]:
    """(a, b, the estimator) of a single sigmoid calibrator on the estimator's decision_function."""
    calibrated = classifier.calibrated_classifiers_
    # A FrozenEstimator gives ensemble="auto" one calibrated classifier; an ensemble averages probabilities,
    # which is not affine in log-odds and so has no additive explanation.
    if classifier.method != "sigmoid" or len(calibrated) != 1 or len(calibrated[0].calibrators) != 1:
        raise ValueError(
            f"only one sigmoid calibrator can be explained additively, got method={classifier.method!r} "
            f"with {len(calibrated)} calibrated classifier(s)"
        )
    estimator = calibrated[0].estimator
    estimator = estimator.estimator if isinstance(estimator, FrozenEstimator) else estimator
    # The calibrator reads decision_function when the estimator has one, predict_proba otherwise.
    if not hasattr(estimator, "decision_function"):
        raise TypeError(f"cannot explain a {type(estimator).__name__}: it has no decision_function")
    calibrator = calibrated[0].calibrators[0]
    return float(calibrator.a_), float(calibrator.b_), estimator


def _attribution_for(estimator: Any) -> LinearShap | TreeShap:
    if isinstance(estimator, HistGradientBoostingClassifier):
        return TreeShap(estimator)
    if isinstance(estimator, Pipeline) and isinstance(estimator[-1], LogisticRegression):
        return LinearShap(estimator)
    raise TypeError(f"cannot explain a {type(estimator).__name__}: no exact explanation for it")


def _feature_of_encoded_column(encoder: FeatureEncoder) -> IntArray:
    """The original feature of each encoded column: numeric ones are themselves, one-hot ones their categorical."""
    owners = list(range(len(encoder.numeric)))
    for j, name in enumerate(encoder.categorical):
        owners += [len(encoder.numeric) + j] * len(encoder.categories_[name])
    return np.asarray(owners, dtype=np.intp)


def _sum_by(groups: IntArray, values: FloatArray, n_groups: int) -> FloatArray:
    return np.bincount(groups, weights=values, minlength=n_groups).astype(np.float64)
