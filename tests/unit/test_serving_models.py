"""Models by alias: swaps, refusals that keep the last good model, and the registry going away."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.small_models import FEATURES, small_pipeline

from churn_platform.model.candidates import fit_candidate
from churn_platform.model.encoding import FeatureEncoder
from churn_platform.serving.models import LoadedModel, ModelLoadError, ModelSet, smoke_check, smoke_rows

GOOD = {"1": small_pipeline(1), "2": small_pipeline(2)}


class Registry:
    """Aliases and versions a test moves around; a version missing from `models` fails to load."""

    def __init__(self) -> None:
        self.aliases = {"champion": "1"}
        self.models: dict[str, Any] = dict(GOOD)
        self.down = False
        self.loads: list[str] = []

    def read_aliases(self) -> dict[str, str]:
        if self.down:
            raise ConnectionError("registry unreachable")
        return dict(self.aliases)

    def load(self, uri: str, name: str, version: str) -> LoadedModel:
        self.loads.append(version)
        if version not in self.models:
            raise ModelLoadError(f"version {version} could not be loaded")
        return LoadedModel(name, version, self.models[version], "churn_v1", datetime.now(UTC))


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def alerts() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def models(registry: Registry, alerts: list[tuple[str, str, str]]) -> ModelSet:
    return ModelSet(
        "http://registry", "churn", FEATURES,
        on_alert=lambda *alert: alerts.append(alert), loader=registry.load, aliases=registry.read_aliases,
    )  # fmt: skip


def test_an_alias_move_swaps_the_model_and_a_held_mapping_keeps_the_old_one(
    models: ModelSet, registry: Registry
) -> None:
    assert models.refresh(["champion"]) == {"champion": "1"}
    in_flight = models.current()  # what a request took before the move

    registry.aliases["champion"] = "2"
    assert models.refresh(["champion"]) == {"champion": "2"}

    assert models.current()["champion"].version == "2"
    assert in_flight["champion"].version == "1"  # the request finishes on the model it started with


def test_a_version_behind_two_references_loads_once(models: ModelSet, registry: Registry) -> None:
    registry.aliases["challenger"] = "1"
    assert models.refresh(["champion", "challenger", "1"]) == {"champion": "1", "challenger": "1", "1": "1"}
    assert registry.loads == ["1"]


def test_a_version_that_fails_to_load_is_refused_once_and_the_last_good_keeps_serving(
    models: ModelSet, registry: Registry, alerts: list[tuple[str, str, str]]
) -> None:
    models.refresh(["champion"])
    registry.aliases["champion"] = "3"  # not loadable

    for _ in range(3):
        assert models.refresh(["champion"]) == {"champion": "1"}

    assert registry.loads == ["1", "3"]  # not retried every poll
    assert [(kind, subject) for kind, subject, _ in alerts] == [("model_refused", "churn version 3 (champion)")]
    assert "keeps serving" in alerts[0][2]


def test_a_version_that_fails_its_smoke_prediction_is_refused(
    models: ModelSet, registry: Registry, alerts: list[tuple[str, str, str]]
) -> None:
    broken = small_pipeline(3)
    broken.named_steps["classify"].predict_proba = lambda x: np.full((len(x), 2), np.nan)
    registry.models["4"] = broken
    models.refresh(["champion"])
    registry.aliases["champion"] = "4"

    assert models.refresh(["champion"]) == {"champion": "1"}
    assert "smoke prediction" in alerts[0][2]


def test_an_unreachable_registry_keeps_every_model_and_alerts_once(
    models: ModelSet, registry: Registry, alerts: list[tuple[str, str, str]]
) -> None:
    models.refresh(["champion"])
    registry.down = True
    assert models.refresh(["champion"]) == {"champion": "1"}
    assert models.refresh(["champion"]) == {"champion": "1"}
    assert [kind for kind, _, _ in alerts] == ["registry_unreachable"]
    registry.down = False
    assert models.refresh(["champion"]) == {"champion": "1"} and models.registry_error is None


def test_a_removed_alias_stops_being_served(models: ModelSet, registry: Registry) -> None:
    registry.aliases["challenger"] = "2"
    models.refresh(["champion", "challenger"])
    del registry.aliases["challenger"]
    assert models.refresh(["champion", "challenger"]) == {"champion": "1"}


def test_the_smoke_check_refuses_a_model_needing_features_the_service_does_not_read() -> None:
    loaded = LoadedModel("churn", "5", GOOD["1"], "churn_v0", datetime.now(UTC))
    with pytest.raises(ModelLoadError, match=r"does not serve: \['plan'\].*churn_v0"):
        smoke_check(loaded, ["logins"])
    smoke_check(loaded, FEATURES)  # the right features: passes


def test_predict_encodes_feature_dicts_like_the_training_frame() -> None:
    loaded = LoadedModel("churn", "1", GOOD["1"], "churn_v1", datetime.now(UTC))
    rows = [{"logins": 3.0, "plan": "a"}, {"logins": None, "plan": "unseen"}]
    frame = pd.DataFrame(rows).astype({"logins": float})
    np.testing.assert_allclose(loaded.predict(rows), GOOD["1"].predict_proba(frame)[:, 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("candidate", ["logistic_regression", "gradient_boosting"])
def test_the_numpy_scorer_reproduces_predict_proba(candidate: str) -> None:
    # Given a trained candidate of each kind, with missing values in training and at scoring time
    rng = np.random.default_rng(11)
    n = 3_000
    frame = pd.DataFrame(
        {
            "logins": np.where(rng.random(n) < 0.1, np.nan, rng.poisson(5, n).astype(float)),
            "spend": rng.lognormal(2, 1, n),
            "plan": rng.choice(["a", "b", "c"], n),
        }
    )
    logit = 0.4 * (5 - np.nan_to_num(frame["logins"], nan=2)) - 0.2 * np.log(frame["spend"]) - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    encoder = FeatureEncoder(numeric=["logins", "spend"], categorical=["plan"]).fit(frame)
    x = encoder.transform(frame)
    model = fit_candidate(candidate, encoder, x[:2000], y[:2000], x[2000:], y[2000:], seed=3).model
    loaded = smoke_check(LoadedModel("churn", "1", model, "churn_v1", datetime.now(UTC)), ["logins", "spend", "plan"])

    # Then the compiled scorer is used, and gives scikit-learn's probabilities on fresh rows
    assert loaded.scorer is not None
    rows = smoke_rows(encoder, count=500, seed=5)
    expected = model.predict_proba(pd.DataFrame(rows).astype({"logins": float, "spend": float}))[:, 1]
    np.testing.assert_allclose(loaded.predict(rows), expected, rtol=0, atol=1e-12)
