"""Explanations of one user's churn score: exact, additive in log-odds, and equal to brute-force Shapley values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from churn_platform.model import candidates
from churn_platform.model.candidates import FittedCandidate, fit_candidate
from churn_platform.model.encoding import FeatureEncoder
from churn_platform.model.explain import ModelExplainer, TreeShap

PLANS = ["basic", "premium", "enterprise"]


def _users(seed: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Logins (counts), a trend with 20% missing, a plan; churn depends on all three and on the trend's absence."""
    rng = np.random.default_rng(seed)
    logins = rng.poisson(5, n).astype(float)
    trend = rng.normal(0.0, 1.0, n)
    trend[rng.random(n) < 0.2] = np.nan
    plan = rng.choice(PLANS, n, p=[0.5, 0.3, 0.2])
    score = -1.0 - 0.3 * (logins - 5) + 0.8 * np.nan_to_num(trend, nan=1.5) + 0.7 * (plan == "basic")
    churned = (rng.random(n) < expit(score)).astype(np.int64)
    return pd.DataFrame({"logins": logins, "trend": trend, "plan": plan}), churned


def _fit(name: str) -> FittedCandidate:
    train, y_train = _users(1, 1500)
    validation, y_validation = _users(2, 800)
    encoder = FeatureEncoder(["logins", "trend"], ["plan"]).fit(train)
    x_train, x_validation = encoder.transform(train), encoder.transform(validation)
    return fit_candidate(name, encoder, x_train, y_train, x_validation, y_validation, seed=7)


def _rows(seed: int, n: int) -> list[dict[str, Any]]:
    frame, _ = _users(seed, n)
    rows: list[dict[str, Any]] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    edge_cases = [
        {"logins": None, "trend": None, "plan": None},
        {"logins": 0.0, "trend": 3.0, "plan": "gold"},  # a plan never seen in training
        {"logins": -4.0, "trend": -2.5, "plan": "enterprise"},
        {"logins": 80.0, "trend": None, "plan": "basic"},
    ]
    return rows + edge_cases


