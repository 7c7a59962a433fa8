"""The analysis of an A/B experiment on a simulated world: predictions logged per arm as the service logs them
(control: the oracle's churn probability blurred; variant: the oracle's own), with or without the other arm's shadow
score, joined to their outcomes through the snapshots, analysed, stored with its history, and shown by
`churn ab report`; a broken split stops the verdict; a declared winner is promoted, or recommended."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest
from flows.ab_analysis import ab_analysis_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from scipy import stats
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import platform_settings, redis_db_url
from tests.integration.monitoring_backtest import extend_snapshots

from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.experiments import analysis, decision, records
from churn_platform.experiments.assignment import assign_arm, bucket
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.serving.prediction_log.rows import copy_lines, new_request_id
from churn_platform.serving.prediction_log.writer import COPY_SQL
from churn_platform.settings import Settings
from churn_platform.training.registry import ModelRegistry

AB_DB = 6  # a Redis database of its own (nothing here reads online features)
USERS, DAYS, HORIZON, SERVED_DAYS = 1_500, 150, 30, 30
# tau: the effect here (log loss per user lower by about 0.19) is far above the default's 0.02
THRESHOLDS = analysis.Thresholds(alpha=0.05, srm_alpha=0.001, tau=0.05, min_outcome_users=300, bootstrap_resamples=300)
BLUR = 2.0  # the control's scores: the oracle's log-odds plus N(0, BLUR^2)


class World:
    def __init__(self, settings: Settings, url: str, config: WorldConfig) -> None:
        self.settings, self.url, self.config = settings, url, config
        self.last_labelled = config.start_date + timedelta(days=DAYS - HORIZON - 1)
        self.labels = catalog_from_settings(settings).labels_table  # features.<catalog>_labels
        self.catalog_table = catalog_from_settings(settings).table  # the snapshots: the users a day serves


@pytest.fixture(scope="module")
def ab_world(make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str) -> Iterator[World]:
    url = make_database()
    # a model name of its own: a winner declared by the report or the flow is recommended, touching no other model
    environment = {"MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"ab_world_{uuid.uuid4().hex[:8]}"}
    with platform_settings(url, redis_db_url(stack_settings, AB_DB), **environment) as settings:
        assert settings.label_horizon_days == HORIZON
        config = WorldConfig(users=USERS, days=DAYS, seed=23)
        world.generate_world(url, config)
        extend_snapshots(settings, url, config.start_date + timedelta(days=DAYS - 1))
        yield World(settings, url, config)


def _start(url: str, name: str, share: float = 0.5) -> str:
    """The experiment's row, as `churn ab start` writes it (any running one stopped first)."""
    salt = f"salt of {name}"  # fixed: the same split on every run
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE serving.experiments SET stopped_at = now() WHERE stopped_at IS NULL")
        conn.execute(
            "INSERT INTO serving.experiments (name, control, variant, variant_share, salt) VALUES (%s, %s, %s, %s, %s)",
            (name, "champion", "challenger", share, salt),
        )
    return salt


