"""Batch scores of every user of the snapshot at a past or present day, from the offline store, with a registered
version: backtests ("how would the model have ranked customers then, and who actually churned?") and campaigns.

The version is the `champion` unless named (a version number or an alias). It must have been trained on the feature
service the platform is configured for: a model is only ever scored on the features it learned from. Each user's
realised label over the configured horizon comes along where it is known, so a backtest is one file; the summary
says when the version had learned those outcomes (a version trained on later labels: not a backtest).
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_platform.connections import Connections
from churn_platform.features import population
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.model.aliases import CHAMPION, is_version_number
from churn_platform.serving.batch_scoring import risk_band
from churn_platform.serving.models import LoadedModel, ModelLoadError, load_version
from churn_platform.settings import Settings

log = logging.getLogger(__name__)

BANDS = ("low", "medium", "high")
COLUMNS = ["user_id", "as_of", "p_churn", "risk_band", "model_name", "model_version", "churned", "horizon_days"]
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

Step = Callable[[str], None]


class ScoringError(ValueError):
    """Scores as of that day cannot be made as asked: no such version, another feature service, no snapshot."""


@dataclass(frozen=True)
class ScoredUsers:
    """Every user of one snapshot, scored by one version: the columns of `COLUMNS`, ordered by user_id."""

    frame: pd.DataFrame
    as_of: date
    model_name: str
    model_version: str
    reference: str  # what the version was asked by: `champion`, another alias, or its number
    feature_service: str
    horizon_days: int
    outcomes_seen_through: date | None = None  # the version's tag: the outcomes its model learned end before this

    def summary(self) -> ScoreSummary:
        return summarize(self)

    @property
    def in_sample(self) -> bool:
        """The version learned outcomes of the days these labels look at ([as_of, as_of + H)): its AUC against
        them is in-sample. A backtest trains on labels known by the day (`churn train --end`), as the refit of a
        version trained on every labelled day has learned nearly every realised outcome."""
        return self.outcomes_seen_through is not None and self.outcomes_seen_through > self.as_of

    @property
    def backtest_end(self) -> date:
        """The `churn train --end` (exclusive) whose versions learned no outcome after the scored day."""
        return self.as_of - timedelta(days=self.horizon_days) + timedelta(days=1)


@dataclass(frozen=True)
class ScoreSummary:
    """What a set of scores says at a glance, and, where outcomes are known, how well it ranked them."""

    users: int
    mean_p: float
    band_shares: dict[str, float]
    labelled: int
    churn_rate: float | None  # among the labelled users
    roc_auc: float | None  # of the scores against the realised labels; None without both classes


def score_as_of(
    settings: Settings,
    connections: Connections,
    as_of: date,
    version: str | None = None,
    *,
    on_step: Step | None = None,
    store: Any = None,
) -> ScoredUsers:
    """Score every user of the snapshot at `as_of` (midnight UTC) with `version` (default: the champion).

    Raises ScoringError with one clear sentence for an unknown version or alias, a version trained on another
    feature service, or a day without a snapshot (naming the computed range).
    """
    step = on_step or (lambda _: None)
    catalog = catalog_from_settings(settings)
    reference = version or CHAMPION
    step(f"resolving {reference} of {settings.model_name} in the registry")
    number, tags = resolve_version(connections.mlflow, settings.model_name, reference)
    trained_on = tags.get("feature_service", "")
    if trained_on != catalog.feature_service_name:
        raise ScoringError(
            f"version {number} of {settings.model_name} was trained on feature service {trained_on or '(unrecorded)'},"
            f" but the platform is configured for {catalog.feature_service_name} (CHURN_FEATURE_CATALOG)"
        )
    step(f"reading the features of the snapshot at {as_of} through Feast")
    try:
        features = population.population_features(settings, connections, catalog, as_of, store=store)
    except population.PopulationError as exc:
        raise ScoringError(str(exc)) from exc
    step(f"loading version {number} of {settings.model_name}")
    try:
        model = load_version(connections.mlflow, settings.model_name, number)
    except ModelLoadError as exc:
        raise ScoringError(str(exc)) from exc
    missing = [name for name in model.feature_names if name not in features.columns]
    if missing:
        raise ScoringError(f"version {number} needs features {catalog.name} does not serve: {missing}")
    step(f"scoring {len(features):,} users")
    probabilities = pipeline_scores(model, features)
    step(f"reading the realised labels over {settings.label_horizon_days} days")
    labels = population.realised_labels(connections.database_url, catalog, as_of, settings.label_horizon_days)
    frame = _scores_frame(features, probabilities, labels, settings, as_of, model)
    seen = tags.get("outcomes_seen_through")
    return ScoredUsers(
        frame,
        as_of,
        settings.model_name,
        number,
        reference,
        catalog.name,
        settings.label_horizon_days,
        outcomes_seen_through=date.fromisoformat(seen) if seen else None,
    )


def resolve_version(tracking_uri: str, model_name: str, reference: str) -> tuple[str, dict[str, str]]:
    """The version number `reference` names (itself, or an alias's target) and that version's tags."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if is_version_number(reference):
            found = client.get_model_version(model_name, reference)
        else:
            aliases = {alias: str(v) for alias, v in client.get_registered_model(model_name).aliases.items()}
            if reference not in aliases:
                held = ", ".join(sorted(aliases)) or "none"
                raise ScoringError(f"model {model_name} has no alias `{reference}` (its aliases: {held})")
            found = client.get_model_version(model_name, aliases[reference])
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise ScoringError(f"the MLflow registry at {tracking_uri} did not answer: {exc.message}") from exc
        what = f"version {reference}" if is_version_number(reference) else f"alias `{reference}`"
        raise ScoringError(f"model {model_name} has no {what}: see `churn models list`") from exc
    return str(found.version), dict(found.tags or {})


def pipeline_scores(model: LoadedModel, features: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.float64]]:
    """P(churn) of each row: the registered pipeline's own `predict_proba` on the columns it was trained on."""
    probabilities: np.ndarray[Any, np.dtype[np.float64]] = model.model.predict_proba(features[model.feature_names])[
        :, 1
    ]
    return probabilities


