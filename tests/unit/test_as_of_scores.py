"""Scores as of a day, without servers: the summary's figures, and the file written whole or not at all."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.serving.as_of_scores import COLUMNS, ScoredUsers, ScoringError, summary_rows, write_scores

DAY = date(2025, 4, 1)


def scored(p: list[float], churned: list[bool | None], bands: list[str] | None = None) -> ScoredUsers:
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(len(p))],
            "as_of": DAY,
            "p_churn": p,
            "risk_band": bands or ["low"] * len(p),
            "model_name": "churn",
            "model_version": "3",
            "churned": pd.array(churned, dtype="boolean"),
            "horizon_days": 30,
        }
    )
    return ScoredUsers(frame[COLUMNS], DAY, "churn", "3", "champion", "churn_v1", 30)


def test_the_summary_measures_the_scores_against_the_labels_that_are_known() -> None:
    # Given six users, four of them with a known outcome
    users = scored(
        [0.05, 0.2, 0.4, 0.9, 0.6, 0.01],
        [False, True, False, True, None, None],
        ["low", "medium", "high", "high", "high", "low"],
    )

    summary = users.summary()

    assert (summary.users, summary.labelled) == (6, 4)
    assert summary.mean_p == pytest.approx(sum([0.05, 0.2, 0.4, 0.9, 0.6, 0.01]) / 6)
    assert summary.band_shares == pytest.approx({"low": 2 / 6, "medium": 1 / 6, "high": 3 / 6})
    assert summary.churn_rate == pytest.approx(0.5)
    assert summary.roc_auc == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.05, 0.2, 0.4, 0.9]))
    shown = dict(summary_rows(users))
    assert shown["labels known (30 days)"] == "4 of 6" and shown["realised churn rate"] == "50.0%"


def test_an_auc_on_outcomes_the_version_learned_is_shown_as_in_sample() -> None:
    users = scored([0.05, 0.2, 0.4, 0.9], [False, True, False, True])
    learned_later = dataclasses.replace(users, outcomes_seen_through=date(2025, 4, 20))
    learned_before = dataclasses.replace(users, outcomes_seen_through=DAY)  # labels [t, t + H) end before DAY

    assert learned_later.in_sample and not learned_before.in_sample and not users.in_sample
    note = dict(summary_rows(learned_later))["in-sample"]
    assert "learned outcomes up to 2025-04-20, after 2025-04-01" in note
    assert "churn train --end 2025-03-03" in note  # 2025-04-01 - 30 days + 1: labels known by the day
    assert "in-sample" not in dict(summary_rows(learned_before))


def test_without_both_outcomes_there_is_no_auc() -> None:
    assert scored([0.1, 0.2], [False, False]).summary().roc_auc is None
    unknown = scored([0.1, 0.2], [None, None]).summary()
    assert (unknown.roc_auc, unknown.churn_rate, unknown.labelled) == (None, None, 0)
    assert dict(summary_rows(scored([0.1], [None])))["ROC AUC vs realised"] == "-"


def test_scores_are_written_as_parquet_or_csv_by_extension(tmp_path: Path) -> None:
    users = scored([0.1, 0.7], [True, None])

    parquet = write_scores(users, tmp_path / "out" / "scores.parquet")
    csv = write_scores(users, tmp_path / "scores.csv")

    table = pq.read_table(parquet)
    assert table.schema.metadata[b"churn.model"] == b"churn/3"
    assert table.schema.metadata[b"churn.as_of"] == b"2025-04-01"
    assert table.to_pandas()["churned"].tolist()[0] is True and pd.isna(table.to_pandas()["churned"][1])
    assert pd.read_csv(csv)["p_churn"].tolist() == [0.1, 0.7]
    with pytest.raises(ScoringError, match=r"\.parquet or \.csv, not \.xlsx"):
        write_scores(users, tmp_path / "scores.xlsx")


def test_a_failed_write_leaves_the_previous_file_whole_and_no_partial_file(tmp_path: Path) -> None:
    # Given last week's scores, and scores that cannot be written as Parquet (a column of mixed types)
    path = tmp_path / "scores.parquet"
    write_scores(scored([0.1], [None]), path)
    before = path.read_bytes()
    broken = scored([0.1, 0.2], [None, None])
    broken.frame["user_id"] = pd.Series(["u1", 2], dtype=object)

    with pytest.raises(Exception, match="user_id"):
        write_scores(broken, path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]
