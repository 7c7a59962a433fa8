"""The embedded stack: real PostgreSQL, Redis (pip-installed binaries) and MLflow server, started and stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from churn_platform import stack
from churn_platform.cli import app
from churn_platform.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.embedded
def test_embedded_stack_starts_serves_and_stops(data_dir: Path) -> None:
    # Given no configured URLs
    settings = Settings(
        database_url=None, redis_url=None, mlflow_tracking_uri=None, prefect_api_url=None, mlflow_port=0,
        prefect_port=0, serve_port=0, data_dir=data_dir,
    )  # fmt: skip

    try:
        # When the stack comes up (a start that fails midway is stopped too: `finally`)
        statuses = {s.name: s for s in stack.up(settings)}

        # Then every server is healthy, embedded, and answers real queries
        assert list(statuses) == ["postgres", "redis", "mlflow", "prefect", "flows", "service"]
        assert all(s.healthy and s.embedded for s in statuses.values())
        # The prediction service is alive but not ready: nothing is registered or materialized yet
        assert statuses["service"].detail.startswith("alive, not ready")
        with psycopg.connect(stack.database_url(settings)) as conn:
            row = conn.execute("SELECT current_database(), 1 + 1").fetchone()
        assert row == (settings.embedded_database, 2)
        client = redis.Redis.from_url(stack.redis_url(settings))
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        # MLflow keeps its experiments in its own database on the embedded PostgreSQL, reached through the socket
        experiment_id = mlflow.MlflowClient(stack.mlflow_tracking_uri(settings)).create_experiment("stack")
        mlflow_db = psycopg.conninfo.make_conninfo(stack.database_url(settings), dbname=settings.mlflow_database)
        with psycopg.connect(mlflow_db) as conn:
            row = conn.execute(
                "SELECT name FROM experiments WHERE experiment_id = %s", (int(experiment_id),)
            ).fetchone()
        assert row == ("stack",)
        # A flow file run as a script reports to the stack's Prefect server, not to a temporary one of its own. The
        # embedded PostgreSQL build has no pg_trgm, so Prefect keeps its runs in its own SQLite file, and says so
        assert statuses["prefect"].detail.startswith("Prefect 3.")
        assert "SQLite" in statuses["prefect"].detail and "no pg_trgm extension" in statuses["prefect"].detail
        assert stack.running_prefect_api(settings) == statuses["prefect"].url
        _run_a_flow_file(data_dir)
        assert _flow_runs(statuses["prefect"].url or "") == ["stack-check"]
        # The deployments are served; one run from the command line as the UI's Run button does is executed by
        # the served process, and a failure comes back as Prefect's Failed state with the flow's own message
        assert statuses["flows"].detail.startswith("serving 7 deployments")
        listed = _churn(data_dir, "flows", "list")
        assert listed.exit_code == 0 and "monitor/champion" in listed.output, listed.output
        failed = _churn(data_dir, "flows", "run", "ab-analysis")
        assert failed.exit_code == 1, failed.output
        assert "is Failed" in failed.output and "no experiment is running" in failed.output, failed.output
        # A second `up` reuses the running servers instead of starting more
        record = stack.StackRecord(data_dir).read()
        stack.up(settings)
        assert stack.StackRecord(data_dir).read() == record
        assert stack.redis_process_id(stack.redis_url(settings)) == record["redis"]["pid"]
    finally:
        stopped = stack.down(settings)

    # And `down` stops them all, in reverse order, after which status reports them down
    assert stopped == ["service", "flows", "prefect", "mlflow", "redis", "postgres"]
    assert not any(s.healthy for s in stack.status(settings))


def _run_a_flow_file(data_dir: Path) -> None:
    """Run a one-task flow as a flow file run as a script does (`flows.common.run_on_the_stack`), in a process of its
    own with nothing configured but the data folder."""
    script = (
        "from prefect import flow\n"
        "from flows.common import run_on_the_stack\n"
        "@flow(name='stack-check', flow_run_name='stack-check')\n"
        "def check() -> int:\n"
        "    return 1\n"
        "assert run_on_the_stack(check) == 1\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CHURN_", "PREFECT_", "MLFLOW_"))}
    environment["CHURN_DATA_DIR"] = str(data_dir)
    environment["CHURN_PREFECT_PORT"] = "0"  # whatever port the running server took, its record says
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _churn(data_dir: Path, *arguments: str) -> Any:
    """A `churn` command as a user runs it next to the stack in `data_dir` (nothing else configured)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("CHURN_", "MLFLOW_", "PREFECT_"))]:
            patch.delenv(name)
        patch.setenv("CHURN_DATA_DIR", str(data_dir))
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(arguments), terminal_width=250)
        finally:
            get_settings.cache_clear()


