"""The prediction service over real HTTP: BentoML serving a model from a real MLflow server, features from Redis,
experiments and the prediction log in PostgreSQL."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from tests.integration.feature_worlds import connections, redis_db_url
from tests.integration.served_world import (
    POLL_INTERVAL_S,
    ServedWorld,
    post,
    running_service,
    served_world,
)

from churn_platform.experiments import records
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.online import OnlineFeatures
from churn_platform.serving import schemas
from churn_platform.settings import Settings
from churn_platform.training import registry

SERVING_DB = 13  # a Redis database of its own
RESPONSE_KEYS = {
    "user_id", "churn_probability", "risk_band", "model_version", "model_alias", "experiment", "arm", "features",
    "request_id",
}  # fmt: skip


@pytest.fixture(scope="module")
def served(
    make_database: Callable[[], str],
    stack_settings: Settings,
    mlflow_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedWorld]:
    url = make_database()
    redis_url = redis_db_url(stack_settings, SERVING_DB)
    with served_world(url, redis_url, mlflow_server, tmp_path_factory.mktemp("serving")) as world:
        yield world


def _champion(served: ServedWorld) -> str:
    return served.versions["logistic_regression"]


def _move_alias(served: ServedWorld, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    uri = served.settings.mlflow_tracking_uri
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        served.settings.model_name, alias, version
    )


def _wait_until_served_by(served: ServedWorld, version: str, timeout_s: float = 4 * POLL_INTERVAL_S + 5) -> None:
    deadline = time.monotonic() + timeout_s
    while post(served.url, "/predict", {"user_id": served.users[0]})[1].get("model_version") != version:
        assert time.monotonic() < deadline, f"version {version} did not start answering within {timeout_s} s"
        time.sleep(0.1)


def test_predict_answers_with_the_champion_and_the_features_it_used(served: ServedWorld) -> None:
    import mlflow.sklearn

    user = served.users[0]
    status, body = post(served.url, "/predict", {"user_id": user})

    assert status == 200
    assert set(body) >= RESPONSE_KEYS
    schemas.PredictResponse.model_validate(body)  # the documented shape
    assert body["user_id"] == user and body["status"] == "ok"
    assert body["model_version"] == _champion(served) and body["model_alias"] == "champion"
    assert body["experiment"] is None and body["arm"] == "champion"
    assert uuid.UUID(body["request_id"])
    names = catalog_from_settings(served.settings).names
    assert set(body["features"]) == set(names)
    assert all(f["status"] == "present" for f in body["features"].values())
    # The probability is the registered model's own, on the features the response reports
    model = mlflow.sklearn.load_model(f"models:/{served.settings.model_name}/{_champion(served)}")
    frame = pd.DataFrame([{name: body["features"][name]["value"] for name in names}])
    assert body["churn_probability"] == pytest.approx(model.predict_proba(frame)[0, 1], abs=1e-12)
    edges = served.settings.serve_risk_bands
    expected_band = (
        "high"
        if body["churn_probability"] >= edges[1]
        else "medium"
        if body["churn_probability"] >= edges[0]
        else "low"
    )
    assert body["risk_band"] == expected_band


def test_predict_batch_gives_one_result_per_user_in_order(served: ServedWorld) -> None:
    users = [*served.users[:50], "nobody-" + uuid.uuid4().hex]

    status, body = post(served.url, "/predict_batch", {"user_ids": users})

    assert status == 200
    schemas.PredictBatchResponse.model_validate(body)
    assert body["count"] == len(users) == len(body["results"])
    assert [r["user_id"] for r in body["results"]] == users
    assert all(r["request_id"] == body["request_id"] for r in body["results"])
    assert body["results"][-1]["status"] == "unknown_user" and body["results"][-1]["churn_probability"] is None
    assert all(r["features"] is None for r in body["results"])  # unless asked for
    single = post(served.url, "/predict", {"user_id": users[7]})[1]
    assert body["results"][7]["churn_probability"] == pytest.approx(single["churn_probability"], abs=1e-12)
    with_features = post(served.url, "/predict_batch", {"user_ids": users[:2], "include_features": True})[1]
    schemas.PredictBatchResponse.model_validate(with_features)
    assert set(with_features["results"][0]["features"]) == set(single["features"])


def test_explain_is_exact_for_the_linear_champion(served: ServedWorld) -> None:
    user = served.users[3]
    status, body = post(served.url, "/explain", {"user_id": user})

    assert status == 200
    schemas.ExplainResponse.model_validate(body)
    assert "linear" in body["method"]
    p = post(served.url, "/predict", {"user_id": user})[1]["churn_probability"]
    assert body["churn_probability"] == pytest.approx(p, abs=1e-12)
    total = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
    assert total == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    sizes = [abs(c["contribution"]) for c in body["contributions"]]
    assert sizes == sorted(sizes, reverse=True)
    assert {c["feature"] for c in body["contributions"]} == set(catalog_from_settings(served.settings).names)


def test_errors_name_the_user_or_the_field_and_never_leak_a_trace(served: ServedWorld) -> None:
    nobody = "nobody-" + uuid.uuid4().hex
    cases: list[tuple[str, object, int, str]] = [
        ("/predict", {"user_id": nobody}, 404, nobody),
        ("/explain", {"user_id": nobody}, 404, nobody),
        ("/predict", {"user_id": "u1", "extra": 1}, 400, "extra"),
        ("/predict", {"userid": "u1"}, 400, "user_id"),
        ("/predict", {"user_id": ""}, 400, "user_id"),
        ("/predict", b"{not json", 400, "JSON"),
        ("/predict_batch", {"user_ids": []}, 400, "user_ids"),
        ("/predict_batch", {"user_ids": ["u"] * (served.settings.serve_max_batch + 1)}, 400, "user_ids"),
        ("/predict_batch", {"user_ids": "u1"}, 400, "user_ids"),
    ]
    for route, body, expected_status, named in cases:
        status, answer = post(served.url, route, body)
        assert status == expected_status, (route, body, answer)
        assert isinstance(answer, dict) and named in answer["error"], (route, answer)
        assert "Traceback" not in str(answer)


def test_a_known_user_without_features_is_said_so_not_scored(served: ServedWorld) -> None:
    # Given a user of raw.users whose features are not in the online store (churned before the materialized window)
    with psycopg.connect(served.database_url) as conn:
        everyone = [row[0] for row in conn.execute("SELECT user_id FROM raw.users ORDER BY user_id")]
    vectors = OnlineFeatures(served.settings, connections(served.settings)).read(everyone)
    without = next(v.user_id for v in vectors if all(s == "missing" for s in v.status.values()))

    status, body = post(served.url, "/predict", {"user_id": without})

    assert status == 200
    assert body["status"] == "no_features" and body["churn_probability"] is None and body["risk_band"] == "unknown"
    assert without in body["message"]
    assert all(f["status"] == "missing" and f["value"] is None for f in body["features"].values())


TRAFFIC_TIMEOUT_S = 5.0  # a /predict slower than this counts as a failed request
TRAFFIC_FLOOR = 20  # requests each phase of a hot-swap test must see, so the traffic provably ran throughout


@dataclass(frozen=True)
class Request:
    """One /predict of the background traffic: when it started, and its status and model version, or what
    went wrong (a refused or reset connection, a timeout, a body that is not JSON)."""

    started: float
    status: int | None
    version: str | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.status != 200 or self.version is None


class Traffic:
    """/predict in a loop on a thread, recording every request, failed or not (nothing it meets ends the loop)."""

    def __init__(self, served: ServedWorld) -> None:
        self.served = served
        self.seen: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.monotonic()
            user = {"user_id": self.served.users[i % 50]}
            try:
                status, body = post(self.served.url, "/predict", user, timeout_s=TRAFFIC_TIMEOUT_S)
            except Exception as exc:  # connection errors, timeouts, a 5xx whose body is not JSON: all failures
                self.seen.append(Request(started, None, None, f"{type(exc).__name__}: {exc}"))
            else:
                version = body.get("model_version") if isinstance(body, dict) else None
                self.seen.append(Request(started, status, version, None if status == 200 else str(body)[:200]))
            i += 1

    def failures(self) -> list[Request]:
        return [request for request in self.seen if request.failed]

    def wait_for(self, count: Callable[[list[Request]], int], at_least: int, timeout_s: float = 30.0) -> None:
        """Wait until `count(requests seen)` reaches `at_least`; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while count(list(self.seen)) < at_least:
            assert self._thread.is_alive(), "the traffic thread stopped"
            assert time.monotonic() < deadline, f"the traffic did not reach {at_least} within {timeout_s} s"
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_an_alias_move_is_served_within_two_poll_intervals_without_a_failed_request(served: ServedWorld) -> None:
    boosted, champion = served.versions["gradient_boosting"], _champion(served)
    try:
        with Traffic(served) as traffic:
            # Given traffic answered by the champion
            traffic.wait_for(lambda seen: sum(r.version == champion for r in seen), TRAFFIC_FLOOR)

            # When champion moves, as a click in the MLflow UI does
            _move_alias(served, "champion", boosted)
            moved_at = time.monotonic()

            # Then the traffic is answered by the new version, and goes on being answered by it
            traffic.wait_for(lambda seen: sum(r.version == boosted for r in seen), TRAFFIC_FLOOR)
        seen = traffic.seen
        assert traffic.failures() == [], f"{len(traffic.failures())} of {len(seen)} requests failed"
        before = [r for r in seen if r.started < moved_at]
        first_new = min(r.started for r in seen if r.version == boosted)
        assert len(before) >= TRAFFIC_FLOOR and sum(r.started > first_new for r in seen) >= TRAFFIC_FLOOR - 1
        assert first_new - moved_at <= 2 * POLL_INTERVAL_S
        # Once the new version answers, the old one never answers again (one swap, not a flip-flop)
        assert all(r.version == boosted for r in seen if r.started > first_new)

        # The tree model explains itself with TreeSHAP, exactly additive in log-odds
        body = post(served.url, "/explain", {"user_id": served.users[5]})[1]
        assert body["model_version"] == boosted and "TreeSHAP" in body["method"]
        p = body["churn_probability"]
        total = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
        assert total == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    finally:
        _move_alias(served, "champion", champion)
        _wait_until_served_by(served, champion)


