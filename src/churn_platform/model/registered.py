"""A registered version's pipeline, downloaded through the registry's own server and loaded (scikit-learn flavour,
skops with the trusted types its MLmodel file lists)."""

from __future__ import annotations

import tempfile
from typing import Any


def load_pipeline(tracking_uri: str, model_name: str, version: str) -> Any:
    """Download and load one version. Through this registry's server explicitly: `models:/` URIs would resolve
    through MLflow's process-wide tracking URI, which may be unset (then a local SQLite file) or point elsewhere."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return load_logged_pipeline(tracking_uri, client.get_model_version_download_uri(model_name, version))


def load_logged_pipeline(tracking_uri: str, artifact_uri: str) -> Any:
    """Download and load a logged model from its artifact location, through this tracking server."""
    import mlflow.artifacts
    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="churn-model-") as folder:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, tracking_uri=tracking_uri, dst_path=folder
        )
        return mlflow.sklearn.load_model(local)