def _flow_runs(api: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return [run.name for run in client.read_flow_runs()]


def test_the_embedded_prefect_keeps_its_runs_in_a_postgresql_that_has_pg_trgm(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """On the session's PostgreSQL: the machine's (configured, with pg_trgm) keeps Prefect's runs in a database of
    its own; the embedded one (without it) leaves them to Prefect's SQLite file, and the status says why."""
    server_url = stack.database_url(stack_settings)
    database = f"prefect_test_{uuid.uuid4().hex[:12]}"
    settings = Settings(database_url=server_url, prefect_api_url=None, prefect_port=0, prefect_database=database,
                        data_dir=tmp_path)  # fmt: skip
    with psycopg.connect(server_url) as conn:
        has_trigrams = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'").fetchone()
    component = stack.components(settings)[3]
    try:
        api = component.start()
        _run_a_flow_file(tmp_path)
        assert _flow_runs(api) == ["stack-check"]
        detail = component.status().detail
        if has_trigrams:
            assert detail.endswith(f"its database: PostgreSQL database {database}"), detail
            with psycopg.connect(psycopg.conninfo.make_conninfo(server_url, dbname=database)) as conn:
                assert conn.execute("SELECT name FROM flow_run").fetchall() == [("stack-check",)]
        else:
            assert "its database: SQLite" in detail and (tmp_path / "prefect" / "prefect.db").exists(), detail
    finally:
        component.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert component.status().url is None


@pytest.mark.embedded
def test_embedded_redis_keeps_its_data_across_restart(data_dir: Path) -> None:
    settings = Settings(database_url=None, redis_url=None, data_dir=data_dir)
    component = stack.EmbeddedRedis(settings)
    url = component.start()
    try:
        redis.Redis.from_url(url).set("survives", "restart")
        component.stop()
        url = component.start()
        assert redis.Redis.from_url(url).get("survives") == b"restart"
    finally:
        component.stop()


def test_configured_servers_start_nothing(stack_settings: Settings, mlflow_server: str, tmp_path: Path) -> None:
    # Given URLs of servers that are running
    settings = Settings(
        database_url=stack.database_url(stack_settings),
        redis_url=stack.redis_url(stack_settings),
        mlflow_tracking_uri=mlflow_server,
        data_dir=tmp_path / "unused",
    )
    # Then the stack only checks them: healthy, external, and `down` stops nothing
    statuses = stack.up(settings, only=("postgres", "redis", "mlflow"))
    assert [s.name for s in statuses] == ["postgres", "redis", "mlflow"]
    assert all(s.healthy and not s.embedded for s in statuses)
    assert stack.down(settings) == []
    assert not (tmp_path / "unused" / "postgres").exists()
    assert not (tmp_path / "unused" / "mlflow").exists()
    assert not (tmp_path / "unused" / "service").exists()


def test_unreachable_configured_server_is_named(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/churn",
        redis_url="redis://127.0.0.1:1/0",
        mlflow_tracking_uri="http://127.0.0.1:1",
        serve_url="http://127.0.0.1:1",
        data_dir=tmp_path,
    )
    statuses = {s.name: s for s in stack.status(settings)}
    assert not statuses["postgres"].healthy and "unreachable" in statuses["postgres"].detail
    assert not statuses["redis"].healthy
    assert not statuses["mlflow"].healthy and "unreachable" in statuses["mlflow"].detail
    assert not statuses["service"].healthy and "unreachable" in statuses["service"].detail
    with pytest.raises(stack.StackError, match=r"127\.0\.0\.1:1"):
        stack.up(settings)
    with pytest.raises(stack.StackError, match=r"MLflow at http://127\.0\.0\.1:1 \(MLFLOW_TRACKING_URI\)"):
        stack.up(settings, only=("mlflow",))


@pytest.mark.embedded
def test_embedded_postgres_restarts_in_the_same_process_and_keeps_its_data(data_dir: Path) -> None:
    settings = Settings(database_url=None, redis_url=None, data_dir=data_dir)
    component = stack.EmbeddedPostgres(settings)
    url = component.start()
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            first_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert component.stop()
        assert not component.status().healthy
        url = component.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
            assert conn.execute("SELECT pg_backend_pid()").fetchone() != first_pid
    finally:
        component.stop()


@pytest.mark.embedded
def test_a_recorded_redis_pid_that_is_not_our_server_is_never_trusted(data_dir: Path) -> None:
    # Given a record pointing at a live process that is not the Redis we started (a reused PID)
    settings = Settings(database_url=None, redis_url=None, data_dir=data_dir)
    data_dir.mkdir(parents=True)
    stack.StackRecord(data_dir).put("redis", {"pid": os.getpid(), "url": "redis://127.0.0.1:1/0", "data": "x"})
    component = stack.EmbeddedRedis(settings)

    # Then it is not reported as running, `stop` kills nothing, and `start` starts a real server
    assert not component.status().healthy
    assert component.stop() is False
    url = component.start()
    try:
        assert stack.redis_process_id(url) == stack.StackRecord(data_dir).read()["redis"]["pid"]
    finally:
        component.stop()


@pytest.mark.embedded
def test_running_stops_only_the_servers_it_started(data_dir: Path) -> None:
    # Given an embedded PostgreSQL that is already running, and no Redis
    settings = Settings(database_url=None, redis_url=None, data_dir=data_dir)
    (postgres_before,) = stack.up(settings, only=("postgres",))
    try:
        # When a block runs with both
        with stack.running(settings, redis=True) as servers:
            # Then both answer, PostgreSQL being the one that was running
            assert servers.database_url == postgres_before.url
            assert stack.redis_health(servers.redis)[0]
            during = {s.name: s.healthy for s in stack.status(settings)}
        assert during["postgres"] and during["redis"]

        # And after it only the Redis it started is stopped
        after = {s.name: s for s in stack.status(settings)}
        assert after["postgres"].healthy and after["postgres"].url == postgres_before.url
        assert not after["redis"].healthy and after["redis"].url is None
        assert "redis" not in stack.StackRecord(data_dir).read()
    finally:
        stack.down(settings)


@pytest.mark.embedded
def test_running_leaves_configured_servers_alone_and_stops_its_own_after_an_error(
    server_url: str, data_dir: Path
) -> None:
    # Given a configured PostgreSQL (the session's) and no Redis
    settings = Settings(database_url=server_url, redis_url=None, data_dir=data_dir)

    seen: list[str] = []

    def failing_block() -> None:
        with stack.running(settings, redis=True) as servers:
            assert servers.database_url == server_url and stack.redis_health(servers.redis)[0]
            seen.append(servers.redis)
            raise RuntimeError("in the block")

    # When the block fails
    with pytest.raises(RuntimeError, match="in the block"):
        failing_block()

    # Then the Redis it started is stopped, and the configured server still answers, untouched
    assert len(seen) == 1 and stack.redis_process_id(seen[0]) is None
    assert not (data_dir / "postgres").exists()
    assert stack.postgres_health(server_url)[0]


@pytest.mark.embedded
def test_a_command_says_which_embedded_servers_it_started_and_leaves_running(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given nothing configured and nothing running
    for name in ("CHURN_DATABASE_URL", "CHURN_REDIS_URL", "MLFLOW_TRACKING_URI", "CHURN_SERVE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHURN_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        # When a command that needs the database runs twice
        first = runner.invoke(app, ["db", "init"])
        second = runner.invoke(app, ["db", "init"])

        # Then the first says it started PostgreSQL and that it keeps running; the second starts nothing
        assert first.exit_code == 0, first.output
        assert "started the embedded postgres" in first.stderr
        assert "churn down" in first.stderr
        assert second.exit_code == 0, second.output
        assert "started" not in second.stderr
        assert {s.name: s.healthy for s in stack.status(get_settings())}["postgres"]
    finally:
        stack.down(get_settings())
        get_settings.cache_clear()
