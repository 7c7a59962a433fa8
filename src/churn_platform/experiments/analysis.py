"""The analysis of an A/B experiment: each arm's predictions joined to their outcomes, the tests of
`experiments.statistics` over them, and a verdict; every run is kept in `serving.experiment_analyses`, so the
verdict's history (and the sequential test's running p-value) survives.

A prediction is joined to its outcome through the snapshot it was scored on, as monitoring does; only predictions
whose horizon has passed have one. Per user (the randomised unit): the mean log loss and Brier score of their
predictions with known outcomes, and whether they churned within the horizon of their first such prediction.

With shadow scoring on, each logged prediction also carries the other arm's score of the same features, so both
models are compared on the same users (the paired comparison: each user's loss difference, DeLong's test on their
first prediction with an outcome). The paired sequential test then decides the verdict: it needs far fewer users
than the split one, and the split's tests stay in the report for what only a split can show (a change in what users
do, the churn rates).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from psycopg import sql

from churn_platform import db
from churn_platform.experiments import statistics as ab
from churn_platform.experiments.records import experiment_summary
from churn_platform.features.catalog import Catalog
from churn_platform.features.snapshots import labels_table_name
from churn_platform.settings import Settings

PROBABILITY_CLIP = 1e-15  # log loss of a probability of exactly 0 or 1
BOOTSTRAP_SEED = 0  # the same outcomes give the same intervals
ARMS = ("control", "variant")

# Each user's newest score on each snapshot, per arm (preferring one with a shadow score: the same model scored the
# same features), with the snapshot's label where its horizon has passed.
ROWS_SQL = """
SELECT p.arm, p.user_id, p.snapshot_at, p.churn_probability, p.shadow_probability, l.churned
FROM (
    SELECT DISTINCT ON (arm, user_id, snapshot_at) arm, user_id, snapshot_at, churn_probability, shadow_probability
    FROM serving.prediction_log
    WHERE experiment = %(name)s AND arm IN ('control', 'variant') AND churn_probability IS NOT NULL
    ORDER BY arm, user_id, snapshot_at, shadow_probability IS NULL, predicted_at DESC  -- one with a shadow first
) p
JOIN {labels} l ON l.user_id = p.user_id AND l.event_timestamp = p.snapshot_at AND l.horizon_days = %(horizon)s
"""
# Each sequential test's running minimum: its always-valid p-value so far
PREVIOUS_P_SQL = """
SELECT min(sequential_p), min(paired_sequential_p) FROM serving.experiment_analyses WHERE name = %(name)s
"""
INSERT_SQL = """
INSERT INTO serving.experiment_analyses (
    name, analysed_at, users_control, users_variant, outcome_users_control, outcome_users_variant,
    log_loss_control, log_loss_variant, srm_p, welch_p, sequential_p, probability_variant_better, paired_users,
    paired_sequential_p, delong_p, decisive_test, winner, reason, details
) VALUES (
    %(name)s, %(analysed_at)s, %(users_control)s, %(users_variant)s, %(outcome_users_control)s,
    %(outcome_users_variant)s, %(log_loss_control)s, %(log_loss_variant)s, %(srm_p)s, %(welch_p)s, %(sequential_p)s,
    %(probability_variant_better)s, %(paired_users)s, %(paired_sequential_p)s, %(delong_p)s, %(decisive_test)s,
    %(winner)s, %(reason)s, %(details)s
) RETURNING id
"""
HISTORY_SQL = """
SELECT analysed_at, outcome_users_control, outcome_users_variant, log_loss_control, log_loss_variant, sequential_p,
       paired_users, paired_sequential_p, decisive_test, winner, reason
