"""Moved to `churn_platform.model.candidates`. Kept because model versions registered before the move name the
logistic pipeline's transform here (skops stores each function by its module path), and any loader (`mlflow models
serve`, `mlflow.sklearn`, the service) must still find it. Import from `churn_platform.model.candidates`."""

from churn_platform.model.candidates import signed_log1p as signed_log1p
