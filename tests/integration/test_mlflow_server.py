"""The MLflow tracking server of the local stack: a real `mlflow server`, its runs and registry in PostgreSQL."""

from __future__ import annotations

import os
import re
import socket
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import psycopg
import pytest
import sklearn
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from churn_platform import stack
from churn_platform.settings import Settings


def _mlflow_database(settings: Settings) -> str:
    return psycopg.conninfo.make_conninfo(stack.database_url(settings), dbname=settings.mlflow_database)


def test_the_server_answers_and_status_lists_it(stack_settings: Settings, mlflow_server: str) -> None:
    # Given the session's embedded server, when asked for its health and for the stack's status
    healthy, detail = stack.mlflow_health(mlflow_server)
    statuses = {s.name: s for s in stack.status(stack_settings)}

    # Then it answers with its version, and `churn status` lists it as a healthy embedded component at that URL
    assert healthy and detail == f"MLflow {mlflow.__version__}"
    assert list(statuses) == ["postgres", "redis", "mlflow", "prefect", "flows", "service"]
    assert statuses["mlflow"].healthy and statuses["mlflow"].embedded
    assert statuses["mlflow"].url == mlflow_server and mlflow_server.startswith("http://127.0.0.1:")


def test_a_run_round_trips_its_metric_and_a_proxied_artifact(
    stack_settings: Settings, mlflow_tracking: str, tmp_path: Path
) -> None:
    # Given a run that logs a parameter, a metric and an artifact through the server
    mlflow.set_experiment("round-trip")
    with mlflow.start_run() as run:
        mlflow.log_param("penalty", "l2")
        mlflow.log_metric("auc", 0.75, step=1)
        mlflow.log_text("churn within 30 days", "notes/label.txt")
    run_id = run.info.run_id

    # Then the server returns them
    fetched = MlflowClient().get_run(run_id)
    assert fetched.data.params == {"penalty": "l2"}
    assert fetched.data.metrics == {"auc": 0.75}
    # And the artifact went through the server's proxy into the stack's artifact folder, and comes back from it
    assert fetched.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((stack_settings.data_dir / "mlflow" / "artifacts").rglob("label.txt"))
    assert len(stored) == 1 and run_id in stored[0].parts
    assert stored[0].read_text() == "churn within 30 days"
    downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes/label.txt", dst_path=tmp_path)
    assert Path(downloaded).read_text() == "churn within 30 days"
    # And the run lives in the server's own database on the platform's PostgreSQL
    with psycopg.connect(_mlflow_database(stack_settings)) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
    assert row == ("FINISHED",)


def test_a_registered_model_loads_by_its_alias(stack_settings: Settings, mlflow_tracking: str) -> None:
    # Given a tiny model logged and registered through the server, under a name no other test uses
    name = f"churn-test-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(7)
    features = rng.normal(size=(40, 3))
    labels = (features[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(features, labels)
    mlflow.set_experiment("registry")
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],  # skips requirement inference
        )

    # When the version gets the alias `champion`
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", str(logged.registered_model_version))

    # Then `models:/<name>@champion` resolves to that version, the first of the model, and loads a model that
    # predicts as trained
    assert str(logged.registered_model_version) == "1"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    loaded = mlflow.sklearn.load_model(f"models:/{name}@champion")
    np.testing.assert_allclose(loaded.predict_proba(features), model.predict_proba(features))
    with psycopg.connect(_mlflow_database(stack_settings)) as conn:
        aliases = conn.execute("SELECT name, alias, version FROM registered_model_aliases WHERE name = %s", (name,))
        assert aliases.fetchall() == [(name, "champion", 1)]


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    # Given a fixed port that something else listens on, and no PostgreSQL at all
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        settings = Settings(
            database_url="postgresql://postgres@127.0.0.1:1/churn",
            mlflow_tracking_uri=None,
            mlflow_port=port,
            data_dir=tmp_path,
        )
        # Then starting MLflow fails at once, naming the port and the settings that fix it
        with pytest.raises(stack.StackError, match=rf"port {port} .* taken: set CHURN_MLFLOW_PORT"):
            stack.up(settings, only=("mlflow",))
    assert not (tmp_path / "mlflow").exists()


def _fake_python(folder: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `sys.executable -m mlflow server ...` run a shell script instead: a server that fails in milliseconds."""
    script = folder / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))


def _failing_settings(stack_settings: Settings, data_dir: Path, timeout_s: float = 120.0) -> Settings:
    return Settings(
        database_url=stack.database_url(stack_settings),
        mlflow_tracking_uri=None,
        mlflow_port=0,
        mlflow_database=stack_settings.mlflow_database,
        mlflow_start_timeout_s=timeout_s,
        data_dir=data_dir,
    )


def test_a_server_that_exits_is_reported_with_its_log(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server process that writes an error and exits
    _fake_python(tmp_path, 'echo "Error: the backend store is broken" >&2; exit 3', monkeypatch)
    settings = _failing_settings(stack_settings, tmp_path / "data")

    # Then `up` fails with the exit code, the log file and the log's last line, and records nothing
    log = (tmp_path / "data" / "mlflow" / "mlflow.log").resolve()
    expected = rf"embedded MLflow server exited with code 3; log: {re.escape(str(log))}: Error: the backend store"
    with pytest.raises(stack.StackError, match=expected):
        stack.up(settings, only=("mlflow",))
    assert "mlflow" not in stack.StackRecord(settings.data_dir).read()


def test_a_server_that_never_answers_is_stopped_with_its_children(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server process that starts a child (as `mlflow server` starts uvicorn) and never answers
    child_pid_file = tmp_path / "child.pid"
    _fake_python(tmp_path, f"sleep 60 & echo $! > {child_pid_file}; wait", monkeypatch)
    settings = _failing_settings(stack_settings, tmp_path / "data", timeout_s=1.0)

    # Then `up` gives up after the timeout, naming the setting, and stops the whole process group
    with pytest.raises(stack.StackError, match=r"did not answer within 1 s \(CHURN_MLFLOW_START_TIMEOUT_S\)"):
        stack.up(settings, only=("mlflow",))
    child_pid = int(child_pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    assert "mlflow" not in stack.StackRecord(settings.data_dir).read()


def test_a_recorded_pid_that_is_not_our_server_is_never_trusted(tmp_path: Path) -> None:
    # Given a record naming a live process (this one) with another start time: a reused PID
    settings = Settings(mlflow_tracking_uri=None, data_dir=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    record = {"pid": os.getpid(), "started": 0.0, "url": "http://127.0.0.1:1", "artifacts": "x", "log": "x"}
    stack.StackRecord(tmp_path).put("mlflow", record)
    component = stack.EmbeddedMlflow(settings, stack.ExternalPostgres("postgresql://127.0.0.1:1/x"))

    # Then it is not reported as running and `stop` signals nothing (this test process survives to assert it)
    assert not component.status().healthy
    assert component.stop() is False