def _register_broken_version(served: ServedWorld) -> str:
    """A version that loads but cannot predict: the platform's encoder before a classifier fitted on one class."""
    import mlflow
    import mlflow.sklearn
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    import churn_platform.training.trainer as trainer

    names = catalog_from_settings(served.settings).names
    frame = pd.DataFrame([dict.fromkeys(names, 1.0)] * 4).assign(plan="basic", channel="web")
    encoder = trainer.encoder_for(catalog_from_settings(served.settings)).fit(frame)
    one_class = DummyClassifier().fit(np.zeros((4, len(encoder.output_names_))), np.zeros(4))
    mlflow.set_tracking_uri(served.settings.mlflow_tracking_uri)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            Pipeline([("encode", encoder), ("classify", one_class)]),
            name="model",
            registered_model_name=served.settings.model_name,
            serialization_format="cloudpickle",
        )
    return str(info.registered_model_version)


def _refusals(served: ServedWorld, version: str) -> list[tuple[str, str]]:
    with psycopg.connect(served.database_url) as conn:
        return conn.execute(
            "SELECT kind, message FROM monitoring.alerts WHERE subject LIKE %s", (f"% version {version} %",)
        ).fetchall()


def test_a_broken_version_is_refused_and_the_last_good_one_keeps_serving(served: ServedWorld) -> None:
    broken, champion = _register_broken_version(served), _champion(served)
    try:
        with Traffic(served) as traffic:
            traffic.wait_for(len, TRAFFIC_FLOOR)
            moved_at = time.monotonic()
            _move_alias(served, "champion", broken)

            # The service refuses the version on its next poll, and says so once
            deadline = time.monotonic() + 4 * POLL_INTERVAL_S + 5
            while not _refusals(served, broken):
                assert time.monotonic() < deadline, f"no refusal of version {broken} was recorded"
                time.sleep(0.1)
            refused_at = time.monotonic()
            # Traffic goes on past two more polls after the refusal: the broken version is not swapped in later
            traffic.wait_for(
                lambda seen: sum(r.started > refused_at + 2 * POLL_INTERVAL_S for r in seen), TRAFFIC_FLOOR
            )
        seen = traffic.seen
        assert traffic.failures() == [], f"{len(traffic.failures())} of {len(seen)} requests failed"
        assert sum(r.started < moved_at for r in seen) >= TRAFFIC_FLOOR
        assert sum(moved_at <= r.started <= refused_at for r in seen) >= 1
        assert {r.version for r in seen} == {champion}
        alerts = _refusals(served, broken)
        assert [kind for kind, _ in alerts] == ["model_refused"]
        assert "smoke prediction" in alerts[0][1]
    finally:
        _move_alias(served, "champion", champion)


