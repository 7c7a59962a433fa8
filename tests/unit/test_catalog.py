"""The feature catalog: names, configuration-driven features, and its generated documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from churn_platform.features.catalog import (
    Catalog,
    EventCount,
    EventValueSum,
    catalog_from_settings,
    catalog_markdown,
    default_catalog,
)
from churn_platform.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_a_business_with_only_purchases_gets_purchase_features_without_code_changes() -> None:
    catalog = default_catalog(["purchase"], ["purchase"])
    assert catalog.event_types == ["purchase"]
    assert {"purchase_count_7d", "purchase_count_30d", "purchase_value_sum_30d"} <= set(catalog.names)
    assert {"days_since_last_event", "tenure_days", "active_days_30d", "activity_trend_7d_30d"} <= set(catalog.names)
    assert catalog.longest_window_days == 30


def test_event_types_and_windows_come_from_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_FEATURE_EVENT_TYPES", "Page View, purchase")
    monkeypatch.setenv("CHURN_FEATURE_VALUED_EVENT_TYPES", "purchase")
    monkeypatch.setenv("CHURN_FEATURE_WINDOWS_DAYS", "14,90")
    catalog = catalog_from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert EventCount("Page View", 14) in catalog.features
    assert "page_view_count_90d" in catalog.names
    assert EventValueSum("purchase", 90) in catalog.features
    assert catalog.longest_window_days == 90


def test_feature_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="repeat"):
        Catalog("bad", (EventCount("login", 7), EventCount("login", 7)))


def test_the_committed_feature_docs_match_the_default_catalog() -> None:
    generated = catalog_markdown(catalog_from_settings(Settings(_env_file=None)))  # type: ignore[call-arg]
    assert (REPO / "docs" / "features.md").read_text() == generated, "run `churn features docs`"