def _serve(
    ab_world: World, name: str, salt: str, days: list[date], drop_variant: float = 0.0, shadow: bool = False,
    blur: float = BLUR,
) -> None:  # fmt: skip
    """Log every user of each day's snapshot in their arm: control scores are the oracle's log-odds blurred by
    N(0, blur^2), variant scores the oracle's; `drop_variant` of the variant's users are never logged (a broken
    split); with `shadow`, each row also carries the other arm's score, as shadow scoring logs it."""
    rng = np.random.default_rng(5)
    with psycopg.connect(ab_world.url) as conn:
        for day in days:
            oracle = conn.execute(
                "SELECT o.user_id, o.p_churn FROM synthetic.oracle_churn o"
                f" JOIN {ab_world.catalog_table} s ON s.user_id = o.user_id AND s.event_timestamp = %s"
                " WHERE o.day = %s ORDER BY o.user_id",
                (snapshot_time(day), day),
            ).fetchall()
            users, routes, scores, shadows = [], [], [], []
            for user_id, p in oracle:
                arm = assign_arm(name, salt, user_id, 0.5)
                if arm == "variant" and bucket(f"{name}-dropped", salt, user_id) < drop_variant:
                    continue
                oracle_p = float(np.clip(p, 1e-4, 1 - 1e-4))
                noise = rng.normal(0, blur) if blur else 0.0
                blurred = float(1 / (1 + np.exp(-(np.log(oracle_p / (1 - oracle_p)) + noise)))) if blur else oracle_p
                users.append(user_id)
                alias, version = ("champion", "1") if arm == "control" else ("challenger", "2")
                routes.append((name, arm, alias, version))
                scores.append(blurred if arm == "control" else oracle_p)
                shadows.append(("2", oracle_p) if arm == "control" else ("1", blurred))
            lines = copy_lines(new_request_id(), datetime.now(UTC), 1.0, "predict_batch", users, routes, scores,
                               ["0" * 16] * len(users), [snapshot_time(day)] * len(users),
                               shadows if shadow else None)  # fmt: skip
            with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write("".join(lines))


def _served_days(ab_world: World) -> list[date]:
    return [ab_world.last_labelled - timedelta(days=i) for i in range(SERVED_DAYS)]


def test_the_analysis_equals_scipy_on_the_joined_rows_declares_the_better_model_and_keeps_its_history(
    ab_world: World,
) -> None:
    salt = _start(ab_world.url, "oracle_vs_blurred")
    _serve(ab_world, "oracle_vs_blurred", salt, _served_days(ab_world))
    catalog = catalog_from_settings(ab_world.settings)

    found = analysis.analyse(ab_world.url, catalog, HORIZON, "oracle_vs_blurred", THRESHOLDS)

    with psycopg.connect(ab_world.url) as conn:  # the joined rows, by hand
        joined = conn.execute(
            "SELECT p.arm, p.user_id, p.churn_probability, l.churned::int FROM serving.prediction_log p"
            f" JOIN {ab_world.labels} l ON l.user_id = p.user_id AND l.event_timestamp = p.snapshot_at"
            " AND l.horizon_days = %s WHERE p.experiment = 'oracle_vs_blurred'",
            (HORIZON,),
        ).fetchall()
    per_user: dict[str, dict[str, list[float]]] = {"control": {}, "variant": {}}
    for arm, user, p, y in joined:
        per_user[arm].setdefault(user, []).append(-np.log(p) if y else -np.log1p(-p))
    losses = {arm: np.array([np.mean(v) for _, v in sorted(users.items())]) for arm, users in per_user.items()}
    for arm in ("control", "variant"):
        assert found.arms[arm].outcomes == sum(1 for row in joined if row[0] == arm)
        assert found.arms[arm].outcome_users == len(losses[arm])
        assert found.arms[arm].log_loss is not None
        assert found.arms[arm].log_loss.estimate == pytest.approx(losses[arm].mean(), rel=1e-9)
    expected = stats.ttest_ind(losses["variant"], losses["control"], equal_var=False)
    assert found.loss_difference is not None
    assert found.loss_difference.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert not found.sample_ratio.mismatch  # the service's own hash split
    # the oracle's scores beat the blurred ones: a winner, with the sequential test's always-valid p-value
    assert found.winner == "variant", found.reason
    assert found.sequential is not None and found.sequential.p_value < THRESHOLDS.alpha
    assert found.auc_difference is not None and found.auc_difference.low > 0
    assert found.probability_variant_better is not None and found.probability_variant_better > 0.99

    again = analysis.analyse(ab_world.url, catalog, HORIZON, "oracle_vs_blurred", THRESHOLDS)
    kept = analysis.history(ab_world.url, "oracle_vs_blurred")
    assert [row["winner"] for row in kept] == ["variant", "variant"]
    assert again.sequential is not None and again.sequential.p_value <= found.sequential.p_value  # a running minimum