def _arms(served: ServedWorld, user_ids: list[str]) -> dict[str, str]:
    arms: dict[str, str] = {}
    for start in range(0, len(user_ids), served.settings.serve_max_batch):
        chunk = user_ids[start : start + served.settings.serve_max_batch]
        status, body = post(served.url, "/predict_batch", {"user_ids": chunk})
        assert status == 200
        arms.update({r["user_id"]: r["arm"] for r in body["results"]})
    return arms


def test_ab_assignment_is_sticky_across_restarts_and_splits_as_configured(served: ServedWorld, tmp_path: Path) -> None:
    name = f"ab-{uuid.uuid4().hex[:8]}"
    registered = registry.model_references(served.settings.mlflow_tracking_uri or "", served.settings.model_name)
    variant = served.versions["gradient_boosting"]
    records.start_experiment(served.database_url, name, variant, 0.3, registered=registered)
    try:
        deadline = time.monotonic() + 2 * POLL_INTERVAL_S + 5
        while post(served.url, "/predict", {"user_id": served.users[0]})[1]["experiment"] != name:
            assert time.monotonic() < deadline, "the service did not pick the experiment up"
            time.sleep(0.1)

        # Over 100,000 users the variant's share is the configured one, to within one percentage point
        many = [f"user-{i}" for i in range(100_000)]
        arms = _arms(served, many)
        share = sum(arm == "variant" for arm in arms.values()) / len(many)
        assert abs(share - 0.3) <= 0.01, share

        # Each arm is answered by its model
        first = post(served.url, "/predict_batch", {"user_ids": served.users})[1]["results"]
        for result in first:
            expected = served.versions["gradient_boosting"] if result["arm"] == "variant" else _champion(served)
            assert result["model_version"] == expected and result["experiment"] == name
        assert {r["arm"] for r in first} == {"control", "variant"}

        # A service started afresh (another process, after a restart) puts every user in the same arm
        settings = served.settings.model_copy(update={"data_dir": tmp_path})
        with running_service(settings) as restarted:
            again = _arms(
                ServedWorld(settings, restarted, served.database_url, served.users, served.versions),
                [*served.users, *many[:5_000]],
            )
        assert {u: again[u] for u in served.users} == {r["user_id"]: r["arm"] for r in first}
        assert all(again[u] == arms[u] for u in many[:5_000])
    finally:
        records.stop_experiment(served.database_url, name)


