"""Serving: the request path of the prediction service (models by alias, A/B routing, features, the prediction log)."""
