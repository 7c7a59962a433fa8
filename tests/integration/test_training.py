"""Training against real PostgreSQL, Feast and an MLflow server: registration, aliases, promotion, rollback,
the policy check, leakage that the evaluation must see, and determinism."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.metrics import roc_auc_score
from tests.integration.feature_worlds import connections, labelled_world, platform_settings, redis_db_url

from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import training_sets
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.settings import Settings, get_settings
from churn_platform.training import pipeline, promotion, registry, report
from churn_platform.training.split import time_split
from churn_platform.training.trainer import TrainConfig, TrainedModel, train_model

TRAINING_DB = 15  # a Redis database of its own (training reads no online features; nothing else uses it)
# No refit: the policy tests below register the models they evaluated, so that each version's scores on its test
# rows are the ones it was tested with (a refitted version is compared by those; see the folds-design test).
CONFIG = TrainConfig(seed=3, test_days=21, validation_days=21, refit=False)


@pytest.fixture(scope="module")
def world_settings(
    make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str
) -> Iterator[Settings]:
    """A 500-user, 200-day world with snapshots and labels, the Feast repo applied, a model name of its own."""
    url = make_database()
    environment = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "CHURN_MODEL_NAME": f"churn_test_{uuid.uuid4().hex[:8]}",
        "CHURN_TRAIN_SEED": str(CONFIG.seed),
        "CHURN_TRAIN_TEST_DAYS": str(CONFIG.test_days),
        "CHURN_TRAIN_VALIDATION_DAYS": str(CONFIG.validation_days),
    }
    with platform_settings(url, redis_db_url(stack_settings, TRAINING_DB), **environment) as current:
        labelled_world(current, url, WorldConfig(users=500, days=200, seed=12), date(2025, 7, 20))
        yield current


@pytest.fixture(scope="module")
def rows(world_settings: Settings) -> training_sets.TrainingSet:
    return training_sets.training_set(
        world_settings, connections(world_settings), every_days=world_settings.train_snapshot_every_days
    )


def test_train_registers_a_version_that_loads_by_alias(
    world_settings: Settings, rows: training_sets.TrainingSet, mlflow_tracking: str
) -> None:
    import mlflow.pyfunc

    result = pipeline.train(world_settings, connections(world_settings, mlflow=True))

    version = result.registered
    assert version is not None
    assert set(version.aliases) == {"champion", "challenger"}  # the first version of a model is both
    for name in ("test_roc_auc", "test_pr_auc", "test_log_loss", "test_brier", "baseline_roc_auc",
                 "oracle_roc_auc", "auc_to_oracle"):  # fmt: skip
        assert name in version.metrics, name
    assert version.metrics["test_roc_auc"] > version.metrics["baseline_roc_auc"]
    assert version.metrics["recency_roc_auc"] == version.metrics["baseline_roc_auc"]

    # The classical baselines were scored on the model's own test rows: recency, and a BG/NBD fitted on the histories
    # as of the cut (the first day of the validation window): what the model's fit knew too
    trained, test_rows = result.trained, result.trained.test_frame
    assert trained.bgnbd is not None
    assert trained.bgnbd.fitted_as_of.date() == trained.split.cut == trained.split.validation.first  # type: ignore[union-attr]
    assert 100 < trained.bgnbd.fit.customers <= 500  # the users active before then (signups are spread out)
    assert version.metrics["bgnbd_roc_auc"] == pytest.approx(roc_auc_score(test_rows["churned"], test_rows["p_bgnbd"]))
    assert version.metrics["recency_roc_auc"] == pytest.approx(
        roc_auc_score(test_rows["churned"], test_rows["p_recency"])
    )
    assert test_rows["p_bgnbd"].nunique() > 10 and version.metrics["bgnbd_roc_auc"] < version.metrics["oracle_roc_auc"]
    assert version.metrics["model_lift_over_bgnbd_auc"] == pytest.approx(
        version.metrics["test_roc_auc"] - version.metrics["bgnbd_roc_auc"]
    )
    assert {"bgnbd_r", "bgnbd_alpha", "bgnbd_a", "bgnbd_b"} <= set(version.metrics)
    shown = ("test_roc_auc", "recency_roc_auc", "bgnbd_roc_auc", "oracle_roc_auc")
    assert report.metric_rows(result)[0] == ("ROC AUC", *(f"{version.metrics[k]:.4f}" for k in shown))
    assert version.tags["feature_service"] == "churn_v1"
    assert version.tags["feature_definitions_hash"] == result.trained.definitions_hash
    assert version.tags["git_commit"] and version.tags["training_range"].count("..") == 1
    assert int(version.tags["rows_train"]) == result.trained.rows["train"]
    # Registered: the chosen candidate refitted on every labelled row of the range, after the test evaluation
    assert version.tags["refit"] == "true" and int(version.tags["rows_refit"]) == len(rows.frame)
    assert len(rows.frame) > sum(result.trained.rows[part] for part in ("train", "validation", "test"))  # + the gaps
    assert mlflow.get_run(version.run_id).data.params["refit"] == "True"
    # and the model its test figures are of is logged beside it, for promotion's paired comparison
    tested = promotion.tested_pipeline(mlflow_tracking, version)
    assert version.tags[registry.EVALUATED_MODEL_TAG]
    np.testing.assert_allclose(tested.predict_proba(test_rows)[:, 1], test_rows["p_model"], rtol=1e-12)

    for name in ("test_precision", "test_recall", "test_f1", "test_lift_top10", "test_recall_top10", "test_ece"):
        assert name in version.metrics, name
    assert {"rows_validation", "rows_test", "split", "candidate"} <= set(version.tags)

    uri = f"models:/{world_settings.model_name}@champion"
    loaded = mlflow.pyfunc.load_model(uri)
    example = result.trained.input_example
    served = np.asarray(loaded.predict(example))
    assert served.shape == (len(example), 2)  # P(stays), P(churns), as the signature says
    np.testing.assert_allclose(served, result.trained.model.predict_proba(example), rtol=1e-12)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert [c.name for c in info.signature.inputs.inputs] == list(example.columns)
    run = mlflow.get_run(version.run_id)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    plots = ("roc", "precision_recall", "calibration", "lift", "feature_importance")
    assert {f"plots/{name}.png" for name in plots} <= artifacts

    # The split keeps a full label horizon between the windows, on the rows actually used
    frame, horizon = result.trained.test_frame, timedelta(days=world_settings.label_horizon_days)
    split = result.trained.split
    assert split.validation.first - split.train.last > horizon and split.test.first - split.validation.last > horizon
    assert pd.to_datetime(frame["event_timestamp"]).dt.date.min() >= split.test.first


def test_promote_moves_champion_and_rollback_restores_it(world_settings: Settings, mlflow_tracking: str) -> None:
    # Both versions are refits of the same range: the champion has learned every outcome of the newer version's
    # test window, and is compared as it was tested (a refit would win there by what it has seen)
    uri, name = mlflow_tracking, world_settings.model_name
    if registry.alias_version(uri, name, "champion") is None:
        pipeline.train(world_settings, connections(world_settings, mlflow=True))
    champion = registry.alias_version(uri, name, "champion")
    newer = pipeline.train(world_settings, connections(world_settings, mlflow=True)).registered
    assert newer is not None and newer.aliases == ("challenger",)
    assert registry.alias_version(uri, name, "champion") == champion  # a new version never takes over by itself

    promoted = promotion.promote(uri, name, newer.version, margin=world_settings.promotion_auc_margin)

    assert promoted.aliases == ("champion",)
    assert f"champion version {champion}) on the same" in promoted.tags["promotion_check"]
    assert registry.alias_version(uri, name, "previous") == champion
    assert registry.alias_version(uri, name, "challenger") is None
    restored = registry.rollback(uri, name)
    assert restored.version == champion and "champion" in restored.aliases
    assert registry.alias_version(uri, name, "previous") == newer.version
    listed = registry.list_versions(uri, name)
    assert [v.version for v in listed] == sorted((v.version for v in listed), key=int, reverse=True)


def test_a_version_validated_by_user_folds_records_its_design_and_is_compared_on_its_test_rows(
    world_settings: Settings, mlflow_tracking: str
) -> None:
    import mlflow

    uri, name = mlflow_tracking, world_settings.model_name
    if registry.alias_version(uri, name, "champion") is None:
        pipeline.train(world_settings, connections(world_settings, mlflow=True))
    champion = registry.alias_version(uri, name, "champion")
    assert champion is not None and registry.get_version(uri, name, champion).tags["validation_design"] == "time"
    folds = world_settings.model_copy(update={"train_validation": "folds", "train_folds": 3})

    result = pipeline.train(folds, connections(folds, mlflow=True))

    version, split = result.registered, result.trained.split
    assert version is not None and split.design == "folds" and split.validation is None
    assert version.tags["validation_design"] == "folds (3 user folds)" and "rows_validation" not in version.tags
    # Refitted on every labelled row: its outcomes reach past its own test window
    horizon = timedelta(days=folds.label_horizon_days)
    assert version.tags["outcomes_seen_through"] == (split.test.last + horizon).isoformat()
    # while the model it is compared by (the one tested) learned none past the day before the test window
    assert version.tags["tested_outcomes_seen_through"] == (split.test.first - timedelta(days=1)).isoformat()
    params = mlflow.get_run(version.run_id).data.params
    assert (params["validation"], params["validation_design"], params["validation_folds"]) == ("folds", "folds", "3")
    assert {f"validation_{c}_roc_auc" for c in result.trained.validation} <= set(version.metrics)
    assert version.metrics["test_roc_auc"] > version.metrics["baseline_roc_auc"]
    # Promotion scores the time-validated champion on this version's test rows: the same check as ever; this
    # version counts with the scores it was tested with, not its refit's, which learned those rows' outcomes
    test_rows = result.trained.test_frame
    assert auc_on(result.trained.model, test_rows) > version.metrics["test_roc_auc"]
    promoted = promotion.promote(uri, name, version.version, margin=1.0)  # a margin that lets the check pass
    assert promoted.aliases == ("champion",)
    assert promoted.tags["promotion_check"].startswith(f"ROC AUC {version.metrics['test_roc_auc']:.4f} (version")
    assert (
        f"champion version {champion}) on the same {result.trained.evaluation.rows:,} rows"
        in (promoted.tags["promotion_check"])
    )
    registry.rollback(uri, name)


@pytest.fixture(scope="module")
def flipped_test_labels(world_settings: Settings, rows: training_sets.TrainingSet) -> TrainedModel:
    """The honest model (true labels to fit and calibrate on), tested on inverted labels: its own test AUC is about
    one minus its true AUC, as if its test window had been hard for it."""
    inverted = relabelled(rows, test=True, labels=lambda part: ~part["churned"])
    return train_model(inverted, catalog_from_settings(world_settings), CONFIG)


def register(trained: TrainedModel, uri: str, model_name: str, what: str) -> registry.RegisteredVersion:
    return registry.log_and_register(
        trained, tracking_uri=uri, model_name=model_name, training_range=what, params={"labels": what}
    )


def test_policy_refuses_a_version_worse_on_its_own_test_rows_unless_forced(
    world_settings: Settings,
    rows: training_sets.TrainingSet,
    flipped_test_labels: TrainedModel,
    mlflow_tracking: str,
) -> None:
    # Given a champion whose own test AUC is low (inverted test labels) and a candidate that learned nothing
    # (labels shuffled before its test window) but is tested on the true labels
    uri, name, margin = mlflow_tracking, f"{world_settings.model_name}_refused", world_settings.promotion_auc_margin
    champion = register(flipped_test_labels, uri, name, "inverted test labels")
    shuffled = train_model(
        relabelled(rows, test=False, labels=shuffled_by_day), catalog_from_settings(world_settings), CONFIG
    )
    candidate = register(shuffled, uri, name, "shuffled labels before test")
    # (comparing each version's own test AUC would promote it)
    assert candidate.metrics["test_roc_auc"] > champion.metrics["test_roc_auc"] + margin

    with pytest.raises(promotion.PromotionRefusedError, match="below champion version") as refused:
        promotion.promote(uri, name, candidate.version, margin=margin)

    # Then both AUCs were computed on the candidate's test rows, and the message shows them and those rows
    paired, test = refused.value.comparison, shuffled.test_frame
    assert paired is not None and (paired.rows, paired.window) == (len(test), str(shuffled.split.test))
    assert paired.candidate_auc == pytest.approx(auc_on(shuffled.model, test), abs=1e-12)
    assert paired.candidate_auc == pytest.approx(candidate.metrics["test_roc_auc"], abs=1e-12)  # its own rows
    assert paired.champion_auc == pytest.approx(auc_on(flipped_test_labels.model, test), abs=1e-12)
    assert paired.candidate_auc < paired.champion_auc - margin
    for shown in (f"{paired.candidate_auc:.4f}", f"{paired.champion_auc:.4f}", f"same {len(test):,} rows",
                  str(shuffled.split.test), candidate.run_id):  # fmt: skip
        assert shown in str(refused.value), shown
    assert registry.alias_version(uri, name, "champion") == champion.version
    forced = promotion.promote(uri, name, candidate.version, margin=margin, force=True)
    assert "champion" in forced.aliases and forced.tags["promotion_check"] == "forced"


def test_policy_promotes_a_version_as_good_on_its_own_test_rows_though_its_own_auc_is_lower(
    world_settings: Settings,
    rows: training_sets.TrainingSet,
    flipped_test_labels: TrainedModel,
    mlflow_tracking: str,
) -> None:
    # Given the honest model as champion, and as candidate the same model tested on inverted labels
    uri, name, margin = mlflow_tracking, f"{world_settings.model_name}_paired", world_settings.promotion_auc_margin
    champion = register(train_model(rows, catalog_from_settings(world_settings), CONFIG), uri, name, "true labels")
    candidate = register(flipped_test_labels, uri, name, "inverted test labels")
    # (comparing each version's own test AUC would refuse it)
    assert candidate.metrics["test_roc_auc"] < champion.metrics["test_roc_auc"] - margin

    promoted = promotion.promote(uri, name, candidate.version, margin=margin)

    # Then on the candidate's rows both rank alike, which the promoted version records
    shown = f"{flipped_test_labels.evaluation.roc_auc:.4f}"
    assert promoted.aliases == ("champion",)
    assert promoted.tags["promotion_check"].startswith(f"ROC AUC {shown} (version {candidate.version}) against {shown}")


def auc_on(model: Any, test: pd.DataFrame) -> float:
    features = model.named_steps["encode"].feature_names
    return float(roc_auc_score(test["churned"], model.predict_proba(test[features])[:, 1]))


def relabelled(
    rows: training_sets.TrainingSet, *, test: bool, labels: Callable[[pd.DataFrame], pd.Series]
) -> training_sets.TrainingSet:
    """The labels of CONFIG's test window (test=True), or of every row before it, replaced by `labels(...)`."""
    frame = rows.frame.copy()
    split = time_split(frame["event_timestamp"], gap_days=rows.horizon_days, test_days=CONFIG.test_days,
                       validation_days=CONFIG.validation_days)  # fmt: skip
    in_test = split.masks(frame["event_timestamp"])[2]
    chosen = in_test if test else ~in_test
    frame.loc[chosen, "churned"] = labels(frame.loc[chosen, ["event_timestamp", "churned"]])
    return replace(rows, frame=frame)


