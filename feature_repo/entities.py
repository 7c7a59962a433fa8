"""Feast entities: the customer."""

from feast import Entity, ValueType

from churn_platform.features.catalog import ENTITY, JOIN_KEY

user = Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.STRING, description="A customer")