def test_shadow_scores_compare_both_models_on_the_same_users_and_the_paired_test_decides(ab_world: World) -> None:
    salt = _start(ab_world.url, "shadowed")
    _serve(ab_world, "shadowed", salt, _served_days(ab_world), shadow=True)

    found = analysis.analyse(ab_world.url, catalog_from_settings(ab_world.settings), HORIZON, "shadowed", THRESHOLDS)

    with psycopg.connect(ab_world.url) as conn:  # every joined row, both models' scores, by hand
        joined = conn.execute(
            "SELECT p.arm, p.user_id, p.snapshot_at, p.churn_probability, p.shadow_probability, l.churned::int"
            f" FROM serving.prediction_log p JOIN {ab_world.labels} l ON l.user_id = p.user_id"
            " AND l.event_timestamp = p.snapshot_at AND l.horizon_days = %s WHERE p.experiment = 'shadowed'"
            " ORDER BY p.user_id, p.snapshot_at",
            (HORIZON,),
        ).fetchall()
    losses: dict[str, list[tuple[float, float]]] = {}
    first: dict[str, tuple[int, float, float]] = {}
    for arm, user, _, p, shadow, y in joined:
        p_control, p_variant = (p, shadow) if arm == "control" else (shadow, p)
        loss = [-np.log(q) if y else -np.log1p(-q) for q in (p_control, p_variant)]
        losses.setdefault(user, []).append((loss[0], loss[1]))
        first.setdefault(user, (y, p_control, p_variant))
    per_user = np.array([np.mean(pairs, axis=0) for _, pairs in sorted(losses.items())])
    expected = stats.ttest_rel(per_user[:, 1], per_user[:, 0])
    paired = found.paired
    assert paired is not None and paired.users == len(per_user) == len(first)
    assert paired.loss_difference is not None
    assert paired.loss_difference.estimate == pytest.approx((per_user[:, 1] - per_user[:, 0]).mean(), rel=1e-9)
    assert paired.loss_difference.p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    # DeLong over each user's first prediction with an outcome: both AUCs are scikit-learn's on those rows
    y, p_control, p_variant = (np.array(column) for column in zip(*first.values(), strict=True))
    assert paired.delong is not None
    assert paired.delong.auc_control == pytest.approx(roc_auc_score(y, p_control), abs=1e-12)
    assert paired.delong.auc_variant == pytest.approx(roc_auc_score(y, p_variant), abs=1e-12)
    assert paired.delong.auc_variant > paired.delong.auc_control and paired.delong.p_value < 0.001
    # The verdict rests on the paired sequential test: the same users under both models are stronger evidence
    assert found.decisive_test == "paired" and found.winner == "variant", found.reason
    assert "paired sequential test (both models on the same" in found.reason
    assert paired.sequential is not None and found.sequential is not None
    assert paired.sequential.likelihood_ratio > found.sequential.likelihood_ratio
    stored = analysis.history(ab_world.url, "shadowed")[-1]
    assert stored["decisive_test"] == "paired" and stored["paired_users"] == paired.users
    assert stored["paired_sequential_p"] == pytest.approx(paired.sequential.p_value)


def test_each_sequential_test_keeps_its_own_running_minimum(ab_world: World) -> None:
    salt = _start(ab_world.url, "minimum")
    _serve(ab_world, "minimum", salt, _served_days(ab_world)[:5], shadow=True, blur=0.0)  # both arms: the oracle
    with psycopg.connect(ab_world.url) as conn:  # an earlier analysis that had seen stronger evidence
        conn.execute(
            "INSERT INTO serving.experiment_analyses (name, analysed_at, users_control, users_variant,"
            " outcome_users_control, outcome_users_variant, srm_p, sequential_p, paired_sequential_p, reason, details)"
            " VALUES ('minimum', now(), 1, 1, 1, 1, 1, 0.003, 0.004, 'earlier', '{}')"
        )
    found = analysis.analyse(ab_world.url, catalog_from_settings(ab_world.settings), HORIZON, "minimum", THRESHOLDS)
    assert found.sequential is not None and found.paired is not None and found.paired.sequential is not None
    # Today's evidence alone: the same model in both arms, every paired difference 0
    assert found.paired.sequential.likelihood_ratio == 1.0 and found.sequential.likelihood_ratio < 1 / 0.003
    assert (found.sequential.p_value, found.paired.sequential.p_value) == (0.003, 0.004)


