"""`churn simulate` on real servers, a few days long: the stack's Prefect server and deployment server run the
`simulate` deployment, each simulated day is a `platform-day` run whose steps are child runs, the day's active users
are scored by the BentoML service over HTTP and logged, the champion is monitored and the triggers evaluated every
day, the world drifts from the day asked for, and the story tells it with the links behind it. (The whole loop, drift
to promotion, is `test_closed_loop.py`.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, timedelta

import psycopg
import pytest
from tests.integration.feature_worlds import connections, labelled_world, platform_settings, redis_db_url
from typer.testing import CliRunner

from churn_platform import stack
from churn_platform.cli import app
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.settings import Settings
from churn_platform.simulation.traffic import active_users
from churn_platform.training import pipeline
from churn_platform.training.trainer import TrainConfig

SIMULATE_DB = 2  # a Redis database of its own: the service reads the online store the days materialize
WORLD = WorldConfig(users=200, days=60, seed=12, horizon_days=7)
DAYS = 2


@dataclass(frozen=True)
class Simulated:
    settings: Settings
    url: str
    output: str
    first_day: date  # the first simulated day (its traffic is scored on the next midnight's snapshot)
    api: str


@pytest.fixture(scope="module")
def simulated(
    make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Simulated]:  # fmt: skip
    url = make_database()
    prefect_database = f"prefect_test_{uuid.uuid4().hex[:12]}"
    environment = {
        "MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"simulate_{uuid.uuid4().hex[:8]}",
        "CHURN_DATA_DIR": str(tmp_path_factory.mktemp("simulate")), "CHURN_PREFECT_PORT": "0",
        "CHURN_SERVE_PORT": "0", "CHURN_PREFECT_DATABASE": prefect_database, "CHURN_LABEL_HORIZON_DAYS": "7",
        "CHURN_TRAIN_TEST_DAYS": "7", "CHURN_TRAIN_VALIDATION_DAYS": "7", "CHURN_SERVE_POLL_INTERVAL_S": "2",
        "CHURN_RETRAIN_AUC_MARGIN": "off",  # a 200-user world's daily AUC is noisy: no retraining in two days
    }  # fmt: skip
    with platform_settings(url, redis_db_url(stack_settings, SIMULATE_DB), **environment) as settings:
        labelled_world(settings, url, WORLD, WORLD.start_date + timedelta(days=WORLD.days))
        train = TrainConfig(seed=3, test_days=7, validation_days=7, candidates=("logistic_regression",))
        pipeline.train(settings, connections(settings, mlflow=True), config=train)
        try:
            result = CliRunner().invoke(app, ["simulate", "--days", str(DAYS), "--drift-at", "2"], terminal_width=250)
            assert result.exit_code == 0, result.output
            api = stack.running_prefect_api(settings)
            assert api is not None
            yield Simulated(settings, url, result.output, WORLD.start_date + timedelta(days=WORLD.days), api)
        finally:
            stack.down(settings)
            if settings.database_url:  # the stack's Prefect database, on a PostgreSQL with pg_trgm
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{prefect_database}" WITH (FORCE)')


def test_each_day_is_a_platform_day_run_of_the_simulate_deployment_with_its_steps_as_child_runs(
    simulated: Simulated,
) -> None:
    flows = {f["id"]: f["name"] for f in stack.prefect_post(simulated.api, "/flows/filter", {"limit": 200})}
    runs = stack.prefect_post(simulated.api, "/flow_runs/filter", {"limit": 200})
    completed: dict[str, int] = {}
    for run in runs:
        assert run["state_type"] == "COMPLETED", run
        name = str(flows[run["flow_id"]])
        completed[name] = completed.get(name, 0) + 1
    assert completed == {
        "simulate": 1, "platform-day": DAYS, "advance-world": DAYS, "features": DAYS, "monitor": DAYS,
        "retrain": DAYS,
    }, completed  # fmt: skip
    (parent,) = [run for run in runs if flows[run["flow_id"]] == "simulate"]
    assert parent["deployment_id"] is not None  # run through the deployment the stack's flow server serves
    days = stack.prefect_post(
        simulated.api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent["id"]]}}}
    )
    assert sorted(flows[d["flow_id"]] for d in days) == ["platform-day"] * DAYS


def test_each_days_active_users_are_scored_over_http_and_logged(simulated: Simulated) -> None:
    with psycopg.connect(simulated.url) as conn:
        requests = conn.execute(
            "SELECT request_id, min(endpoint), array_agg(DISTINCT user_id ORDER BY user_id), count(*),"
            " mode() WITHIN GROUP (ORDER BY snapshot_at) FROM serving.prediction_log GROUP BY request_id"
            " ORDER BY min(predicted_at)"
        ).fetchall()
    # one `/predict_batch` request a day, for exactly the users with an event that day, each answered and logged once
    assert len(requests) == DAYS
    for offset, (_request, endpoint, users, rows, snapshot) in enumerate(requests):
        day = simulated.first_day + timedelta(days=offset)
        assert endpoint == "predict_batch"
        assert sorted(users) == sorted(active_users(simulated.url, day)) and rows == len(users) > 0
        # scored on the snapshot at the next midnight (a user who cancelled that day keeps the one before)
        assert snapshot.astimezone(UTC).date() == day + timedelta(days=1)


def test_the_world_drifts_from_the_day_asked_for(simulated: Simulated) -> None:
    stored = world.load_world(simulated.url)
    assert stored is not None
    config, state = stored
    assert config.drift_at == WORLD.days + 1  # simulated day 2
    assert state.day == WORLD.days + DAYS


def test_every_day_is_monitored_and_its_triggers_evaluated_and_the_story_tells_it(simulated: Simulated) -> None:
    with psycopg.connect(simulated.url) as conn:
        drift = conn.execute("SELECT (window_end AT TIME ZONE 'UTC')::date FROM monitoring.drift_runs ORDER BY 1")
        windows = [row[0] for row in drift]
        evaluations = conn.execute("SELECT count(*) FROM monitoring.retraining_evaluations").fetchone()
    assert windows == [simulated.first_day + timedelta(days=offset + 1) for offset in range(DAYS)]
    assert evaluations == (DAYS,)
    output = simulated.output
    assert f"the world drifts from {simulated.first_day + timedelta(days=1)} (simulated day 2)" in output
    assert "the platform's days" in output and f"retraining: {DAYS} evaluations" in output
    for offset in range(DAYS):
        assert str(simulated.first_day + timedelta(days=offset + 1)) in output
    assert output.count("/runs/flow-run/") >= 1 + DAYS  # the simulate run, and the first and last days
    assert "#/models/" in output and "Evidently drift report" in output