def shuffled_by_day(rows: pd.DataFrame) -> pd.Series:
    """Labels permuted across users within each snapshot day: the same churn rate, no relation to features."""
    rng = np.random.default_rng(0)
    shuffled: pd.Series = rows.groupby("event_timestamp")["churned"].transform(lambda s: rng.permutation(s.to_numpy()))
    return shuffled


def shuffled_labels(rows: training_sets.TrainingSet) -> training_sets.TrainingSet:
    return replace(rows, frame=rows.frame.assign(churned=shuffled_by_day(rows.frame)))


def leaky_features(
    rows: training_sets.TrainingSet, url: str, table: str, horizon_days: int
) -> training_sets.TrainingSet:
    """Each row's features as of the end of its label window instead of its timestamp: the user's last snapshot up
    to t + H, aged to t + H. Features computed with events after the label's timestamp, which is exactly what the
    point-in-time rule forbids (a user who cancelled shows a long silence)."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(f"SELECT * FROM features.{table}")
        snapshots_frame = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])
    labels = rows.frame[["user_id", "event_timestamp", "churned"]].copy()
    as_of = pd.to_datetime(labels["event_timestamp"], utc=True) + timedelta(days=horizon_days)
    labels["as_of"] = as_of.astype("datetime64[ns, UTC]")
    snapshot_at = pd.to_datetime(snapshots_frame.pop("event_timestamp"), utc=True).astype("datetime64[ns, UTC]")
    snapshots_frame["as_of"] = snapshots_frame["snapshot_at"] = snapshot_at
    merged = pd.merge_asof(labels.sort_values("as_of"), snapshots_frame.sort_values("as_of"), on="as_of", by="user_id")
    aged_days = (merged["as_of"] - merged["snapshot_at"]).dt.total_seconds() / 86_400
    merged["days_since_last_event"] += aged_days
    merged["tenure_days"] += aged_days
    merged = merged.drop(columns=["as_of", "snapshot_at"])
    return replace(rows, frame=merged.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True))


def test_the_evaluation_sees_leakage(world_settings: Settings, rows: training_sets.TrainingSet) -> None:
    catalog = catalog_from_settings(world_settings)
    honest = train_model(rows, catalog, CONFIG).evaluation.roc_auc

    shuffled = train_model(shuffled_labels(rows), catalog, CONFIG).evaluation.roc_auc
    leaky_rows = leaky_features(
        rows, world_settings.database_url or "", catalog.name, world_settings.label_horizon_days
    )
    leaky = train_model(leaky_rows, catalog, CONFIG).evaluation.roc_auc

    assert abs(shuffled - 0.5) < 0.08, f"shuffled labels scored AUC {shuffled:.3f}"
    assert leaky > honest + 0.1, f"the leaky variant scored {leaky:.3f} against the honest {honest:.3f}"
    assert honest > 0.6


def test_the_same_world_and_seed_give_the_same_metrics(
    world_settings: Settings, rows: training_sets.TrainingSet
) -> None:
    catalog = catalog_from_settings(world_settings)
    oracle = pipeline.oracle_lookup(world_settings.database_url or "", world_settings.label_horizon_days)
    first = train_model(rows, catalog, CONFIG, oracle).metrics()
    again_rows = training_sets.training_set(
        world_settings, connections(world_settings), every_days=world_settings.train_snapshot_every_days
    )
    again = train_model(again_rows, catalog, CONFIG, oracle).metrics()

    assert "oracle_roc_auc" in first and first.keys() == again.keys()
    for name, value in first.items():
        assert again[name] == pytest.approx(value, abs=1e-9, rel=0), name


def test_the_models_commands_list_versions_and_refuse_in_one_line(
    world_settings: Settings, mlflow_tracking: str
) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    if registry.alias_version(mlflow_tracking, world_settings.model_name, "champion") is None:
        pipeline.train(world_settings, connections(world_settings, mlflow=True))
    runner = CliRunner()

    listed = runner.invoke(cli.app, ["models", "list"])
    unknown = runner.invoke(cli.app, ["models", "promote", "999"])

    assert listed.exit_code == 0 and "champion" in listed.stdout
    assert unknown.exit_code == 1
    assert f"error: model {world_settings.model_name} has no version 999" in unknown.stderr


def test_the_train_flow_registers_a_version_and_publishes_its_metrics(
    world_settings: Settings, mlflow_tracking: str, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train_flow
    from prefect.artifacts import Artifact

    # The flow runs the platform's training as configured; the refit is checked above, here it would only cost time
    monkeypatch.setenv("CHURN_TRAIN_REFIT", "false")
    get_settings.cache_clear()
    try:
        version = train_flow()  # on the session's temporary Prefect server, as in test_flows
        artifact = Artifact.get("training-metrics")
    finally:
        get_settings.cache_clear()

    assert version is not None
    assert registry.get_version(mlflow_tracking, world_settings.model_name, version).run_id
    assert artifact is not None and "| ROC AUC |" in str(artifact.data)
