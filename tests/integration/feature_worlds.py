"""Settings pointed at one test's database and Redis db, and the small world the feature-store tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import redis

from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]


def connections(settings: Settings, *, mlflow: bool = False) -> Connections:
    """The servers a test's settings name, resolved as an entrypoint would (configured URLs: nothing starts)."""
    return stack.connect(settings, redis=True, mlflow=mlflow)


def redis_db_url(stack_settings: Settings, db: int) -> str:
    """The session's Redis server, database `db`."""
    return stack.redis_url(stack_settings).rsplit("/", 1)[0] + f"/{db}"


@contextlib.contextmanager
def platform_settings(database_url: str, redis_url: str, **environment: str) -> Iterator[Settings]:
    """The platform's settings for `database_url` and an emptied `redis_url` (emptied again after), the repo's
    Feast definitions, and any further CHURN_* / tool variables; the cached settings are reset on both sides."""
    redis.Redis.from_url(redis_url).flushdb()
    with pytest.MonkeyPatch.context() as patch:
        variables = {
            "CHURN_DATABASE_URL": database_url,
            "CHURN_REDIS_URL": redis_url,
            "CHURN_FEATURE_REPO": str(REPO / "feature_repo"),
            **environment,
        }
        for name, value in variables.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            yield get_settings()
        finally:
            get_settings.cache_clear()
    redis.Redis.from_url(redis_url).flushdb()


def small_world_with_snapshots(settings: Settings, url: str) -> None:
    """150 users over 60 days (seed 4) and their daily snapshots up to 2025-03-01, churn = a cancel event."""
    world.generate_world(url, WorldConfig(users=150, days=60, seed=4))
    catalog = catalog_from_settings(settings)
    snapshots.compute_snapshots(url, catalog, ChurnDefinition("contractual", ("cancel",)), date(2025, 3, 1))


def labelled_world(settings: Settings, url: str, config: WorldConfig, until: date) -> None:
    """A generated world, its snapshots up to `until` with labels, and the Feast repo applied: ready to train on."""
    from churn_platform.features import feast_repo

    world.generate_world(url, config)
    catalog = catalog_from_settings(settings)
    definition = ChurnDefinition.from_settings(settings)
    snapshots.compute_snapshots(url, catalog, definition, until)
    snapshots.compute_labels(url, catalog, definition, settings.label_horizon_days)
    feast_repo.apply(settings, connections(settings))
