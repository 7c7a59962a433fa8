"""Censored outcomes: what the snapshots between the training window and the window that judges the model already
say at the cut, and the hazard model that completes them.

A label at t looks at [t, t + H). The model is judged on a window starting at the cut c (validation with the
`time` design, test with `folds`), so only labels with t + H <= c are complete when it is fitted. A snapshot in
between (c - H < t < c) is censored at c, not empty: its deciding event (a qualifying event for non-contractual
churn, an end event for contractual churn) may already have happened in [t, c), and then its label is known;
otherwise the user was undecided for c - t of the H days, which already says a lot. With H = 180 days and a short
history, those snapshots are most of what is known about the newest, oldest customers.

How they are used (imputation of censored outcomes from a discrete-time hazard model, as in survival analysis):

1. Every snapshot before the cut becomes one row per period of `PERIOD_DAYS` within the horizon that it was
   undecided at the start of and observed to the end of (person-period rows), with the period's start, its length
   and the days since the last event before t plus the period's start as extra columns, and whether the deciding
   event fell in it.
2. A gradient-boosted classifier on those rows is the hazard h_k(x): the chance the deciding event falls in period
   k given none before. The survival to day d is the product of (1 - h_k) over the periods before d (a period
   partly covered counts by the covered share of its length).
3. A censored snapshot whose deciding event was seen by the cut takes its known label. One still undecided after
   a days gets P(decided by H | undecided through a) = 1 - S(H) / S(a), and its label is drawn from that
   probability with the training seed (a single stochastic imputation: the candidates, their folds and their
   calibration then take ordinary 0/1 labels, and the labels' mean is unbiased).

The imputed rows join the training window; they never reach a test or validation window, and the test figures stay
those of rows whose outcomes were complete. See docs/training.md for what it changes on long horizons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from churn_platform import db
from churn_platform.data.labels import END_EVENT, QUALIFYING_EVENT, ChurnDefinition
from churn_platform.model.candidates import Labels, gradient_boosting
from churn_platform.model.encoding import FloatMatrix

PERIOD_DAYS = 30  # the hazard model's period: a 180-day horizon is 6 periods, a 30-day horizon one
FloatArray = npt.NDArray[np.float64]
# Rows (user_id, event_timestamp) -> days from t to the row's deciding event in [t, t + H), NaN when none.
DecidedLookup = Callable[[pd.DataFrame], FloatArray]


@dataclass(frozen=True)
class DecidingEvents:
    """Where a label's deciding events come from, and which way they decide it."""

    decided_after: DecidedLookup
    contractual: bool  # an end event decides a positive label; otherwise a qualifying event a negative one


DECIDED_ROWS_TABLE = "decided_rows"  # db.copy_row_keys: (row_id, user_id, t)
# The first deciding event in [t, t + H) of each row, by the (user_id, event_timestamp) index.
DECIDED_SQL = """
SELECT r.row_id, extract(epoch FROM first.at - r.t) / 86400 AS days
FROM decided_rows r
CROSS JOIN LATERAL (
    SELECT e.event_timestamp AS at FROM raw.events e
    WHERE e.user_id = r.user_id AND e.event_timestamp >= r.t
      AND e.event_timestamp < r.t + make_interval(days => %(horizon)s) AND {deciding}
    ORDER BY e.event_timestamp
    LIMIT 1
) AS first
"""


def deciding_event(definition: ChurnDefinition) -> str:
    """The predicate (over raw.events, bound with `definition.sql_params()`) of the event that decides a label:
    an end event makes a contractual label positive, a qualifying event makes a non-contractual one negative."""
    return END_EVENT if definition.kind == "contractual" else QUALIFYING_EVENT


# Contractual churn's deciding events (end events) are rare: read every one in the rows' span once and match them
# in memory, rather than probing each row's horizon, which reads all of a user's events there to find none.
END_EVENTS_SQL = """
SELECT user_id, event_timestamp FROM raw.events
WHERE event_timestamp >= %(start)s AND event_timestamp < %(end)s AND {deciding}
"""


def deciding_events(url: str, definition: ChurnDefinition, horizon_days: int) -> DecidingEvents:
    """Days from each row's t to its deciding event within the horizon, from `raw.events`."""
    if definition.kind == "contractual":
        return DecidingEvents(_end_events_lookup(url, definition, horizon_days), True)
    statement = DECIDED_SQL.format(deciding=deciding_event(definition))

    def lookup(rows: pd.DataFrame) -> FloatArray:
        days = np.full(len(rows), np.nan)
        if rows.empty:
            return days
        with db.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'")  # H days are H x 24 hours, as the labels' UTC days are
            db.copy_row_keys(cur, DECIDED_ROWS_TABLE, rows)
            cur.execute(statement, {"horizon": horizon_days, **definition.sql_params()})
            found = cur.fetchall()
        if found:
            row_ids, values = zip(*found, strict=True)
            days[np.asarray(row_ids, dtype=np.intp)] = np.asarray(values, dtype=np.float64)
        return days

    return DecidingEvents(lookup, False)


NANOSECONDS = pd.DatetimeTZDtype("ns", "UTC")  # merge_asof needs one resolution on both sides


