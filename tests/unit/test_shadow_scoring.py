"""Shadow scoring on the request path: each user answered by their arm's model, and scored by the other arm's too;
a shadow that fails never costs an answer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from tests.small_models import small_pipeline
from tests.unit.test_feature_batch import NOW, flat, make_batch, stored_hash

from churn_platform.experiments.records import Experiment
from churn_platform.features.feature_batch import FeatureBatch
from churn_platform.serving.batch_scoring import score_batch
from churn_platform.serving.models import LoadedModel
from churn_platform.serving.routing import Router

EXPERIMENT = Experiment("shadowed", "champion", "2", 0.5, "salt", NOW, None, None, None)


def _model(version: str, seed: int) -> LoadedModel:
    return LoadedModel("churn", version, small_pipeline(seed), "churn_v1", datetime.now(UTC))


def _batch(users: int = 40) -> FeatureBatch:
    fresh = NOW - timedelta(hours=1)
    return make_batch([flat(stored_hash(fresh, 1.0, i % 11, "a" if i % 3 else "b")) for i in range(users)])


def _own_scores(batch: FeatureBatch, model: LoadedModel) -> list[float]:
    return [float(p) for p in model.score(model.encoder.transform_batch(batch))]


@pytest.mark.parametrize("shadow_scoring", [True, False])
def test_each_user_is_answered_by_their_arm_and_scored_by_the_other(shadow_scoring: bool) -> None:
    champion, variant = _model("1", 1), _model("2", 2)
    batch = _batch()
    routes = Router("churn", shadow_scoring=shadow_scoring).routes(
        batch.user_ids, {"champion": champion, "2": variant}, EXPERIMENT
    )

    probabilities, _, shadows = score_batch(batch, routes, batch.featureless)

    scores = {"1": _own_scores(batch, champion), "2": _own_scores(batch, variant)}
    assert {route.arm for route in routes} == {"control", "variant"}
    for i, route in enumerate(routes):
        assert probabilities[i] == pytest.approx(scores[route.model.version][i], abs=1e-12)
    if not shadow_scoring:
        assert shadows is None
        return
    assert shadows is not None
    for i, route in enumerate(routes):
        other = "2" if route.arm == "control" else "1"
        assert shadows[i] is not None and shadows[i][0] == other  # type: ignore[index]
        assert shadows[i][1] == pytest.approx(scores[other][i], abs=1e-12)  # type: ignore[index]


def test_a_failing_shadow_model_leaves_every_answer_and_logs_no_shadow_for_its_rows() -> None:
    def broken(matrix: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        raise FloatingPointError("the variant's model broke")

    champion, variant = _model("1", 1), _model("2", 2)
    broken_variant = replace(variant, scorer=broken)
    batch = _batch()
    routes = Router("churn", shadow_scoring=True).routes(
        batch.user_ids, {"champion": champion, "2": replace(broken_variant, scorer=None)}, EXPERIMENT
    )
    # the control's users have the broken model as their shadow; the variant's users are answered by a good one
    routes = [replace(r, shadow=broken_variant) if r.arm == "control" else r for r in routes]

    probabilities, _, shadows = score_batch(batch, routes, batch.featureless)

    assert all(p is not None for p in probabilities)
    assert shadows is not None
    assert all(shadows[i] is None for i, r in enumerate(routes) if r.arm == "control")
    assert all(shadows[i] is not None for i, r in enumerate(routes) if r.arm == "variant")