def _scores_frame(
    features: pd.DataFrame,
    probabilities: np.ndarray[Any, np.dtype[np.float64]],
    labels: pd.DataFrame,
    settings: Settings,
    as_of: date,
    model: LoadedModel,
) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": features["user_id"].astype(str).to_numpy(), "p_churn": probabilities})
    frame.insert(1, "as_of", as_of)
    edges = settings.serve_risk_bands
    frame["risk_band"] = [risk_band(float(p), edges) for p in probabilities.tolist()]
    frame["model_name"] = model.name
    frame["model_version"] = model.version
    frame = frame.merge(labels, on="user_id", how="left", validate="one_to_one")
    frame["churned"] = frame["churned"].astype("boolean")  # NULL where the horizon has not passed yet
    frame["horizon_days"] = settings.label_horizon_days
    return frame[COLUMNS].sort_values("user_id", ignore_index=True)


def summarize(scored: ScoredUsers) -> ScoreSummary:
    """Users, mean score, share per risk band; ROC AUC and churn rate over the users whose outcome is known."""
    from sklearn.metrics import roc_auc_score

    frame = scored.frame
    users = len(frame)
    shares = frame["risk_band"].value_counts(normalize=True)
    labelled = frame[frame["churned"].notna()]
    outcomes = labelled["churned"].astype(bool).to_numpy()
    both = 0 < outcomes.sum() < len(outcomes)
    return ScoreSummary(
        users=users,
        mean_p=float(frame["p_churn"].mean()) if users else math.nan,
        band_shares={band: float(shares.get(band, 0.0)) for band in BANDS},
        labelled=len(labelled),
        churn_rate=float(outcomes.mean()) if len(outcomes) else None,
        roc_auc=float(roc_auc_score(outcomes, labelled["p_churn"].to_numpy())) if both else None,
    )


def summary_rows(scored: ScoredUsers) -> list[tuple[str, str]]:
    """The summary as (what, value) rows, for the command's table and the flow's artifact."""
    summary = scored.summary()
    rows = [
        ("model", f"{scored.model_name} version {scored.model_version} ({scored.reference})"),
        ("feature service", scored.feature_service),
        ("as of", f"{scored.as_of} 00:00 UTC"),
        ("users scored", f"{summary.users:,}"),
        ("mean P(churn)", f"{summary.mean_p:.4f}"),
    ]
    rows += [(f"{band} risk", f"{share:.1%}") for band, share in summary.band_shares.items()]
    horizon = f"{scored.horizon_days} days"
    rows.append((f"labels known ({horizon})", f"{summary.labelled:,} of {summary.users:,}"))
    if summary.churn_rate is not None:
        rows.append(("realised churn rate", f"{summary.churn_rate:.1%}"))
    rows.append(("ROC AUC vs realised", "-" if summary.roc_auc is None else f"{summary.roc_auc:.4f}"))
    if summary.roc_auc is not None and scored.in_sample:
        rows.append(
            (
                "in-sample",
                f"version {scored.model_version} learned outcomes up to {scored.outcomes_seen_through}, after"
                f" {scored.as_of}: this AUC is not a backtest (train with `churn train --end"
                f" {scored.backtest_end}` for one)",
            )
        )
    return rows


def summary_markdown(scored: ScoredUsers) -> str:
    lines = [f"# Churn scores as of {scored.as_of}", "", "| | |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in summary_rows(scored)]
    return "\n".join(lines) + "\n"


def output_format(path: Path) -> str:
    """`parquet` or `csv`, from the file's extension; a ScoringError for any other."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ScoringError(f"{path}: the scores are written as .parquet or .csv, not {path.suffix or 'no extension'}")
    return found


def write_scores(scored: ScoredUsers, path: Path) -> Path:
    """Write the scores to `path` (Parquet with the model and day in its metadata, or CSV, by extension) through a
    temporary file in the same folder and a rename, so a reader never sees half a file."""
    kind = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        if kind == "csv":
            scored.frame.to_csv(partial, index=False)
        else:
            table = pa.Table.from_pandas(scored.frame, preserve_index=False)
            metadata = {
                **(table.schema.metadata or {}),
                b"churn.model": f"{scored.model_name}/{scored.model_version}".encode(),
                b"churn.feature_service": scored.feature_service.encode(),
                b"churn.as_of": scored.as_of.isoformat().encode(),
                b"churn.horizon_days": str(scored.horizon_days).encode(),
            }
            pq.write_table(table.replace_schema_metadata(metadata), partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    log.info("wrote %d scores to %s", len(scored.frame), path)
    return path
