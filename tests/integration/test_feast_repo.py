"""The Feast repository applied to a real SQL registry in PostgreSQL, with Redis as the online store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.integration.feature_worlds import connections

from churn_platform import stack
from churn_platform.features import feast_repo
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_feast_connection_strings_follow_the_platform_urls() -> None:
    socket = feast_repo.feast_environment("postgresql://postgres@/churn?host=/tmp/pg", "redis://127.0.0.1:6390/2")
    assert socket["CHURN_FEAST_PG_HOST"] == "/tmp/pg"
    assert socket["CHURN_FEAST_PG_SSLMODE"] == "disable"
    assert socket["CHURN_FEAST_REGISTRY_URL"] == "postgresql+psycopg://postgres:@/churn?host=/tmp/pg&port=5432"
    assert socket["CHURN_FEAST_REDIS"] == "127.0.0.1:6390,db=2"
    tcp = feast_repo.feast_environment("postgresql://u:p%40ss@db.internal:6543/churn", "redis://:s3cret@cache:6379/0")
    assert tcp["CHURN_FEAST_REGISTRY_URL"] == "postgresql+psycopg://u:p%40ss@db.internal:6543/churn"
    assert tcp["CHURN_FEAST_PG_PASSWORD"] == "p@ss"
    assert tcp["CHURN_FEAST_REDIS"] == "cache:6379,db=0,password=s3cret"


def test_apply_registers_the_versioned_feature_service_in_the_sql_registry(
    make_database: Callable[[], str], stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fresh platform database and the repo's definitions
    settings = Settings(
        database_url=make_database(),
        redis_url=stack.redis_url(stack_settings),
        feature_repo=REPO / "feature_repo",
        _env_file=None,  # type: ignore[call-arg]
    )
    for name in feast_repo.feast_environment(settings.database_url or "", settings.redis_url or ""):
        monkeypatch.delenv(name, raising=False)

    # When the repo is applied
    applied = feast_repo.apply(settings, connections(settings))

    # Then a second process-level store sees the same registry: one view with every catalog feature, and the
    # versioned feature service a model will name
    catalog = catalog_from_settings(settings)
    assert f"FeatureService {catalog.name}" in applied
    store = feast_repo.open_store(settings, connections(settings))
    view = store.get_feature_view(f"{catalog.name}_user_features")
    assert [f.name for f in view.features] == catalog.names
    service = store.get_feature_service(catalog.name)
    assert [p.name for p in service.feature_view_projections] == [view.name]
    # And applying again changes nothing
    assert feast_repo.apply(settings, connections(settings)) == applied
