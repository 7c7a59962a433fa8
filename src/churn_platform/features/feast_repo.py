"""The Feast repository in `feature_repo/`: its connections, opening the store, and applying the definitions.

`feature_store.yaml` reads every connection from CHURN_FEAST_* variables (Feast expands `${VAR}` in it); they are
derived here from the platform's PostgreSQL and Redis URLs, so the offline store, the SQL registry and the online
store are the servers the rest of the platform uses, embedded or configured.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg

from churn_platform.connections import Connections
from churn_platform.settings import Settings

DEFINITION_MODULES = ("entities", "data_sources", "features", "feature_services")


def feast_environment(database_url: str, redis_url: str) -> dict[str, str]:
    """The CHURN_FEAST_* variables `feature_store.yaml` reads, for a PostgreSQL URL and a Redis URL."""
    pg = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(pg.get("host") or "127.0.0.1")
    user, password = str(pg.get("user") or "postgres"), str(pg.get("password") or "")
    database, port = str(pg.get("dbname") or "postgres"), str(pg.get("port") or "5432")
    on_socket = host.startswith("/")
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    registry = (
        f"postgresql+psycopg://{credentials}@/{database}?host={quote(host, safe='/')}&port={port}"
        if on_socket
        else f"postgresql+psycopg://{credentials}@{host}:{port}/{database}"
    )
    return {
        "CHURN_FEAST_REGISTRY_URL": registry,
        "CHURN_FEAST_PG_HOST": host,
        "CHURN_FEAST_PG_PORT": port,
        "CHURN_FEAST_PG_DATABASE": database,
        "CHURN_FEAST_PG_USER": user,
        "CHURN_FEAST_PG_PASSWORD": password,
        "CHURN_FEAST_PG_SSLMODE": str(pg.get("sslmode") or ("disable" if on_socket or _is_local(host) else "prefer")),
        "CHURN_FEAST_REDIS": redis_connection_string(redis_url),
    }


def _is_local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def redis_connection_string(url: str) -> str:
    """A redis:// URL in Feast's own `host:port,db=N,password=...` form."""
    parts = urlsplit(url)
    options = [f"{parts.hostname or 'localhost'}:{parts.port or 6379}"]
    db = (parts.path or "/0").lstrip("/") or "0"
    options.append(f"db={db}")
    if parts.password:
        options.append(f"password={parts.password}")
    if parts.scheme == "rediss":
        options.append("ssl=true")
    return ",".join(options)


def configure(connections: Connections) -> dict[str, str]:
    """Set the CHURN_FEAST_* variables for this process from the platform's servers; return them."""
    environment = feast_environment(connections.database_url, connections.redis)
    os.environ.update(environment)
    return environment


def open_store(settings: Settings, connections: Connections) -> Any:
    """The Feast FeatureStore of `feature_repo/`, connected to the platform's servers.

    One store per repository and connection set in a process: each FeatureStore opens its own registry engine
    and connection pools, so a fresh one per call would exhaust the server's connections.
    """
    environment = configure(connections)
    return _store(str(settings.feature_repo.resolve()), tuple(sorted(environment.items())))


def open_stock_store(settings: Settings, connections: Connections) -> Any:
    """The same repository with Feast's stock PostgreSQL offline store and local materialization engine.

    Same registry, servers and definitions as `open_store`; the reference our faster offline store and
    materialization engine are compared with, value for value in the tests and for speed in `bench/features.py`.
    """
    environment = configure(connections)
    return _stock_store(str(settings.feature_repo.resolve()), tuple(sorted(environment.items())))


@functools.lru_cache(maxsize=8)
def _stock_store(repo_path: str, environment: tuple[tuple[str, str], ...]) -> Any:
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load(os.path.expandvars((Path(repo_path) / "feature_store.yaml").read_text()))
    raw["offline_store"]["type"] = "postgres"
    raw["batch_engine"] = "local"
    config = RepoConfig(**raw)
    config.repo_path = Path(repo_path)
    return FeatureStore(config=config)


@functools.lru_cache(maxsize=8)
def _store(repo_path: str, environment: tuple[tuple[str, str], ...]) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=repo_path)


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """The feature repo's modules import each other by name, as under `feast apply`."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in DEFINITION_MODULES:
            sys.modules.pop(name, None)


def definitions(settings: Settings) -> list[Any]:
    """Every Feast object defined in the repo (entities, sources, views, services), each once."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    found: dict[int, Any] = {}
    with _importable(settings.feature_repo.resolve()):
        for name in DEFINITION_MODULES:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if isinstance(value, Entity | DataSource | FeatureView | FeatureService):
                    found[id(value)] = value
    return list(found.values())


def apply(settings: Settings, connections: Connections) -> list[str]:
    """The equivalent of `feast apply`, in-process: register the repo's definitions; return their names."""
    store = open_store(settings, connections)
    objects = definitions(settings)
    store.apply(objects)
    return [f"{type(o).__name__} {o.name}" for o in objects]
