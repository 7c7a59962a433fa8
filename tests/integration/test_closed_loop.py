"""The closed loop, end to end on real servers (about 25 minutes on two cores: `make scenario`, not part of
`make test`): a synthetic world drifts while `churn simulate` runs the platform's
days through the Prefect deployments (the stack's Prefect server and deployment server), its users call the BentoML
service over HTTP, monitoring notices, the retrain flow registers a challenger, the A/B experiment declares it the
winner, `champion` moves, the service follows, and the new champion's realised AUC on the days after the promotion
beats what the old champion would have scored on the same users and days."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, timedelta

import pandas as pd
import psycopg
import pytest
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections, labelled_world, platform_settings, redis_db_url
from typer.testing import CliRunner

from churn_platform import stack
from churn_platform.cli import app
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.features.snapshots import labels_table_name, table_name
from churn_platform.model.aliases import CHAMPION
from churn_platform.serving.as_of_scores import pipeline_scores
from churn_platform.serving.models import load_version
from churn_platform.settings import Settings
from churn_platform.training import pipeline, registry

LOOP_DB = 4  # a Redis database of its own: the service reads the online store the loop materializes
WORLD = WorldConfig(users=1_500, days=120, seed=7, horizon_days=7)
SIMULATED_DAYS = 60  # the verdict came on day 51 when run by hand; then a week of the new champion's outcomes
DRIFT_AT = 2  # the simulated day the world drifts from
DRIFT_BOUND_DAYS = 14  # the monitoring issue's bound: drift is flagged within 14 days of its start
# The scenario's settings: a week's horizon, so that outcomes, a retraining and an experiment's verdict fit in a month
# (docs/closed-loop.md): the drift trigger alone, which waits for a week of outcomes after the drift
SCENARIO = {
    "CHURN_LABEL_HORIZON_DAYS": "7",
    "CHURN_TRAIN_TEST_DAYS": "7",
    "CHURN_TRAIN_VALIDATION_DAYS": "7",
    "CHURN_TRAIN_SNAPSHOT_EVERY_DAYS": "1",
    "CHURN_RETRAIN_WINDOW_DAYS": "30",
    "CHURN_RETRAIN_AUC_MARGIN": "off",
    "CHURN_AB_MIN_OUTCOME_USERS": "500",
    "CHURN_SERVE_POLL_INTERVAL_S": "2",
}
pytestmark = pytest.mark.scenario


@dataclass(frozen=True)
class Loop:
    settings: Settings
    url: str
    output: str  # what `churn simulate` printed
    drift_starts: date
    first_snapshot: date  # the first simulated day's traffic is scored on this snapshot
    old_champion: str


@pytest.fixture(scope="module")
def loop(
    make_database: Callable[[], str],
    stack_settings: Settings,
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Loop]:
    url = make_database()
    data_dir = tmp_path_factory.mktemp("loop")
    environment = {
        **SCENARIO, "MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"loop_{uuid.uuid4().hex[:8]}",
        "CHURN_DATA_DIR": str(data_dir), "CHURN_PREFECT_PORT": "0", "CHURN_SERVE_PORT": "0",
        "CHURN_PREFECT_DATABASE": f"prefect_test_{uuid.uuid4().hex[:12]}",
    }  # fmt: skip
    with platform_settings(url, redis_db_url(stack_settings, LOOP_DB), **environment) as settings:
        last = WORLD.start_date + timedelta(days=WORLD.days)  # the snapshot after the world's last day
        labelled_world(settings, url, WORLD, last)
        drifts = last + timedelta(days=DRIFT_AT - 1)
        trained = pipeline.train(settings, connections(settings, mlflow=True))
        assert trained.registered is not None
        try:
            result = CliRunner().invoke(
                app, ["simulate", "--days", str(SIMULATED_DAYS), "--drift-at", str(DRIFT_AT)], terminal_width=250
            )
            assert result.exit_code == 0, result.output
            yield Loop(settings, url, result.output, drifts, last + timedelta(days=1), trained.registered.version)
        finally:
            stack.down(settings)
            _drop_prefect_database(url, environment["CHURN_PREFECT_DATABASE"])


def _drop_prefect_database(url: str, database: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _one(url: str, query: str, params: dict[str, object] | None = None) -> tuple[object, ...] | None:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or {}).fetchone()


def test_drift_is_detected_within_the_monitoring_bound(loop: Loop) -> None:
    row = _one(
        loop.url,
        "SELECT min(window_end) FROM monitoring.drift_runs WHERE dataset_drift AND window_end > %(start)s",
        {"start": snapshot_time(loop.drift_starts)},
    )
    assert row is not None and row[0] is not None, loop.output
    flagged = row[0].astimezone(UTC).date()
    # the drifted day's traffic is scored on the next midnight's snapshot
    assert (flagged - loop.drift_starts).days - 1 <= DRIFT_BOUND_DAYS


def test_the_retrain_flow_registers_a_challenger_that_wins_and_becomes_the_champion(loop: Loop) -> None:
    settings = loop.settings
    tracking = connections(settings, mlflow=True).mlflow
    # a triggered evaluation trained a version and started its experiment
    fired = _one(loop.url, "SELECT reason, action FROM monitoring.retraining_evaluations WHERE action LIKE 'trained%%'"
                           " ORDER BY id LIMIT 1")  # fmt: skip
    assert fired is not None, loop.output
    decision = _one(loop.url, "SELECT name, winner, winner_version, action, champion_before, champion_after,"
                              " decided_at FROM serving.experiment_decisions ORDER BY id LIMIT 1")  # fmt: skip
    assert decision is not None, loop.output
    name, winner, version, action, before, after, decided_at = decision
    assert (winner, action, before, after) == ("variant", "promoted", loop.old_champion, version)
    assert name == f"retrain-v{version}"
    assert f"trained version {version} " in str(fired[1])
    assert registry.alias_version(tracking, settings.model_name, CHAMPION) == version
    # the retrain run and the A/B analysis that promoted are Prefect flow runs of the deployments
    assert "promoted" in loop.output and f"v{version}" in loop.output
    # the service followed: every prediction logged a poll interval after the promotion came from the new champion
    served = _one(
        loop.url,
        "SELECT array_agg(DISTINCT model_version), count(*) FROM serving.prediction_log WHERE predicted_at > %(after)s",
        {"after": decided_at + timedelta(seconds=10)},
    )
    assert served is not None and served[0] == [version] and int(served[1]) > 0  # type: ignore[call-overload]


def test_the_new_champion_beats_the_old_one_on_the_days_after_the_promotion(loop: Loop) -> None:
    settings = loop.settings
    decided = _one(loop.url, "SELECT winner_version, decided_at FROM serving.experiment_decisions ORDER BY id LIMIT 1")
    assert decided is not None
    version, decided_at = decided
    # the predictions served by the new champion after its promotion whose outcomes are known
    catalog = catalog_from_settings(settings)
    with psycopg.connect(loop.url) as conn:
        rows = conn.execute(
            f"SELECT DISTINCT ON (l.user_id, l.snapshot_at) l.user_id, l.snapshot_at, l.churn_probability, b.churned"
            f" FROM serving.prediction_log l JOIN {labels_table_name(catalog).as_string(conn)} b"
            f" ON b.user_id = l.user_id AND b.event_timestamp = l.snapshot_at AND b.horizon_days = 7"
            f" WHERE l.predicted_at > %(after)s AND l.model_version = %(version)s"
            f" ORDER BY l.user_id, l.snapshot_at, l.predicted_at DESC",
            {"after": decided_at, "version": version},
        ).fetchall()
        served = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "p_new", "churned"])
        features = pd.read_sql_query(
            f"SELECT * FROM {table_name(catalog).as_string(conn)} WHERE event_timestamp >= %(first)s",
            conn, params={"first": served["event_timestamp"].min()},
        )  # fmt: skip
    assert served["churned"].nunique() == 2 and len(served) >= 500, len(served)
    old = load_version(connections(settings, mlflow=True).mlflow, settings.model_name, loop.old_champion)
    scored = served.merge(features, on=["user_id", "event_timestamp"], how="left")
    new_auc = roc_auc_score(scored["churned"], scored["p_new"])
    old_auc = roc_auc_score(scored["churned"], pipeline_scores(old, scored))
    assert new_auc > old_auc, (new_auc, old_auc)
    # and the platform's own realised figures of the new champion cover those days
    realised = _one(loop.url, "SELECT count(*) FROM monitoring.performance WHERE model_version = %(v)s", {"v": version})
    assert realised is not None and int(realised[0]) > 0  # type: ignore[call-overload]


def test_the_story_tells_the_timeline_the_decisions_and_where_to_look(loop: Loop) -> None:
    output = loop.output
    assert "the platform's days" in output and "retraining:" in output and "A/B experiments" in output
    assert "retrain trained" in output and "promoted" in output
    assert "/runs/flow-run/" in output and "#/models/" in output and "drift report" in output


def test_every_step_ran_as_a_flow_run_of_the_stacks_prefect_server(loop: Loop) -> None:
    api = stack.running_prefect_api(loop.settings)
    assert api is not None
    flows = {f["id"]: f["name"] for f in stack.prefect_post(api, "/flows/filter", {"limit": 200})}
    runs = stack.prefect_post(api, "/flow_runs/filter", {"limit": 1000})
    completed: dict[str, int] = {}
    for run in runs:
        if run["state_type"] == "COMPLETED":
            completed[flows[run["flow_id"]]] = completed.get(flows[run["flow_id"]], 0) + 1
    assert completed.get("simulate") == 1
    assert completed.get("platform-day") == SIMULATED_DAYS
    assert completed.get("advance-world") == SIMULATED_DAYS and completed.get("retrain") == SIMULATED_DAYS
    assert completed.get("ab-analysis", 0) >= 1
