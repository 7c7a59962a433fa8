"""Moved to `churn_platform.model.encoding`. Kept because model versions registered before the move name their
encoder here (skops stores each type by its module path), and any loader (`mlflow models serve`, `mlflow.sklearn`,
the service) must still find it. Import from `churn_platform.model.encoding`."""

from churn_platform.model.encoding import FeatureEncoder as FeatureEncoder
