"""The training set from Feast equals a brute-force as-of join in pandas, value for value."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from tests.integration.feature_worlds import connections
from tests.integration.test_snapshots import START, _expected, _load, events_strategy

from churn_platform import stack
from churn_platform.data.labels import ChurnDefinition
from churn_platform.features import feast_repo, snapshots, training_sets
from churn_platform.features.catalog import catalog_from_settings
from churn_platform.features.definitions import definitions_hash
from churn_platform.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
HORIZON = 3
# The catalog the Feast repository is configured with for this test (the repo reads settings from the environment).
ENVIRONMENT = {
    "CHURN_FEATURE_EVENT_TYPES": "login,purchase",
    "CHURN_FEATURE_VALUED_EVENT_TYPES": "purchase",
    "CHURN_FEATURE_WINDOWS_DAYS": "3,7",
    "CHURN_FEATURE_CATALOG": "churn_test",
    "CHURN_LABEL_HORIZON_DAYS": str(HORIZON),
    "CHURN_FEATURE_REPO": str(REPO / "feature_repo"),
}


@pytest.fixture(scope="module")
def feast_settings(make_database: Callable[[], str], stack_settings: Settings) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        patch.setenv("CHURN_DATABASE_URL", make_database())
        patch.setenv("CHURN_REDIS_URL", stack.redis_url(stack_settings))
        get_settings.cache_clear()
        current = get_settings()
        feast_repo.apply(current, connections(current))
        yield current
    get_settings.cache_clear()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy)
def test_training_set_equals_a_brute_force_as_of_join(feast_settings: Settings, events: list) -> None:  # type: ignore[type-arg]
    # Given any event history, its snapshots and labels
    url = feast_settings.database_url or ""
    catalog = catalog_from_settings(feast_settings)
    definition = ChurnDefinition("contractual", ("cancel",))
    _load(url, events)  # (drops the catalog's tables and recorded definitions)
    until = (START + timedelta(days=25)).date()
    snapshots.compute_snapshots(url, catalog, definition, until)
    snapshots.compute_labels(url, catalog, definition, HORIZON)

    # When the training set is read through Feast
    result = training_sets.training_set(feast_settings, connections(feast_settings))

    # Then every labelled snapshot is there with the brute-force features and label, value for value
    expected = _expected(events, until)
    data_end = max(START + timedelta(seconds=offset) for _, _, offset, _, _ in events)
    cancels = {u: [START + timedelta(seconds=o) for uu, k, o, _, _ in events if uu == u and k == "cancel"]
               for u, *_ in events}  # fmt: skip
    labelled = {key: row for key, row in expected.items() if key[1] + timedelta(days=HORIZON) <= data_end}
    frame = result.frame
    assert len(frame) == len(labelled)
    for record in frame.to_dict("records"):
        at = pd.Timestamp(record["event_timestamp"]).to_pydatetime()
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        key = (record["user_id"], at.astimezone(UTC))
        ahead = [at for at in cancels[key[0]] if key[1] <= at < key[1] + timedelta(days=HORIZON)]
        assert record["churned"] == bool(ahead), key
        for name in catalog.names:
            assert name in record, f"feature {name} is missing from the training set"
        checked = [name for name in labelled[key] if name in catalog.names]
        assert len(checked) >= 12, checked
        for name in checked:
            value = labelled[key][name]
            got = record[name]
            got = None if got is None or (isinstance(got, float) and pd.isna(got)) else got
            if isinstance(value, set):
                assert any(got == pytest.approx(v) if v is not None else got is None for v in value), (key, name)
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)
            else:
                assert got == value, (key, name)
    # And no feature row was taken from after its label's time (Feast joined the snapshot at exactly t)
    assert result.feature_service == "churn_test"
    assert len(result.definitions_hash) == 64


def test_training_set_parquet_records_what_it_was_built_from(feast_settings: Settings, tmp_path: Path) -> None:
    url = feast_settings.database_url or ""
    events = [("a", "login", d * 86_400 + 60, None, UTC) for d in range(10)]
    _load(url, events)
    catalog = catalog_from_settings(feast_settings)
    definition = ChurnDefinition("contractual", ("cancel",))
    snapshots.compute_snapshots(url, catalog, definition, datetime(2025, 3, 11).date())
    snapshots.compute_labels(url, catalog, definition, HORIZON)
    result = training_sets.training_set(feast_settings, connections(feast_settings))
    result.write_parquet(tmp_path / "train.parquet")
    metadata = pq.read_schema(tmp_path / "train.parquet").metadata
    assert metadata[b"churn.feature_service"] == b"churn_test"
    assert metadata[b"churn.definitions_hash"] == definitions_hash(catalog, definition).encode()
    assert pq.read_table(tmp_path / "train.parquet").num_rows == len(result.frame) > 0
