"""Where the platform's servers are: resolved once by an entrypoint, handed down to the library.

An entrypoint (the CLI, a flow, the BentoML service, a benchmark) asks the stack package for a `Connections`: the
configured URLs as they are, or the embedded servers' (started if needed). Everything below the entrypoints takes
this object, or one of its URLs, as an argument; no library module discovers or starts a server on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


class MissingConnectionError(RuntimeError):
    """A library call needs a server that its entrypoint did not resolve."""


@dataclass(frozen=True)
class Connections:
    """The URLs of the servers one entrypoint resolved; a server it did not need is None."""

    database_url: str
    redis_url: str | None = None
    mlflow_tracking_uri: str | None = None
    service_url: str | None = None

    @property
    def redis(self) -> str:
        """The online store's Redis URL; an error names it when the entrypoint did not resolve it."""
        return _required(self.redis_url, "Redis (CHURN_REDIS_URL)")

    @property
    def mlflow(self) -> str:
        """The MLflow tracking server's URI; an error names it when the entrypoint did not resolve it."""
        return _required(self.mlflow_tracking_uri, "the MLflow tracking server (MLFLOW_TRACKING_URI)")

    @property
    def service(self) -> str:
        """The prediction service's URL; an error names it when the entrypoint did not resolve it."""
        return _required(self.service_url, "the prediction service (CHURN_SERVE_URL)")


def _required(url: str | None, what: str) -> str:
    if url is None:
        raise MissingConnectionError(f"{what} was not resolved for this call: its entrypoint must ask the stack for it")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, for display."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
