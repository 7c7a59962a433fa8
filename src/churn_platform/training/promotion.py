"""The promotion policy: a version replaces the champion only if it ranks the same rows about as well.

Each run tests on its own latest weeks, so two versions' logged test AUCs come from different windows (on a
drifting world, different worlds). The policy therefore scores both models on the candidate's logged test rows
(a paired comparison) and refuses the candidate when its AUC there is below the champion's by more than the margin.
A version refitted after its test evaluation is compared as it was tested (the model fitted before its test
window): its refit has learned outcomes a later version is tested on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from churn_platform.model.aliases import CHAMPION
from churn_platform.model.registered import load_logged_pipeline, load_pipeline
from churn_platform.training import registry
from churn_platform.training.split import utc_days

logger = logging.getLogger(__name__)


class PromotionRefusedError(RuntimeError):
    """The policy check refused a promotion (use force to override)."""

    def __init__(self, message: str, comparison: PairedComparison | None = None) -> None:
        super().__init__(message)
        self.comparison = comparison


@dataclass(frozen=True)
class PairedComparison:
    """Candidate and champion scored on the same rows: the candidate's logged test rows."""

    candidate: str  # version numbers
    champion: str
    run_id: str  # the candidate's run, which logged the rows
    rows: int
    churned: int
    window: str  # the candidate's test window (as its version records it), which the rows are the snapshots of
    snapshot_days: tuple[date, ...]  # the days of those rows (one in CHURN_TRAIN_SNAPSHOT_EVERY_DAYS)
    candidate_auc: float
    champion_auc: float
    champion_outcomes_seen_through: date | None  # from the champion's tags (None for versions without the tag)

    @property
    def champion_saw_outcomes(self) -> bool:
        """The champion was fitted on labels that looked into these rows' period: its AUC here is optimistic."""
        seen = self.champion_outcomes_seen_through
        return seen is not None and seen >= self.snapshot_days[0]

    def refuses(self, margin: float) -> bool:
        return self.candidate_auc < self.champion_auc - margin

    def __str__(self) -> str:
        described = (
            f"ROC AUC {self.candidate_auc:.4f} (version {self.candidate}) against {self.champion_auc:.4f}"
            f" (champion version {self.champion}) on the same {self.rows:,} rows: version {self.candidate}'s test"
            f" window {self.window}, {len(self.snapshot_days)} snapshot days ({self.churned:,} rows churned),"
            f" logged by run {self.run_id}"
        )
        if self.champion_saw_outcomes:
            described += (
                f"; note that version {self.champion} was fitted on outcomes through"
                f" {self.champion_outcomes_seen_through}, inside that window, so its AUC there is optimistic"
            )
        return described


def compare_on_rows(
    rows: pd.DataFrame,
    candidate_model: Any,
    champion_model: Any,
    *,
    candidate: registry.RegisteredVersion,
    champion: registry.RegisteredVersion,
) -> PairedComparison:
    """Score both models (each version's tested model, `tested_pipeline`) on the same rows (the candidate's logged
    test rows: keys, `churned`, features).

    Raises ValueError naming the features a model reads that the rows do not hold.
    """
    y = rows["churned"].to_numpy(dtype=np.int64)
    aucs = []
    for role, model in (("candidate", candidate_model), ("champion", champion_model)):
        features = list(model.named_steps["encode"].feature_names)
        missing = [name for name in features if name not in rows.columns]
        if missing:
            raise ValueError(f"the {role} reads features the rows do not hold: {', '.join(missing)}")
        aucs.append(float(roc_auc_score(y, model.predict_proba(rows[features])[:, 1])))
    days = sorted(set(utc_days(rows["event_timestamp"])))
    # The outcomes the compared model learned from: a refitted champion is compared as it was tested
    seen = champion.tags.get(registry.TESTED_OUTCOMES_TAG) or champion.tags.get("outcomes_seen_through")
    return PairedComparison(
        candidate=candidate.version,
        champion=champion.version,
        run_id=candidate.run_id,
        rows=len(rows),
        churned=int(y.sum()),
        window=candidate.tags.get("test_window") or f"{days[0]}..{days[-1]}",
        snapshot_days=tuple(days),
        candidate_auc=aucs[0],
        champion_auc=aucs[1],
        champion_outcomes_seen_through=date.fromisoformat(seen) if seen else None,
    )


def tested_pipeline(tracking_uri: str, version: registry.RegisteredVersion) -> Any:
    """The model a version's test figures are of: for a version refitted on every labelled row after its test
    evaluation, the model fitted before its test window (logged beside it), which has learned no outcome of a
    later window; otherwise the registered model itself.

    Comparing refits would favour the older version: it has learned the outcomes of the newer one's test rows."""
    evaluated = version.tags.get(registry.EVALUATED_MODEL_TAG)
    if evaluated:
        return load_logged_pipeline(tracking_uri, evaluated)
    return load_pipeline(tracking_uri, version.name, version.version)


def paired_comparison(
    tracking_uri: str, candidate: registry.RegisteredVersion, champion: registry.RegisteredVersion
) -> PairedComparison:
    """Load both versions and the candidate's logged test rows from the registry, and compare them on those rows.

    Raises PromotionRefusedError when they cannot be compared there: a candidate that logged no test rows
    (trained before this policy), or a champion reading features those rows do not hold.
    """
    rows = registry.logged_test_rows(tracking_uri, candidate.run_id) if candidate.run_id else None
    if rows is None:
        raise PromotionRefusedError(
            f"version {candidate.version} logged no test rows ({registry.TEST_ROWS_ARTIFACT} in its run), so it"
            f" cannot be compared with champion version {champion.version} on the same rows: retrain it, or pass"
            " --force to promote anyway"
        )
    candidate_model = tested_pipeline(tracking_uri, candidate)
    champion_model = tested_pipeline(tracking_uri, champion)
    try:
        return compare_on_rows(rows, candidate_model, champion_model, candidate=candidate, champion=champion)
    except ValueError as exc:
        raise PromotionRefusedError(
            f"champion version {champion.version} ({champion.tags.get('feature_service', '?')}) cannot be scored on"
            f" version {candidate.version}'s test rows ({candidate.tags.get('feature_service', '?')}): {exc};"
            " pass --force to promote anyway"
        ) from exc


def promote(
    tracking_uri: str, model_name: str, version: str, *, margin: float, force: bool = False
) -> registry.RegisteredVersion:
    """Make `version` the champion; the champion it replaces becomes `previous`.

    Unless `force`, both are scored on `version`'s logged test rows first, and the promotion is refused
    (PromotionRefusedError, carrying the comparison) when `version`'s ROC AUC there is below the champion's by
    more than `margin`. The comparison is recorded on the promoted version (tag `promotion_check`).
    """
    candidate = registry.get_version(tracking_uri, model_name, version)
    current = registry.alias_version(tracking_uri, model_name, CHAMPION)
    if current == candidate.version:
        return candidate
    check = "forced" if force else "no champion to compare with"
    if current is not None and not force:
        comparison = paired_comparison(tracking_uri, candidate, registry.get_version(tracking_uri, model_name, current))
        if comparison.refuses(margin):
            raise PromotionRefusedError(
                f"version {version} is below champion version {current} by more than the margin {margin}:"
                f" {comparison}; pass --force to promote anyway",
                comparison,
            )
        check = str(comparison)
        logger.info("promotion check passed: %s", comparison)
    return registry.make_champion(tracking_uri, model_name, candidate.version, check=check)
