"""A small fitted model of the platform's own shape (encode -> calibrated classifier), for tests that need one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from churn_platform.model.candidates import fit_candidate
from churn_platform.model.encoding import FeatureEncoder

FEATURES = ["logins", "plan"]


def small_frame(seed: int, rows: int = 400) -> tuple[pd.DataFrame, np.ndarray]:  # type: ignore[type-arg]
    """`rows` users with a count and a category, and labels that depend on the count."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"logins": rng.poisson(5, rows).astype(float), "plan": rng.choice(["a", "b"], rows)})
    labels = (rng.random(rows) < 1 / (1 + np.exp(frame["logins"] - 5))).astype(np.int64)
    return frame, labels


def small_pipeline(seed: int, rows: int = 400) -> Any:
    """The platform's logistic pipeline fitted on the first half of a small frame, calibrated on the second."""
    frame, labels = small_frame(seed, rows)
    encoder = FeatureEncoder(numeric=["logins"], categorical=["plan"]).fit(frame)
    x = encoder.transform(frame)
    half = rows // 2
    return fit_candidate("logistic_regression", encoder, x[:half], labels[:half], x[half:], labels[half:], seed).model
