"""Drift monitoring over a real served world: the service's prediction log, the snapshots, the version's reference
in MLflow, the stored figures in PostgreSQL, the Evidently report and workspace."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
from flows.monitor import monitor_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from scipy import stats
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections, redis_db_url
from tests.integration.served_world import ServedWorld, post, served_world

from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.monitoring import drift_runs, estimation, performance_runs, reports, served
from churn_platform.serving.as_of_scores import score_as_of
from churn_platform.serving.prediction_log.rows import copy_lines, new_request_id
from churn_platform.serving.prediction_log.writer import COPY_SQL
from churn_platform.settings import Settings
from churn_platform.training import registry

MONITORING_DB = 9  # a Redis database of its own


@pytest.fixture(scope="module")
def world(
    make_database: Callable[[], str],
    stack_settings: Settings,
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedWorld]:
    """A served world whose service has answered every user once and a tenth of them twice."""
    url = make_database()
    redis_url = redis_db_url(stack_settings, MONITORING_DB)
    with served_world(url, redis_url, mlflow_server, tmp_path_factory.mktemp("monitoring")) as world:
        status, body = post(world.url, "/predict_batch", {"user_ids": world.users})
        assert status == 200, body
        for user in world.users[:20]:
            assert post(world.url, "/predict", {"user_id": user})[0] == 200
        _wait_for_log_rows(url, len(world.users) + 20)
        yield world


def _wait_for_log_rows(url: str, rows: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT count(*) FROM serving.prediction_log").fetchone()
        if found is not None and found[0] >= rows:
            return
        assert time.monotonic() < deadline, f"the prediction log holds {found} rows, not {rows}"
        time.sleep(0.2)


def test_a_drift_run_stores_figures_equal_to_scipy_on_the_served_rows(world: ServedWorld) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    run = drift_runs.run_drift(settings, servers, window_days=7)

    champion = registry.get_version(servers.mlflow, settings.model_name, run.model_version)
    reference = registry.logged_reference(servers.mlflow, champion.run_id)
    assert reference is not None and len(reference) == run.reference_rows
    current = served.served_features(world.database_url, catalog_from_settings(settings), run.window)
    assert run.current_rows == len(current) == len(world.users)  # a user answered twice on a snapshot counts once

    with psycopg.connect(world.database_url) as conn:
        stored = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT feature, test, statistic, p_value, psi, drifted FROM monitoring.feature_drift"
                " WHERE run_id = %s",
                (run.run_id,),
            )
        }
        share = conn.execute(
            "SELECT drift_share, current_rows, mlflow_run_id FROM monitoring.drift_runs WHERE run_id = %s",
            (run.run_id,),
        ).fetchone()
    features = catalog_from_settings(settings).features
    assert set(stored) == {f.name for f in features}
    assert share == (pytest.approx(run.result.share), len(world.users), run.mlflow_run_id)
    checked = 0
    for feature in features:
        if feature.dtype == "text":
            continue
        ref = reference[feature.name].dropna().to_numpy(dtype=float)
        cur = current[feature.name].dropna().to_numpy(dtype=float)
        if len(ref) == 0 or len(cur) == 0:
            continue
        expected = stats.ks_2samp(ref, cur)
        test, statistic, p_value, _psi, _drifted = stored[feature.name]
        assert test == "ks"
        assert statistic == pytest.approx(expected.statistic, abs=1e-12), feature.name
        assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300), feature.name
        checked += 1
    assert checked >= 5

    # The scores the champion served, against its scores on the reference
    scores = served.served_scores(world.database_url, run.window, run.model_version)
    assert run.score is not None and run.score.served == len(world.users)
    expected_score = stats.ks_2samp(reference[registry.REFERENCE_SCORE], scores)
    assert run.score.ks == pytest.approx(expected_score.statistic, abs=1e-12)


def test_the_report_opens_as_html_and_lands_in_mlflow_and_the_workspace(world: ServedWorld) -> None:
    from evidently.ui.workspace import Workspace
    from mlflow import MlflowClient

    settings = world.settings
    servers = connections(settings, mlflow=True)
    run = drift_runs.run_drift(settings, servers)

    text = run.report.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") or "<html" in text[:2000].lower()
    assert "days_since_last_event" in text  # the per-feature table names the features
    workspace = Workspace.create(str(reports.workspace_path(settings.reports_folder)))
    (project,) = workspace.search_project(settings.model_name)
    assert run.workspace_run is not None
    assert run.workspace_run in {str(snapshot_id) for snapshot_id in workspace.list_runs(project.id)}
    client = MlflowClient(tracking_uri=servers.mlflow)
    logged = {artifact.path for artifact in client.list_artifacts(run.mlflow_run_id, "drift")}
    assert f"drift/{run.report.name}" in logged and "drift/feature_drift.csv" in logged
    assert client.get_run(run.mlflow_run_id).data.metrics["drift_share"] == pytest.approx(run.result.share)


def test_a_window_without_served_snapshots_is_refused_and_stores_nothing(world: ServedWorld) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    newest = served.newest_served_snapshot(world.database_url)
    assert newest is not None
    with psycopg.connect(world.database_url) as conn:
        before = conn.execute("SELECT count(*) FROM monitoring.drift_runs").fetchone()
    with pytest.raises(drift_runs.MonitoringError, match="no prediction was served on a snapshot in"):
        drift_runs.run_drift(settings, servers, window_days=3, end=newest - timedelta(days=3))
    with psycopg.connect(world.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM monitoring.drift_runs").fetchone() == before
    # the window is (end - days, end]: the newest snapshot alone is in a one-day window ending at it
    run = drift_runs.run_drift(settings, servers, window_days=1, end=newest)
    assert run.current_rows == len(world.users) and run.window == served.Window(newest - timedelta(days=1), newest)


def test_data_quality_counts_stale_predictions_and_raises_one_alert_until_fresh(world: ServedWorld) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    newest = served.newest_served_snapshot(world.database_url)
    assert newest is not None
    day = newest.date() - timedelta(days=10)  # older than the 7-day window the other tests watch
    scored = score_as_of(settings, servers, day, None).frame
    # served now, from a snapshot ten days behind the service's feature clock: every row is stale
    _log_as_served(world.database_url, scored, day, str(scored["model_version"].iloc[0]))
    end = datetime.combine(day, datetime.max.time(), tzinfo=UTC)

    run = drift_runs.run_drift(settings, servers, window_days=1, end=end)
    features = {f.name for f in catalog_from_settings(settings).features}
    assert {q.feature for q in run.quality} == features and {q.day for q in run.quality} == {day}
    assert all(q.stale_share == 1.0 and q.rows == len(scored) for q in run.quality)
    [stale] = [a for a in run.alerts.opened if a.kind == "stale_features"]
    assert stale.source == "quality" and "materialization" in stale.message
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT count(*), min(stale_share) FROM monitoring.feature_quality WHERE run_id = %s", (run.run_id,)
        ).fetchone()
    assert stored == (len(features), 1.0)

    again = drift_runs.run_drift(settings, servers, window_days=1, end=end)  # still stale: the same alert
    assert [a.id for a in again.alerts.repeated if a.kind == "stale_features"] == [stale.id]
    fresh = drift_runs.run_drift(settings, servers, window_days=7)  # the service's own, fresh predictions
    assert all(q.stale_share == 0.0 for q in fresh.quality)
    assert [a.id for a in fresh.alerts.resolved if a.kind == "stale_features"] == [stale.id]
    assert "stale, worst day" in drift_runs.summary_markdown(fresh)


def test_the_monitor_flow_stores_a_run_and_publishes_its_summary(prefect_server: None, world: ServedWorld) -> None:
    run_id = monitor_flow(window_days=7)

    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT model_name, (SELECT count(*) FROM monitoring.feature_drift f WHERE f.run_id = r.run_id)"
            " FROM monitoring.drift_runs r WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    assert stored == (world.settings.model_name, len(catalog_from_settings(world.settings).features))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["churn-monitoring"]))
        )
    assert any(f"stored as monitoring run {run_id}" in str(a.data) for a in artifacts)


def _log_as_served(url: str, scored: pd.DataFrame, day: date, version: str) -> None:
    """The rows the service would have logged had it answered these users on `day`'s snapshot."""
    count = len(scored)
    route = (None, "champion", "champion", version)
    lines = copy_lines(
        new_request_id(), datetime.now(UTC), 1.0, "predict_batch", list(scored["user_id"]), [route] * count,
        [float(p) for p in scored["p_churn"]], ["0" * 16] * count, [snapshot_time(day)] * count,
    )  # fmt: skip
    with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        copy.write("".join(lines))


