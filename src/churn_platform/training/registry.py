"""The MLflow side of training: one tracked run per training, one registered version per run, and roles by alias.

`champion` serves production traffic and `challenger` is the A/B candidate (names in `model.aliases`). Promotion
(`promotion.promote`) moves `champion` and points `previous` at the version it replaced, so a rollback is one alias
move. Stages are not used (deprecated in MLflow). Serving follows the aliases, so moving one in the MLflow UI is as
valid as `churn models promote`. Each run logs its test rows, so a later promotion can score the champion on them.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from churn_platform.model.aliases import CHALLENGER, CHAMPION, PREVIOUS, ModelReferences
from churn_platform.training.evaluation import write_plots
from churn_platform.training.trainer import TEST_ROW_KEYS, TrainedModel

MAX_TAG_CHARS = 5_000  # the registry refuses longer model-version tag values

logger = logging.getLogger(__name__)


EXPERIMENT = "churn"
# The run's test rows (keys, label, features) as evaluated: what a promotion scores the champion on.
TEST_ROWS_FOLDER, TEST_ROWS_FILE = "evaluation", "test_rows.parquet"
EVALUATED_MODEL, EVALUATED_MODEL_TAG = "evaluated_model", "evaluated_model_uri"  # a refitted version's tested model
TESTED_SCORE = "p_model"  # the logged test rows' column holding the evaluated model's P(churn)
TESTED_OUTCOMES_TAG = "tested_outcomes_seen_through"
TEST_ROWS_ARTIFACT = f"{TEST_ROWS_FOLDER}/{TEST_ROWS_FILE}"
# The drift reference: a sample of the test window's rows, with the evaluated model's P(churn) on each
REFERENCE_FOLDER, REFERENCE_FILE = "monitoring", "reference.parquet"
REFERENCE_ARTIFACT = f"{REFERENCE_FOLDER}/{REFERENCE_FILE}"
REFERENCE_SCORE = "p_churn"


class RegistryError(RuntimeError):
    """The registry does not hold what a command needs (no such version, nothing to roll back to)."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    created_at: datetime

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def git_commit(folder: Path | None = None) -> str:
    """The commit the code was at (with `+dirty` for uncommitted changes), or `unknown` outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def log_and_register(
    trained: TrainedModel,
    *,
    tracking_uri: str,
    model_name: str,
    training_range: str,
    params: dict[str, Any],
) -> RegisteredVersion:
    """Log the run (params, metrics, plots, the model with signature and example) and register a new version.

    The new version becomes `challenger`; when the model has no `champion` yet it becomes `champion` as well.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    features = trained.model.named_steps["encode"].feature_names
    tags = version_tags(trained, training_range)
    with mlflow.start_run(run_name=f"{trained.candidate} {training_range}") as run:
        mlflow.log_params({**params, "candidate": trained.candidate, "split": str(trained.split)})
        mlflow.set_tags(tags)
        mlflow.log_metrics(trained.metrics())
        mlflow.log_dict(trained.importance, "feature_importance.json")
        with tempfile.TemporaryDirectory() as folder:
            log_test_rows(trained, features, Path(folder) / TEST_ROWS_FILE)
            log_reference(trained, features, Path(folder) / REFERENCE_FILE)
            y = trained.test_frame["churned"].to_numpy(dtype="int64")
            plots = write_plots(
                Path(folder),
                y,
                trained.test_frame[TESTED_SCORE].to_numpy(),
                recency=trained.test_frame["p_recency"].to_numpy(),
                bgnbd=None if trained.bgnbd_roc_auc is None else trained.test_frame["p_bgnbd"].to_numpy(),
                oracle=None if trained.oracle_roc_auc is None else trained.test_frame["p_oracle"].to_numpy(),
                importance=trained.importance,
            )
            for plot in plots:
                mlflow.log_artifact(str(plot), "plots")
        # Integer features are declared as doubles: a feature missing at serving time arrives as NaN.
        inputs = trained.input_example[features].apply(
            lambda column: column.astype("float64") if pd.api.types.is_integer_dtype(column) else column
        )
        if trained.refitted:
            # The model the test figures are of, logged before the version exists: promotion compares versions by it.
            evaluated = mlflow.sklearn.log_model(
                trained.evaluated_model,
                name=EVALUATED_MODEL,
                signature=infer_signature(inputs, trained.evaluated_model.predict_proba(inputs)),
                serialization_format="skops",
                skops_trusted_types=trusted_types(trained.evaluated_model),
                pip_requirements=pip_requirements(),
            )
            tags[EVALUATED_MODEL_TAG] = _client(tracking_uri).get_logged_model(evaluated.model_id).artifact_location
        info = mlflow.sklearn.log_model(
            trained.model,
            name="model",
            # pyfunc `predict` returns predict_proba's two columns: P(stays), P(churns).
            signature=infer_signature(inputs, trained.model.predict_proba(inputs)),
            input_example=inputs.head(5),
            registered_model_name=model_name,
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=trusted_types(trained.model),
            pip_requirements=pip_requirements(),
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if alias_version(tracking_uri, model_name, CHAMPION) is None:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    logger.info("registered %s version %s from run %s", model_name, version, run.info.run_id)
    return get_version(tracking_uri, model_name, version)


def log_test_rows(trained: TrainedModel, features: list[str], path: Path) -> None:
    """Log the test rows as a Parquet artifact, and as the run's `test` dataset input (its digest and schema).

    The rows keep `p_model`, the tested model's score (a refitted version's registered model has seen these rows'
    outcomes)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    rows = trained.test_frame[[*TEST_ROW_KEYS, *features, TESTED_SCORE]]
    rows.to_parquet(path, index=False)
    mlflow.log_artifact(str(path), TEST_ROWS_FOLDER)
    name = f"{trained.feature_service} test {trained.split.test}"
    mlflow.log_input(from_pandas(rows, name=name, targets="churned"), context="test")


def log_reference(trained: TrainedModel, features: list[str], path: Path) -> None:
    """Log the drift reference as a Parquet artifact: rows of the test window with the evaluated model's
    out-of-sample P(churn) on each (what served scores are compared with)."""
    import mlflow

    if trained.reference.empty:
        return
    trained.reference.rename(columns={"p_model": REFERENCE_SCORE}).to_parquet(path, index=False)
    mlflow.log_artifact(str(path), REFERENCE_FOLDER)


def version_tags(trained: TrainedModel, training_range: str) -> dict[str, str]:
    split = trained.split
    return {
        "feature_service": trained.feature_service,
        "feature_definitions_hash": trained.definitions_hash,
        "training_range": training_range,
        "split": str(split),
        "test_window": str(split.test),
        # `time` (a validation window) or `folds` (user folds inside the training window)
        "validation_design": split.design if trained.folds is None else f"{split.design} ({trained.folds} user folds)",
        # Labels fitted or calibrated on (up to the validation window's end, the training window's with user
        # folds, the test window's after a refit) looked this far ahead: a version scored on rows of this day or
        # earlier is scored on outcomes it learned from.
        "outcomes_seen_through": trained.outcomes_seen_through.isoformat(),
        # "true": the registered model was refitted on every labelled row after the test evaluation; the logged
        # test rows keep the evaluated model's scores (p_model).
        "refit": str(trained.refitted).lower(),
        # the tested model's (before a refit): what a paired comparison with this version's tested model means
        TESTED_OUTCOMES_TAG: split.outcomes_seen_through.isoformat(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "candidate": trained.candidate,
        **{f"rows_{part}": str(count) for part, count in trained.rows.items()},
    }


TRUSTED_MODULES = ("churn_platform.", "sklearn.", "numpy.")


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load this model: ours and scikit-learn's / numpy's internals.

    skops (MLflow's default format) refuses to load any type not on its allow-list; the model was built here, so
    its types are listed in the MLmodel file. Anything from another module is refused rather than trusted.
    """
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    foreign = [t for t in found if not t.startswith(TRUSTED_MODULES)]
    if foreign:
        raise RegistryError(f"the model holds types skops would not load and we do not vouch for: {foreign}")
    return list(found)


def pip_requirements() -> list[str]:
    """Pinned to the versions that trained the model (inferring them would load the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("scikit-learn", "numpy", "pandas", "skops")]


def alias_version(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The version an alias points at; None when the alias (or the model) does not exist.

    Any other failure (server down, authentication) raises RegistryError: it must never read as "no champion".
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        aliases = _client(tracking_uri).get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise RegistryError(f"the MLflow registry at {tracking_uri} did not answer: {exc}") from exc
    version = aliases.get(alias)
    return None if version is None else str(version)


def get_version(tracking_uri: str, model_name: str, version: str) -> RegisteredVersion:
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        found = client.get_model_version(model_name, version)
    except MlflowException as exc:
        raise RegistryError(f"model {model_name} has no version {version}") from exc
    return _registered(client, found)


def _registered(client: Any, found: Any, aliases: dict[str, str] | None = None) -> RegisteredVersion:
    metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
    if aliases is not None:  # search results leave a version's aliases out: the model's alias map has them
        held = tuple(sorted(alias for alias, version in aliases.items() if str(version) == str(found.version)))
    else:
        held = tuple(sorted(found.aliases or ()))
    return RegisteredVersion(
        name=found.name,
        version=str(found.version),
        run_id=found.run_id or "",
        aliases=held,
        metrics=dict(metrics),
        tags=dict(found.tags or {}),
        created_at=datetime.fromtimestamp(found.creation_timestamp / 1000, tz=UTC),
    )


def model_references(tracking_uri: str, model_name: str) -> ModelReferences:
    """The model's versions and alias map, read once (empty for a model not registered yet).

    A registry that does not answer raises RegistryError: it must never read as "no such version".
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    client = _client(tracking_uri)
    try:
        aliases = {alias: str(v) for alias, v in client.get_registered_model(model_name).aliases.items()}
        versions = frozenset(str(v.version) for v in client.search_model_versions(f"name = '{model_name}'"))
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return ModelReferences(model_name, frozenset(), {})
        raise RegistryError(f"the MLflow registry at {tracking_uri} did not answer: {exc}") from exc
    return ModelReferences(model_name, versions, aliases)


def logged_test_rows(tracking_uri: str, run_id: str) -> pd.DataFrame | None:
    """The test rows a run logged (keys, label, features), or None for a run that logged none."""
    return _logged_frame(tracking_uri, run_id, TEST_ROWS_FOLDER, TEST_ROWS_ARTIFACT)


def logged_reference(tracking_uri: str, run_id: str) -> pd.DataFrame | None:
    """The drift reference a run logged (keys, label, features, `p_churn`), or None for a run from before."""
    return _logged_frame(tracking_uri, run_id, REFERENCE_FOLDER, REFERENCE_ARTIFACT)


def _logged_frame(tracking_uri: str, run_id: str, folder: str, artifact: str) -> pd.DataFrame | None:
    import mlflow.artifacts

    logged = {a.path for a in _client(tracking_uri).list_artifacts(run_id, folder)}
    if artifact not in logged:
        return None
    with tempfile.TemporaryDirectory(prefix="churn-artifact-") as local_folder:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, tracking_uri=tracking_uri, dst_path=local_folder
        )
        return pd.read_parquet(local)


