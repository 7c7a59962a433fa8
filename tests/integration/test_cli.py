"""The `churn` commands of the README's path, run through the command line against the session's real servers,
each checked by what it left in PostgreSQL, Feast's registry, Redis or the MLflow registry."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from tests.integration.feature_worlds import connections, platform_settings, redis_db_url
from typer.testing import CliRunner

from churn_platform.features import feast_repo
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.online import OnlineFeatures, sample_of_latest_users
from churn_platform.settings import Settings
from churn_platform.training import promotion, registry

CLI_DB = 8  # a Redis database of its own
USERS, DAYS, SEED = 150, 90, 5
# A week-long label horizon and two-week windows fit a 90-day world: train, gap, validation, gap, test, horizon.
ENVIRONMENT = {
    "CHURN_LABEL_HORIZON_DAYS": "7",
    "CHURN_TRAIN_TEST_DAYS": "14",
    "CHURN_TRAIN_VALIDATION_DAYS": "14",
    "CHURN_TRAIN_SNAPSHOT_EVERY_DAYS": "1",
    # `churn train` here only has to register a version to roll back to: the refit is tested in test_training
    "CHURN_TRAIN_REFIT": "false",
}
PLATFORM_SCHEMAS = ("raw", "features", "serving", "monitoring", "synthetic")
TABLES_SQL = "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema = ANY(%s)"


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(TABLES_SQL, (list(PLATFORM_SCHEMAS),))}


def _one(url: str, query: sql.Composed | str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL(query) if isinstance(query, str) else query).fetchone()
    assert row is not None
    return tuple(row)


def _churn(*arguments: str) -> str:
    """Run `churn ARGUMENTS` in-process; fail with its output unless it exits 0."""
    from churn_platform import cli

    result = CliRunner().invoke(cli.app, list(arguments), terminal_width=200)
    assert result.exit_code == 0, f"churn {' '.join(arguments)} exited {result.exit_code}: {result.output}"
    return result.output


def test_the_readme_commands_leave_their_outcome_in_the_servers(
    make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str, tmp_path: Path
) -> None:
    url = make_database()
    redis_url = redis_db_url(stack_settings, CLI_DB)
    model_name = f"churn_cli_{uuid.uuid4().hex[:8]}"
    variables = {
        **ENVIRONMENT,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CHURN_MODEL_NAME": model_name,
        "CHURN_DATA_DIR": str(tmp_path / "churn"),
    }
    with platform_settings(url, redis_url, **variables) as settings:
        # `churn db init` on a database without the platform's schemas creates every table again
        tables = _tables(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for schema in PLATFORM_SCHEMAS:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        assert _tables(url) == set()
        _churn("db", "init")
        assert _tables(url) == tables and {"raw.events", "raw.users", "synthetic.oracle_churn"} <= tables

        # `churn generate` loads the world's users and events, and its oracle for the configured horizon
        _churn("generate", "--users", str(USERS), "--days", str(DAYS), "--seed", str(SEED))
        assert _one(url, "SELECT count(*) FROM raw.users") == (USERS,)  # nobody signs up in the first world
        events, first, last = _one(
            url, "SELECT count(*), min(event_timestamp)::date, max(event_timestamp)::date FROM raw.events"
        )
        assert events > USERS * DAYS // 10 and (last - first).days == DAYS - 1
        assert _one(url, "SELECT DISTINCT horizon_days FROM synthetic.oracle_churn") == (7,)

        # `churn features compute` writes a snapshot per active user and day up to the day after the last event
        _churn("features", "compute")
        table = catalog_from_settings(settings).name
        latest, snapshotted = _one(
            url,
            sql.SQL("SELECT max(event_timestamp)::date, count(DISTINCT user_id) FROM features.{}").format(
                sql.Identifier(table)
            ),
        )
        assert latest == last + timedelta(days=1) and snapshotted == USERS
        labelled, churned = _one(url, "SELECT count(*), count(*) FILTER (WHERE churned) FROM features.churn_v1_labels")
        assert 0 < churned < labelled

        # `churn features apply` registers the feature service in Feast's SQL registry
        _churn("features", "apply")
        service = feast_repo.open_store(settings, connections(settings)).get_feature_service(table)
        assert {feature.name for view in service.feature_view_projections for feature in view.features} == set(
            catalog_from_settings(settings).names
        )

        # `churn features materialize` loads the latest snapshots into Redis, where the service reads them
        assert redis.Redis.from_url(redis_url).dbsize() == 0
        _churn("features", "materialize")
        users = sample_of_latest_users(url, catalog_from_settings(settings), 20)
        as_of = datetime.combine(latest, datetime.min.time(), tzinfo=UTC)  # the world ended in the past
        vectors = OnlineFeatures(settings, connections(settings)).read(users, now=as_of)
        assert len(users) == 20
        assert [sorted(set(v.status.values())) for v in vectors] == [["present"]] * 20, [v.status for v in vectors]

        # `churn train` registers a version: the model's first, so champion and challenger
        output = _churn("train")
        assert f"registered {model_name} version 1 (challenger, champion)" in output
        first = registry.get_version(mlflow_server, model_name, "1")
        assert first.aliases == ("challenger", "champion")
        assert first.tags["feature_service"] == table and 0.5 < first.metrics["test_roc_auc"] <= 1

        # `churn models rollback` undoes a promotion: champion goes back, the undone version becomes previous
        second = _copy_version(mlflow_server, model_name, "1")
        promotion.promote(mlflow_server, model_name, second, margin=settings.promotion_auc_margin, force=True)
        output = _churn("models", "rollback")
        assert f"rolled back: {model_name} version 1 is champion again" in output
        assert registry.alias_version(mlflow_server, model_name, "champion") == "1"
        assert registry.alias_version(mlflow_server, model_name, "previous") == second


def _copy_version(tracking_uri: str, model_name: str, version: str) -> str:
    """Another version of the same model files (a second `churn train` would only cost time)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.copy_model_version(f"models:/{model_name}/{version}", model_name).version)