def _served_log_odds(fitted: FittedCandidate, rows: list[dict[str, Any]]) -> np.ndarray:
    frame = pd.DataFrame(rows, columns=["logins", "trend", "plan"])
    return np.asarray(logit(fitted.model.predict_proba(frame)[:, 1]))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """HistGradientBoosting's OpenMP threads make fitting 5-15x slower on a busy small machine, not faster."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def linear() -> FittedCandidate:
    return _fit("logistic_regression")


@pytest.fixture(scope="module")
def boosted() -> FittedCandidate:
    return _fit("gradient_boosting")


@pytest.fixture(scope="module")
def explainers(linear: FittedCandidate, boosted: FittedCandidate) -> dict[str, ModelExplainer]:
    """Built once per model, as the service does: the tree arrays take a moment, an explanation does not."""
    return {"linear": ModelExplainer(linear.model), "boosted": ModelExplainer(boosted.model)}


@pytest.fixture(scope="module")
def small_boosted() -> Iterator[FittedCandidate]:
    """The gradient-boosting candidate cut down to 4 small trees, so brute-force Shapley values are cheap."""
    with pytest.MonkeyPatch.context() as patch:
        small = candidates.gradient_boosting(7).set_params(max_iter=4, max_leaf_nodes=8, min_samples_leaf=20)
        patch.setitem(candidates.CANDIDATES, "gradient_boosting", lambda seed: small)
        yield _fit("gradient_boosting")


@pytest.mark.parametrize("name", ["linear", "boosted"])
def test_contributions_add_up_to_the_served_log_odds(
    name: str, explainers: dict[str, ModelExplainer], request: pytest.FixtureRequest
) -> None:
    fitted: FittedCandidate = request.getfixturevalue(name)
    explainer = explainers[name]
    rows = _rows(11, 150)

    explanations = [explainer.explain(row) for row in rows]

    served = _served_log_odds(fitted, rows)
    for explanation, log_odds in zip(explanations, served, strict=True):
        values = [value for _, value in explanation.contributions]
        assert explanation.base_value + math.fsum(values) == pytest.approx(log_odds, abs=1e-9)
        assert explanation.log_odds == pytest.approx(log_odds, abs=1e-9)
        assert explanation.probability == pytest.approx(expit(log_odds), abs=1e-12)
        assert sorted(feature for feature, _ in explanation.contributions) == ["logins", "plan", "trend"]
        assert [abs(v) for v in values] == sorted((abs(v) for v in values), reverse=True)
    # a real explanation: the features do move scores, in both directions
    by_feature = np.array([[dict(e.contributions)[f] for f in ("logins", "trend", "plan")] for e in explanations])
    assert (by_feature.max(axis=0) > 0.05).all() and (by_feature.min(axis=0) < -0.05).all()


users = st.fixed_dictionaries(
    {
        "logins": st.none() | st.floats(-10, 1e4, allow_nan=False),
        "trend": st.none() | st.floats(-1e3, 1e3, allow_nan=False),
        "plan": st.none() | st.sampled_from([*PLANS, "gold"]),
    }
)


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(users, min_size=1, max_size=20))
def test_any_user_is_explained_additively(
    linear: FittedCandidate,
    boosted: FittedCandidate,
    explainers: dict[str, ModelExplainer],
    rows: list[dict[str, Any]],
) -> None:
    for name, fitted in (("linear", linear), ("boosted", boosted)):
        explanations = [explainers[name].explain(row) for row in rows]
        totals = [e.base_value + math.fsum(value for _, value in e.contributions) for e in explanations]
        np.testing.assert_allclose(totals, _served_log_odds(fitted, rows), rtol=0, atol=1e-9)


def _conditional_expectation(nodes: np.ndarray, index: int, x: np.ndarray, known: frozenset[int]) -> float:
    """E[tree(x) | x_S] the path-dependent way: follow x on known features, split by cover on the others."""
    node = nodes[index]
    if node["is_leaf"]:
        return float(node["value"])
    feature, left, right = int(node["feature_idx"]), int(node["left"]), int(node["right"])
    if feature in known:
        value = x[feature]
        goes_left = bool(node["missing_go_to_left"]) if np.isnan(value) else value <= node["num_threshold"]
        return _conditional_expectation(nodes, left if goes_left else right, x, known)
    weighted = [float(nodes[c]["count"]) * _conditional_expectation(nodes, c, x, known) for c in (left, right)]
    return sum(weighted) / float(node["count"])


def _brute_force_shapley(model: HistGradientBoostingClassifier, x: np.ndarray) -> tuple[float, np.ndarray]:
    trees = [predictor.nodes for iteration in model._predictors for predictor in iteration]
    baseline = float(np.ravel(model._baseline_prediction)[0])

    def value(subset: frozenset[int]) -> float:
        return baseline + sum(_conditional_expectation(nodes, 0, x, subset) for nodes in trees)

    n = len(x)
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in map(frozenset, combinations(others, size)):
                phi[i] += weight * (value(subset | {i}) - value(subset))
    assert value(frozenset(range(n))) == pytest.approx(model.decision_function(x.reshape(1, -1))[0], abs=1e-12)
    return value(frozenset()), phi


def _repeats_a_feature_on_a_path(nodes: np.ndarray, index: int = 0, seen: frozenset[int] = frozenset()) -> bool:
    node = nodes[index]
    if node["is_leaf"]:
        return False
    feature = int(node["feature_idx"])
    return feature in seen or any(
        _repeats_a_feature_on_a_path(nodes, int(node[side]), seen | {feature}) for side in ("left", "right")
    )


def test_tree_shap_equals_brute_force_shapley_of_the_path_dependent_expectation(
    small_boosted: FittedCandidate,
) -> None:
    model = small_boosted.classifier.calibrated_classifiers_[0].estimator.estimator
    trees = [predictor.nodes for iteration in model._predictors for predictor in iteration]
    assert len(trees) == 4 and len(small_boosted.encoder.output_names_) == 5
    assert any(_repeats_a_feature_on_a_path(nodes) for nodes in trees)  # the merge of repeated splits is exercised
    tree_shap = TreeShap(model)
    explainer = ModelExplainer(small_boosted.model)
    calibrator = small_boosted.classifier.calibrated_classifiers_[0].calibrators[0]
    rows = _rows(13, 25)

    for row, x in zip(rows, small_boosted.encoder.transform_rows(rows), strict=True):
        base, phi = _brute_force_shapley(model, x)

        np.testing.assert_allclose(tree_shap.contributions(x), phi, rtol=0, atol=1e-9)
        assert tree_shap.base_value == pytest.approx(base, abs=1e-9)
        # calibrated and grouped: the one-hot plan columns add up, everything scales by the calibrator's -a
        grouped = dict(explainer.explain(row).contributions)
        expected = -calibrator.a_ * np.array([phi[0], phi[1], phi[2:].sum()])
        np.testing.assert_allclose([grouped["logins"], grouped["trend"], grouped["plan"]], expected, atol=1e-9)


def test_linear_contribution_is_the_log_odds_change_when_the_feature_is_set_to_the_training_mean(
    linear: FittedCandidate,
) -> None:
    calibrated = linear.classifier.calibrated_classifiers_[0]
    pipeline, calibrator = calibrated.estimator.estimator, calibrated.calibrators[0]
    imputer, model = pipeline.named_steps["impute"], pipeline.named_steps["model"]
    inputs = list(range(imputer.n_features_in_)) + list(imputer.indicator_.features_)
    assert len(inputs) == 6  # logins, trend, three plan columns, and trend's missingness indicator
    feature_of_column = [linear.encoder.output_names_[i].split("=")[0] for i in inputs]
    explainer = ModelExplainer(linear.model)
    rows = _rows(17, 40)

    for row, x in zip(rows, linear.encoder.transform_rows(rows), strict=True):
        z = pipeline[:-1].transform(x.reshape(1, -1))
        served = logit(calibrator.predict(model.decision_function(z)))[0]
        contributions = dict(explainer.explain(row).contributions)
        for feature in ("logins", "trend", "plan"):
            at_mean = z.copy()  # the scaler centres on the training mean: the reference is zero
            at_mean[0, [c for c, f in enumerate(feature_of_column) if f == feature]] = 0.0
            without = logit(calibrator.predict(model.decision_function(at_mean)))[0]
            assert contributions[feature] == pytest.approx(served - without, abs=1e-9)


def test_models_without_an_exact_explanation_are_refused(linear: FittedCandidate) -> None:
    users, y = _users(3, 300)
    x = linear.encoder.transform(users)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(np.nan_to_num(x), y)
    calibrated_forest = CalibratedClassifierCV(FrozenEstimator(forest), method="sigmoid").fit(np.nan_to_num(x), y)
    with pytest.raises(TypeError, match="RandomForestClassifier"):
        ModelExplainer(Pipeline([("encode", linear.encoder), ("classify", calibrated_forest)]))

    estimator = linear.classifier.calibrated_classifiers_[0].estimator.estimator
    ensemble = CalibratedClassifierCV(estimator, method="sigmoid", cv=2).fit(x, y)
    with pytest.raises(ValueError, match="2 calibrated classifier"):
        ModelExplainer(Pipeline([("encode", linear.encoder), ("classify", ensemble)]))

    isotonic = CalibratedClassifierCV(FrozenEstimator(estimator), method="isotonic").fit(x, y)
    with pytest.raises(ValueError, match="isotonic"):
        ModelExplainer(Pipeline([("encode", linear.encoder), ("classify", isotonic)]))
