"""Training: time-based splits, candidate models, evaluation, and the MLflow model registry."""
