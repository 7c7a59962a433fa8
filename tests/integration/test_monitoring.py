"""Monitoring over a simulated quarter and its prediction log: whole drift and performance runs (the figures
stored in PostgreSQL against scipy and scikit-learn, the Evidently reports and workspace, MLflow, the flow, the
CLI, data quality and alerts), and the backtest of every window (drift flagged soon after the world drifts and
never before; the performance estimated from the scores close to the realised one while the world's concept
holds, and, once it changes, from the first outcomes, before the labels fall)."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from flows.monitor import monitor_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from psycopg import sql
from scipy import stats
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections, platform_settings, redis_db_url
from tests.integration.monitoring_backtest import (
    LEADS,
    Backtest,
    MonitoredWorld,
    backtest,
    extend_snapshots,
    log_scores,
    monitored_world,
)

from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import online
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.snapshots import labels_table_name
from churn_platform.monitoring import alerts, checks, drift_runs, estimation, performance_runs, reports, served
from churn_platform.settings import Settings
from churn_platform.training import registry

MONITORING_DB = 9  # a Redis database of its own
USERS, TRAINED_THROUGH, WINDOW, HORIZON = 1_500, 200, 7, 30
DRIFT_AT = TRAINED_THROUGH + 60  # sixty monitored days without drift, then thirty drifted ones
MONITORED = 90
SERVED_NOW = TRAINED_THROUGH + MONITORED + 10  # a day served after materialization, its outcome not known yet
DAYS = TRAINED_THROUGH + MONITORED + HORIZON  # the monitored days' outcomes are in the data, later days' are not
TWICE = 20  # users of SERVED_NOW answered twice
DETECTION_BOUND_DAYS = 14  # measured: 9 (the simulated users' behaviour moves to the new regime over weeks)
# The estimated AUC against the realised one (measured, 24 windows each):
STABLE_ERROR_BOUNDS = 0.015, 0.05  # median, max at the window's end, outcomes from the model's world: 0.009, 0.029
DRIFTED_LEAD, DRIFTED_ERROR_BOUND = 14, 0.03  # every window after the drift, two weeks on: max 0.027 (median 0.008)


class World:
    """The monitored world, then SERVED_NOW's snapshot materialized and every user of it served once (TWICE of
    them twice): the newest day of the log, fresh at the feature clock and without outcomes yet."""

    def __init__(self, monitored: MonitoredWorld, backtest: Backtest, served_now: int) -> None:
        self.monitored, self.backtest, self.served_now = monitored, backtest, served_now
        self.settings, self.database_url = monitored.settings, monitored.database_url


@pytest.fixture(scope="module")
def world(
    make_database: Callable[[], str],
    stack_settings: Settings,
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    url = make_database()
    environment = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CHURN_MODEL_NAME": f"churn_monitor_{uuid.uuid4().hex[:8]}",
        "CHURN_DATA_DIR": str(tmp_path_factory.mktemp("monitoring")),
        "CHURN_MONITOR_REPORT_ROWS": "2000",  # Evidently's reports on samples, for the tests' time
    }
    with platform_settings(url, redis_db_url(stack_settings, MONITORING_DB), **environment) as settings:
        assert settings.label_horizon_days == HORIZON
        config = WorldConfig(users=USERS, days=DAYS, seed=17, drift_at=DRIFT_AT)
        monitored = monitored_world(settings, url, config, trained_through=TRAINED_THROUGH, monitored_days=MONITORED)
        found = backtest(monitored, WINDOW)
        extend_snapshots(settings, url, monitored.day(SERVED_NOW))
        online.materialize(settings, connections(settings))  # the feature clock moves to SERVED_NOW
        served_now = len(log_scores(monitored, monitored.day(SERVED_NOW)))
        log_scores(monitored, monitored.day(SERVED_NOW), users=TWICE)
        yield World(monitored, found, served_now)


def test_a_drift_run_stores_figures_equal_to_scipy_on_the_served_rows(world: World) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    run = drift_runs.run_drift(settings, servers, window_days=7)

    champion = registry.get_version(servers.mlflow, settings.model_name, run.model_version)
    reference = registry.logged_reference(servers.mlflow, champion.run_id)
    assert reference is not None and len(reference) == run.reference_rows
    current = served.served_features(world.database_url, catalog_from_settings(settings), run.window)
    assert run.current_rows == len(current) == world.served_now  # a user answered twice on a snapshot counts once

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
    assert share == (pytest.approx(run.result.share), world.served_now, run.mlflow_run_id)
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
    assert run.score is not None and run.score.served == world.served_now
    expected_score = stats.ks_2samp(reference[registry.REFERENCE_SCORE], scores)
    assert run.score.ks == pytest.approx(expected_score.statistic, abs=1e-12)


def test_the_report_opens_as_html_and_lands_in_mlflow_and_the_workspace(world: World) -> None:
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


def test_a_window_without_served_snapshots_is_refused_and_stores_nothing(world: World) -> None:
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
    assert run.current_rows == world.served_now and run.window == served.Window(newest - timedelta(days=1), newest)


def test_data_quality_counts_stale_predictions_and_raises_one_alert_until_fresh(world: World) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    newest = served.newest_served_snapshot(world.database_url)
    assert newest is not None
    day = newest.date() - timedelta(days=8)  # outside the 7-day window the other tests watch
    # served now, from a snapshot eight days behind the service's feature clock: every row is stale
    scored = log_scores(world.monitored, day)

    run = drift_runs.run_drift(settings, servers, window_days=9)  # the newest window, reaching back to that day
    features = {f.name for f in catalog_from_settings(settings).features}
    assert {q.feature for q in run.quality} == features and {q.day for q in run.quality} == {day, newest.date()}
    assert all(q.stale_share == 1.0 and q.rows == len(scored) for q in run.quality if q.day == day)
    assert all(q.stale_share == 0.0 for q in run.quality if q.day == newest.date())  # served after materializing
    [stale] = [a for a in run.alerts.opened if a.kind == "stale_features"]
    assert stale.source == "quality" and "materialization" in stale.message and world.monitored.version in stale.subject
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT count(*), max(stale_share) FROM monitoring.feature_quality WHERE run_id = %s", (run.run_id,)
        ).fetchone()
    assert stored == (2 * len(features), 1.0)

    again = drift_runs.run_drift(settings, servers, window_days=9)  # still stale: the same alert, once
    assert [a.id for a in again.alerts.repeated if a.kind == "stale_features"] == [stale.id]
    assert not [a for a in again.alerts.opened if a.kind == "stale_features"]
    # an earlier window (a backfill) stores its figures and leaves the alerts alone; its predictions were made
    # before any materialization, so their staleness is unknown, not zero
    last = world.monitored.last_monitored
    past = drift_runs.run_drift(settings, servers, window_days=1, end=datetime.combine(last, datetime.max.time(), UTC))
    assert past.alerts == alerts.Changes([], [], []) and all(q.stale_share is None for q in past.quality)
    fresh = drift_runs.run_drift(settings, servers, window_days=7)  # the newest week: fresh predictions only
    assert all(q.stale_share == 0.0 for q in fresh.quality)
    assert [a.id for a in fresh.alerts.resolved if a.kind == "stale_features"] == [stale.id]
    assert "stale, worst day" in drift_runs.summary_markdown(fresh)


def test_the_monitor_flow_stores_a_run_and_publishes_its_summary(prefect_server: None, world: World) -> None:
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


def test_realised_performance_joins_known_outcomes_only_and_equals_sklearn(world: World) -> None:
    settings = world.settings
    servers = connections(settings, mlflow=True)
    day = performance_runs.newest_label_day(world.database_url, settings)
    assert day == world.monitored.last_monitored  # SERVED_NOW's outcome is not in the data yet
    labels = labels_table_name(catalog_from_settings(settings))
    with psycopg.connect(world.database_url) as conn:  # the day's predictions and outcomes, joined by hand
        joined = conn.execute(
            sql.SQL(
                "SELECT l.churned::int, p.churn_probability FROM serving.prediction_log p JOIN {} l"
                " ON l.user_id = p.user_id AND l.event_timestamp = p.snapshot_at AND l.horizon_days = %s"
                " WHERE p.snapshot_at = %s ORDER BY p.user_id"
            ).format(labels),
            (HORIZON, datetime(day.year, day.month, day.day, tzinfo=UTC)),
        ).fetchall()
    version = world.monitored.version
    newest_served = served.newest_served_snapshot(world.database_url)
    assert newest_served is not None and newest_served.date() > day  # the fixture's predictions: no outcome yet

    run = performance_runs.run_performance(settings, servers, days=(newest_served.date() - day).days + 1,
                                           last_day=newest_served.date())  # fmt: skip

    y = np.array([row[0] for row in joined])
    p = np.array([row[1] for row in joined], dtype=float)
    assert set(run.by_day) == {(version, day)}  # the unlabelled newest snapshot is never joined
    figures = run.by_day[(version, day)]
    assert figures.rows == len(joined) and figures.positives == int(y.sum())
    assert figures.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert figures.brier == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT day, rows, roc_auc FROM monitoring.performance"
            " WHERE model_name = %s AND model_version = %s AND day = %s",
            (settings.model_name, version, day),
        ).fetchall()
    assert stored == [(day, len(joined), pytest.approx(roc_auc_score(y, p), abs=1e-12))]
    assert run.report is not None and "<html" in run.report.read_text(encoding="utf-8")[:5000].lower()

    # estimated for every served day as of the newest (from the scores and the outcomes seen by then: a user's
    # cancel in [t, as of)), and set beside the realised figures once known
    as_of = newest_served
    with psycopg.connect(world.database_url) as conn:
        cancelled = conn.execute(
            "SELECT p.user_id, EXISTS (SELECT 1 FROM raw.events e WHERE e.user_id = p.user_id"
            " AND e.event_type = ANY(%s) AND e.event_timestamp >= p.snapshot_at AND e.event_timestamp < %s)"
            " FROM serving.prediction_log p WHERE p.snapshot_at = %s ORDER BY p.user_id",
            (list(settings.churn_event_types), as_of, datetime(day.year, day.month, day.day, tzinfo=UTC)),
        ).fetchall()
    assert len(cancelled) == len(p)
    seen_days = (as_of.date() - day).days
    seen = estimation.SeenOutcomes(np.full(len(p), float(seen_days)), np.array([row[1] for row in cancelled]))
    assert run.recalibration is not None and 0 < seen.decided.sum() < y.sum()  # some churners seen, not all
    expected = estimation.estimate_with_outcomes(p, seen, HORIZON, True, run.recalibration)
    assert run.estimates[(version, day)].decided == seen.decided.sum()
    assert run.estimates[(version, day)].roc_auc == pytest.approx(expected.roc_auc, abs=1e-12)
    assert run.estimates[(version, day)].positive_rate == pytest.approx(expected.positive_rate, abs=1e-12)
    assert (version, newest_served.date()) in run.estimates  # no outcome yet, an estimate already
    [compared] = [c for c in run.comparisons if c.day == day and c.model_version == version]
    assert compared.outcome_days == seen_days
    assert compared.realised_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert compared.estimated_auc == pytest.approx(expected.roc_auc, abs=1e-12)

    # evaluated again, the day's row is replaced, not added
    performance_runs.run_performance(settings, servers, days=1, last_day=day)
    with psycopg.connect(world.database_url) as conn:
        again = conn.execute("SELECT count(*) FROM monitoring.performance WHERE day = %s", (day,)).fetchone()
    assert again == (1,)


def test_the_cli_prints_the_drift_and_performance_tables_and_the_reports(world: World, wide_console: None) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    result = CliRunner().invoke(cli.app, ["monitor", "drift", "--window", "7"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "drifted" in result.output and "served rows against" in result.output  # the table, then the verdict
    assert "report: " in result.output and "stored as monitoring run" in result.output
    refused = CliRunner().invoke(cli.app, ["monitor", "drift", "--end", "2020-01-01"], terminal_width=200)
    assert refused.exit_code == 1 and "no prediction was served on a snapshot in" in refused.output

    evaluated = CliRunner().invoke(cli.app, ["monitor", "performance", "--days", "3"], terminal_width=200)
    assert evaluated.exit_code == 0, evaluated.output
    assert "estimated from its newest scores and the" in evaluated.output  # SERVED_NOW: scored, no outcome yet
    assert "realised on" in evaluated.output and "report: " in evaluated.output  # the newest labelled days


def test_drift_is_flagged_within_the_bound_never_before_and_estimates_track_a_stable_world(world: World) -> None:
    found = world.backtest
    for w in found.windows:  # shown with -s, and on failure
        flag = " DRIFT" if w.drifted else ""
        estimates = ", ".join(f"+{lead}: {_auc(w.estimated_auc[lead])}" for lead in LEADS)
        print(f"window to {w.end}: drift share {w.drift_share:.2f}{flag}, realised AUC {_auc(w.realised_auc)},"
              f" estimated {estimates}, from the scores alone {_auc(w.scores_only_auc)};"
              f" drifted: {', '.join(w.drifted_features)}")  # fmt: skip

    # Sixty days without drift: no window flagged (nominal: alpha = 0.01 of them, so none of 54)
    alarms, clean = found.false_alarms()
    assert clean == 60 - WINDOW + 1
    assert alarms <= world.settings.monitor_drift_alpha * clean, f"{alarms} of {clean} windows flagged"
    # then the drift is flagged within the bound
    delay = found.detection_delay()
    assert delay is not None and delay <= DETECTION_BOUND_DAYS, f"drift flagged {delay} days after it started"
    # While outcomes come from the world the model was calibrated on, the estimate made as each window ends is the
    # realised AUC's centre
    stable = found.estimate_errors(found.before_drift(HORIZON), lead=0)
    assert len(stable) >= 20
    assert statistics.median(stable) <= STABLE_ERROR_BOUNDS[0], f"median error {statistics.median(stable):.3f}"
    assert max(stable) <= STABLE_ERROR_BOUNDS[1], f"largest error {max(stable):.3f}"


def test_on_a_drifting_world_the_estimate_falls_before_the_labels_and_comes_within_the_bound(world: World) -> None:
    found = world.backtest
    drifted = found.after_drift(WINDOW)
    for lead in (None, *LEADS):  # shown with -s, and on failure
        errors = found.estimate_errors(drifted, lead)
        how = "from the scores alone" if lead is None else f"at +{lead} days"
        print(f"after the drift, estimated {how}: median error {statistics.median(errors):.3f},"
              f" largest {max(errors):.3f} ({len(errors)} windows)")  # fmt: skip
    # The scores alone cannot see a changed concept: the plain estimate stays up while the realised AUC falls
    assert max(found.estimate_errors(drifted, None)) > 0.1
    # Two weeks after a window's last snapshot (more than half of its outcomes still to come), the estimate from the
    # outcomes seen so far is within the bound, for every window served after the drift
    errors = found.estimate_errors(drifted, DRIFTED_LEAD)
    assert len(errors) == MONITORED - (DRIFT_AT - TRAINED_THROUGH) - WINDOW + 1
    assert max(errors) <= DRIFTED_ERROR_BOUND, f"largest error {max(errors):.3f} at +{DRIFTED_LEAD} days"

    # Checked each day as the service does (the newest window, as it ends), the estimate crosses the alert floor
    # before the realised AUC of any window whose outcomes are complete does
    registered = drift_runs.resolve_version(world.settings, connections(world.settings, mlflow=True), None)
    floor = registered.metrics[checks.TEST_AUC_METRIC] - world.settings.monitor_auc_margin
    estimate_alert = min(w.end for w in found.windows if (w.estimated_auc[0] or 1.0) < floor)
    realised_alert = min(w.end + timedelta(days=HORIZON) for w in found.windows if (w.realised_auc or 1.0) < floor)
    print(f"below the floor {floor:.3f}: estimated on {estimate_alert}, realised on {realised_alert}")
    assert found.drift_starts is not None and found.drift_starts <= estimate_alert < realised_alert


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
