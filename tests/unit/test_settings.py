"""Settings: environment and `.env`, the churn definition, and what `.env` may hold besides our variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from churn_platform.settings import Settings


def test_a_shared_env_file_with_compose_variables_is_accepted(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "POSTGRES_PASSWORD=secret\nREDIS_PASSWORD=x\nCHURN_DATA_DIR=/data\nMLFLOW_TRACKING_URI=http://m:5000\n"
    )
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.data_dir == Path("/data")
    assert settings.mlflow_tracking_uri == "http://m:5000"


def test_a_misspelt_platform_variable_in_env_is_rejected(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("CHURN_DATA_DIRR=/data\n")
    with pytest.raises(ValidationError, match="data_dirr"):
        Settings(_env_file=env)  # type: ignore[call-arg]


def test_churn_event_types_come_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_CHURN_EVENT_TYPES", "cancel, account_closed")
    assert Settings(_env_file=None).churn_event_types == ("cancel", "account_closed")  # type: ignore[call-arg]


def test_churn_must_be_defined_somehow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_CHURN_EVENT_TYPES", "")
    with pytest.raises(ValidationError, match="CHURN_CHURN_DEFINITION=non_contractual"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("CHURN_CHURN_DEFINITION", "non_contractual")
    monkeypatch.setenv("CHURN_ACTIVITY_EVENT_TYPES", "purchase")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.churn_definition, settings.activity_event_types) == ("non_contractual", ("purchase",))


def test_the_replaced_inactivity_setting_says_what_replaced_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_INACTIVITY_DAYS", "45")
    with pytest.raises(ValidationError, match="CHURN_CHURN_DEFINITION=non_contractual and CHURN_LABEL_HORIZON_DAYS=45"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_an_event_cannot_both_end_and_continue_a_relationship(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_ACTIVITY_EVENT_TYPES", "purchase,cancel")
    with pytest.raises(ValidationError, match="cancel"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_user_attributes_must_be_columns_of_the_users_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_FEATURE_USER_ATTRIBUTES", "plan,shoe_size")
    with pytest.raises(ValidationError, match="shoe_size"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("CHURN_FEATURE_USER_ATTRIBUTES", "")
    assert Settings(_env_file=None).feature_user_attributes == ()  # type: ignore[call-arg]


def test_bentomls_access_log_and_tracing_are_off_on_the_prediction_routes_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churn_platform.serving.service_config import PREDICTION_ROUTES, service_options

    options = service_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options["logging"] == {"access": {"enabled": False}}
    assert options["tracing"] == {"excluded_urls": list(PREDICTION_ROUTES)}

    monkeypatch.setenv("CHURN_SERVE_ACCESS_LOG", "true")
    monkeypatch.setenv("CHURN_SERVE_TRACING", "true")
    options = service_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options["logging"] == {"access": {"enabled": True}} and "tracing" not in options
