"""The retraining triggers on a labelled world with a champion in a real MLflow registry: each trigger fires above its
threshold and not below it, every evaluation is kept with its reasons, and a fired one trains a challenger and
starts its A/B experiment; while one runs nothing more is trained."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from tests.integration.feature_worlds import connections, labelled_world, platform_settings, redis_db_url

from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.experiments import records
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.monitoring import retraining
from churn_platform.monitoring.performance_runs import newest_label_day
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry

RETRAINING_DB = 5  # a Redis database of its own (nothing here reads online features)
LAST_SNAPSHOT = date(2025, 7, 20)


@dataclass(frozen=True)
class World:
    settings: Settings
    url: str
    champion: retraining.Champion


@pytest.fixture(scope="module")
def world(make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str) -> Iterator[World]:
    """400 users over 200 days, labelled, and a first version (the champion) trained on the first four months."""
    url = make_database()
    environment = {"MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"retrain_{uuid.uuid4().hex[:8]}",
                   "CHURN_TRAIN_TEST_DAYS": "21", "CHURN_TRAIN_VALIDATION_DAYS": "21",
                   "CHURN_RETRAIN_WINDOW_DAYS": "90"}  # fmt: skip
    with platform_settings(url, redis_db_url(stack_settings, RETRAINING_DB), **environment) as settings:
        labelled_world(settings, url, WorldConfig(users=400, days=200, seed=31), LAST_SNAPSHOT)
        # the champion learned from snapshots before May: the later ones' outcomes are new to it
        pipeline.train(settings, connections(settings, mlflow=True), end=date(2025, 5, 1))
        yield World(settings, url, retraining.champion_of(settings, connections(settings, mlflow=True)))


def _monitored(world: World, drift_share: float, auc: float) -> None:
    """The champion's monitoring figures as a drift run and a week of realised performance store them."""
    model, version, horizon = world.settings.model_name, world.champion.version, world.settings.label_horizon_days
    end = datetime(2025, 7, 1, tzinfo=UTC)
    with psycopg.connect(world.url) as conn:
        conn.execute(
            "INSERT INTO monitoring.drift_runs (catalog, model_name, model_version, window_start, window_end,"
            " reference_rows, current_rows, features, drifted, drift_share, dataset_drift, alpha, psi_threshold,"
            " share_threshold) VALUES ('churn_v1', %s, %s, %s, %s, 100, 100, 10, %s, %s, %s, 0.05, 0.2, 0.3)",
            (model, version, end - timedelta(days=7), end, round(drift_share * 10), drift_share, drift_share > 0.3),
        )
        conn.execute("DELETE FROM monitoring.performance WHERE model_name = %s", (model,))
        for day in range(10):  # ten days: the trigger judges the newest seven
            auc_of_day = auc if day >= 3 else 0.99
            conn.execute(
                "INSERT INTO monitoring.performance (model_name, model_version, day, horizon_days, rows, positives,"
                " roc_auc, pr_auc, log_loss, brier, calibration_error, positive_rate, mean_score, evaluated_at)"
                " VALUES (%s, %s, %s, %s, 100, 10, %s, 0.5, 0.3, 0.1, 0.01, 0.1, 0.1, now())",
                (model, version, date(2025, 6, 1) + timedelta(days=day), horizon, auc_of_day),
            )


def test_each_trigger_fires_above_its_threshold_and_every_evaluation_is_kept(world: World) -> None:
    catalog = catalog_from_settings(world.settings)
    assert world.champion.test_auc is not None and world.champion.outcomes_seen_through is not None
    test_auc = world.champion.test_auc

    # Drifted, decayed, and many outcomes the champion never saw: all three fire
    _monitored(world, drift_share=0.5, auc=test_auc - 0.10)
    settings = world.settings.model_copy(update={"retrain_new_labelled_rows": 100})
    fired = retraining.record(world.url, retraining.evaluate(world.url, catalog, settings, world.champion))
    by_name = {t.name: t for t in fired.triggers}
    assert fired.fired and all(t.fired for t in fired.triggers), fired.reason
    assert by_name["drift"].value == 0.5 and by_name["drift"].threshold == 0.3
    assert by_name["quality"].value == pytest.approx(test_auc - 0.10)  # the newest 7 days, not the 3 before
    assert by_name["quality"].threshold == pytest.approx(test_auc - 0.05)
    with psycopg.connect(world.url) as conn:  # the labelled snapshots whose outcomes end after the version's
        unseen = conn.execute(
            f"SELECT count(*) FROM {catalog.labels_table} WHERE horizon_days = %s AND ((event_timestamp"
            " + make_interval(days => %s) - interval '1 microsecond') AT TIME ZONE 'UTC')::date > %s",
            (settings.label_horizon_days, settings.label_horizon_days, world.champion.outcomes_seen_through),
        ).fetchone()
    assert unseen is not None and by_name["volume"].value == unseen[0] > 0
    assert fired.reason.startswith("retrain: drift share 50% > 30%")

    # Within every threshold, with the volume trigger off: nothing fires, and the reason says why for each
    _monitored(world, drift_share=0.1, auc=test_auc - 0.01)
    calm = retraining.record(world.url, retraining.evaluate(world.url, catalog, world.settings, world.champion))
    assert not calm.fired
    assert calm.reason.startswith("no retraining: drift share 10% <= 30%")
    assert "volume trigger off (CHURN_RETRAIN_NEW_LABELLED_ROWS)" in calm.reason
    kept = retraining.history(world.url, world.settings.model_name)
    assert [(row["id"], row["fired"]) for row in kept[:2]] == [(calm.evaluation_id, False), (fired.evaluation_id, True)]