def list_versions(tracking_uri: str, model_name: str) -> list[RegisteredVersion]:
    """Every version of the model, newest first."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        aliases = {alias: str(version) for alias, version in client.get_registered_model(model_name).aliases.items()}
    except MlflowException:
        return []  # no such model yet
    found = client.search_model_versions(f"name = '{model_name}'")
    return sorted((_registered(client, v, aliases) for v in found), key=lambda v: int(v.version), reverse=True)


def make_champion(tracking_uri: str, model_name: str, version: str, *, check: str) -> RegisteredVersion:
    """Point `champion` at `version` (the policy decided already: `promotion.promote`); the champion it replaces
    becomes `previous`, and `challenger` is dropped if it was `version`. `check` is recorded on the version."""
    client = _client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    if current is not None and current != version:
        client.set_registered_model_alias(model_name, PREVIOUS, current)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if alias_version(tracking_uri, model_name, CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    client.set_model_version_tag(model_name, version, "promoted_at", datetime.now(UTC).isoformat())
    client.set_model_version_tag(model_name, version, "promotion_check", check)
    return get_version(tracking_uri, model_name, version)


def rollback(tracking_uri: str, model_name: str) -> RegisteredVersion:
    """Point `champion` back at `previous`; the version rolled back from becomes `previous` (a second rollback
    undoes the first)."""
    client = _client(tracking_uri)
    previous = alias_version(tracking_uri, model_name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"model {model_name} has no `{PREVIOUS}` version to roll back to")
    current = alias_version(tracking_uri, model_name, CHAMPION)
    if current == previous:
        raise RegistryError(
            f"`{PREVIOUS}` and `{CHAMPION}` of {model_name} are both version {current}: nothing to undo"
        )
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, current)
    client.set_model_version_tag(model_name, previous, "rolled_back_to_at", datetime.now(UTC).isoformat())
    return get_version(tracking_uri, model_name, previous)


@dataclass(frozen=True)
class ModelRegistry:
    """One registered model's registry operations, for callers that are handed a registry (an A/B decision)."""

    tracking_uri: str
    model_name: str

    def references(self) -> ModelReferences:
        return model_references(self.tracking_uri, self.model_name)

    def promote(self, version: str, check: str) -> None:
        make_champion(self.tracking_uri, self.model_name, version, check=check)

    def version_tags(self, version: str) -> Mapping[str, str]:
        return dict(_client(self.tracking_uri).get_model_version(self.model_name, version).tags or {})

    def tag(self, version: str, tags: Mapping[str, str]) -> None:
        client = _client(self.tracking_uri)
        for key, value in tags.items():
            client.set_model_version_tag(self.model_name, version, key, value[:MAX_TAG_CHARS])
