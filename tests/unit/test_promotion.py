"""The promotion policy's verdict and message, on a paired comparison."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from churn_platform.training.promotion import PairedComparison

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
