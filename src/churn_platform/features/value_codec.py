"""Decoding Feast's stored value protos in bulk, for the online read path.

Feast stores each feature value in Redis as a serialized `feast.types.Value` proto. Decoding one with the
protobuf runtime and Feast's `feast_value_type_to_python_type` costs microseconds; a read of 100 users touches
thousands. Doubles, nearly all distinct, are decoded a column at a time with numpy from their fixed wire layout
(tag 0x29, then 8 little-endian bytes); every other value goes through Feast's own conversion once per distinct
encoding and is cached. Anything unexpected falls back to Feast's conversion, so the result is always Feast's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

DOUBLE_RECORD = np.dtype([("tag", "u1"), ("value", "<f8")])
CACHE_LIMIT = 1_000_000  # distinct encodings kept: bounded memory for a long-lived reader


class ValueDecoder:
    """Stored value bytes -> Python values, as `get_online_features` would return them (None for a null)."""

    def __init__(self) -> None:
        from churn_platform.features.feast_redis import double_tag

        self._cache: dict[bytes, Any] = {b"": None}  # an empty Value is Feast's null
        self._floats: dict[bytes | None, float] = {None: np.nan, b"": np.nan}  # for the model's matrix
        tag = double_tag()  # field 5 (double_val), wire type 1: checked against Feast's proto at start
        if len(tag) != 1:
            raise RuntimeError(f"Feast's double value layout changed: tag {tag!r}")
        self._double_tag = tag[0]

    def one(self, raw: bytes) -> Any:
        try:
            return self._cache[raw]
        except KeyError:
            from feast.protos.feast.types.Value_pb2 import Value
            from feast.type_map import feast_value_type_to_python_type

            value = feast_value_type_to_python_type(Value.FromString(raw))
            if len(self._cache) < CACHE_LIMIT and not isinstance(value, list | dict | set):  # shared: immutable only
                self._cache[raw] = value
            return value

    def column(self, raws: Sequence[bytes | None], *, doubles: bool) -> list[Any]:
        """One feature's values across users; None where the user has no value (the caller knows which)."""
        if doubles:
            decoded = self._doubles(raws)
            if decoded is not None:
                return decoded
        one = self.one
        return [None if raw is None else one(raw) for raw in raws]

    def codes(
        self, raws: Sequence[bytes | None], positions: Mapping[str, int], cache: dict[bytes | None, int]
    ) -> npt.NDArray[np.int64]:
        """Stored values as their positions in `positions`, which is keyed by the value as text (`str(value)`, as
        the encoder keys its categories); -1 for a value not there. `cache` holds each distinct encoding's
        position for this `positions`: the caller keeps it as long as `positions` lives."""
        return _through_cache(raws, cache, lambda raw: positions.get(str(self._value(raw)), -1), np.int64)

    def _value(self, raw: bytes | None) -> Any:
        return None if raw is None else self.one(raw)

    def double_floats(self, raws: Sequence[bytes | None]) -> npt.NDArray[np.float64] | None:
        """Stored doubles as a float64 array, NaN where a value is missing or null; None if any is not a double."""
        present = [raw for raw in raws if raw]
        values = self._unpack_doubles(present)
        if values is None or len(present) == len(raws):
            return values
        out = np.full(len(raws), np.nan)
        out[np.fromiter((bool(raw) for raw in raws), bool, len(raws))] = values
        return out

    def floats(self, raws: Sequence[bytes | None]) -> npt.NDArray[np.float64]:
        """Stored numbers of any type as float64, NaN where missing or null; each distinct encoding decoded once."""
        return _through_cache(raws, self._floats, lambda raw: _as_float(self._value(raw)), np.float64)

    def _doubles(self, raws: Sequence[bytes | None]) -> list[Any] | None:
        present = [raw for raw in raws if raw]
        values = self._unpack_doubles(present)
        if values is None:
            return None  # not all doubles: the general path decides
        unpacked = iter(values.tolist())
        return [next(unpacked) if raw else None for raw in raws]

    def _unpack_doubles(self, present: list[bytes]) -> npt.NDArray[np.float64] | None:
        """Non-empty stored values as float64 from their fixed wire layout; None unless every one is a double."""
        joined = b"".join(present)
        if len(joined) != DOUBLE_RECORD.itemsize * len(present):
            return None
        records = np.frombuffer(joined, dtype=DOUBLE_RECORD)
        if not (records["tag"] == self._double_tag).all():
            return None
        return records["value"].astype(np.float64)


def _through_cache(
    raws: Sequence[bytes | None], cache: dict[bytes | None, Any], convert: Callable[[bytes | None], Any], dtype: Any
) -> npt.NDArray[Any]:
    """`convert(raw)` of each stored value as an array, each distinct encoding converted once and kept in `cache`
    (up to CACHE_LIMIT encodings: beyond, the rest are converted on every call)."""
    try:
        return np.fromiter(map(cache.__getitem__, raws), dtype, len(raws))
    except KeyError:
        pass
    for raw in set(raws) - cache.keys():
        if len(cache) >= CACHE_LIMIT:
            break
        cache[raw] = convert(raw)
    return np.array([cache[raw] if raw in cache else convert(raw) for raw in raws], dtype)


def _as_float(value: Any) -> float:
    return np.nan if value is None else float(value)