@pytest.fixture
def two_versions(mlflow_tracking: str) -> ModelRegistry:
    """A registered model of its own with version 1 as `champion` and 2 as `challenger` (the arms `_serve` logs)."""
    import mlflow
    from mlflow import MlflowClient

    name = f"ab_decision_{uuid.uuid4().hex[:8]}"
    client = MlflowClient()
    client.create_registered_model(name)
    for _ in range(2):
        with mlflow.start_run() as run:  # a decision moves aliases and writes tags: it loads no model
            mlflow.log_text("a stand-in version", "model/README.txt")
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    return ModelRegistry(mlflow_tracking, name)


def _tags(registry: ModelRegistry, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_model_version(registry.model_name, version).tags)


def test_a_winner_is_recommended_with_automatic_promotion_off_and_promoted_with_it_on(
    ab_world: World, two_versions: ModelRegistry
) -> None:
    salt = _start(ab_world.url, "decided")
    _serve(ab_world, "decided", salt, _served_days(ab_world), shadow=True)
    found = analysis.analyse(ab_world.url, catalog_from_settings(ab_world.settings), HORIZON, "decided", THRESHOLDS)
    assert found.winner == "variant", found.reason

    # Automatic promotion off: nothing moves, the recommendation is recorded once and tagged on the winner
    off = decision.decide(ab_world.url, found, two_versions, auto_promote=False, decided_by="a test (off)")
    assert off is not None and off.action == "recommended" and off.winner_version == "2"
    assert "move `champion` to version 2 in the MLflow UI" in off.reason
    assert two_versions.references().aliases == {"champion": "1", "challenger": "2"}
    running = records.running_experiment(ab_world.url)
    assert running is not None and running.name == "decided"
    assert decision.decide(ab_world.url, found, two_versions, auto_promote=False, decided_by="again") == off
    tags = _tags(two_versions, "2")
    assert tags[decision.DECISION_TAG] == "recommended by experiment decided"
    assert tags[decision.DECIDED_BY_TAG] == "a test (off)" and found.reason in tags[decision.REASON_TAG]

    # On: the variant becomes the champion, the champion it replaces `previous`, and the experiment stops
    on = decision.decide(ab_world.url, found, two_versions, auto_promote=True, decided_by="a test (on)")
    assert on is not None and on.action == "promoted"
    assert (on.champion_before, on.champion_after, on.analysis_id) == ("1", "2", found.analysis_id)
    assert two_versions.references().aliases == {"champion": "2", "previous": "1"}
    assert records.running_experiment(ab_world.url) is None
    assert _tags(two_versions, "2")[decision.DECISION_TAG] == "promoted by experiment decided"
    # Decided once: a later analysis of the stopped experiment changes nothing
    assert decision.decide(ab_world.url, found, two_versions, auto_promote=True, decided_by="again") == on
    assert [d.action for d in decision.decisions(ab_world.url, "decided")] == ["recommended", "promoted"]


