"""Prefect flows on the session's temporary Prefect server (`prefect_server`, started once: it takes ~13 s)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
import redis
from flows.features import features_flow
from flows.generate import advance_world_flow, generate_world_flow
from flows.ingest import ingest_events_flow, ingest_users_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from churn_platform import stack
from churn_platform.data.synthetic import world
from churn_platform.settings import Settings, get_settings


def test_the_ingest_flows_load_files_and_publish_a_summary_artifact(
    prefect_server: None, platform_database: str, tmp_path: Path
) -> None:
    # Given a users file and an events file with one bad row
    users = tmp_path / "users.csv"
    users.write_text("user_id,plan\nu1,basic\nu2,pro\n")
    events = tmp_path / "events.csv"
    events.write_text("user_id,event_type,event_timestamp\nu1,login,2024-01-05 10:00\nu2,login,2024-01-05 11:00\n,x,\n")

    # When both flows run
    users_summary = ingest_users_flow(str(users))
    events_summary = ingest_events_flow(str(events), timezone="Europe/Berlin")

    # Then the rows are in the platform database
    assert (users_summary.rows_loaded, events_summary.rows_loaded, events_summary.rows_quarantined) == (2, 2, 1)
    with psycopg.connect(platform_database) as conn:
        loaded = conn.execute("SELECT user_id, event_timestamp FROM raw.events ORDER BY 1").fetchall()
    assert loaded == [("u1", datetime(2024, 1, 5, 9, tzinfo=UTC)), ("u2", datetime(2024, 1, 5, 10, tzinfo=UTC))]
    # And each flow left a markdown artifact with its summary
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["events-load"])))
    assert any(f"events load {events_summary.load_id}" in str(a.data) for a in artifacts)


def test_the_world_flows_generate_and_advance_a_world(prefect_server: None, platform_database: str) -> None:
    # When a small world is generated and then advanced through the flows
    generated = generate_world_flow(users=120, days=40, seed=3)
    advanced = advance_world_flow(days=5)

    # Then the database holds the continued world, and the flows published its summary
    with psycopg.connect(platform_database) as conn:
        days = conn.execute("SELECT days_simulated FROM synthetic.worlds").fetchone()
        events = conn.execute("SELECT count(*) FROM raw.events").fetchone()
    assert days == (45,)
    assert generated.written is not None
    assert advanced.written is not None
    assert events == (generated.written.events + advanced.written.events,)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["synthetic-world"]))
        )
    assert len(artifacts) >= 2
    assert any("2025-02-14" in str(a.data) for a in artifacts)  # the advanced world's last day


def test_the_generate_command_and_flow_build_the_same_world_from_the_same_inputs(
    prefect_server: None, make_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    # Given a label horizon other than the default, and a fresh database for each entrypoint
    monkeypatch.setenv("CHURN_LABEL_HORIZON_DAYS", "21")
    by_command, by_flow = make_database(), make_database()

    # When `churn generate` and the generate flow simulate a world from the same inputs
    monkeypatch.setenv("CHURN_DATABASE_URL", by_command)
    get_settings.cache_clear()
    options = ["--users", "40", "--days", "12", "--seed", "9", "--start", "2025-03-01", "--drift-at", "6"]
    generated = CliRunner().invoke(cli.app, ["generate", *options])
    monkeypatch.setenv("CHURN_DATABASE_URL", by_flow)
    get_settings.cache_clear()
    generate_world_flow(users=40, days=12, seed=9, start_date=date(2025, 3, 1), drift_at=6)
    get_settings.cache_clear()

    # Then both stored the same configuration, whose oracle forecasts over the platform's label horizon
    assert generated.exit_code == 0, generated.output
    stored = [world.load_world(url) for url in (by_command, by_flow)]
    assert stored[0] is not None and stored[1] is not None
    assert stored[0][0] == stored[1][0]
    assert (stored[0][0].users, stored[0][0].drift_at, stored[0][0].horizon_days) == (40, 6, 21)
    for url in (by_command, by_flow):
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT DISTINCT horizon_days FROM synthetic.oracle_churn").fetchall() == [(21,)]


def test_the_features_flow_computes_snapshots_and_materializes(
    prefect_server: None, platform_database: str, monkeypatch: pytest.MonkeyPatch, stack_settings: Settings
) -> None:
    # Given a small world, a Redis database of its own for the online store, and the repository's definitions
    redis_url = stack.redis_url(stack_settings).rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    monkeypatch.setenv("CHURN_REDIS_URL", redis_url)
    monkeypatch.setenv("CHURN_FEATURE_REPO", str(Path(__file__).resolve().parents[2] / "feature_repo"))
    get_settings.cache_clear()
    generate_world_flow(users=80, days=40, seed=5)

    # When the features flow runs up to the world's last day
    run = features_flow(until=date(2025, 2, 9))

    # Then snapshots and labels are in PostgreSQL and the latest snapshot is in Redis
    with psycopg.connect(platform_database) as conn:
        snapshots = conn.execute("SELECT count(*), max(event_timestamp) FROM features.churn_v1").fetchone()
        labels = conn.execute("SELECT count(*) FROM features.churn_v1_labels").fetchone()
    assert snapshots is not None
    assert snapshots[0] > 0
    assert labels is not None
    assert labels[0] > 0
    assert run.end is not None
    assert run.end > snapshots[1]
    assert redis.Redis.from_url(redis_url).dbsize() > 0
    redis.Redis.from_url(redis_url).flushdb()


def test_a_flow_whose_database_is_unreachable_is_retried_then_failed_naming_it(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ab_analysis import ab_analysis_flow

    # Given a platform database nobody listens for
    monkeypatch.setenv("CHURN_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/churn")
    get_settings.cache_clear()
    try:
        state = ab_analysis_flow(return_state=True)
    finally:
        get_settings.cache_clear()

    # Then the flow run is Failed in Prefect, with a message that names the server and its setting
    assert state.is_failed()
    message = str(state.message)
    assert "PostgreSQL at postgresql://postgres@127.0.0.1:1/churn (CHURN_DATABASE_URL) is unreachable" in message
    # after its first task was tried three times (two retries), as Prefect records it
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    connecting = [run for run in runs if run.name.startswith("platform_connections")]
    assert len(connecting) == 1 and connecting[0].run_count == 3, [(r.name, r.run_count) for r in runs]
