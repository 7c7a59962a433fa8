"""Feast feature services: versioned, so a model version names exactly the features it was trained on."""

from feast import FeatureService

from features import CATALOG, user_features

churn_service = FeatureService(name=CATALOG.feature_service_name, features=[user_features])
