"""Scores as of a day against real PostgreSQL, Feast and an MLflow server: every user of the snapshot, the registered
pipeline's own probabilities, realised labels where known, a named version, the errors, the command and the flow."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections, labelled_world, platform_settings, redis_db_url

from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import training_sets
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.model.registered import load_pipeline
from churn_platform.serving import as_of_scores
from churn_platform.serving.as_of_scores import ScoringError, score_as_of
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry
from churn_platform.training.trainer import TrainConfig, train_model

SCORING_DB = 7  # a Redis database of its own (scoring reads no online features)
CONFIG = TrainConfig(seed=5, test_days=14, validation_days=14)
LAST_DAY = date(2025, 6, 1)  # snapshots up to this day; the world's events end the day before
LABELLED_DAY = date(2025, 4, 1)  # its 30-day horizon has passed: every label is known
RECENT_DAY = date(2025, 5, 20)  # its horizon has not: no label is known


@pytest.fixture(scope="module")
def world(make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str) -> Iterator[Settings]:
    """A 300-user, 150-day world with snapshots and labels, the Feast repo applied, and two versions of a model of
    its own: version 1 (champion) trained as the platform trains, version 2 (challenger) fitted on shuffled labels."""
    url = make_database()
    environment = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CHURN_MODEL_NAME": f"churn_scores_{uuid.uuid4().hex[:8]}",
        "CHURN_TRAIN_SEED": str(CONFIG.seed),
        "CHURN_TRAIN_TEST_DAYS": str(CONFIG.test_days),
        "CHURN_TRAIN_VALIDATION_DAYS": str(CONFIG.validation_days),
    }
    with platform_settings(url, redis_db_url(stack_settings, SCORING_DB), **environment) as settings:
        labelled_world(settings, url, WorldConfig(users=300, days=150, seed=21), LAST_DAY)
        champion = pipeline.train(settings, connections(settings, mlflow=True)).registered
        assert champion is not None and champion.version == "1"
        rows = training_sets.training_set(
            settings, connections(settings), every_days=settings.train_snapshot_every_days
        )
        rng = np.random.default_rng(0)
        shuffled = replace(rows, frame=rows.frame.assign(churned=rng.permutation(rows.frame["churned"].to_numpy())))
        # (not refitted: any second version that scores differently will do, and a refit would only cost time)
        noise = train_model(shuffled, catalog_from_settings(settings), replace(CONFIG, refit=False))
        registry.log_and_register(
            noise, tracking_uri=mlflow_server, model_name=settings.model_name, training_range="shuffled", params={}
        )
        yield settings


def snapshot_rows(settings: Settings, day: date) -> pd.DataFrame:
    """The snapshot of `day` read straight from PostgreSQL (not through Feast), with the stored labels."""
    catalog = catalog_from_settings(settings)
    with psycopg.connect(settings.database_url or "") as conn:
        cur = conn.execute(
            f"SELECT s.*, l.churned FROM {catalog.table} s LEFT JOIN {catalog.labels_table} l"
            " ON l.user_id = s.user_id AND l.event_timestamp = s.event_timestamp AND l.horizon_days = %(h)s"
            " WHERE s.event_timestamp = %(t)s ORDER BY s.user_id",
            {"t": f"{day} 00:00+00", "h": settings.label_horizon_days},
        )
        frame = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])
    for feature in catalog.features:
        if feature.dtype != "text":
            frame[feature.name] = pd.to_numeric(frame[feature.name]).astype("float64")
    return frame


def expected_scores(settings: Settings, version: str, rows: pd.DataFrame) -> np.ndarray[Any, Any]:
    model = load_pipeline(settings.mlflow_tracking_uri or "", settings.model_name, version)
    features = model.named_steps["encode"].feature_names
    return np.asarray(model.predict_proba(rows[features])[:, 1])


def test_every_user_of_the_snapshot_is_scored_by_the_champion_as_its_pipeline_scores_them(
    world: Settings, mlflow_tracking: str
) -> None:
    rows = snapshot_rows(world, LABELLED_DAY)
    assert len(rows) > 100 and rows["churned"].notna().all() and rows["churned"].any()

    scored = score_as_of(world, connections(world, mlflow=True), LABELLED_DAY)

    frame = scored.frame
    assert list(frame.columns) == as_of_scores.COLUMNS
    assert frame["user_id"].tolist() == rows["user_id"].tolist()
    np.testing.assert_allclose(frame["p_churn"], expected_scores(world, "1", rows), rtol=1e-12, atol=0)
    assert (scored.model_version, scored.reference, scored.feature_service) == ("1", "champion", "churn_v1")
    assert set(frame["model_version"]) == {"1"} and set(frame["as_of"]) == {LABELLED_DAY}
    assert frame["churned"].tolist() == rows["churned"].tolist()
    assert set(frame["horizon_days"]) == {world.label_horizon_days}
    low, high = world.serve_risk_bands
    expected_bands = np.where(frame["p_churn"] >= high, "high", np.where(frame["p_churn"] >= low, "medium", "low"))
    assert frame["risk_band"].tolist() == expected_bands.tolist()
    summary = scored.summary()
    assert summary.users == summary.labelled == len(rows)
    assert summary.roc_auc == pytest.approx(roc_auc_score(rows["churned"].astype(bool), frame["p_churn"]), abs=1e-12)
    assert summary.roc_auc is not None and summary.roc_auc > 0.6
    assert summary.churn_rate == pytest.approx(rows["churned"].astype(bool).mean())
    assert sum(summary.band_shares.values()) == pytest.approx(1.0)


def test_labels_are_missing_where_the_horizon_has_not_passed(world: Settings, mlflow_tracking: str) -> None:
    rows = snapshot_rows(world, RECENT_DAY)
    assert len(rows) > 100 and rows["churned"].isna().all()

    scored = score_as_of(world, connections(world, mlflow=True), RECENT_DAY)

    assert scored.frame["user_id"].tolist() == rows["user_id"].tolist()
    assert scored.frame["churned"].isna().all()
    summary = scored.summary()
    assert (summary.labelled, summary.roc_auc, summary.churn_rate) == (0, None, None)


def test_a_named_version_or_alias_scores_with_that_version(world: Settings, mlflow_tracking: str) -> None:
    rows = snapshot_rows(world, LABELLED_DAY)
    champion = score_as_of(world, connections(world, mlflow=True), LABELLED_DAY)

    by_number = score_as_of(world, connections(world, mlflow=True), LABELLED_DAY, "2")
    by_alias = score_as_of(world, connections(world, mlflow=True), LABELLED_DAY, "challenger")

    assert (by_number.model_version, by_alias.model_version, by_alias.reference) == ("2", "2", "challenger")
    np.testing.assert_allclose(by_number.frame["p_churn"], expected_scores(world, "2", rows), rtol=1e-12, atol=0)
    pd.testing.assert_frame_equal(by_number.frame, by_alias.frame)
    assert not np.allclose(by_number.frame["p_churn"], champion.frame["p_churn"])


@pytest.mark.parametrize(
    ("day", "version", "message"),
    [
        (LAST_DAY + timedelta(days=1), None, "outside the computed snapshot days"),
        (date(2024, 12, 1), None, "outside the computed snapshot days"),
        (LABELLED_DAY, "999", "has no version 999"),
        (LABELLED_DAY, "nope", "has no alias `nope`"),
    ],
)
def test_a_day_without_a_snapshot_or_an_unknown_version_is_one_clear_error(
    world: Settings, mlflow_tracking: str, day: date, version: str | None, message: str
) -> None:
    with pytest.raises(ScoringError, match=message) as refused:
        score_as_of(world, connections(world, mlflow=True), day, version)
    if "snapshot" in message:
        assert "2025-01-02 .. 2025-06-01" in str(refused.value) and "churn features compute" in str(refused.value)


def test_a_version_trained_on_another_feature_service_is_refused(world: Settings, mlflow_tracking: str) -> None:
    # Given a version whose recorded feature service is not the configured catalog
    other = f"{world.model_name}_other"
    source = MlflowClient().get_model_version(world.model_name, "1")
    MlflowClient().create_registered_model(other)
    created = MlflowClient().create_model_version(
        other,
        source.source,
        run_id=source.run_id,
        tags={"feature_service": "churn_v9"},
        model_id=source.source.removeprefix("models:/"),
    )

    with pytest.raises(ScoringError, match=r"trained on feature service churn_v9.*configured for churn_v1"):
        score_as_of(world.model_copy(update={"model_name": other}), connections(world, mlflow=True), LABELLED_DAY, "1")
    assert created.version == "1"


def test_the_score_command_writes_the_file_and_fails_in_one_line(
    world: Settings, mlflow_tracking: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    out = tmp_path / "scores.csv"
    runner = CliRunner()

    written = runner.invoke(cli.app, ["score", "--as-of", str(LABELLED_DAY), "--out", str(out)])
    bad_date = runner.invoke(cli.app, ["score", "--as-of", "2025-13-01", "--out", str(out)])
    unknown = runner.invoke(cli.app, ["score", "--as-of", str(LABELLED_DAY), "--version", "999", "--out", str(out)])
    too_late = runner.invoke(cli.app, ["score", "--as-of", "2026-01-01", "--out", str(out)])

    assert written.exit_code == 0, written.output
    scores = pd.read_csv(out)
    assert len(scores) == len(snapshot_rows(world, LABELLED_DAY)) and list(scores.columns) == as_of_scores.COLUMNS
    for shown in ("users scored", "mean P(churn)", "high risk", "ROC AUC vs realised", "realised churn rate"):
        assert shown in written.stdout, shown
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]  # no partial file left behind
    for failed, message in ((bad_date, "error: --as-of:"), (unknown, "has no version 999"),
                            (too_late, "outside the computed snapshot days")):  # fmt: skip
        assert failed.exit_code == 1
        assert message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


def test_the_score_flow_writes_parquet_and_publishes_its_summary(
    world: Settings, mlflow_tracking: str, prefect_server: None, tmp_path: Path
) -> None:
    from flows.score import score_flow
    from prefect.artifacts import Artifact

    out = tmp_path / "scores" / "2025-04-01.parquet"

    written = score_flow(as_of=LABELLED_DAY, out=str(out), version="challenger")

    rows = snapshot_rows(world, LABELLED_DAY)
    artifact = Artifact.get("churn-scores")
    assert artifact is not None
    assert f"| users scored | {len(rows):,} |" in str(artifact.data) and "version 2 (challenger)" in str(artifact.data)
    scores = pd.read_parquet(written)
    np.testing.assert_allclose(scores["p_churn"], expected_scores(world, "2", rows), rtol=1e-12, atol=0)
    assert scores["churned"].tolist() == rows["churned"].tolist()