FROM serving.experiment_analyses WHERE name = %(name)s ORDER BY analysed_at, id
"""


@dataclass(frozen=True)
class Thresholds:
    alpha: float  # the sequential test's level
    srm_alpha: float  # a sample-ratio mismatch below this p-value stops every verdict
    tau: float  # the mSPRT mixture's standard deviation, in per-user log loss
    min_outcome_users: int  # per arm, users with a known outcome before a winner can be declared
    bootstrap_resamples: int
    seed: int = BOOTSTRAP_SEED

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(settings.ab_alpha, settings.ab_srm_alpha, settings.ab_msprt_tau, settings.ab_min_outcome_users,
                   settings.ab_bootstrap_resamples)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmFigures:
    users: int  # logged in the arm
    predictions: int
    outcomes: int  # predictions with a known outcome
    outcome_users: int  # users with at least one
    log_loss: Interval | None  # the mean per-user log loss, with its 95% interval
    brier: Interval | None
    roc_auc: Interval | None  # over the predictions, the interval from resampling users
    churn_rate: float | None  # users who churned within the horizon of their first prediction with an outcome
    model_versions: list[str]  # the versions that answered the arm's users


@dataclass(frozen=True)
class PairedFigures:
    """Both models on the same users (shadow scores): users scored by both with a known outcome."""

    users: int
    log_loss_control: Interval | None  # the control's model, mean per-user log loss over every such user
    log_loss_variant: Interval | None
    loss_difference: ab.Difference | None  # paired t-test, variant - control
    delong: ab.DeLong | None  # each user's first prediction with an outcome, scored by both models
    sequential: ab.Sequential | None  # the paired mSPRT


@dataclass(frozen=True)
class Analysis:
    name: str
    analysed_at: datetime
    control: str
    variant: str
    variant_share: float
    arms: dict[str, ArmFigures]
    sample_ratio: ab.SampleRatio
    loss_difference: ab.Difference | None  # Welch: variant - control per-user log loss
    churn_rate_difference: ab.Difference | None  # two-proportion z-test
    auc_difference: ab.Difference | None  # bootstrap over users
    probability_variant_better: float | None
    sequential: ab.Sequential | None
    paired: PairedFigures | None  # None without shadow scores
    winner: Literal["control", "variant"] | None
    reason: str
    analysis_id: int | None = None

    @property
    def decisive_test(self) -> Literal["paired", "split"]:
        return decisive(self.sequential, self.paired)[0]


@dataclass(frozen=True)
class _Arm:
    rows: pd.DataFrame
    per_user: pd.DataFrame  # user_id, log_loss, brier, churned (first outcome)
    outcomes: ab.Outcomes


def _arm(rows: pd.DataFrame) -> _Arm:
    p = rows["churn_probability"].to_numpy(dtype="float64").clip(PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    y = rows["churned"].to_numpy(dtype="int64")
    frame = rows.assign(log_loss=-(y * np.log(p) + (1 - y) * np.log1p(-p)), brier=(p - y) ** 2)
    ordered = frame.sort_values(["user_id", "snapshot_at"])
    per_user = ordered.groupby("user_id", sort=True).agg(
        log_loss=("log_loss", "mean"), brier=("brier", "mean"), churned=("churned", "first")
    )
    return _Arm(frame, per_user.reset_index(), ab.Outcomes.of(frame["user_id"].to_numpy(), y, p))


def _mean_interval(values: np.ndarray) -> Interval | None:
    if values.size < 2:
        return None
    mean, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))
    return Interval(mean, mean - 1.959964 * se, mean + 1.959964 * se)


def analyse(
    url: str, catalog: Catalog, horizon_days: int, name: str, thresholds: Thresholds, *, store: bool = True
) -> Analysis:
    """Analyse the named experiment over every outcome known now; stored (with its running sequential p-value)
    unless `store` is False."""
    summary = experiment_summary(url, name)  # raises ExperimentError for an unknown name
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(ROWS_SQL).format(labels=labels_table_name(catalog)),
                    {"name": name, "horizon": horizon_days})  # fmt: skip
        columns = ["arm", "user_id", "snapshot_at", "churn_probability", "shadow_probability", "churned"]
        rows = pd.DataFrame(cur.fetchall(), columns=columns)
        previous = cur.execute(PREVIOUS_P_SQL, {"name": name}).fetchone()
    previous_p, previous_paired_p = (1.0 if p is None else float(p) for p in (previous or (None, None)))
    rows = rows.astype({"churn_probability": "float64", "shadow_probability": "float64"}).assign(
        churned=lambda f: f["churned"].astype("int64")
    )
    arms = {arm: _arm(rows[rows["arm"] == arm].reset_index(drop=True)) for arm in ARMS}

    figures = {}
    for arm in ARMS:
        found, logged = arms[arm], summary["arms"][arm]
        auc = None
        if found.outcomes.users >= 2 and len(np.unique(found.outcomes.labels)) == 2:
            auc = Interval(*ab.auc_interval(found.outcomes, seed=thresholds.seed,
                                            resamples=thresholds.bootstrap_resamples))  # fmt: skip
        figures[arm] = ArmFigures(
            users=logged["users"], predictions=logged["predictions"], outcomes=len(found.rows),
            outcome_users=len(found.per_user), log_loss=_mean_interval(found.per_user["log_loss"].to_numpy()),
            brier=_mean_interval(found.per_user["brier"].to_numpy()), roc_auc=auc,
            churn_rate=float(found.per_user["churned"].mean()) if len(found.per_user) else None,
            model_versions=logged["model_versions"],
        )  # fmt: skip

    share = float(summary["variant_share"])
    srm = ab.sample_ratio_mismatch([figures[a].users for a in ARMS], [1 - share, share], thresholds.srm_alpha)
    control, variant = arms["control"], arms["variant"]
    enough = min(len(control.per_user), len(variant.per_user)) >= 2
    loss_c = control.per_user["log_loss"].to_numpy()
    loss_v = variant.per_user["log_loss"].to_numpy()
    welch = ab.welch(loss_c, loss_v) if enough else None
    churn = (
        ab.two_proportions(int(control.per_user["churned"].sum()), len(control.per_user),
                           int(variant.per_user["churned"].sum()), len(variant.per_user))
        if enough else None
    )  # fmt: skip
    auc_difference = (
        ab.bootstrap_auc_difference(control.outcomes, variant.outcomes, seed=thresholds.seed,
                                    resamples=thresholds.bootstrap_resamples)
        if figures["control"].roc_auc is not None and figures["variant"].roc_auc is not None
        else None
    )  # fmt: skip
    better = ab.probability_variant_better(loss_c, loss_v) if enough else None
    sequential = ab.msprt(loss_c, loss_v, thresholds.tau, thresholds.alpha, previous_p) if enough else None
    paired = _paired(rows, thresholds, previous_paired_p)
    test, deciding = decisive(sequential, paired)
    users_now = paired.users if test == "paired" and paired else sum(f.outcome_users for f in figures.values())
    winner, reason = _verdict(figures, srm, deciding, thresholds, test, users_now)
    analysis = Analysis(
        name, datetime.now(UTC), summary["control"], summary["variant"], share, figures, srm, welch, churn,
        auc_difference, better, sequential, paired, winner, reason,
    )  # fmt: skip
    if not store:
        return analysis
    return _store(url, analysis)


def decisive(
    split: ab.Sequential | None, paired: PairedFigures | None
) -> tuple[Literal["paired", "split"], ab.Sequential | None]:
    """The sequential test the verdict rests on: the paired one once both models scored the same users, else the
    split one (never whichever rejects first)."""
    if paired is not None and paired.sequential is not None:
        return "paired", paired.sequential
    return "split", split


def _paired(rows: pd.DataFrame, thresholds: Thresholds, previous_p: float) -> PairedFigures | None:
    """Both models on the users the shadow scores cover: per-user losses of each model, their paired difference,
    DeLong on each user's first prediction with an outcome, and the paired sequential test. None without shadows."""
    shadowed = rows[rows["shadow_probability"].notna()]
    if shadowed.empty:
        return None
    is_control = (shadowed["arm"] == "control").to_numpy()
    served = shadowed["churn_probability"].to_numpy(dtype="float64")
    shadow = shadowed["shadow_probability"].to_numpy(dtype="float64")
    y = shadowed["churned"].to_numpy(dtype="int64")
    scores = {"control": np.where(is_control, served, shadow), "variant": np.where(is_control, shadow, served)}
    frame = shadowed[["user_id", "snapshot_at"]].assign(churned=y)
    for model, p in scores.items():
        clipped = p.clip(PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
        frame[f"loss_{model}"] = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
        frame[f"p_{model}"] = p
    per_user = frame.groupby("user_id", sort=True).agg(loss_control=("loss_control", "mean"),
                                                       loss_variant=("loss_variant", "mean"))  # fmt: skip
    first = frame.sort_values(["user_id", "snapshot_at"]).groupby("user_id", sort=True).first()
    users = len(per_user)
    differences = (per_user["loss_variant"] - per_user["loss_control"]).to_numpy()
    enough = users >= 2
    both_classes = first["churned"].nunique() == 2 and first["churned"].value_counts().min() >= 2
    return PairedFigures(
        users=users,
        log_loss_control=_mean_interval(per_user["loss_control"].to_numpy()),
        log_loss_variant=_mean_interval(per_user["loss_variant"].to_numpy()),
        loss_difference=ab.paired(differences) if enough else None,
        delong=ab.delong(first["churned"].to_numpy(), first["p_control"].to_numpy(), first["p_variant"].to_numpy())
        if both_classes else None,
        sequential=ab.paired_msprt(differences, thresholds.tau, thresholds.alpha, previous_p) if enough else None,
    )  # fmt: skip


def _verdict(
    figures: dict[str, ArmFigures], srm: ab.SampleRatio, sequential: ab.Sequential | None, thresholds: Thresholds,
    test: Literal["paired", "split"], users_now: int,
) -> tuple[Literal["control", "variant"] | None, str]:  # fmt: skip
    """A winner only when the split is healthy, both arms have the minimum sample and the decisive sequential test
    (`test`: paired when both models scored the same users, over `users_now` users) rejects; otherwise what is
    missing."""
    if srm.mismatch:
        return None, (
            f"sample-ratio mismatch: {srm.users[0]:,} control and {srm.users[1]:,} variant users against a"
            f" {srm.expected_shares[1]:.0%} variant share (chi-square p = {srm.p_value:.2g} <"
            f" {thresholds.srm_alpha:g}): the split is broken, so no figure here can be trusted; find out why"
            " before reading on"
        )
    short = {arm: thresholds.min_outcome_users - f.outcome_users for arm, f in figures.items()}
    if any(missing > 0 for missing in short.values()):
        needed = ", ".join(f"{missing:,} more in {arm}" for arm, missing in short.items() if missing > 0)
        return None, (
            f"not enough outcomes yet: {thresholds.min_outcome_users:,} users with a known outcome per arm are"
            f" needed before a verdict ({needed})"
        )
    assert sequential is not None
    described = (
        f"the paired sequential test (both models on the same {users_now:,} users)"
        if test == "paired"
        else "the sequential test"
    )
    if sequential.rejects:
        winner: Literal["control", "variant"] = "variant" if sequential.difference < 0 else "control"
        return winner, (
            f"{winner} wins: {described} rejects equal loss at {thresholds.alpha:g} (always-valid p ="
            f" {sequential.p_value:.2g}); the variant's mean log loss per user is {sequential.difference:+.4f} against"
            " the control's"
        )
    users_needed = sequential.users_needed(thresholds.alpha, thresholds.tau, users_now)
    more = (
        "no difference to find at the observed effect"
        if users_needed is None
        else f"about {max(users_needed - users_now, 0):,} more users with outcomes needed at the observed effect"
        f" ({sequential.difference:+.4f} log loss)"
    )
    return None, (
        f"no winner yet: {described} gives an always-valid p = {sequential.p_value:.2g} (needs <"
        f" {thresholds.alpha:g}); {more}"
    )


def _store(url: str, analysis: Analysis) -> Analysis:
    c, v = analysis.arms["control"], analysis.arms["variant"]
    paired_sequential = None if analysis.paired is None else analysis.paired.sequential
    delong = None if analysis.paired is None else analysis.paired.delong
    row: dict[str, Any] = {
        "name": analysis.name, "analysed_at": analysis.analysed_at, "users_control": c.users,
        "users_variant": v.users, "outcome_users_control": c.outcome_users, "outcome_users_variant": v.outcome_users,
        "log_loss_control": None if c.log_loss is None else c.log_loss.estimate,
        "log_loss_variant": None if v.log_loss is None else v.log_loss.estimate,
        "srm_p": analysis.sample_ratio.p_value,
        "welch_p": None if analysis.loss_difference is None else analysis.loss_difference.p_value,
        "sequential_p": None if analysis.sequential is None else analysis.sequential.p_value,
        "probability_variant_better": analysis.probability_variant_better,
        "paired_users": None if analysis.paired is None else analysis.paired.users,
        "paired_sequential_p": None if paired_sequential is None else paired_sequential.p_value,
        "delong_p": None if delong is None else delong.p_value,
        "decisive_test": analysis.decisive_test, "winner": analysis.winner,
        "reason": analysis.reason, "details": json.dumps(as_json(analysis)),
    }  # fmt: skip
    with db.connect(url) as conn, conn.transaction():
        found = conn.execute(INSERT_SQL, row).fetchone()
    assert found is not None
    return replace(analysis, analysis_id=int(found[0]))


def as_json(analysis: Analysis) -> dict[str, Any]:
    """The analysis as JSON-ready values (NaN and infinity as None)."""

    def clean(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    return clean(asdict(analysis))  # type: ignore[no-any-return]


ARM_COLUMNS = ("arm", "users", "predictions", "with outcomes (users)", "log loss / user", "Brier / user", "ROC AUC",
               "churn rate")  # fmt: skip


def difference_text(estimate: float, low: float, high: float) -> str:
    return f"{estimate:+.4f} [{low:+.4f}, {high:+.4f}]"


def interval_text(value: Interval | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value.estimate:.{digits}f} [{value.low:.{digits}f}, {value.high:.{digits}f}]"


def arm_cells(arm: str, f: ArmFigures) -> list[str]:
    """One arm's row under ARM_COLUMNS (the CLI's table and the Markdown summary)."""
    return [
        arm, f"{f.users:,}", f"{f.predictions:,}", f"{f.outcomes:,} ({f.outcome_users:,})", interval_text(f.log_loss),
        interval_text(f.brier), interval_text(f.roc_auc, 3), "-" if f.churn_rate is None else f"{f.churn_rate:.3f}",
    ]  # fmt: skip


def comparison_rows(analysis: Analysis) -> list[tuple[str, str, str, str]]:
    """The tests, variant - control: (test, difference [95%], p-value, how to read it)."""
    srm = analysis.sample_ratio
    rows = [("sample ratio (chi-square)", f"{srm.users[0]:,} / {srm.users[1]:,} users", f"{srm.p_value:.3g}",
             "MISMATCH" if srm.mismatch else "split as configured")]  # fmt: skip
    for label, found, reads in (
        ("log loss per user (Welch)", analysis.loss_difference, "lower is better"),
        ("churn rate (two-proportion z)", analysis.churn_rate_difference, "matters when the arm changes what users do"),
        ("ROC AUC (bootstrap over users)", analysis.auc_difference, "higher is better"),
    ):
        if found is not None:
            rows.append((label, difference_text(found.estimate, found.low, found.high), f"{found.p_value:.3g}",
                         reads))  # fmt: skip
    decisive = analysis.decisive_test
    if analysis.sequential is not None:
        rows.append(("sequential (mSPRT, always valid)", f"{analysis.sequential.difference:+.4f}",
                     f"{analysis.sequential.p_value:.3g}",
                     "readable every day" + ("; decides" if decisive == "split" else "")))  # fmt: skip
    paired = analysis.paired
    if paired is not None:
        if paired.loss_difference is not None:
            found = paired.loss_difference
            rows.append((f"log loss per user, paired ({paired.users:,} users, both models)",
                         difference_text(found.estimate, found.low, found.high), f"{found.p_value:.3g}",
                         "the same users: lower is better"))  # fmt: skip
        if paired.delong is not None:
            d = paired.delong
            half = 1.959964 * math.sqrt(max(d.variance, 0.0))  # rounding can leave it just below 0
            difference = d.auc_variant - d.auc_control
            interval = difference_text(difference, difference - half, difference + half)
            rows.append(("ROC AUC, paired (DeLong)", interval, f"{d.p_value:.3g}", "the same users: higher is better"))
        if paired.sequential is not None:
            rows.append(("sequential, paired (mSPRT, always valid)", f"{paired.sequential.difference:+.4f}",
                         f"{paired.sequential.p_value:.3g}", "readable every day; decides"))  # fmt: skip
    return rows


def summary_markdown(analysis: Analysis) -> str:
    """The analysis as Markdown (for Prefect artifacts): per arm, the tests, the verdict."""
    lines = [
        f"# A/B experiment {analysis.name}: {analysis.variant} ({analysis.variant_share:.0%}) against"
        f" {analysis.control}",
        "",
        f"**Verdict:** {analysis.reason}.",
        "",
        "| " + " | ".join(ARM_COLUMNS) + " |",
        "|---" * len(ARM_COLUMNS) + "|",
        *("| " + " | ".join(arm_cells(arm, f)) + " |" for arm, f in analysis.arms.items()),
        "",
        "| test (variant - control) | difference [95%] | p-value |",
        "|---|---|---|",
        *(f"| {label} | {difference} | {p_value} |" for label, difference, p_value, _ in comparison_rows(analysis)),
    ]
    if analysis.probability_variant_better is not None:
        lines.append(f"\nP(the variant's expected loss is lower) = {analysis.probability_variant_better:.1%}.")
    return "\n".join(lines)


def history(url: str, name: str) -> list[dict[str, Any]]:
    """Every stored analysis of the experiment, oldest first: the verdict's history."""
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(HISTORY_SQL, {"name": name})
        columns = [d.name for d in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
