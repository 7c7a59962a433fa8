"""Prefect flows: thin compositions of churn_platform library calls."""
