"""Estimated performance before the outcomes arrive: confidence-based performance estimation (CBPE, as NannyML
does), corrected by the outcomes seen so far.

Outcomes come a full horizon late, so realised figures notice a decaying model a horizon late. A calibrated model's
score p is the probability its user churns, so the scores alone say what the figures should be while the relation
between features and churn holds (covariate shift is fine):
- positive rate: the mean score;
- Brier score: E[(y - p)^2] = mean of p (1 - p);
- ROC AUC: the expected share of (churner, stayer) pairs ranked right, each pair (i, j) counting p_i (1 - p_j),
  over the expected number of such pairs (ties count half): the ratio of expectations, one O(n log n) pass.

A changed relation (concept drift) is invisible in the scores, but not in the first outcomes: the horizon's first
days already show who cancelled (contractual churn) or came back (non-contractual churn). As of a time T, each
prediction made H days or less before T has been seen for e of its H days, and its deciding event has happened or
not. From those partly seen outcomes of the last H days the estimate refits the scores' calibration (a recalibration
expit(a + b logit(p)), kept at the model's own (0, 1) unless the outcomes reject it at RECALIBRATION_ALPHA), then
counts a decided prediction as its known label and an undecided one as its recalibrated chance of churning in the
days left. With no outcome seen it is the plain CBPE estimate above; once the horizon has passed it is the realised
figure. Measured on a drifting world, see docs/monitoring.md.

Per model version and snapshot day, from the scores the version served (each user's newest on each snapshot), stored
in `monitoring.estimated_performance` with the days of outcomes it had seen; the realised figures join them there
once the outcomes are complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import optimize, special, stats

from churn_platform import db
from churn_platform.data.labels import ChurnDefinition
from churn_platform.training.censoring import deciding_events

# Each (version, user, snapshot)'s newest score on the snapshot days in [start, end).
SERVED_SCORES_SQL = """
SELECT DISTINCT ON (model_version, user_id, snapshot_at) model_version, user_id, snapshot_at, churn_probability
FROM serving.prediction_log
WHERE snapshot_at >= %(start)s AND snapshot_at < %(end)s AND churn_probability IS NOT NULL
ORDER BY model_version, user_id, snapshot_at, predicted_at DESC
"""
UPSERT_SQL = """
INSERT INTO monitoring.estimated_performance
    (model_name, model_version, day, horizon_days, outcome_days, rows, decided, roc_auc, brier, positive_rate,
     estimated_at)
VALUES (%(model_name)s, %(model_version)s, %(day)s, %(horizon_days)s, %(outcome_days)s, %(rows)s, %(decided)s,
        %(roc_auc)s, %(brier)s, %(positive_rate)s, %(estimated_at)s)
ON CONFLICT (model_name, model_version, day, horizon_days, outcome_days) DO UPDATE SET
    rows = EXCLUDED.rows, decided = EXCLUDED.decided, roc_auc = EXCLUDED.roc_auc, brier = EXCLUDED.brier,
    positive_rate = EXCLUDED.positive_rate, estimated_at = EXCLUDED.estimated_at
"""
# Past days with both an estimate made before their outcomes were complete and realised figures.
COMPARED_SQL = """
SELECT e.model_version, e.day, e.outcome_days, e.rows, e.roc_auc, p.roc_auc, e.brier, p.brier, e.positive_rate,
       p.positive_rate
FROM monitoring.estimated_performance e
JOIN monitoring.performance p USING (model_name, model_version, day, horizon_days)
WHERE e.model_name = %(model_name)s AND e.horizon_days = %(horizon)s AND e.day BETWEEN %(first)s AND %(last)s
  AND e.outcome_days < e.horizon_days
