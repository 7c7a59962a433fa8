"""The training pipeline as `churn train` runs it comes close to the synthetic world's oracle.

The world is the smallest where that bar is fair: on 180-day worlds the training window (what is left after two
label-horizon gaps and the validation and test windows) is a few weeks, and the model reached 0.85-0.94 of the
oracle whatever the number of users (500, 1,000, 3,000); 1,000 users over 365 days gave 0.94-1.00 over five seeds,
1,500 users 0.944-0.970 over three. 2,000 users over 365 days gave 0.983 / 0.975 / 0.970 for seeds 1 / 2 / 3:
this test uses seed 3, the closest of the three to the bar.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from tests.integration.feature_worlds import connections, platform_settings, redis_db_url

from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, snapshots
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry

QUALITY_DB = 10  # a Redis database of its own (training reads no online features)
WORLD = WorldConfig(users=2_000, days=365, seed=3)
AUC_TO_ORACLE = 0.95


def test_the_trained_champion_reaches_95_percent_of_the_oracle_auc(
    make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str
) -> None:
    # Given a year of a 2,000-user world, its snapshots and labels, and the Feast repo applied, as `churn
    # generate`, `churn features compute` and `churn features apply` leave them
    url = make_database()
    environment = {"MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"churn_quality_{uuid.uuid4().hex[:8]}"}
    with platform_settings(url, redis_db_url(stack_settings, QUALITY_DB), **environment) as settings:
        world.generate_world(url, WORLD)
        until = snapshots.day_after_last_event(url)
        assert until is not None
        snapshots.refresh(url, settings, until)
        feast_repo.apply(settings, connections(settings))

        # When the platform trains with its default settings, as `churn train` does
        result = pipeline.train(settings, connections(settings, mlflow=True))

    # Then the registered version's test AUC is within 5% of the oracle's, and well above the trivial baseline
    registered = result.registered
    assert registered is not None
    metrics = registry.get_version(mlflow_server, registered.name, registered.version).metrics
    assert metrics["auc_to_oracle"] == pytest.approx(result.trained.auc_to_oracle, abs=1e-12)
    assert metrics["auc_to_oracle"] >= AUC_TO_ORACLE, (
        f"{result.trained.candidate}: test AUC {metrics['test_roc_auc']:.4f} is {metrics['auc_to_oracle']:.3f} of"
        f" the oracle's {metrics['oracle_roc_auc']:.4f}"
    )
    assert metrics["test_roc_auc"] > metrics["baseline_roc_auc"] + 0.02
    assert result.trained.rows["test"] >= 3_000, result.trained.rows  # the test window is the one measured here
