"""The prediction service's BentoML configuration, from the platform's settings.

Two of BentoML's per-request layers are off unless asked for: its access log, on every route (the prediction log
already records every prediction with its latency, and the service's log keeps warnings and errors), and its
OpenTelemetry middleware on the prediction routes, which builds spans for every request and every response message
even with no exporter configured. Together they cost about as much as reading 100 users' features
(docs/serving.md). `CHURN_SERVE_ACCESS_LOG` and `CHURN_SERVE_TRACING` turn them back on; the exporter is
BentoML's own setting.
"""

from __future__ import annotations

from typing import Any

from churn_platform.settings import Settings

PREDICTION_ROUTES = ("/predict", "/predict_batch", "/explain")
REQUEST_TIMEOUT_S = 60
# MLflow's client retries a refused connection with exponential backoff: with its defaults (7 retries, factor 2)
# one alias read against a stopped registry took 257 s, and so would each of the service's polls during an outage
# (the alert and the experiment and feature-clock updates that share the poll would wait that long). The service
# asks once more, quickly, and lets the next poll try again. Variables already set in the environment win.
REGISTRY_CLIENT_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def observability_options(settings: Settings, routes: tuple[str, ...] = PREDICTION_ROUTES) -> dict[str, Any]:
    """`@bentoml.service` options for the access log and tracing of `routes` (BentoML's metrics stay on)."""
    options: dict[str, Any] = {"logging": {"access": {"enabled": settings.serve_access_log}}}
    if not settings.serve_tracing:
        options["tracing"] = {"excluded_urls": list(routes)}
    return options


def service_options(settings: Settings) -> dict[str, Any]:
    """Every `@bentoml.service` option of the prediction service."""
    return {
        "name": "churn",
        "workers": settings.serve_workers,
        "traffic": {"timeout": REQUEST_TIMEOUT_S},
        **observability_options(settings),
    }