ORDER BY e.model_version, e.day, e.outcome_days
"""
RECALIBRATION_ALPHA = 0.01  # the outcomes seen must reject the model's own calibration at this level to replace it
PROBABILITY_CLIP = 1e-6  # a score of exactly 0 or 1 has no log-odds
PRIOR_SD = 1.0  # the recalibration's prior: intercept ~ N(0, 1), slope ~ N(1, 1) (the model as it is)
Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    rows: int
    roc_auc: float | None  # None when no pair of users can be ordered (every score 0, or every score 1)
    brier: float
    positive_rate: float
    decided: int = 0  # predictions whose outcome was already known (their deciding event seen)


@dataclass(frozen=True)
class Comparison:
    """One version and day: the estimate beside the realised figures."""

    model_version: str
    day: date
    outcome_days: int  # days of the day's horizon whose outcomes the estimate had seen
    rows: int
    estimated_auc: float | None
    realised_auc: float | None
    estimated_brier: float
    realised_brier: float
    estimated_rate: float
    realised_rate: float

    @property
    def auc_error(self) -> float | None:
        if self.estimated_auc is None or self.realised_auc is None:
            return None
        return self.estimated_auc - self.realised_auc


def expected_auc(scores: Scores, positive: Scores | None = None) -> float | None:
    """The expected ROC AUC of ranking by `scores` when row i churns with probability `positive[i]` (by default
    the score itself: calibrated scores whose outcomes are not known yet); a ratio of expectations."""
    s = np.asarray(scores, dtype="float64")
    w = s if positive is None else np.asarray(positive, dtype="float64")
    order = np.argsort(s, kind="stable")
    s, churn = s[order], w[order]
    stay = 1.0 - churn
    # Expected stayers scored strictly below each score, and at the same score, by run of equal scores.
    _, first = np.unique(s, return_index=True)
    stay_before = np.concatenate(([0.0], np.cumsum(stay)))[first]  # stayers strictly below each distinct score
    stay_tied = np.add.reduceat(stay, first)
    churn_tied = np.add.reduceat(churn, first)
    # A churner at a score ranks right above every stayer below it, half right against the others at its score
    # (itself excluded: a user is not paired with themselves).
    self_pairs = np.add.reduceat(churn * stay, first)
    right = float(np.sum(churn_tied * stay_before + 0.5 * (churn_tied * stay_tied - self_pairs)))
    pairs = float(churn.sum() * stay.sum() - np.sum(churn * stay))
    return right / pairs if pairs > 0 else None


def estimate(scores: Scores) -> Estimate:
    """The plain CBPE estimate: no outcome seen yet."""
    p = np.asarray(scores, dtype="float64")
    return Estimate(len(p), expected_auc(p), float(np.mean(p * (1.0 - p))), float(np.mean(p)))


def served_scores(url: str, first: date, last: date) -> pd.DataFrame:
    """model_version, user_id, snapshot_at (UTC), churn_probability and day of every (version, user, snapshot)
    served on the days."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SERVED_SCORES_SQL, {"start": start, "end": end})
        frame = pd.DataFrame(
            cur.fetchall(), columns=["model_version", "user_id", "snapshot_at", "churn_probability"]
        ).astype({"churn_probability": "float64"})
    frame["snapshot_at"] = pd.to_datetime(frame["snapshot_at"], utc=True)
    frame["day"] = frame["snapshot_at"].dt.date
    return frame


@dataclass(frozen=True)
class SeenOutcomes:
    """What the events before the as-of time say about each prediction: how many of its H days have passed
    (exposure, 0 to H) and whether its deciding event (a cancel for contractual churn, a qualifying event for
    non-contractual churn) already happened in them."""

    exposure_days: Scores
    decided: npt.NDArray[np.bool_]

    @classmethod
    def as_of(cls, snapshot_at: pd.Series, decided_after: Scores, at: datetime, horizon: int) -> SeenOutcomes:
        """`decided_after`: days from each snapshot to its first deciding event within the horizon (NaN: none)."""
        elapsed = (pd.Timestamp(at) - pd.to_datetime(snapshot_at, utc=True)).dt.total_seconds().to_numpy() / 86400
        exposure = np.clip(elapsed, 0.0, float(horizon))
        return cls(exposure, np.nan_to_num(np.asarray(decided_after, dtype="float64"), nan=np.inf) < exposure)


@dataclass(frozen=True)
class Recalibration:
    """The scores' relation to churn as the outcomes seen so far show it: P(churn) = expit(a + b logit(p)).

    (0, 1) is the model as trained. Fitted by maximum a posteriori on partly seen outcomes: a prediction seen for e
    of its H days was decided by then with probability 1 - (1 - q)^(e / H), q its chance of being decided within H
    (a constant hazard over the horizon), and kept only when a likelihood-ratio test rejects (0, 1)."""

    intercept: float = 0.0
    slope: float = 1.0
    decided: int = 0  # deciding events among the predictions it was fitted on
    p_value: float = 1.0  # of the likelihood-ratio test against the model's own calibration

    def churn_probability(self, scores: Scores) -> Scores:
        logit = special.logit(np.clip(scores, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP))
        return np.asarray(special.expit(self.intercept + self.slope * logit), dtype="float64")