def test_realised_performance_joins_known_outcomes_only_and_equals_sklearn(world: ServedWorld) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    day = performance_runs.newest_label_day(world.database_url, settings)
    assert day is not None
    scored = score_as_of(settings, servers, day, None).frame  # the champion, as the service would have scored then
    labelled = scored[scored["churned"].notna()]
    version = str(scored["model_version"].iloc[0])
    _log_as_served(world.database_url, labelled, day, version)
    newest_served = served.newest_served_snapshot(world.database_url)
    assert newest_served is not None and newest_served.date() > day  # the fixture's predictions: no outcome yet

    run = performance_runs.run_performance(settings, servers, days=(newest_served.date() - day).days + 1,
                                           last_day=newest_served.date())  # fmt: skip

    y = labelled["churned"].astype(int).to_numpy()
    p = labelled["p_churn"].to_numpy(dtype=float)
    assert set(run.by_day) == {(version, day)}  # the unlabelled newest snapshot is never joined
    figures = run.by_day[(version, day)]
    assert figures.rows == len(labelled) and figures.positives == int(y.sum())
    assert figures.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert figures.brier == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT day, rows, roc_auc FROM monitoring.performance WHERE model_name = %s AND model_version = %s",
            (settings.model_name, version),
        ).fetchall()
    assert stored == [(day, len(labelled), pytest.approx(roc_auc_score(y, p), abs=1e-12))]
    assert run.report is not None and "<html" in run.report.read_text(encoding="utf-8")[:5000].lower()

    # estimated from the scores alone, for every served day, and set beside the realised figures once known
    expected = estimation.estimate(p)
    assert run.estimates[(version, day)].roc_auc == pytest.approx(expected.roc_auc, abs=1e-12)
    assert run.estimates[(version, day)].positive_rate == pytest.approx(p.mean(), abs=1e-12)
    assert (version, newest_served.date()) in run.estimates  # no outcome yet, an estimate already
    [compared] = [c for c in run.comparisons if c.day == day and c.model_version == version]
    assert compared.realised_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert compared.estimated_auc == pytest.approx(expected.roc_auc, abs=1e-12)

    # evaluated again, the day's row is replaced, not added
    performance_runs.run_performance(settings, servers, days=1, last_day=day)
    with psycopg.connect(world.database_url) as conn:
        again = conn.execute("SELECT count(*) FROM monitoring.performance WHERE day = %s", (day,)).fetchone()
    assert again == (1,)


def test_the_cli_prints_the_drift_table_and_the_report(world: ServedWorld) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    result = CliRunner().invoke(cli.app, ["monitor", "drift", "--window", "7"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "drifted" in result.output and "served rows against" in result.output  # the table, then the verdict
    assert "report: " in result.output and "stored as monitoring run" in result.output
    refused = CliRunner().invoke(cli.app, ["monitor", "drift", "--end", "2020-01-01"], terminal_width=200)
    assert refused.exit_code == 1 and "no prediction was served on a snapshot in" in refused.output
