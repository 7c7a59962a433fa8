"""The bench world: a trained world of one size (its databases, data folder and Redis db), reused across runs.

`bench/serving.py` prepares it and points itself, the local stack and the peers at it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psycopg
import redis
from psycopg import sql

from churn_platform import db, stack
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, online, snapshots
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.model import aliases
from churn_platform.settings import Settings, get_settings
from churn_platform.training import pipeline

DAYS = 120
SEED = 7
# Test and validation windows: 120 days leave 85 labelled days (30-day label horizon) for the two windows, two
# 30-day gaps and training; 7 + 7 leave 11 days of training snapshots.
TRAIN_WINDOW_DAYS = 7
ONLINE_DB = 10
DATABASE_PREFIX = "churn_bench_serving"
DATA_ROOT = Path(tempfile.gettempdir()) / "churn-bench-serving"  # not in the checkout: `.churn-bench` is not ignored

TRUNCATE_LOG_SQL = "TRUNCATE serving.prediction_log"
DATABASE_EXISTS_SQL = "SELECT 1 FROM pg_database WHERE datname = %s"


@dataclass(frozen=True)
class BenchWorld:
    """Where one world size lives: its database, its MLflow database and data folder, the online store's Redis db."""

    users: int
    server_url: str  # the configured (or embedded) PostgreSQL server
    redis_server_url: str
    # Names a bench gives its worlds (another bench's subclass gives its own: worlds of two benches never meet)
    prefix: ClassVar[str] = DATABASE_PREFIX
    online_db: ClassVar[int] = ONLINE_DB
    data_root: ClassVar[Path] = DATA_ROOT

    @property
    def name(self) -> str:
        return f"{self.prefix}_{self.users}u_{DAYS}d"

    @property
    def database_url(self) -> str:
        return psycopg.conninfo.make_conninfo(self.server_url, dbname=self.name)

    @property
    def mlflow_database(self) -> str:
        return f"{self.name}_mlflow"

    @property
    def redis_url(self) -> str:
        return self.redis_server_url.rsplit("/", 1)[0] + f"/{self.online_db}"

    @property
    def data_dir(self) -> Path:
        return self.data_root / f"{self.users}u_{DAYS}d"

    def environment(self) -> dict[str, str]:
        """The platform's settings for this world; the prediction service inherits them."""
        return {
            "CHURN_DATABASE_URL": self.database_url,
            "CHURN_REDIS_URL": self.redis_url,
            "CHURN_DATA_DIR": str(self.data_dir),
            "CHURN_MLFLOW_PORT": "0",
            "CHURN_PREFECT_PORT": "0",
            "CHURN_MLFLOW_DATABASE": self.mlflow_database,
            "CHURN_SERVE_PORT": "0",
            "CHURN_MODEL_NAME": self.prefix,
            "CHURN_TRAIN_TEST_DAYS": str(TRAIN_WINDOW_DAYS),
            "CHURN_TRAIN_VALIDATION_DAYS": str(TRAIN_WINDOW_DAYS),
        }


def bench_settings(bench: BenchWorld) -> Settings:
    """Point this process (and every server it starts) at the bench world; the stack's own MLflow and service."""
    for variable in ("MLFLOW_TRACKING_URI", "CHURN_SERVE_URL"):
        os.environ.pop(variable, None)
    os.environ.update(bench.environment())
    get_settings.cache_clear()
    return get_settings()


def database_exists(server_url: str, name: str) -> bool:
    admin = psycopg.conninfo.make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin) as conn:
        return conn.execute(DATABASE_EXISTS_SQL, (name,)).fetchone() is not None


def has_champion(settings: Settings) -> bool:
    """Whether the registry has a champion whose artifacts are still on disk (the data folder is in /tmp).

    Starts the world's MLflow server if it is not running (the service needs it next).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    artifacts = settings.data_dir / "mlflow" / "artifacts"
    if not artifacts.is_dir() or not any(artifacts.iterdir()):
        return False
    uri = stack.mlflow_tracking_uri(settings)
    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
            settings.model_name, aliases.CHAMPION
        )
    except MlflowException:
        return False
    return True


def world_is_built(bench: BenchWorld, settings: Settings) -> bool:
    return database_exists(bench.server_url, bench.name) and has_champion(settings)


def drop_world(bench: BenchWorld, settings: Settings) -> None:
    """Stop the world's servers and delete everything it stored: both databases, its data folder, Redis db 10."""
    stack.down(settings)
    admin = psycopg.conninfo.make_conninfo(bench.server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in (bench.name, bench.mlflow_database):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    shutil.rmtree(bench.data_dir, ignore_errors=True)
    redis.Redis.from_url(bench.redis_url).flushdb()


def build_world(bench: BenchWorld, settings: Settings) -> str:
    """World, snapshots and labels, Feast apply, and a champion in the registry; return a line about the model."""
    db.init_schema(bench.database_url)
    world.generate_world(bench.database_url, WorldConfig(users=bench.users, days=DAYS, seed=SEED))
    until = snapshots.day_after_last_event(bench.database_url)
    assert until is not None
    snapshots.refresh(bench.database_url, settings, until)
    connections = stack.connect(settings, redis=True, mlflow=True)
    feast_repo.apply(settings, connections)
    trained = pipeline.train(settings, connections).trained  # the first version of a model becomes its champion
    return f"{trained.candidate}, test AUC {trained.evaluation.roc_auc:.3f}"


def prepare_world(bench: BenchWorld, settings: Settings, rebuild: bool) -> str:
    """Reuse the world if it is complete (unless `rebuild`), else build it; load its features into Redis afresh."""
    started = time.perf_counter()
    if not rebuild and world_is_built(bench, settings):
        db.init_schema(bench.database_url)  # a world built by older code gets this code's tables, as `churn up` does
        how = "reused"
    else:
        drop_world(bench, settings)
        model = build_world(bench, settings)
        how = f"built in {time.perf_counter() - started:.0f} s ({model})"
    # Redis db 10 is shared with bench.features, which flushes it: write this world's features again (a second).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # Feast's progress
        connections = stack.connect(settings, redis=True)
        online.clear_online(settings, connections)
        online.materialize(settings, connections, full=True)
    with db.connect(bench.database_url) as conn:
        conn.execute(TRUNCATE_LOG_SQL)  # the prediction log of earlier runs: the reused world must not grow
    return how


def write_user_ids(settings: Settings, path: Path, count: int) -> int:
    """Users of the latest snapshot (they have features) to the file wrk cycles through; return how many."""
    users = online.sample_of_latest_users(settings.database_url or "", catalog_from_settings(settings), count)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{user}\n" for user in users))
    return len(users)