def _await_experiment(served: ServedWorld, name: str | None) -> float:
    """Seconds until the service answers inside experiment `name` (None: outside any)."""
    started = time.monotonic()
    while post(served.url, "/predict", {"user_id": served.users[0]})[1]["experiment"] != name:
        assert time.monotonic() - started < 2 * POLL_INTERVAL_S + 5, f"the service did not follow to {name}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_shadow_scores_are_logged_and_an_automatic_promotion_is_served_within_two_poll_intervals(
    served: ServedWorld,
) -> None:
    import mlflow.sklearn

    from churn_platform.experiments import analysis, decision

    uri, model_name = served.settings.mlflow_tracking_uri or "", served.settings.model_name
    champion, boosted = _champion(served), served.versions["gradient_boosting"]
    aliases_before = dict(registry.model_references(uri, model_name).aliases)
    name = f"shadow-{uuid.uuid4().hex[:8]}"
    records.start_experiment(
        served.database_url, name, boosted, 0.5, registered=registry.model_references(uri, model_name)
    )
    try:
        _await_experiment(served, name)
        status, body = post(served.url, "/predict_batch", {"user_ids": served.users, "include_features": True})
        assert status == 200
        answers = {r["user_id"]: r for r in body["results"]}
        deadline = time.monotonic() + 10
        while True:
            with psycopg.connect(served.database_url) as conn:
                logged = conn.execute(
                    "SELECT user_id, arm, model_version, churn_probability, shadow_version, shadow_probability"
                    " FROM serving.prediction_log WHERE request_id = %s::uuid",
                    (body["request_id"],),
                ).fetchall()
            if len(logged) == len(answers) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(logged) == len(answers) and {row[1] for row in logged} == {"control", "variant"}

        # Each row holds the answer of its arm's model and the other arm's score of the same features
        names = catalog_from_settings(served.settings).names
        models = {v: mlflow.sklearn.load_model(f"models:/{model_name}/{v}") for v in (champion, boosted)}
        for user, arm, version, p, shadow_version, shadow_p in logged:
            answer = answers[user]
            frame = pd.DataFrame([{n: answer["features"][n]["value"] for n in names}])
            assert (version, p) == (answer["model_version"], answer["churn_probability"])
            assert shadow_version == (champion if arm == "variant" else boosted)
            assert shadow_p == pytest.approx(models[shadow_version].predict_proba(frame)[0, 1], abs=1e-12)

        # A declared winner, promoted automatically: the service follows the registry and the stopped experiment
        found = analysis.analyse(
            served.database_url, catalog_from_settings(served.settings), served.settings.label_horizon_days, name,
            analysis.Thresholds.from_settings(served.settings),
        )  # fmt: skip
        won = dataclasses.replace(found, winner="variant", reason="variant wins (declared by this test)")
        decided = decision.decide(served.database_url, won, registry.ModelRegistry(uri, model_name),
                                  auto_promote=True, decided_by="the service test")  # fmt: skip
        assert decided is not None and decided.action == "promoted"
        followed_s = _await_experiment(served, None)
        answer = post(served.url, "/predict", {"user_id": served.users[0]})[1]
        assert answer["model_version"] == boosted and answer["model_alias"] == "champion"
        assert followed_s <= 2 * POLL_INTERVAL_S, followed_s
        assert registry.model_references(uri, model_name).aliases["previous"] == champion
    finally:
        if records.running_experiment(served.database_url) is not None:
            records.stop_experiment(served.database_url, name)
        _restore_aliases(served, aliases_before)
        _wait_until_served_by(served, champion)


