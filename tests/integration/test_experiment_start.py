"""Starting an A/B experiment: the library refuses a broken one whoever calls it (real PostgreSQL and MLflow server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from churn_platform.experiments import records
from churn_platform.settings import get_settings
from churn_platform.training import registry


@pytest.fixture
def two_versions(mlflow_tracking: str) -> Iterator[str]:
    """A model of its own with versions 1 (`champion`) and 2 (`challenger`); deleted after the test, aliases and all
    (other tests read the session server's aliases)."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    name = f"ab_start_{uuid.uuid4().hex[:8]}"
    x, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    for _ in range(2):
        with mlflow.start_run():
            mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model", registered_model_name=name)
    client = MlflowClient(tracking_uri=mlflow_tracking, registry_uri=mlflow_tracking)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    yield name
    client.delete_registered_model(name)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("challnger", r"variant: model ab_start_\w+ has no alias 'challnger' \(its aliases: challenger, champion\)"),
        ("3", r"variant: model ab_start_\w+ has no version '3' \(its versions: 1, 2\)"),
        ("1", r"variant '1' and control 'champion' are both version 1 of ab_start_\w+"),
    ],
)
def test_a_variant_the_registry_does_not_hold_is_refused_naming_it(
    database_url: str, mlflow_tracking: str, two_versions: str, variant: str, message: str
) -> None:
    # Given a model with versions 1 (champion) and 2 (challenger) in the registry
    held = registry.model_references(mlflow_tracking, two_versions)

    # When an experiment names an alias or version it does not hold, or the champion's own version, it is refused
    with pytest.raises(records.ExperimentError, match=message):
        records.start_experiment(database_url, "spring", variant, 0.2, registered=held)

    # And nothing was stored; the same experiment with the challenger starts
    assert records.list_experiments(database_url) == []
    started = records.start_experiment(database_url, "spring", "challenger", 0.2, registered=held)
    assert (started.variant, started.control) == ("challenger", "champion")


def test_a_control_the_registry_does_not_hold_is_refused(
    database_url: str, mlflow_tracking: str, two_versions: str
) -> None:
    held = registry.model_references(mlflow_tracking, two_versions)

    with pytest.raises(records.ExperimentError, match=r"control: model \w+ has no alias 'champoin'"):
        records.start_experiment(database_url, "spring", "challenger", 0.2, registered=held, control="champoin")
    assert records.list_experiments(database_url) == []


def test_a_model_not_registered_yet_holds_no_variant(database_url: str, mlflow_tracking: str) -> None:
    held = registry.model_references(mlflow_tracking, f"never_registered_{uuid.uuid4().hex[:8]}")

    with pytest.raises(records.ExperimentError, match=r"variant: .* has no alias 'challenger' \(its aliases: none\)"):
        records.start_experiment(database_url, "spring", "challenger", 0.2, registered=held)


def test_the_command_passes_the_end_time_to_the_library_which_reads_it_as_utc_and_refuses_a_past_one(
    database_url: str, two_versions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn_platform import cli

    # Given the platform pointed at this test's database and a model with a challenger
    for variable, value in (("CHURN_DATABASE_URL", database_url), ("CHURN_MODEL_NAME", two_versions)):
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    runner = CliRunner()
    end = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0, tzinfo=None)
    try:
        # When `churn ab start` is given a past end, then an end without a zone
        late, spring = ["late", "--ends-at", "2020-01-01T00:00+01:00"], ["spring", "--ends-at", end.isoformat()]
        past = runner.invoke(cli.app, ["ab", "start", *late])
        started = runner.invoke(cli.app, ["ab", "start", *spring, "--share", "0.2"])
    finally:
        get_settings.cache_clear()

    # Then the library refused the past end naming it, and read the other one as UTC
    assert past.exit_code == 1 and "ends_at must be in the future" in past.output, past.output
    assert started.exit_code == 0, started.output
    assert f"until {end:%Y-%m-%d %H:%M} UTC" in " ".join(started.output.split())  # as rich wrapped it
    [stored] = records.list_experiments(database_url)
    assert (stored.name, stored.ends_at) == ("spring", end.replace(tzinfo=UTC))