def test_a_stopped_experiment_a_moved_alias_or_a_winning_control_move_no_alias(
    ab_world: World, two_versions: ModelRegistry
) -> None:
    from mlflow import MlflowClient

    catalog = catalog_from_settings(ab_world.settings)
    salt = _start(ab_world.url, "undecided")
    _serve(ab_world, "undecided", salt, _served_days(ab_world)[:12], shadow=True)
    found = analysis.analyse(ab_world.url, catalog, HORIZON, "undecided", THRESHOLDS)
    assert found.winner == "variant", found.reason

    # `challenger` moved to a version that never served the arm: nothing moves, even with automatic promotion on
    MlflowClient().set_registered_model_alias(two_versions.model_name, "challenger", "1")
    moved = decision.decide(ab_world.url, found, two_versions, auto_promote=True, decided_by="a test")
    assert moved is not None and moved.action == "recommended" and moved.winner_version == "1"
    assert "`challenger` now names version 1, while the arm was served by 2" in moved.reason
    assert two_versions.references().aliases == {"champion": "1", "challenger": "1"}

    # Stopped by a person: a recommendation, not a promotion
    MlflowClient().set_registered_model_alias(two_versions.model_name, "challenger", "2")
    records.stop_experiment(ab_world.url, "undecided")
    stopped = decision.decide(ab_world.url, found, two_versions, auto_promote=True, decided_by="a test")
    assert stopped is not None and stopped.action == "recommended" and "the experiment was stopped" in stopped.reason
    assert two_versions.references().aliases == {"champion": "1", "challenger": "2"}

    # A winning control (the champion) stops the experiment and keeps the champion
    salt = _start(ab_world.url, "control_wins")
    _serve(ab_world, "control_wins", salt, _served_days(ab_world)[:12], shadow=True)
    control_won = dataclasses.replace(
        analysis.analyse(ab_world.url, catalog, HORIZON, "control_wins", THRESHOLDS), winner="control"
    )
    kept = decision.decide(ab_world.url, control_won, two_versions, auto_promote=True, decided_by="a test")
    assert kept is not None and (kept.action, kept.winner_version, kept.champion_after) == ("kept", "1", "1")
    assert records.running_experiment(ab_world.url) is None
    assert two_versions.references().aliases == {"champion": "1", "challenger": "2"}


def test_a_broken_split_or_too_few_outcomes_stop_the_verdict_and_say_why(ab_world: World) -> None:
    catalog = catalog_from_settings(ab_world.settings)
    salt = _start(ab_world.url, "skewed")
    _serve(ab_world, "skewed", salt, _served_days(ab_world), drop_variant=0.3)  # about 41 / 59 instead of 50 / 50
    skewed = analysis.analyse(ab_world.url, catalog, HORIZON, "skewed", THRESHOLDS, store=False)
    assert skewed.sample_ratio.mismatch and skewed.winner is None
    assert skewed.reason.startswith("sample-ratio mismatch")

    salt = _start(ab_world.url, "early")
    _serve(ab_world, "early", salt, [ab_world.last_labelled + timedelta(days=1)])  # no outcome known yet
    early = analysis.analyse(ab_world.url, catalog, HORIZON, "early", THRESHOLDS, store=False)
    assert early.winner is None and early.reason.startswith("not enough outcomes yet")
    assert early.arms["control"].outcome_users == 0 and early.arms["control"].users > 0


def test_churn_ab_report_prints_the_arms_the_tests_and_the_verdict(ab_world: World, wide_console: None) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    salt = _start(ab_world.url, "reported")
    _serve(ab_world, "reported", salt, _served_days(ab_world)[:10])
    result = CliRunner().invoke(cli.app, ["ab", "report", "reported", "--history"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for shown in ("log loss / user", "sample ratio (chi-square)", "sequential (mSPRT, always valid)", "verdict:",
                  "earlier analyses of reported"):  # fmt: skip
        assert shown in result.output, result.output
    unknown = CliRunner().invoke(cli.app, ["ab", "report", "nope"], terminal_width=250)
    assert unknown.exit_code == 1 and "no experiment named 'nope'" in unknown.output


def test_the_flow_analyses_the_running_experiment_and_publishes_its_summary(
    prefect_server: None, ab_world: World
) -> None:
    salt = _start(ab_world.url, "flowed")  # now the running one
    _serve(ab_world, "flowed", salt, _served_days(ab_world)[:10])
    reason = ab_analysis_flow()
    assert reason == analysis.history(ab_world.url, "flowed")[-1]["reason"]

    with get_client(sync_client=True) as client:
        published = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["churn-ab-analysis"]))
        )
    assert any(
        "# A/B experiment flowed" in str(a.data) and "sample ratio (chi-square)" in str(a.data) for a in published
    )
