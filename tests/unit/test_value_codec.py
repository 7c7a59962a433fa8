"""Bulk decoding of Feast's stored value protos gives exactly what Feast's own conversion gives."""

from __future__ import annotations

import math
from typing import Any

from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type
from hypothesis import given
from hypothesis import strategies as st

from churn_platform.features.value_codec import ValueDecoder

stored_doubles = st.one_of(st.none(), st.just(b""), st.floats().map(lambda x: Value(double_val=x).SerializeToString()))
stored_anything = st.one_of(
    stored_doubles,
    st.integers(-(2**63), 2**63 - 1).map(lambda x: Value(int64_val=x).SerializeToString()),
    st.text(max_size=40).map(lambda x: Value(string_val=x).SerializeToString()),
    st.booleans().map(lambda x: Value(bool_val=x).SerializeToString()),
)


def feast(raw: bytes | None) -> Any:
    return None if raw is None else feast_value_type_to_python_type(Value.FromString(raw))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@given(st.lists(stored_doubles, max_size=60))
def test_a_double_column_decodes_as_feast_does(raws: list[bytes | None]) -> None:
    decoded = ValueDecoder().column(raws, doubles=True)
    assert all(same(feast(raw), value) for raw, value in zip(raws, decoded, strict=True))


@given(st.lists(stored_anything, max_size=60), st.booleans())
def test_any_column_decodes_as_feast_does_twice(raws: list[bytes | None], doubles: bool) -> None:
    decoder = ValueDecoder()
    first, cached = decoder.column(raws, doubles=doubles), decoder.column(raws, doubles=doubles)
    for raw, a, b in zip(raws, first, cached, strict=True):
        assert same(feast(raw), a) and same(a, b)