def _restore_aliases(served: ServedWorld, aliases: dict[str, str]) -> None:
    from mlflow import MlflowClient

    uri, model_name = served.settings.mlflow_tracking_uri or "", served.settings.model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for alias in set(registry.model_references(uri, model_name).aliases) - set(aliases):
        client.delete_registered_model_alias(model_name, alias)
    for alias, version in aliases.items():
        client.set_registered_model_alias(model_name, alias, version)


def test_the_prediction_log_has_one_row_per_answered_prediction(served: ServedWorld) -> None:
    nobody = "nobody-" + uuid.uuid4().hex
    answered: dict[str, int] = {}  # request id -> rows it must have written
    for user in [*served.users[:30], nobody, *served.users[30:40]]:
        status, body = post(served.url, "/predict", {"user_id": user})
        if status == 200:
            answered[body["request_id"]] = 1
    status, body = post(served.url, "/predict_batch", {"user_ids": [*served.users[:25], nobody]})
    assert status == 200
    answered[body["request_id"]] = 25  # the unknown user is in the response, not in the log

    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(served.database_url) as conn:
            rows = dict(
                conn.execute(
                    "SELECT request_id::text, count(*) FROM serving.prediction_log WHERE request_id = ANY(%s::uuid[])"
                    " GROUP BY 1",
                    (list(answered),),
                ).fetchall()
            )
            strangers = conn.execute("SELECT count(*) FROM serving.prediction_log WHERE user_id = %s", (nobody,))
            stranger_rows = strangers.fetchone()
        if rows == answered or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == answered
    assert stranger_rows == (0,)
    assert len(answered) == 41

    # Each scored row names the snapshot its features came from: the user's newest materialized snapshot
    table = catalog_from_settings(served.settings).table
    with psycopg.connect(served.database_url) as conn:
        joined = conn.execute(
            f"SELECT l.snapshot_at, (SELECT max(s.event_timestamp) FROM {table} s WHERE s.user_id = l.user_id)"
            " FROM serving.prediction_log l WHERE l.request_id = %s::uuid AND l.churn_probability IS NOT NULL",
            (body["request_id"],),
        ).fetchall()
    assert len(joined) == 25
    assert all(at is not None and at == newest for at, newest in joined), joined[:3]


