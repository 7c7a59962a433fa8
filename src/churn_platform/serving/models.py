"""Models by alias, hot-swapped: the service follows the registry's `champion` and `challenger` without a restart.

A `ModelSet` resolves every alias it is asked to follow (and any pinned version an experiment names) with one
registry call, loads a version that moved in the background, checks it with a smoke prediction, and only then
swaps it in by replacing one immutable mapping. A request takes the mapping once, so it finishes on the models it
started with. A version that fails to load or to predict is never swapped in: the last good model keeps serving,
and the failure is reported once per version through `on_alert`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from churn_platform.model.aliases import is_version_number
from churn_platform.model.encoding import FeatureEncoder, FloatMatrix
from churn_platform.model.registered import load_pipeline
from churn_platform.model.scoring import Scorer, compile_scorer

log = logging.getLogger(__name__)

AlertSink = Callable[[str, str, str], object]  # (kind, subject, message); what it returns is ignored


class ModelLoadError(RuntimeError):
    """A registered version could not be loaded or failed its smoke prediction."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version in memory: its encoder and classifier, called on numpy (no DataFrame per request)."""

    name: str
    version: str
    model: Any  # the logged scikit-learn Pipeline: encode -> calibrated classifier
    feature_service: str
    loaded_at: datetime
    scorer: Scorer | None = field(default=None, repr=False, compare=False)  # numpy path, once checked
    explainer: Any = field(default=None, repr=False, compare=False)  # built at load, off the request path

    @property
    def encoder(self) -> FeatureEncoder:
        encoder: FeatureEncoder = self.model.named_steps["encode"]
        return encoder

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.feature_names

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float64]:
        """P(churn) for feature dicts (None = missing): encode to a matrix, then the classifier's predict_proba."""
        return self.score(self.encoder.transform_rows(rows))

    def score(self, matrix: FloatMatrix) -> npt.NDArray[np.float64]:
        """P(churn) for an encoded matrix: the checked numpy scorer, else scikit-learn's `predict_proba`."""
        if self.scorer is not None:
            return self.scorer(matrix)
        return self.reference_predict(matrix)

    def reference_predict(self, matrix: FloatMatrix) -> npt.NDArray[np.float64]:
        """scikit-learn's own `predict_proba` on an encoded matrix: what the numpy scorer must reproduce."""
        probabilities: npt.NDArray[np.float64] = self.model.named_steps["classify"].predict_proba(matrix)[:, 1]
        return probabilities


def smoke_rows(encoder: FeatureEncoder, count: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """A typical row, an all-missing row, and rows of varied magnitudes, gaps and categories."""
    rng = np.random.default_rng(seed)
    typical: dict[str, Any] = {name: 1.0 for name in encoder.numeric}
    typical.update({name: next(iter(encoder.categories_[name]), None) for name in encoder.categorical})
    rows = [typical, dict.fromkeys(encoder.feature_names)]
    magnitudes = np.array([0.0, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4, np.nan])
    for _ in range(count):
        row: dict[str, Any] = {
            name: float(rng.choice(magnitudes) * rng.choice([1, 1, 1, -1])) for name in encoder.numeric
        }
        row = {name: (None if np.isnan(value) else value) for name, value in row.items()}
        for name in encoder.categorical:
            choices = [*encoder.categories_[name], None, "unseen"]
            row[name] = choices[int(rng.integers(len(choices)))]
        rows.append(row)
    return rows


def smoke_check(loaded: LoadedModel, served_features: Sequence[str]) -> LoadedModel:
    """Refuse a version that cannot answer for the features this service reads, or answers nonsense; keep its
    numpy scorer only if it reproduces scikit-learn's `predict_proba` on the smoke rows (to 1e-9)."""
    unknown = [name for name in loaded.feature_names if name not in served_features]
    if unknown:
        raise ModelLoadError(
            f"version {loaded.version} needs features the feature service does not serve: {unknown}"
            f" (trained on {loaded.feature_service or 'an unknown feature service'})"
        )
    rows = smoke_rows(loaded.encoder)
    try:
        matrix = loaded.encoder.transform_rows(rows)
        probabilities = loaded.reference_predict(matrix)
    except Exception as exc:
        raise ModelLoadError(f"version {loaded.version} failed its smoke prediction: {exc!r}") from exc
    if probabilities.shape != (len(rows),) or not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in probabilities):
        raise ModelLoadError(
            f"version {loaded.version} answered its smoke prediction with {probabilities[:4]!r}..., not probabilities"
        )
    scorer = compile_scorer(loaded.model.named_steps["classify"])
    if scorer is not None:
        fast = scorer(matrix)
        if fast.shape != probabilities.shape or not np.allclose(fast, probabilities, rtol=0, atol=1e-9):
            log.warning("version %s: the numpy scorer disagrees with predict_proba; using scikit-learn", loaded.version)
            scorer = None
    return replace(loaded, scorer=scorer, explainer=_explainer(loaded))


