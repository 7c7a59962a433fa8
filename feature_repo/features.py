"""Feast feature views: the catalog's features, with types from the catalog."""

from feast import FeatureView, Field
from feast.types import Float64, Int64, String

from churn_platform.features.catalog import SNAPSHOT_TTL
from data_sources import CATALOG, user_snapshots
from entities import user

FEAST_TYPES = {"int": Int64, "float": Float64, "text": String}

user_features = FeatureView(
    name=CATALOG.feature_view_name,
    entities=[user],
    ttl=SNAPSHOT_TTL,  # daily snapshots: older than this is stale (checked by our online reads too)
    schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.meaning) for f in CATALOG.features],
    source=user_snapshots,
    online=True,
)