def test_the_service_honours_its_openapi_document(served: ServedWorld, tmp_path: Path) -> None:
    # Schemathesis generates valid and invalid requests from the service's own OpenAPI document: no 5xx, status
    # codes, content types and bodies as documented, invalid data rejected, valid data accepted
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{served.url}/docs.json",
        "--max-examples", "100", "--seed", "20261126", "--no-color",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout, run.stdout[-2000:]


def test_the_cli_predicts_explains_and_runs_an_experiment_through_the_service(served: ServedWorld) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    runner = CliRunner()
    name = f"cli-{uuid.uuid4().hex[:8]}"

    predicted = runner.invoke(cli.app, ["predict", *served.users[:3], "--wait", "60"], terminal_width=200)
    explained = runner.invoke(cli.app, ["explain", served.users[0], "--wait", "60"], terminal_width=200)
    started = runner.invoke(cli.app, ["ab", "start", name, "--variant", "challenger", "--share", "0.25"])
    try:
        refused = runner.invoke(cli.app, ["ab", "start", name + "-2", "--variant", "no-such-alias"])
        status = runner.invoke(cli.app, ["ab", "status"], terminal_width=200)
    finally:
        stopped = runner.invoke(cli.app, ["ab", "stop"])

    assert predicted.exit_code == 0, predicted.output
    assert all(user in predicted.output for user in served.users[:3]) and "v1 champion" in predicted.output
    assert explained.exit_code == 0 and "exact (linear model" in explained.output, explained.output
    assert started.exit_code == 0 and "25% of users to challenger" in started.output, started.output
    assert refused.exit_code == 1 and "no alias 'no-such-alias'" in refused.output
    assert status.exit_code == 0 and name in status.output and "running" in status.output, status.output
    assert stopped.exit_code == 0 and f"experiment {name} stopped" in stopped.output


def test_metrics_show_the_models_served_and_the_prediction_log(served: ServedWorld) -> None:
    post(served.url, "/predict", {"user_id": served.users[0]})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{served.url}/metrics", timeout=10) as response:
        text = response.read().decode()

    assert re.search(rf'churn_model_serving{{worker="\d+",reference="champion",version="{_champion(served)}"}} 1', text)
    assert re.search(r'churn_registry_reachable{worker="\d+"} 1', text)
    written = re.search(r'churn_prediction_log_rows{worker="\d+",state="written"} (\d+)', text)
    assert written is not None
    assert re.search(r'churn_prediction_log_rows{worker="\d+",state="dropped"} 0', text)
    assert "bentoml_service_request_total" in text or "request_total" in text  # BentoML's own metrics stay