def _explainer(loaded: LoadedModel) -> Any:
    """The version's explainer, built once here (tree explanations precompute per-tree arrays); None for a model
    shape it does not explain, which still serves predictions."""
    from churn_platform.model.explain import ModelExplainer

    try:
        return ModelExplainer(loaded.model)
    except (TypeError, ValueError) as exc:
        log.warning("version %s serves predictions but cannot be explained: %s", loaded.version, exc)
        return None


def load_version(tracking_uri: str, name: str, version: str) -> LoadedModel:
    """Download and load one registered version (scikit-learn flavour, skops with its listed trusted types)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        details = client.get_model_version(name, version)
        model = load_pipeline(tracking_uri, name, version)
    except Exception as exc:
        raise ModelLoadError(f"version {version} of {name} could not be loaded: {exc}") from exc
    steps = getattr(model, "named_steps", {})
    if not isinstance(steps.get("encode"), FeatureEncoder) or "classify" not in steps:
        raise ModelLoadError(
            f"version {version} of {name} is a {type(model).__name__}, not the platform's encode -> classify pipeline"
        )
    tags = dict(details.tags or {})
    return LoadedModel(name, str(version), model, tags.get("feature_service", ""), datetime.now(UTC))


Loader = Callable[[str, str, str], LoadedModel]


class ModelSet:
    """The versions behind a set of references (aliases, or version numbers), refreshed from the registry."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        served_features: Sequence[str],
        *,
        on_alert: AlertSink | None = None,
        on_recovered: Callable[[str, str], None] | None = None,
        loader: Loader = load_version,
        aliases: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.served_features = list(served_features)
        self.on_alert = on_alert or (lambda kind, subject, message: None)
        self.on_recovered = on_recovered or (lambda kind, subject: None)  # a condition alerted on has ended
        self.loader = loader
        self.aliases = aliases or self._registry_aliases
        self._current: Mapping[str, LoadedModel] = {}  # reference -> model; replaced whole, never mutated
        self._refused: set[str] = set()  # versions that failed: not tried again, alerted once
        self._lock = threading.Lock()  # one refresh at a time (the poller and an explicit call)
        self.registry_error: str | None = None

    def current(self) -> Mapping[str, LoadedModel]:
        """The models now serving, by reference: take it once per request."""
        return self._current

    def refresh(self, references: Iterable[str]) -> dict[str, str]:
        """Resolve the references, load what moved, swap in what passed its checks; return reference -> version.

        An alias that no longer exists is dropped; a reference whose new version fails keeps its last good model.
        """
        wanted = sorted(set(references))
        with self._lock:
            try:
                resolved = self._resolve(wanted)
            except Exception as exc:  # registry down: keep serving what is loaded
                if self.registry_error is None:
                    self.on_alert("registry_unreachable", self.tracking_uri, f"model registry did not answer: {exc}")
                self.registry_error = str(exc)
                return {ref: model.version for ref, model in self._current.items()}
            if self.registry_error is not None:
                self.on_recovered("registry_unreachable", self.tracking_uri)
            self.registry_error = None
            by_version = {model.version: model for model in self._current.values()}
            updated: dict[str, LoadedModel] = {}
            for reference in wanted:
                version = resolved.get(reference)
                if version is None:
                    continue
                loaded = by_version.get(version) or self._load(reference, version)
                if loaded is not None:
                    by_version[version] = loaded
                    updated[reference] = loaded
                elif reference in self._current:
                    updated[reference] = self._current[reference]  # the last good model keeps serving
            for reference, model in updated.items():
                before = self._current.get(reference)
                if before is None or before.version != model.version:
                    log.info("%s now serves %s version %s", reference, self.model_name, model.version)
            self._current = updated  # the swap: one reference assignment
            return {reference: model.version for reference, model in updated.items()}

    def _resolve(self, references: Sequence[str]) -> dict[str, str]:
        """Reference -> version: a version number stands for itself, an alias is looked up (one registry call)."""
        aliases = self.aliases()
        return {
            ref: ref if is_version_number(ref) else aliases[ref]
            for ref in references
            if is_version_number(ref) or ref in aliases
        }

    def _registry_aliases(self) -> dict[str, str]:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            return {alias: str(v) for alias, v in client.get_registered_model(self.model_name).aliases.items()}
        except MlflowException as exc:
            if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return {}  # no model registered yet
            raise

    def _load(self, reference: str, version: str) -> LoadedModel | None:
        if version in self._refused:
            return None
        try:
            loaded = smoke_check(self.loader(self.tracking_uri, self.model_name, version), self.served_features)
        except Exception as exc:
            self._refused.add(version)
            message = (
                f"{exc}; {reference} keeps serving the last good version" if self._current.get(reference) else str(exc)
            )
            log.error("refused %s version %s for %s: %s", self.model_name, version, reference, message)
            self.on_alert("model_refused", f"{self.model_name} version {version} ({reference})", message)
            return None
        return loaded


class Poller:
    """Calls `tick` every `interval_s` on a daemon thread until stopped; a failing tick is logged, not fatal."""

    def __init__(self, tick: Callable[[], None], interval_s: float, name: str) -> None:
        self.tick = tick
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("%s failed; trying again in %.0f s", self._thread.name, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
