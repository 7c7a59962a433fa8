"""churn-platform: predict customer churn and keep the models honest in production."""

import os

# OpenMP threads that wait at a barrier sleep instead of spinning, unless the environment says otherwise.
# scikit-learn's gradient boosting opens a parallel region per tree node: on a small machine shared with
# PostgreSQL, MLflow or anything else, a spinning thread takes the core the thread it waits for needs, and a fit
# slows down with the same result (`python -m bench.train --busy 2 --wait-policy passive default active`;
# docs/training.md). libgomp reads this once, when it loads, so it is set here, before any module of the platform
# imports scikit-learn (tests/unit/test_openmp_policy.py checks every entrypoint): the one thing the package does
# on import, deliberately.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
