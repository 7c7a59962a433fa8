"""The promotion policy's verdict and message, on a paired comparison."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from churn_platform.model.encoding import FeatureEncoder
from churn_platform.training.promotion import PairedComparison, compare_on_rows
from churn_platform.training.registry import RegisteredVersion

COMPARISON = PairedComparison(
    candidate="5", champion="3", run_id="abc", rows=902, churned=96, window="2025-05-30..2025-06-19",
    snapshot_days=(date(2025, 6, 5), date(2025, 6, 12), date(2025, 6, 19)), candidate_auc=0.70, champion_auc=0.72,
    champion_outcomes_seen_through=date(2025, 5, 29),
)  # fmt: skip


def test_the_candidate_is_refused_only_below_the_champion_minus_the_margin() -> None:
    assert COMPARISON.refuses(margin=0.01)
    assert not COMPARISON.refuses(margin=0.03)
    assert not replace(COMPARISON, candidate_auc=0.75).refuses(margin=0.0)


def test_the_message_shows_both_aucs_on_the_same_rows_and_which_rows() -> None:
    shown = str(COMPARISON)

    assert shown == (
        "ROC AUC 0.7000 (version 5) against 0.7200 (champion version 3) on the same 902 rows: version 5's test"
        " window 2025-05-30..2025-06-19, 3 snapshot days (96 rows churned), logged by run abc"
    )


def test_a_champion_fitted_on_outcomes_inside_the_window_is_flagged_as_optimistic() -> None:
    saw = replace(COMPARISON, champion_outcomes_seen_through=date(2025, 6, 10))

    assert saw.champion_saw_outcomes and not COMPARISON.champion_saw_outcomes
    assert "version 3 was fitted on outcomes through 2025-06-10, inside that window" in str(saw)
    assert not replace(COMPARISON, champion_outcomes_seen_through=None).champion_saw_outcomes


def _version(number: str, tags: dict[str, str]) -> RegisteredVersion:
    return RegisteredVersion("churn", number, f"run{number}", (), {}, tags, datetime(2025, 7, 1, tzinfo=UTC))


def test_a_refitted_champion_is_judged_by_what_its_tested_model_learned() -> None:
    # Given rows of one test window and a model over their one feature
    rng = np.random.default_rng(0)
    days = [pd.Timestamp(d, tz="UTC") for d in ("2025-06-05", "2025-06-12")]
    rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(40)], "event_timestamp": days * 20,
                         "x": rng.normal(size=40)})  # fmt: skip
    rows["churned"] = rows["x"] + rng.normal(scale=0.5, size=40) > 0
    model = Pipeline([("encode", FeatureEncoder(["x"])), ("classify", LogisticRegression())]).fit(rows, rows["churned"])
    candidate = _version("5", {})
    # its registered refit learned outcomes into the window, the tested model it is compared by did not
    refitted = _version("3", {"outcomes_seen_through": "2025-07-10", "tested_outcomes_seen_through": "2025-05-01"})
    older = _version("2", {"outcomes_seen_through": "2025-06-08"})  # registered before refits: its one tag

    paired = compare_on_rows(rows, model, model, candidate=candidate, champion=refitted)
    legacy = compare_on_rows(rows, model, model, candidate=candidate, champion=older)

    assert paired.champion_outcomes_seen_through == date(2025, 5, 1) and not paired.champion_saw_outcomes
    assert legacy.champion_outcomes_seen_through == date(2025, 6, 8) and legacy.champion_saw_outcomes
    assert paired.candidate_auc == paired.champion_auc  # the same model on the same rows