def test_a_fired_evaluation_trains_a_challenger_and_starts_its_experiment_once(world: World) -> None:
    _monitored(world, drift_share=0.8, auc=0.5)
    done = retraining.retrain(world.settings, connections(world.settings, mlflow=True), if_needed=True)
    try:
        assert done.version is not None and done.experiment == f"retrain-v{done.version}", done.action
        uri, name = world.settings.mlflow_tracking_uri or "", world.settings.model_name
        aliases = registry.model_references(uri, name).aliases
        assert aliases["challenger"] == done.version and aliases["champion"] == world.champion.version
        running = records.running_experiment(world.url)
        assert running is not None and (running.name, running.variant) == (done.experiment, done.version)
        assert running.variant_share == world.settings.retrain_ab_share

        # Trained on the newest CHURN_RETRAIN_WINDOW_DAYS (90) of labelled snapshots; the champion on all of them
        def first_day(version: str) -> date:
            return date.fromisoformat(registry.get_version(uri, name, version).tags["training_range"].split("..")[0])

        last = newest_label_day(world.url, world.settings)
        assert last is not None and first_day(done.version) >= last - timedelta(days=89)
        assert first_day(world.champion.version) < last - timedelta(days=120)
        assert retraining.history(world.url, name)[0]["action"] == done.action

        # Fired again while the challenger is under test: recorded, nothing trained
        again = retraining.retrain(world.settings, connections(world.settings, mlflow=True), if_needed=True)
        assert again.evaluation.fired and again.version is None
        assert again.action.startswith(f"not retrained: experiment {done.experiment} is testing")
        assert registry.model_references(uri, name).aliases["challenger"] == done.version
    finally:
        if records.running_experiment(world.url) is not None:
            records.stop_experiment(world.url)


def test_the_flow_and_the_command_say_why_they_did_not_retrain(
    prefect_server: None, world: World, wide_console: None
) -> None:
    from flows.retrain import retrain_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from typer.testing import CliRunner

    from churn_platform import cli

    _monitored(world, drift_share=0.1, auc=(world.champion.test_auc or 0.8) - 0.01)
    action = retrain_flow(if_needed=True)
    assert action.startswith("no retraining: drift share 10% <= 30%"), action
    with get_client(sync_client=True) as client:
        published = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["churn-retraining"]))
        )
    assert any("**Not fired:** no retraining" in str(a.data) and "| drift | yes | 0.1 | 0.3 | no |" in str(a.data)
               for a in published)  # fmt: skip

    result = CliRunner().invoke(cli.app, ["retrain", "--if-needed", "--history"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for shown in ("retraining triggers", "drift share 10% <= 30%", "earlier evaluations, newest first"):
        assert shown in result.output, result.output


def test_a_retraining_asked_for_by_drift_alone_waits_for_outcomes_of_the_changed_world(world: World) -> None:
    # Drift flagged on the snapshots to 2025-07-01, the champion's quality intact, labels only to about 06-20
    _monitored(world, drift_share=0.1, auc=world.champion.test_auc or 0.8)
    _monitored(world, drift_share=0.6, auc=world.champion.test_auc or 0.8)
    uri, name = world.settings.mlflow_tracking_uri or "", world.settings.model_name
    challenger = registry.model_references(uri, name).aliases.get("challenger")

    done = retraining.retrain(world.settings, connections(world.settings, mlflow=True), if_needed=True)

    # Then the evaluation fired, but nothing is trained: a model trained now would learn the world before the change
    last = newest_label_day(world.url, world.settings)
    assert done.evaluation.fired and done.version is None and done.experiment is None
    assert done.action == (
        f"waiting for outcomes: drift first flagged on snapshots to 2025-07-01, labelled snapshots reach {last} (0 of"
        " the 7 days after it that CHURN_RETRAIN_DRIFT_OUTCOME_DAYS asks for); a model trained now would learn the"
        " world before the change"
    )
    assert retraining.history(world.url, name)[0]["action"] == done.action
    assert registry.model_references(uri, name).aliases.get("challenger") == challenger
