"""The platform's one settings object: every URL, path and knob, read from the environment and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# Variables of the tools the platform drives, read from the environment and `.env` under their own names.
TOOL_VARIABLES = frozenset({"mlflow_tracking_uri", "prefect_api_url"})
# The categorical columns of the users file (versioned in raw.user_attributes) a catalog may use.
USER_ATTRIBUTES = ("plan", "channel", "region")


class PlatformDotEnv(DotEnvSettingsSource):
    """`.env` limited to this platform's variables (CHURN_* and the tools' own).

    One `.env` also feeds docker compose (POSTGRES_PASSWORD, REDIS_PASSWORD): those are not ours to read, and
    must not be rejected as unknown settings. A misspelt CHURN_* variable still is.
    """

    def _load_env_vars(self) -> dict[str, str | None]:  # type: ignore[override]
        prefix = self.env_prefix.lower()
        return {
            name: value
            for name, value in super()._load_env_vars().items()
            if name.lower().startswith(prefix) or name.lower() in TOOL_VARIABLES
        }


class Settings(BaseSettings):
    """Typed configuration. Unset URLs mean "use the embedded local stack"."""

    model_config = SettingsConfigDict(
        env_prefix="CHURN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for the platform's own data; unset starts the embedded PostgreSQL.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for the online store; unset starts the embedded Redis.",
    )
    data_dir: Path = Field(
        default=Path(".churn"),
        description="Local folder for the embedded servers' data, PIDs and logs.",
    )
    embedded_database: str = Field(default="churn", description="Database created inside the embedded PostgreSQL.")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI"),
        description="MLflow tracking server (the tool's own variable); unset starts the embedded MLflow server.",
    )
    mlflow_port: int = Field(
        default=5000,
        ge=0,
        le=65535,
        description="Loopback port of the embedded MLflow server (its UI and API); 0 picks a free port at each start.",
    )
    mlflow_database: str = Field(
        default="mlflow",
        description="Database of the embedded MLflow server's runs and model registry, on the platform's PostgreSQL.",
    )
    prefect_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_URL"),
        description="Prefect API (the tool's own variable); unset: the embedded Prefect server while `churn up` runs"
        " it, else flows run on a temporary local server.",
    )
    prefect_port: int = Field(
        default=4200,
        ge=0,
        le=65535,
        description="Loopback port of the embedded Prefect server (its UI and API); 0 picks a free port at each start.",
    )
    prefect_database: str = Field(
        default="prefect",
        description="Database of the embedded Prefect server's runs and deployments, on the platform's PostgreSQL.",
    )
    flows_dir: Path = Field(
        default=Path("flows"), description="The platform's flows; `churn up` serves their deployments from here."
    )
    flows_interval_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Run the platform's day (deployment `platform-day/daily`) on this interval: a synthetic world"
        " advances one simulated day per run; unset: on demand only (Prefect UI, `churn flows run`).",
    )
    prefect_start_timeout_s: float = Field(
        default=120.0, gt=0, description="How long `churn up` waits for the embedded Prefect server to answer."
    )

    # The churn definition: contractual (an event such as `cancel` ends the relationship) or non-contractual (a
    # snapshot is churned when no qualifying event follows within the label horizon).
    churn_definition: Literal["contractual", "non_contractual"] = Field(
        default="contractual",
        description="`contractual`: churned when a churn event (CHURN_CHURN_EVENT_TYPES) falls within the label"
        " horizon; `non_contractual`: churned when no qualifying event (CHURN_ACTIVITY_EVENT_TYPES) does.",
    )
    churn_event_types: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("cancel",),
        description="Event types that end a relationship (comma-separated in the environment); a later event of"
        " another type reopens it. May be empty for a non-contractual business.",
    )
    activity_event_types: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Event types whose absence over the label horizon is non-contractual churn (e.g. `purchase`);"
        " empty: every event type that is not a churn event type (comma-separated in the environment).",
    )
    inactivity_days: int | None = Field(
        default=None,
        description="Replaced by CHURN_CHURN_DEFINITION=non_contractual with CHURN_LABEL_HORIZON_DAYS; setting it"
        " is an error that says so.",
    )
    label_horizon_days: int = Field(
        default=30,
        ge=1,
        description="H, in days: a snapshot at t is labelled by what happens in the H days from t (see"
        " CHURN_CHURN_DEFINITION).",
    )

    feature_event_types: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("login", "session", "feature_use", "support_ticket", "payment_failed", "plan_downgrade"),
        description="Event types the feature catalog counts, per window (comma-separated in the environment).",
    )
    feature_valued_event_types: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("session",),
        description="Event types whose `value` the catalog sums (comma-separated in the environment).",
    )
    feature_windows_days: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(7, 30), description="Windows, in days, of the catalog's counts (comma-separated)."
    )
    feature_user_attributes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("plan", "channel"),
        description="Columns of the users file the catalog uses as categorical features, each as of the snapshot"
        " time: any of plan, channel, region; empty for a business whose users file has none (comma-separated).",
    )
    feature_catalog: str = Field(default="churn_v1", description="Name (version) of the feature catalog.")
    feature_repo: Path = Field(default=Path("feature_repo"), description="The Feast repository folder.")

    model_name: str = Field(default="churn", description="Registered model name in the MLflow model registry.")
    train_seed: int = Field(default=7, description="Seed of training: the same world and seed give the same model.")
    train_test_days: int = Field(default=28, ge=1, description="Snapshot days in the test window (the latest).")
    train_validation_days: int = Field(
        default=28, ge=1, description="Snapshot days in the validation window (model choice, calibration, threshold)."
    )
    train_snapshot_every_days: int = Field(
        default=7,
        ge=1,
        description="Train on every n-th daily snapshot of each user (neighbouring days are nearly the same row).",
    )
    train_validation: Literal["auto", "time", "folds"] = Field(
        default="auto",
        description="Validation design: `time` (a validation window between train and test, two gaps of H),"
        " `folds` (user folds inside the training window, one gap of H before test), `auto` (`time` when the"
        " labelled history fits it, else `folds`).",
    )
    train_folds: int = Field(
        default=5,
        ge=2,
        description="K of the `folds` design (folds grouped by user inside the training window), and of the folds"
        " the refit is calibrated on.",
    )
    train_refit: bool = Field(
        default=True,
        description="After the test evaluation, refit the chosen model on every labelled row (the test window's"
        " too) and register that: it has seen the newest outcomes. The reported test figures stay those of the"
        " model fitted before the test window.",
    )
    train_censored: bool = Field(
        default=True,
        description="Also train on the snapshots between the training window and the window that judges the model,"
        " whose outcomes are only partly known there: the known ones as they are, the rest completed by a hazard"
        " model (discrete-time survival).",
    )
    promotion_auc_margin: float = Field(
        default=0.01,
        ge=0,
        description="Promotion is refused when, on a version's own test rows, its AUC is below the champion's by"
        " more than this.",
    )

    serve_port: int = Field(
        default=3000, ge=0, le=65535, description="Loopback port of the prediction service `churn up` starts."
    )
    serve_url: str | None = Field(
        default=None,
        description="A prediction service running elsewhere; set, `churn up` only checks it and starts none.",
    )
    serve_bento_dir: Path = Field(
        default=Path("bentos/churn_service"), description="The BentoML service folder `churn up` serves."
    )
    serve_workers: int = Field(default=1, ge=1, le=32, description="Worker processes of the prediction service.")
    serve_poll_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the service checks the registry's aliases and the running A/B experiment.",
    )
    serve_max_batch: int = Field(
        default=10_000, ge=1, description="Most users one `/predict_batch` request may ask for."
    )
    serve_feature_max_age_hours: float = Field(
        default=48.0,
        gt=0,
        description="A feature older than this before the newest materialized snapshot is reported stale.",
    )
    serve_risk_bands: Annotated[tuple[float, float], NoDecode] = Field(
        default=(0.1, 0.3),
        description="Churn probabilities where the `medium` and `high` risk bands begin (comma-separated).",
    )
    serve_log_buffer_rows: int = Field(
        default=100_000,
        ge=1_000,
        description="Prediction-log rows a worker holds while PostgreSQL is unreachable; beyond it the oldest drop.",
    )
    serve_shadow_scoring: bool = Field(
        default=True,
        description="During an A/B experiment, also score each user with the other arm's model and log that score,"
        " so the analysis compares both models on the same users (the answer is always the user's own arm's).",
    )
    serve_access_log: bool = Field(
        default=False,
        description="BentoML's access-log line per request (the prediction log already records each prediction).",
    )
    serve_tracing: bool = Field(
        default=False,
        description="BentoML's OpenTelemetry spans for the prediction routes (exporter set in BentoML's config).",
    )
    serve_start_timeout_s: float = Field(
        default=120.0, gt=0, description="How long `churn up` waits for the prediction service to become ready."
    )

    reports_dir: Path | None = Field(
        default=None,
        description="Where HTML reports and the Evidently workspace go; unset: the `reports` folder of the data dir.",
    )
    monitor_window_days: int = Field(
        default=7, ge=1, description="Days of served snapshots a drift run compares with the reference (--window)."
    )
    monitor_reference_rows: int = Field(
        default=20_000,
        ge=100,
        description="Rows of the version's test window kept with it as the drift reference (with its scores).",
    )
    monitor_drift_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="A feature drifts when its test (KS or chi-square) rejects at this level and its PSI is high.",
    )
    monitor_psi_threshold: float = Field(
        default=0.1,
        ge=0,
        description="A feature drifts only when its PSI reaches this too (0.1: a moderate shift; 0.25: a large one).",
    )
    monitor_drift_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="The data drifts when at least this share of the features drift.",
    )
    monitor_performance_days: int = Field(
        default=28,
        ge=1,
        description="Snapshot days `churn monitor performance` evaluates, up to the newest labelled one (--days).",
    )
    monitor_report_every_days: int = Field(
        default=1,
        ge=1,
        description="Drift and performance runs write their Evidently reports for windows ending every this many"
        " days (and a drift run whenever its verdict changes); the stored figures and MLflow metrics come with"
        " every run. 1: a report each run.",
    )
    monitor_report_rows: int = Field(
        default=20_000,
        ge=100,
        description="Most rows of each side the Evidently report is drawn on (sampled; the stored figures use all).",
    )
    monitor_auc_margin: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Alert when a version's realised (or estimated) ROC AUC falls below its test AUC minus this.",
    )
    monitor_calibration_threshold: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Alert when a version's realised expected calibration error over the evaluated days exceeds this.",
    )
    monitor_missing_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Alert when a served feature is missing this much more often than in the drift reference.",
    )
    monitor_stale_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Alert when this share of a day's served rows came from a stale snapshot.",
    )
    ab_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Level of the A/B sequential test (its always-valid p-value)."
    )
    ab_srm_alpha: float = Field(
        default=0.001, gt=0, lt=1, description="A sample-ratio mismatch below this chi-square p-value stops a verdict."
    )
    ab_msprt_tau: float = Field(
        default=0.02,
        gt=0,
        description="Standard deviation of the sequential test's mixture over the effect, in per-user log loss: about"
        " the smallest difference worth finding.",
    )
    ab_min_outcome_users: int = Field(
        default=1_000, ge=2, description="Users with a known outcome each A/B arm needs before a winner is declared."
    )
    ab_auto_promote: bool = Field(
        default=False,
        description="On a declared A/B winner, promote it (a winning variant becomes the champion) and stop the"
        " experiment; off: record a recommendation for a person to act on in the MLflow UI.",
    )
    ab_bootstrap_resamples: int = Field(
        default=1_000, ge=100, description="Resamples of users behind the A/B report's AUC intervals."
    )
    retrain_drift_share: float | None = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Retrain when the share of drifted features in the champion's newest drift run is above this;"
        " `off` turns the trigger off.",
    )
    retrain_auc_margin: float | None = Field(
        default=0.05,
        ge=0,
        description="Retrain when the champion's realised ROC AUC is below its test AUC minus this; `off` turns the"
        " trigger off.",
    )
    retrain_auc_window_days: int = Field(
        default=7, ge=1, description="The newest days of realised outcomes the quality trigger judges."
    )
    retrain_new_labelled_rows: int | None = Field(
        default=None,
        ge=1,
        description="Retrain when this many labelled snapshots have outcomes the champion never saw; unset or `off`:"
        " the trigger is off.",
    )
    retrain_drift_outcome_days: int | None = Field(
        default=7,
        ge=1,
        description="A retraining the drift trigger alone asks for waits until this many days of labelled snapshots"
        " follow the drift's first flagged run: labels come a horizon late, and a model trained before any outcome"
        " of the changed world cannot learn the change; `off`: train at once.",
    )
    retrain_window_days: int | None = Field(
        default=180,
        ge=30,
        description="A retraining trains on the newest this many days of labelled snapshots; `off`: all of them.",
    )
    retrain_ab_share: float = Field(
        default=0.5, gt=0, lt=1, description="Share of users a retrained challenger's A/B experiment sends to it."
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="POST each opened or resolved alert here as JSON with a `text` field (Slack, Mattermost, ...);"
        " a chat tool's webhook URL is a credential.",
    )
    alert_webhook_attempts: int = Field(default=3, ge=1, le=10, description="Tries per alert delivery.")
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook POST.")

    ingest_chunk_rows: int = Field(
        default=250_000, ge=1_000, description="Rows read, validated and copied per chunk during ingestion."
    )
    stack_start_timeout_s: float = Field(
        default=30.0, gt=0, description="How long `churn up` waits for a component to become healthy."
    )
    mlflow_start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long `churn up` waits for the embedded MLflow server (its first start migrates its database).",
    )

    @field_validator(
        "churn_event_types",
        "activity_event_types",
        "feature_event_types",
        "feature_user_attributes",
        "feature_valued_event_types",
        "feature_windows_days",
        "serve_risk_bands",
        mode="before",
    )
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        dotenv = PlatformDotEnv(
            settings_cls, env_file=dotenv_settings.env_file, env_file_encoding=dotenv_settings.env_file_encoding
        )  # keeps a per-call `_env_file`
        return init_settings, env_settings, dotenv, file_secret_settings

    @field_validator(
        "retrain_drift_share", "retrain_auc_margin", "retrain_new_labelled_rows", "retrain_window_days",
        "retrain_drift_outcome_days",
        "flows_interval_minutes", mode="before",
    )  # fmt: skip
    @classmethod
    def _off_is_none(cls, value: object) -> object:
        """`off` (or an empty value) turns a retraining trigger, or the flows' schedule, off."""
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

    @field_validator("feature_user_attributes")
    @classmethod
    def _known_user_attributes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(USER_ATTRIBUTES))
        if unknown:
            raise ValueError(
                f"CHURN_FEATURE_USER_ATTRIBUTES: {unknown} are not columns of raw.users"
                f" (known: {list(USER_ATTRIBUTES)})"
            )
        return value

    @field_validator("serve_risk_bands")
    @classmethod
    def _ordered_bands(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1] < 1:
            raise ValueError(f"CHURN_SERVE_RISK_BANDS must be two probabilities, 0 < medium < high < 1, not {value}")
        return value

    @model_validator(mode="after")
    def _need_a_churn_definition(self) -> Settings:
        if self.inactivity_days is not None:
            raise ValueError(
                "CHURN_INACTIVITY_DAYS was replaced: set CHURN_CHURN_DEFINITION=non_contractual and"
                f" CHURN_LABEL_HORIZON_DAYS={self.inactivity_days} (a snapshot is churned when no qualifying event,"
                " CHURN_ACTIVITY_EVENT_TYPES, follows within the horizon)"
            )
        if self.churn_definition == "contractual" and not self.churn_event_types:
            raise ValueError(
                "CHURN_CHURN_EVENT_TYPES is empty under CHURN_CHURN_DEFINITION=contractual: name the event that ends"
                " a relationship (e.g. cancel), or set CHURN_CHURN_DEFINITION=non_contractual"
            )
        overlap = set(self.activity_event_types) & set(self.churn_event_types)
        if overlap:
            raise ValueError(
                f"{sorted(overlap)} are both churn events (CHURN_CHURN_EVENT_TYPES) and qualifying activity"
                " (CHURN_ACTIVITY_EVENT_TYPES): an event cannot both end and continue a relationship"
            )
        return self

    @property
    def reports_folder(self) -> Path:
        """Where HTML reports and the Evidently workspace go (`CHURN_REPORTS_DIR`, else `<data dir>/reports`)."""
        return self.reports_dir if self.reports_dir is not None else self.data_dir / "reports"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first use (never at import)."""
    return Settings()
