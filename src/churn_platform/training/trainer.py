"""One training run, without MLflow: split a training set in time, fit and calibrate the candidates, pick the best
on validation, evaluate it on the test window next to the classical baselines (recency, BG/NBD) and the oracle,
then (by default) refit the chosen candidate on every labelled row, the test window's included.

The refit is what gets registered. The test figures are those of the model fitted before the test window (the
only honest ones); the refit has seen the newest outcomes, which matter most when the horizon is long next to the
history: with H = 180 days and 15 months of labels, the evaluated model knows only the first few months."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import log_loss, roc_auc_score

from churn_platform.features.catalog import Catalog
from churn_platform.features.training_sets import TrainingSet
from churn_platform.model.candidates import (
    CANDIDATES,
    FittedCandidate,
    Labels,
    calibrated_on_folds,
    fit_candidate,
    fit_candidate_on_folds,
)
from churn_platform.model.encoding import FeatureEncoder, FloatMatrix
from churn_platform.training.baselines import BaselineLookup, BgNbdBaseline, recency_scores
from churn_platform.training.censoring import DecidingEvents, impute_censored
from churn_platform.training.evaluation import Evaluation, Scores, best_f1_threshold, evaluate
from churn_platform.training.folds import FoldError, Mask, cross_validate, user_folds
from churn_platform.training.split import TimeSplit, ValidationChoice, training_split, utc_days

BASELINE_FEATURE = "days_since_last_event"
TEST_ROW_KEYS = ("user_id", "event_timestamp", "churned")  # a test row's identity and label, before its features
IMPORTANCE_ROWS = 20_000  # permutation importance on a fixed sample of the test window
OracleLookup = Callable[[pd.DataFrame], Scores | None]  # test rows -> the world's own probabilities, if known


@dataclass(frozen=True)
class TrainConfig:
    """What a run varies: its seed, its windows, its validation design and its candidates."""

    seed: int = 7
    test_days: int = 28
    validation_days: int = 28  # the `time` design's validation window
    candidates: Sequence[str] = tuple(CANDIDATES)
    validation: ValidationChoice = "auto"  # `time`, `folds` (user folds inside the training window), or `auto`
    folds: int = 5  # K of the `folds` design, and of the refit's calibration folds
    refit: bool = True  # after the test evaluation, refit the chosen candidate on every labelled row
    censored: bool = True  # train on the snapshots censored at the cut too, their outcomes completed (censoring)
    reference_rows: int = 20_000  # rows of the test window kept as the drift reference (`reference_sample`)


@dataclass
class TrainedModel:
    """The chosen model, its test evaluation, and everything a registry entry records about it."""

    candidate: str
    model: Any  # the registered sklearn Pipeline (FeatureEncoder -> calibrated classifier): the refit, if any
    evaluated_model: Any  # the pipeline fitted before the test window, which the test figures are of
    split: TimeSplit
    evaluation: Evaluation
    recency_roc_auc: float
    bgnbd: BgNbdBaseline | None  # None for data without any qualifying event before the fit time
    bgnbd_roc_auc: float | None
    oracle_roc_auc: float | None
    validation: dict[str, dict[str, float]]  # candidate -> validation (or out-of-fold) metrics
    folds: int | None  # K user folds of the `folds` design; None with a validation window
    importance: dict[str, float]
    censoring: dict[str, float]  # how the censored snapshots' outcomes were completed (empty without)
    # per part; `censored`: snapshots censored at the cut added to the training window (of which `censored_decided`
    # had their deciding event by the cut); `refit`: the rows the registered model was refitted on
    rows: dict[str, int]
    feature_service: str
    definitions_hash: str
    # The test rows as evaluated: user_id, event_timestamp, churned, the features, p_model, p_recency, p_bgnbd, p_oracle
    test_frame: pd.DataFrame = field(repr=False)
    input_example: pd.DataFrame = field(repr=False)  # feature rows from the test window, for the model signature
    # A seeded sample of the test window's rows (user_id, event_timestamp, churned, the features, p_model): the
    # reference monitoring compares served features and scores with
    reference: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @property
    def baseline_roc_auc(self) -> float:
        """The recency baseline's ROC AUC, under its first name."""
        return self.recency_roc_auc

    @property
    def refitted(self) -> bool:
        return self.model is not self.evaluated_model

    @property
    def outcomes_seen_through(self) -> date:
        """The last day a label the registered model learned from looked at: past the test window after a refit."""
        if self.refitted:
            return self.split.test.last + timedelta(days=self.split.gap_days)
        return self.split.outcomes_seen_through

    @property
    def auc_to_oracle(self) -> float | None:
        return None if not self.oracle_roc_auc else self.evaluation.roc_auc / self.oracle_roc_auc

    def metrics(self) -> dict[str, float]:
        """Every metric of the run, under the names outside scripts read (test_roc_auc, auc_to_oracle, ...)."""
        metrics = self.evaluation.metrics()
        metrics["recency_roc_auc"] = self.recency_roc_auc
        metrics["model_lift_over_recency_auc"] = self.evaluation.roc_auc - self.recency_roc_auc
        # The recency baseline's first names: scripts and older versions' comparisons read them.
        metrics["baseline_roc_auc"] = self.recency_roc_auc
        metrics["model_lift_over_baseline_auc"] = metrics["model_lift_over_recency_auc"]
        if self.bgnbd is not None and self.bgnbd_roc_auc is not None:
            metrics["bgnbd_roc_auc"] = self.bgnbd_roc_auc
            metrics["model_lift_over_bgnbd_auc"] = self.evaluation.roc_auc - self.bgnbd_roc_auc
            metrics.update(self.bgnbd.fit.params.metrics())
            metrics["bgnbd_log_likelihood"] = self.bgnbd.fit.log_likelihood
            metrics["bgnbd_customers"] = float(self.bgnbd.fit.customers)
        if self.oracle_roc_auc is not None and self.auc_to_oracle is not None:
            metrics["oracle_roc_auc"] = self.oracle_roc_auc
            metrics["auc_to_oracle"] = self.auc_to_oracle
        metrics.update(self.censoring)
        for candidate, values in self.validation.items():
            metrics.update({f"validation_{candidate}_{k}": v for k, v in values.items()})
        return metrics