def _end_events_lookup(url: str, definition: ChurnDefinition, horizon_days: int) -> DecidedLookup:
    statement = END_EVENTS_SQL.format(deciding=deciding_event(definition))

    def lookup(rows: pd.DataFrame) -> FloatArray:
        days = np.full(len(rows), np.nan)
        if rows.empty:
            return days
        t = pd.to_datetime(rows["event_timestamp"], utc=True).astype(NANOSECONDS)
        span = {"start": t.min().to_pydatetime(), "end": (t.max() + pd.Timedelta(days=horizon_days)).to_pydatetime()}
        with db.connect(url) as conn:
            ends = pd.DataFrame(
                conn.execute(statement, {**span, **definition.sql_params()}).fetchall(),
                columns=["user_id", "decided_at"],
            )
        if ends.empty:
            return days
        ends["decided_at"] = pd.to_datetime(ends["decided_at"], utc=True).astype(NANOSECONDS)  # as the rows' t
        keys = pd.DataFrame({"row": np.arange(len(rows)), "user_id": rows["user_id"].astype(str).to_numpy(), "t": t})
        # the first end event at or after each row's t, by user
        matched = pd.merge_asof(
            keys.sort_values("t"), ends.astype({"user_id": str}).sort_values("decided_at"), left_on="t",
            right_on="decided_at", by="user_id", direction="forward",
        )  # fmt: skip
        after = (matched["decided_at"] - matched["t"]).dt.total_seconds().to_numpy() / 86400
        inside = after < horizon_days  # NaN (no end event) compares False
        days[matched["row"].to_numpy()[inside]] = after[inside]
        return days

    return lookup


def hazard_model(seed: int) -> HistGradientBoostingClassifier:
    """The hazard per period: the gradient_boosting candidate, unweighted (its output is a probability)."""
    model: HistGradientBoostingClassifier = gradient_boosting(seed).set_params(class_weight=None)
    return model


@dataclass(frozen=True)
class Periods:
    """The horizon cut into periods of at most PERIOD_DAYS: [starts[k], ends[k])."""

    starts: FloatArray
    ends: FloatArray

    @classmethod
    def of(cls, horizon_days: int) -> Periods:
        starts = np.arange(0, horizon_days, PERIOD_DAYS, dtype=np.float64)
        return cls(starts, np.minimum(starts + PERIOD_DAYS, horizon_days))

    def columns(self, x: FloatMatrix, recency: FloatArray, k: int) -> FloatMatrix:
        """The person-period row of period k: the snapshot's features, then the period's start and length and
        the days since the last event before t plus the period's start."""
        extra = np.column_stack(
            [np.full(len(x), self.starts[k]), np.full(len(x), self.ends[k] - self.starts[k]), recency + self.starts[k]]
        )
        return np.hstack([x, extra])


@dataclass(frozen=True)
class Imputed:
    """Labels for censored snapshots: known where the deciding event was seen by the cut, drawn elsewhere."""

    labels: Labels
    decided: npt.NDArray[np.bool_]  # seen by the cut
    p_positive: FloatArray  # P(label = 1) given what was seen (0 or 1 where decided)
    person_periods: int


def impute_censored(
    x: FloatMatrix,
    recency: FloatArray,
    decided_after: FloatArray,
    observed_days: FloatArray,
    *,
    horizon_days: int,
    contractual: bool,
    censored: npt.NDArray[np.bool_],
    seed: int,
) -> Imputed:
    """Labels for the `censored` rows of `x` (observed for fewer than H days), from a hazard model fitted on the
    person-periods of every row (x: encoded features; recency: days since the last event at t, NaN when none;
    decided_after: days from t to the deciding event, NaN when none within H; observed_days: days from t to the
    cut)."""
    periods = Periods.of(horizon_days)
    features, outcomes = [], []
    for k, (start, end) in enumerate(zip(periods.starts, periods.ends, strict=True)):
        at_risk = (np.isnan(decided_after) | (decided_after >= start)) & (observed_days >= end)
        if at_risk.any():
            features.append(periods.columns(x[at_risk], recency[at_risk], k))
            outcomes.append((decided_after[at_risk] < end).astype(np.int64))  # NaN compares False
    if not outcomes or len(np.unique(np.concatenate(outcomes))) < 2:
        raise ValueError(
            "censored outcomes: no period before the cut holds both a deciding event and its absence;"
            " set CHURN_TRAIN_CENSORED=false"
        )
    hazard = hazard_model(seed).fit(np.vstack(features), np.concatenate(outcomes))

    rows = np.flatnonzero(censored)
    observed = np.clip(observed_days[rows], 0.0, float(horizon_days))
    seen = ~np.isnan(decided_after[rows]) & (decided_after[rows] < observed)
    # log S(d) = sum over periods of (covered share of the period) * log(1 - h_k)
    log_survival_horizon = np.zeros(len(rows))
    log_survival_observed = np.zeros(len(rows))
    for k, (start, end) in enumerate(zip(periods.starts, periods.ends, strict=True)):
        h = hazard.predict_proba(periods.columns(x[rows], recency[rows], k))[:, 1]
        log_keep = np.log1p(-np.clip(h, 0.0, 1.0 - 1e-12))
        log_survival_horizon += log_keep
        log_survival_observed += np.clip((observed - start) / (end - start), 0.0, 1.0) * log_keep
    undecided_to_horizon = np.exp(log_survival_horizon - log_survival_observed)  # P(undecided by H | by a)
    p_decided = 1.0 - undecided_to_horizon
    p_positive = np.where(seen, float(contractual), p_decided if contractual else undecided_to_horizon)
    draws = np.random.default_rng(seed).random(len(rows))
    labels = np.where(seen, int(contractual), (draws < p_positive).astype(np.int64)).astype(np.int64)
    return Imputed(labels, seen, p_positive, sum(len(o) for o in outcomes))
