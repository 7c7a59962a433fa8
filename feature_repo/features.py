"""Feast feature views: the catalog's features, with types from the catalog."""

from datetime import timedelta

from data_sources import CATALOG, user_snapshots
from entities import user
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

FEAST_TYPES = {"int": Int64, "float": Float64, "text": String}

user_features = FeatureView(
    name=f"{CATALOG.name}_user_features",
    entities=[user],
    # Snapshots are daily: a value older than two days is stale (checked by our online reads too).
    ttl=timedelta(days=2),
    schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.meaning) for f in CATALOG.features],
    source=user_snapshots,
    online=True,
)