def baseline_scores(frame: pd.DataFrame) -> Scores:
    """The recency baseline: the longer since the last event, the likelier churn (never active ranks highest)."""
    return recency_scores(frame[BASELINE_FEATURE].to_numpy(dtype=np.float64, na_value=np.nan))


def bgnbd_fit_time(split: TimeSplit) -> datetime:
    """BG/NBD is fitted on the histories as of the cut (UTC midnight): all it would know when the model is fitted."""
    return datetime.combine(split.cut, time(), tzinfo=UTC)


def encoder_for(catalog: Catalog) -> FeatureEncoder:
    numeric = [f.name for f in catalog.features if f.dtype != "text"]
    categorical = [f.name for f in catalog.features if f.dtype == "text"]
    return FeatureEncoder(numeric, categorical)


def train_model(
    training: TrainingSet,
    catalog: Catalog,
    config: TrainConfig,
    oracle: OracleLookup | None = None,
    bgnbd: BaselineLookup | None = None,
    deciding: DecidingEvents | None = None,
) -> TrainedModel:
    """Fit every candidate on the training window (with `deciding` and `config.censored`, also on the snapshots
    censored at the cut, their outcomes completed: training.censoring), keep the best by validation ROC AUC (a
    later window, or user folds inside the training window), evaluate it on test next to the recency baseline, a
    BG/NBD fitted at the cut (given `bgnbd`) and the oracle."""
    frame = training.frame
    if BASELINE_FEATURE not in catalog.names:
        raise ValueError(f"catalog {catalog.name} has no `{BASELINE_FEATURE}` feature, which the baseline scores with")
    split = training_split(
        frame["event_timestamp"],
        validation=config.validation,
        gap_days=training.horizon_days,
        test_days=config.test_days,
        validation_days=config.validation_days,
    )
    in_train, in_validation, in_test = split.masks(frame["event_timestamp"])
    parts = {"train": frame[in_train], "validation": frame[in_validation], "test": frame[in_test]}
    if split.design == "folds":
        del parts["validation"]  # validated by user folds inside the training window
    for name, part in parts.items():
        if part.empty:
            raise ValueError(f"the {name} window ({getattr(split, name)}) holds no labelled snapshot")
        if part["churned"].nunique() < 2:
            raise ValueError(f"the {name} window ({getattr(split, name)}) has only one class: cannot train or score")
    rows = {name: len(part) for name, part in parts.items()}
    censoring: dict[str, float] = {}
    if config.censored and deciding is not None:
        parts["train"], censoring = with_censored_snapshots(
            frame, split, parts["train"], catalog, deciding, config, training.horizon_days
        )
        rows["censored"] = len(parts["train"]) - rows["train"]
        rows["censored_decided"] = int(censoring["censored_decided_rows"])
    labels = {name: part["churned"].to_numpy(dtype=np.int64) for name, part in parts.items()}

    encoder = encoder_for(catalog).fit(parts["train"])
    encoded = {name: encoder.transform(part) for name, part in parts.items()}
    if split.design == "time":
        best, validation, threshold = choose_on_validation(encoder, encoded, labels, config)
    else:
        users = parts["train"]["user_id"].to_numpy()
        complete = np.arange(len(parts["train"])) < rows["train"]  # the censored snapshots come after
        best, validation, threshold = choose_on_folds(
            encoder, encoded["train"], labels["train"], users, config, complete
        )

    p_test = best.classifier.predict_proba(encoded["test"])[:, 1]
    y_test = labels["test"]
    recency = baseline_scores(parts["test"])
    fitted_bgnbd = bgnbd(parts["test"], bgnbd_fit_time(split), training.horizon_days) if bgnbd is not None else None
    oracle_p = oracle(parts["test"]) if oracle is not None else None
    test_frame = parts["test"][[*TEST_ROW_KEYS, *encoder.feature_names]].assign(
        p_model=p_test,
        p_recency=recency,
        p_bgnbd=fitted_bgnbd.p_churn if fitted_bgnbd is not None else np.nan,
        p_oracle=oracle_p if oracle_p is not None else np.nan,
    )
    model = best.model
    if config.refit:
        model = refit_on_all_rows(best.name, catalog, frame, config)
        rows["refit"] = len(frame)
    return TrainedModel(
        candidate=best.name,
        model=model,
        evaluated_model=best.model,
        split=split,
        evaluation=evaluate(y_test, p_test, threshold),
        recency_roc_auc=float(roc_auc_score(y_test, recency)),
        bgnbd=fitted_bgnbd,
        bgnbd_roc_auc=None if fitted_bgnbd is None else float(roc_auc_score(y_test, fitted_bgnbd.p_churn)),
        oracle_roc_auc=None if oracle_p is None else float(roc_auc_score(y_test, oracle_p)),
        validation=validation,
        folds=config.folds if split.design == "folds" else None,
        importance=feature_importance(best.model, parts["test"], y_test, encoder.feature_names, config.seed),
        censoring=censoring,
        rows=rows,
        feature_service=training.feature_service,
        definitions_hash=training.definitions_hash,
        test_frame=test_frame.reset_index(drop=True),
        input_example=parts["test"][encoder.feature_names].head(100).reset_index(drop=True),
        reference=reference_sample(test_frame, encoder.feature_names, config),
    )


