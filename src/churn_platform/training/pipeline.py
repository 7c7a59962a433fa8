"""Training as the platform runs it: a Feast training set for a time range, the oracle of a synthetic world, the
BG/NBD baseline over the raw events, one run of `trainer.train_model`, then MLflow (tracked run, registered version,
aliases)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from churn_platform import db
from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.features import training_sets
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings
from churn_platform.training import registry
from churn_platform.training.censoring import deciding_events
from churn_platform.training.evaluation import Scores
from churn_platform.training.purchase_histories import bgnbd_lookup
from churn_platform.training.split import utc_days
from churn_platform.training.trainer import OracleLookup, TrainConfig, TrainedModel, train_model

logger = logging.getLogger(__name__)

ORACLE_SQL = """
SELECT user_id, day, p_churn FROM synthetic.oracle_churn
WHERE horizon_days = %(horizon)s AND day BETWEEN %(first)s AND %(last)s
"""


@dataclass(frozen=True)
class TrainResult:
    trained: TrainedModel
    registered: registry.RegisteredVersion | None


def oracle_lookup(url: str, horizon_days: int) -> OracleLookup:
    """The synthetic world's own churn probability for each test row; None for data without an oracle."""

    def lookup(rows: pd.DataFrame) -> Scores | None:
        days = utc_days(rows["event_timestamp"])
        with db.connect(url) as conn:
            found = conn.execute(ORACLE_SQL, {"horizon": horizon_days, "first": days.min(), "last": days.max()})
            oracle = pd.DataFrame(found.fetchall(), columns=["user_id", "day", "p_churn"])
        if oracle.empty:
            return None
        keyed = pd.DataFrame({"user_id": rows["user_id"].to_numpy(), "day": days.to_numpy()})
        matched = keyed.merge(oracle, on=["user_id", "day"], how="left")["p_churn"].to_numpy(dtype=np.float64)
        if np.isnan(matched).any():
            logger.warning(
                "the oracle lacks %d of %d test rows: no oracle AUC", int(np.isnan(matched).sum()), len(rows)
            )
            return None
        return matched

    return lookup


def train(
    settings: Settings,
    connections: Connections,
    *,
    start: date | None = None,
    end: date | None = None,
    config: TrainConfig | None = None,
    register: bool = True,
) -> TrainResult:
    """Train on labelled snapshots in [start, end) (default: all), log to MLflow and register a version."""
    config = config or TrainConfig(
        seed=settings.train_seed,
        test_days=settings.train_test_days,
        validation_days=settings.train_validation_days,
        validation=settings.train_validation,
        folds=settings.train_folds,
        refit=settings.train_refit and register,  # the refit exists to be registered
        censored=settings.train_censored,
        reference_rows=settings.monitor_reference_rows,
    )
    catalog = catalog_from_settings(settings)
    url = connections.database_url
    rows = training_sets.training_set(
        settings, connections, start=start, end=end, every_days=settings.train_snapshot_every_days
    )
    if rows.frame.empty:
        raise ValueError("no labelled snapshots in that range: run `churn features compute` first")
    definition = ChurnDefinition.from_settings(settings)
    bgnbd = bgnbd_lookup(url, definition)
    deciding = deciding_events(url, definition, settings.label_horizon_days)
    trained = train_model(rows, catalog, config, oracle_lookup(url, settings.label_horizon_days), bgnbd, deciding)
    if not register:
        return TrainResult(trained, None)
    stamps = utc_days(rows.frame["event_timestamp"])
    params: dict[str, Any] = {
        "seed": config.seed,
        "test_days": config.test_days,
        "validation_days": config.validation_days,
        "validation": config.validation,  # as asked (auto, time, folds)
        "validation_design": trained.split.design,  # as used
        "validation_folds": trained.folds or 0,  # K of the folds design (0: a validation window)
        "snapshot_every_days": settings.train_snapshot_every_days,
        "label_horizon_days": settings.label_horizon_days,
        "candidates": ",".join(config.candidates),
        "refit": config.refit,  # the registered model refitted on every labelled row after the test evaluation
        "censored": config.censored,  # snapshots censored at the cut trained on, their outcomes completed
    }
    registered = registry.log_and_register(
        trained,
        tracking_uri=connections.mlflow,
        model_name=settings.model_name,
        training_range=f"{stamps.min()}..{stamps.max()}",
        params=params,
    )
    return TrainResult(trained, registered)