def recalibrate(
    scores: Scores, seen: SeenOutcomes, horizon: int, contractual: bool, users: npt.ArrayLike | None = None
) -> Recalibration:
    """The recalibration the partly seen outcomes of `scores` support (the identity when they do not reject it).

    A user scored on many snapshots is one piece of evidence, not one per snapshot (one cancel decides all of them):
    with `users`, the fit takes each user's longest-seen prediction only, so the likelihood, and its ratio test,
    count independent users."""
    observed = seen.exposure_days > 0
    if not observed.any():  # nothing seen yet, or no prediction at all (a version that stopped serving)
        return Recalibration()
    if users is not None:
        ids = np.asarray(users)
        order = np.lexsort((-seen.exposure_days, ids))  # by user, the longest seen first
        first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        observed &= np.isin(np.arange(ids.size), first)
    share, decided = seen.exposure_days[observed] / horizon, seen.decided[observed]
    logit = special.logit(
        np.clip(np.asarray(scores, dtype="float64")[observed], PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    )
    if not decided.any():
        return Recalibration()

    def log_likelihood(theta: Scores) -> float:
        churn = special.expit(theta[0] + theta[1] * logit)
        undecided_in_h = np.clip(1.0 - churn if contractual else churn, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
        log_undecided = share * np.log(undecided_in_h)  # log P(undecided after e days)
        log_decided = np.log(-np.expm1(np.minimum(log_undecided, -1e-12)))
        return float(np.sum(np.where(decided, log_decided, log_undecided)))

    identity = np.array([0.0, 1.0])
    fitted = optimize.minimize(
        lambda theta: -log_likelihood(theta) + 0.5 * float(np.sum((theta - identity) ** 2)) / PRIOR_SD**2,
        identity, method="L-BFGS-B",
    )  # fmt: skip
    ratio = max(2.0 * (log_likelihood(fitted.x) - log_likelihood(identity)), 0.0)
    p_value = float(stats.chi2.sf(ratio, df=2))
    if p_value >= RECALIBRATION_ALPHA:
        return Recalibration(decided=int(decided.sum()), p_value=p_value)
    return Recalibration(float(fitted.x[0]), float(fitted.x[1]), int(decided.sum()), p_value)


def estimate_with_outcomes(
    scores: Scores, seen: SeenOutcomes, horizon: int, contractual: bool, recalibration: Recalibration
) -> Estimate:
    """The estimate once some outcomes are seen: a decided prediction counts as its known label, an undecided one
    as the recalibrated chance of churning in the days left of its horizon."""
    p = np.asarray(scores, dtype="float64")
    churn = recalibration.churn_probability(p)
    left = (horizon - seen.exposure_days) / horizon
    undecided = 1.0 - (1.0 - churn) ** left if contractual else churn**left
    positive = np.where(seen.decided, 1.0 if contractual else 0.0, undecided)
    brier = float(np.mean(positive * (1.0 - p) ** 2 + (1.0 - positive) * p**2))
    return Estimate(len(p), expected_auc(p, positive), brier, float(np.mean(positive)), int(seen.decided.sum()))


@dataclass(frozen=True)
class Estimator:
    """Served scores with what the events before `as_of` say about their outcomes, ready to estimate any set of
    their days; each version recalibrated on its predictions of the H days before `as_of`."""

    scores: pd.DataFrame  # served_scores' columns, snapshots up to as_of
    seen: SeenOutcomes  # row for row
    as_of: datetime
    horizon: int
    contractual: bool
    recalibrations: dict[str, Recalibration]

    def estimate(self, rows: npt.NDArray[np.bool_], version: str) -> Estimate:
        """The estimate over the selected rows (of one version)."""
        seen = SeenOutcomes(self.seen.exposure_days[rows], self.seen.decided[rows])
        p = self.scores["churn_probability"].to_numpy(dtype="float64")[rows]
        return estimate_with_outcomes(p, seen, self.horizon, self.contractual, self.recalibrations[version])

    def daily(self, first: date, last: date) -> dict[tuple[str, date], Estimate]:
        """Per (model version, snapshot day) in [first, last]."""
        days = self.scores["day"]
        chosen = self.scores[(days >= first) & (days <= last)]
        found = {}
        for key, index in chosen.groupby(["model_version", "day"], sort=True).indices.items():
            version, day = cast(tuple[str, date], key)
            rows = np.zeros(len(self.scores), dtype=bool)
            rows[chosen.index.to_numpy()[index]] = True
            found[(str(version), day)] = self.estimate(rows, str(version))
        return found

    def window(self, version: str, first: date, last: date) -> Estimate | None:
        days = self.scores["day"].to_numpy()
        rows = (self.scores["model_version"].to_numpy() == version) & (days >= first) & (days <= last)
        return self.estimate(rows, version) if rows.any() else None

    def outcome_days(self, day: date) -> int:
        """Days of `day`'s horizon the estimate has seen outcomes for."""
        return int(min(max((self.as_of.date() - day).days, 0), self.horizon))


def estimator(url: str, definition: ChurnDefinition, horizon: int, first: date, as_of: datetime) -> Estimator:
    """The scores served on the days from `first` (and on the H days before `as_of`, to recalibrate) to `as_of`,
    and their deciding events before `as_of`."""
    as_of = _utc(as_of)
    fit_from = (as_of - timedelta(days=horizon)).date()
    scores = served_scores(url, min(first, fit_from), as_of.date())
    lookup = deciding_events(url, definition, horizon)
    decided_after = lookup.decided_after(scores.rename(columns={"snapshot_at": "event_timestamp"}))
    return estimator_from(scores, decided_after, as_of, horizon, lookup.contractual)


def estimator_from(
    scores: pd.DataFrame, decided_after: Scores, as_of: datetime, horizon: int, contractual: bool
) -> Estimator:
    """The estimator as of `as_of` over served scores (served_scores' columns) and the days from each snapshot to
    its first deciding event within the horizon, known or not by then (NaN: none)."""
    as_of = _utc(as_of)
    known = (scores["snapshot_at"] <= pd.Timestamp(as_of)).to_numpy()
    scores = scores[known].reset_index(drop=True)
    seen = SeenOutcomes.as_of(scores["snapshot_at"], np.asarray(decided_after)[known], as_of, horizon)
    recent = (scores["snapshot_at"] > pd.Timestamp(as_of) - pd.Timedelta(days=horizon)).to_numpy()
    versions = scores["model_version"].to_numpy()
    p = scores["churn_probability"].to_numpy(dtype="float64")
    recalibrations = {}
    for version in sorted(set(versions)):
        fit = recent & (versions == version)
        recalibrations[str(version)] = recalibrate(
            p[fit], SeenOutcomes(seen.exposure_days[fit], seen.decided[fit]), horizon, contractual,
            scores["user_id"].to_numpy()[fit],
        )  # fmt: skip
    return Estimator(scores, seen, as_of, horizon, contractual, recalibrations)


def _utc(at: datetime) -> datetime:
    """An as-of time in UTC, the calendar of snapshot days; a naive time is refused rather than guessed."""
    if at.tzinfo is None:
        raise ValueError(f"the as-of time {at.isoformat()} has no time zone")
    return at.astimezone(UTC)


def store(url: str, model_name: str, found: Estimator, by_day: dict[tuple[str, date], Estimate], at: datetime) -> None:
    """Upsert the estimates, each under the days of outcomes it had seen (an estimate's history is kept)."""
    rows: list[dict[str, Any]] = [
        {"model_name": model_name, "model_version": version, "day": day, "horizon_days": found.horizon,
         "outcome_days": found.outcome_days(day), **vars(e), "estimated_at": at}
        for (version, day), e in by_day.items()
    ]  # fmt: skip
    with db.connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(UPSERT_SQL, rows)


def compared(url: str, model_name: str, horizon: int, first: date, last: date) -> list[Comparison]:
    """Days with both an estimate and realised figures, for each version."""
    with db.connect(url) as conn:
        rows = conn.execute(
            COMPARED_SQL, {"model_name": model_name, "horizon": horizon, "first": first, "last": last}
        ).fetchall()
    return [Comparison(*row) for row in rows]