def reference_sample(test_frame: pd.DataFrame, features: list[str], config: TrainConfig) -> pd.DataFrame:
    """The drift reference: up to `config.reference_rows` rows of the test window, drawn with the training seed, in
    time order, with the evaluated model's out-of-sample P(churn) (`p_model`).

    The test window is the newest labelled data and the population the version's test figures describe; the whole
    training window is not a fair reference: a world's population moves on by itself (a launch cohort ageing,
    lifetime counts growing), so served weeks drifted from it in every simulated world, drifting or not. Scores
    fitted on are over-confident, so in-sample scores are not a fair score reference either.
    """
    count = min(config.reference_rows, len(test_frame))
    sample = test_frame.sample(n=count, random_state=config.seed)[[*TEST_ROW_KEYS, *features, "p_model"]]
    return sample.sort_values(["event_timestamp", "user_id"], kind="stable").reset_index(drop=True)


def with_censored_snapshots(
    frame: pd.DataFrame,
    split: TimeSplit,
    train: pd.DataFrame,
    catalog: Catalog,
    deciding: DecidingEvents,
    config: TrainConfig,
    horizon_days: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The training window with the snapshots between it and the cut appended, each labelled with what the cut
    knows of its outcome, completed by the hazard model (training.censoring); and figures of how it went, among
    them how the completed outcomes rank against the outcomes the data knows now (a diagnostic, never fitted)."""
    days = utc_days(frame["event_timestamp"])
    between = ((days > split.train.last) & (days < split.cut)).to_numpy(dtype=bool)
    if not between.any():
        return train, {"censored_rows": 0.0, "censored_decided_rows": 0.0}
    censored = frame[between]
    rows = pd.concat([train, censored], ignore_index=True)
    stamps = pd.to_datetime(rows["event_timestamp"], utc=True)
    observed_days = np.asarray((pd.Timestamp(split.cut, tz="UTC") - stamps) / pd.Timedelta(days=1), dtype=np.float64)
    decided_after = deciding.decided_after(rows[["user_id", "event_timestamp"]])
    is_censored = np.arange(len(rows)) >= len(train)
    imputed = impute_censored(
        encoder_for(catalog).fit(rows).transform(rows),
        rows[BASELINE_FEATURE].to_numpy(dtype=np.float64, na_value=np.nan),
        decided_after,
        observed_days,
        horizon_days=horizon_days,
        contractual=deciding.contractual,
        censored=is_censored,
        seed=config.seed,
    )
    known = censored["churned"].to_numpy(dtype=np.int64)  # complete now; at the cut, only where decided
    undecided = ~imputed.decided
    figures = {
        "censored_rows": float(len(censored)),
        "censored_decided_rows": float(imputed.decided.sum()),
        "censored_person_periods": float(imputed.person_periods),
        "censored_imputed_positive_rate": float(imputed.labels.mean()),
        "censored_positive_rate": float(known.mean()),
    }
    if undecided.any() and len(np.unique(known[undecided])) == 2:
        figures["censored_completion_roc_auc"] = float(roc_auc_score(known[undecided], imputed.p_positive[undecided]))
    completed = censored.assign(
        churned=pd.Series(imputed.labels, index=censored.index).astype(censored["churned"].dtype)
    )
    return pd.concat([train, completed], ignore_index=True), figures


def refit_on_all_rows(name: str, catalog: Catalog, frame: pd.DataFrame, config: TrainConfig) -> Any:
    """The chosen candidate fitted again on every labelled row of the training set (train, gaps, validation, test),
    calibrated on its out-of-fold scores over user folds of those rows (K + 1 fits). The threshold stays the
    evaluated model's: both are calibrated, so a probability means the same to each."""
    y = frame["churned"].to_numpy(dtype=np.int64)
    encoder = encoder_for(catalog).fit(frame)
    try:
        folds = user_folds(frame["user_id"].to_numpy(), y, folds=config.folds, seed=config.seed)
    except FoldError as exc:
        raise FoldError(f"the refit on every labelled row: {exc}, or set CHURN_TRAIN_REFIT=false") from exc
    return calibrated_on_folds(name, encoder, encoder.transform(frame), y, folds, config.seed)


def choose_on_validation(
    encoder: FeatureEncoder, encoded: dict[str, FloatMatrix], labels: dict[str, Labels], config: TrainConfig
) -> tuple[FittedCandidate, dict[str, dict[str, float]], float]:
    """`time` design: each candidate fitted on train and calibrated on the validation window; the best there by
    ROC AUC, with the F1-best threshold on its calibrated validation scores."""
    fitted: list[FittedCandidate] = []
    validation: dict[str, dict[str, float]] = {}
    for name in config.candidates:
        candidate = fit_candidate(
            name, encoder, encoded["train"], labels["train"], encoded["validation"], labels["validation"], config.seed
        )
        calibrated = candidate.classifier.predict_proba(encoded["validation"])[:, 1]
        validation[name] = {
            "roc_auc": float(roc_auc_score(labels["validation"], candidate.validation_scores)),
            "log_loss": float(log_loss(labels["validation"], calibrated, labels=[0, 1])),
        }
        fitted.append(candidate)
    # Ranking decides (calibration is monotone and was fitted on validation); log loss breaks a tie.
    best = max(fitted, key=lambda c: (validation[c.name]["roc_auc"], -validation[c.name]["log_loss"]))
    threshold = best_f1_threshold(labels["validation"], best.classifier.predict_proba(encoded["validation"])[:, 1])
    return best, validation, threshold


def choose_on_folds(
    encoder: FeatureEncoder,
    x_train: FloatMatrix,
    y_train: Labels,
    users: npt.ArrayLike,
    config: TrainConfig,
    judged: Mask | None = None,
) -> tuple[FittedCandidate, dict[str, dict[str, float]], float]:
    """`folds` design: each candidate cross-validated by user inside the training window (K fits); the best by
    mean out-of-fold ROC AUC is refitted on the whole window and calibrated on its out-of-fold scores (K + 1
    fits), and the threshold is the F1-best on those scores as calibrated. Choice and threshold look only at the
    `judged` rows (complete labels: not the censored snapshots, whose completed labels came from a model)."""
    folds = user_folds(users, y_train, folds=config.folds, seed=config.seed)
    judged_rows = slice(None) if judged is None else judged
    scored = {name: cross_validate(name, x_train, y_train, folds, config.seed, judged) for name in config.candidates}
    validation = {
        name: {"roc_auc": folded.roc_auc, "log_loss": folded.platt_log_loss(y_train, judged)}
        for name, folded in scored.items()
    }
    winner = max(scored, key=lambda name: (validation[name]["roc_auc"], -validation[name]["log_loss"]))
    best = fit_candidate_on_folds(winner, encoder, x_train, y_train, folds, scored[winner].out_of_fold, config.seed)
    calibrated = best.calibrated(scored[winner].out_of_fold)
    threshold = best_f1_threshold(y_train[judged_rows], calibrated[judged_rows])
    return best, validation, threshold


def feature_importance(
    model: Any, test: pd.DataFrame, y: np.ndarray[Any, Any], features: list[str], seed: int
) -> dict[str, float]:
    """Mean drop in test ROC AUC when one feature is shuffled (model-agnostic, on raw features)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(test), size=min(IMPORTANCE_ROWS, len(test)), replace=False))
    sample, y_sample = test.iloc[rows][features], y[rows]
    if len(np.unique(y_sample)) < 2:
        return dict.fromkeys(features, 0.0)
    result = permutation_importance(model, sample, y_sample, scoring="roc_auc", n_repeats=3, random_state=seed)
    return {name: float(v) for name, v in zip(features, result.importances_mean, strict=True)}
