"""churn-platform: predict customer churn and keep the models honest in production."""

__version__ = "0.1.0"
