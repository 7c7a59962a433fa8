"""A Feast batch materialization engine that writes Feast's Redis online-store format column-wise.

Stock Feast materializes at about 9-14k rows/s: its local engine turns every value into a protobuf in Python and the
Redis store builds each hash in Python. This engine writes the same bytes (keys, fields, values, `_ts`), so Feast's
own `get_online_features` reads them: it pulls the latest row per entity through the offline store's
`pull_latest_from_table_or_query`, serializes each distinct value of a column once with Feast's own value protos
(doubles, nearly all distinct, on Feast's proto layout with numpy), assembles the Redis commands in Arrow, reads the
stored `_ts` of a chunk with one Lua call, and writes HSET pipelines chunk by chunk on the online store's client.

Like the stock store, a row is written only if it is newer than the `_ts` already stored for its view. Every task
it does not support goes to Feast's local engine instead (logged): online stores other than Redis (or a Redis
cluster), batch / stream views, views over other views or with validation, offline writes or field mappings,
entity keys other than one string join key, and feature types other than Int64, Float64 and String.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView, RepoConfig, utils
from feast.feature_view import DUMMY_ENTITY_ID
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.offline_stores.offline_store import OfflineStore
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.online_stores.redis import (
    RedisOnlineStore,
    RedisOnlineStoreConfig,
    RedisType,
    _versioned_fv_name,
)
from feast.infra.registry.base_registry import BaseRegistry
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel
from feast.type_map import python_values_to_proto_values
from feast.utils import _get_column_names
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field, StrictStr

logger = logging.getLogger(__name__)

ENGINE_TYPE: Final = "churn_platform.features.feast_redis.ChurnRedisMaterializationEngine"
FEATURE_TYPES = frozenset({ValueType.INT64, ValueType.DOUBLE, ValueType.STRING})
# The `_ts` of every key of a chunk in one call: its reply is one array, parsed by hiredis in C (a pipeline of
# HMGETs costs a Python-level reply read per key, about twice the time).
STORED_TIMESTAMPS_LUA = b"local t = {} for i, k in ipairs(KEYS) do t[i] = redis.call('HGET', k, ARGV[1]) end return t"
EMPTY = pa.scalar(b"", pa.binary())


class ChurnRedisMaterializationEngineConfig(FeastConfigBaseModel):
    """The `batch_engine:` section of feature_store.yaml for this engine."""

    type: Literal["churn_platform.features.feast_redis.ChurnRedisMaterializationEngine"] = ENGINE_TYPE
    chunk_rows: int = Field(default=20_000, gt=0)
    """Rows per Redis pipeline: bounds the memory of one chunk's commands (about 0.5 kB a row here)."""
    backend: StrictStr | None = None
    """DataFrame backend of Feast's local engine, for the tasks that fall back to it."""


@dataclass(frozen=True)
class RedisMaterialization:
    """What one fast materialization of a view did: rows pulled (latest per entity) and written, and the time."""

    view: str
    rows_pulled: int
    rows_written: int
    pull_seconds: float
    write_seconds: float


class ChurnRedisMaterializationEngine(LocalComputeEngine):
    """Feast's local engine, with a column-wise path for plain feature views into Feast's Redis online store."""

    def __init__(
        self, *, repo_config: RepoConfig, offline_store: OfflineStore, online_store: OnlineStore, **options: Any
    ) -> None:
        self.options = ChurnRedisMaterializationEngineConfig(**options)
        super().__init__(
            backend=self.options.backend,
            repo_config=repo_config,
            offline_store=offline_store,
            online_store=online_store,
        )
        self.last_run: RedisMaterialization | None = None

    def _materialize_one(
        self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any
    ) -> LocalMaterializationJob:
        reason = self.unsupported(task)
        if reason is not None:
            logger.info("%s: materializing with Feast's local engine (%s)", task.feature_view.name, reason)
            return super()._materialize_one(registry, task, **kwargs)
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        try:
            self.last_run = self._materialize_into_redis(registry, task)
        except Exception as error:  # reported through the job, as Feast's own engines do
            return LocalMaterializationJob(job_id, MaterializationJobStatus.ERROR, error)
        return LocalMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED)

    def unsupported(self, task: MaterializationTask) -> str | None:
        """Why this engine hands `task` to Feast's local engine, or None when it materializes it itself."""
        view = task.feature_view
        config = self.repo_config.online_store
        if not isinstance(self.online_store, RedisOnlineStore) or not isinstance(config, RedisOnlineStoreConfig):
            return "the online store is not Redis"
        if config.redis_type == RedisType.redis_cluster:
            return "a Redis cluster"
        if type(view) is not FeatureView:
            return f"a {type(view).__name__}"
        if not task.only_latest:
            return "every row, not the latest per entity"
        if view.source_views or view.enable_validation or not view.online or view.offline:
            return "a view over views, validated, offline-written or not online"
        if view.batch_source is None or view.batch_source.field_mapping:
            return "a view without a batch source or with a field mapping"
        keys = view.entity_columns
        if len(keys) != 1 or keys[0].name == DUMMY_ENTITY_ID or keys[0].dtype.to_value_type() != ValueType.STRING:
            return "entity keys other than one string join key"
        others = [f.name for f in view.features if f.dtype.to_value_type() not in FEATURE_TYPES]
        return f"feature types other than Int64, Float64, String: {others}" if others else None

    def _materialize_into_redis(self, registry: BaseRegistry, task: MaterializationTask) -> RedisMaterialization:
        view = task.feature_view
        started = time.perf_counter()
        source, online_store = view.batch_source, self.online_store
        if source is None or not isinstance(online_store, RedisOnlineStore):
            raise TypeError(f"{view.name}: {self.unsupported(task)}")
        entities = [registry.get_entity(name, task.project) for name in view.entities]
        join_keys, feature_columns, timestamp_field, created_column = _get_column_names(view, entities)
        table = self.offline_store.pull_latest_from_table_or_query(
            config=self.repo_config,
            data_source=source,
            join_key_columns=join_keys,
            feature_name_columns=feature_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_column,
            start_date=task.start_time,
            end_date=task.end_time,
        ).to_arrow()
        pulled = time.perf_counter()
        layout = HashLayout.of(view, self.repo_config, join_keys[0], timestamp_field)
        entity_keys = table.column(layout.join_key)
        if entity_keys.null_count or pc.count_distinct(entity_keys).as_py() != table.num_rows:
            raise ValueError(f"{view.name}: null join keys, or more than one latest row for an entity")
        client = online_store._get_client(self.repo_config.online_store)  # type: ignore[no-untyped-call]
        progress = task.tqdm_builder(table.num_rows) if task.tqdm_builder else contextlib.nullcontext()
        with progress as bar, _connection(client) as connection:
            written = _write_chunks(connection, table, layout, self.options.chunk_rows, bar)
        run = RedisMaterialization(view.name, table.num_rows, written, pulled - started, time.perf_counter() - pulled)
        logger.info(
            "%s: %d latest rows pulled in %.2f s, %d written to Redis in %.2f s",
            run.view, run.rows_pulled, run.pull_seconds, run.rows_written, run.write_seconds,
        )  # fmt: skip
        return run


@dataclass(frozen=True)
class HashLayout:
    """Where a view's rows go in Feast's Redis store: key bytes around the join key value, and hash fields."""

    join_key: str
    key_prefix: bytes  # the serialized entity key before the join key value's length and bytes
    key_suffix: bytes  # the project
    timestamp_column: str
    timestamp_field: bytes  # `_ts:<view>`
    features: tuple[tuple[str, ValueType, bytes], ...]  # column, Feast value type, hash field (murmur3)
    key_ttl_seconds: int | None
    skip_dedup: bool

    @classmethod
    def of(cls, view: FeatureView, config: RepoConfig, join_key: str, timestamp_column: str) -> HashLayout:
        """The layout the stock RedisOnlineStore writes for `view` under `config` (versioned name, key version)."""
        name = _versioned_fv_name(view, config)
        prefix, suffix = string_key_layout(config.project, join_key, config.entity_key_serialization_version)
        online: RedisOnlineStoreConfig = config.online_store
        return cls(
            join_key=join_key,
            key_prefix=prefix,
            key_suffix=suffix,
            timestamp_column=timestamp_column,
            timestamp_field=f"_ts:{name}".encode(),
            features=tuple((f.name, f.dtype.to_value_type(), _mmh3(f"{name}:{f.name}")) for f in view.features),
            key_ttl_seconds=online.key_ttl_seconds or None,
            skip_dedup=online.skip_dedup,
        )


def string_key_layout(project: str, join_key: str, version: int) -> tuple[bytes, bytes]:
    """Feast's Redis key of a string entity is `prefix + uint32 length + utf-8 bytes + project`: find the prefix.

    Taken from Feast's own `_redis_key` on two probe values, and checked, so a format change fails loudly.
    """
    suffix = project.encode()

    def key(value: str) -> bytes:
        entity = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
        return _redis_key(project, entity, entity_key_serialization_version=version)

    short, long = key("a"), key("bcd\u00e9")
    prefix = short[: len(short) - len(suffix) - 5]
    for value, whole in (("a", short), ("bcd\u00e9", long)):
        encoded = value.encode()
        if whole != prefix + struct.pack("<I", len(encoded)) + encoded + suffix:
            raise RuntimeError(f"Feast's Redis key layout changed (version {version}): {whole!r}")
    return prefix, suffix


@functools.cache
def double_tag() -> bytes:
    """The bytes Feast's Value proto puts before a double's 8 little-endian bytes (checked on probe values)."""
    tag = bytes(ValueProto(double_val=1.5).SerializeToString())[:-8]
    for probe in (0.0, -0.0, 1.5, -2.25e300, float("inf")):
        if ValueProto(double_val=probe).SerializeToString() != tag + struct.pack("<d", probe):
            raise RuntimeError(f"Feast's double value layout changed: {probe!r}")
    return tag


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _bulk_strings(values: pa.Array) -> pa.Array:
    """Each (binary) value as a RESP bulk string."""
    lengths = pc.cast(pc.cast(pc.binary_length(values), pa.string()), pa.binary())
    crlf = pa.scalar(b"\r\n", pa.binary())
    return pc.binary_join_element_wise(pa.scalar(b"$", pa.binary()), lengths, crlf, values, crlf, EMPTY)


def _fixed_width(rows: np.ndarray) -> pa.Array:
    """An (n, width) uint8 matrix as a binary array of n values."""
    n, width = rows.shape
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(rows))])
    return pc.cast(fixed, pa.binary())


def redis_keys(values: pa.Array, layout: HashLayout) -> pa.Array:
    """Feast's Redis keys of string join key values, as RESP bulk strings."""
    utf8 = pc.cast(values, pa.binary())
    lengths = np.asarray(pc.binary_length(utf8), dtype="<u4").view(np.uint8).reshape(-1, 4)
    keys = pc.binary_join_element_wise(
        pa.scalar(layout.key_prefix, pa.binary()),
        _fixed_width(lengths),
        utf8,
        pa.scalar(layout.key_suffix, pa.binary()),
        EMPTY,
    )
    return _bulk_strings(keys)


def event_times(values: pa.Array, layout: HashLayout) -> tuple[pa.Array, np.ndarray]:
    """The `_ts` field and value of each row (RESP), and its time in nanoseconds, as the stock store computes it."""
    if not pa.types.is_timestamp(values.type) or values.null_count:
        raise ValueError(f"{layout.timestamp_column} must be a timestamp without nulls, not {values.type}")
    if values.type.unit == "ns":  # Feast goes through Python datetimes: microseconds
        values = pc.cast(values, pa.timestamp("us", values.type.tz), safe=False)
    encoded = values.dictionary_encode()
    field, chunks, nanos = _bulk(layout.timestamp_field), [], []
    for moment in encoded.dictionary.to_pylist():
        stamp = Timestamp()
        stamp.FromDatetime(utils.make_tzaware(moment))
        chunks.append(field + _bulk(stamp.SerializeToString()))
        nanos.append(stamp.seconds * 1_000_000_000 + stamp.nanos)
    indices = encoded.indices
    return pc.take(pa.array(chunks, pa.binary()), indices), np.array(nanos, np.int64)[indices.to_numpy()]


def feature_fields(values: pa.Array, value_type: ValueType, field: bytes) -> pa.Array:
    """Each row's hash field and value (RESP) of one feature, the value serialized as Feast serializes it.

    Nulls (and NaN, which Feast's conversion treats as null) are an empty Value proto, as in the stock store.
    """
    field_bulk = _bulk(field)
    missing = field_bulk + _bulk(b"")
    if value_type == ValueType.DOUBLE and pa.types.is_float64(values.type):
        # Nearly every double is distinct: lay the proto out with numpy instead of one proto per value.
        numbers = values.to_numpy(zero_copy_only=False)  # nulls are NaN
        head = np.frombuffer(field_bulk + b"$%d\r\n" % (len(double_tag()) + 8) + double_tag(), np.uint8)
        rows = np.empty((len(numbers), len(head) + 10), np.uint8)
        rows[:, : len(head)] = head
        rows[:, len(head) : -2] = numbers.astype("<f8").view(np.uint8).reshape(-1, 8)
        rows[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
        return pc.if_else(pa.array(np.isnan(numbers)), pa.scalar(missing, pa.binary()), _fixed_width(rows))
    # Everything else: Feast's own conversion, once per distinct value.
    encoded = values.dictionary_encode()
    protos = python_values_to_proto_values(encoded.dictionary.to_numpy(zero_copy_only=False), value_type)
    chunks = [field_bulk + _bulk(proto.SerializeToString()) for proto in protos] + [missing]
    return pc.take(pa.array(chunks, pa.binary()), encoded.indices.fill_null(len(protos)))


def _payload(commands: pa.Array) -> memoryview:
    """The bytes of a binary array's values, back to back (RESP commands ready to send)."""
    if commands.null_count:
        raise ValueError("a Redis command came out null")
    _, offsets, data = commands.buffers()
    bounds = np.frombuffer(offsets, np.int32, len(commands) + 1, commands.offset * 4)
    return memoryview(data)[int(bounds[0]) : int(bounds[-1])]


@dataclass
class _Chunk:
    """Rows of one pipeline, with their Redis keys and timestamps encoded."""

    rows: pa.Table
    keys: pa.Array
    times: pa.Array
    nanos: np.ndarray


def _chunk(table: pa.Table, start: int, size: int, layout: HashLayout) -> _Chunk:
    rows = table.slice(start, size)
    keys = redis_keys(rows.column(layout.join_key).combine_chunks(), layout)
    times, nanos = event_times(rows.column(layout.timestamp_column).combine_chunks(), layout)
    return _Chunk(rows, keys, times, nanos)


def _stored_timestamps_command(chunk: _Chunk, layout: HashLayout) -> list[bytes | memoryview]:
    count = b"%d" % len(chunk.keys)
    head = b"*%d\r\n$4\r\nEVAL\r\n%s%s" % (len(chunk.keys) + 4, _bulk(STORED_TIMESTAMPS_LUA), _bulk(count))
    return [head, _payload(chunk.keys), _bulk(layout.timestamp_field)]


def stored_nanos(replies: list[bytes | None]) -> np.ndarray:
    """The stored `_ts` of each key in nanoseconds, 0 where there is none (each distinct value parsed once)."""
    parsed: dict[bytes | None, int] = {None: 0}
    for reply in replies:
        if reply not in parsed:
            stamp = Timestamp.FromString(reply)
            parsed[reply] = stamp.seconds * 1_000_000_000 + stamp.nanos
    return np.fromiter((parsed[reply] for reply in replies), np.int64, len(replies))


def _write_commands(chunk: _Chunk, keep: pa.Array | None, layout: HashLayout) -> tuple[pa.Array, int]:
    """HSET (and EXPIRE) commands of the kept rows of a chunk, and the number of replies they will get."""
    rows, keys, times = chunk.rows, chunk.keys, chunk.times
    if keep is not None:
        rows, keys, times = rows.filter(keep), keys.filter(keep), times.filter(keep)
    parts = [pa.scalar(b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(layout.features)), pa.binary()), keys, times]
    for column, value_type, field in layout.features:
        parts.append(feature_fields(rows.column(column).combine_chunks(), value_type, field))
    replies = len(rows)
    if layout.key_ttl_seconds:
        expire = pa.scalar(b"*3\r\n$6\r\nEXPIRE\r\n", pa.binary())
        parts += [expire, keys, pa.scalar(_bulk(b"%d" % layout.key_ttl_seconds), pa.binary())]
        replies *= 2
    return pc.binary_join_element_wise(*parts, EMPTY), replies


def _write_chunks(connection: Any, table: pa.Table, layout: HashLayout, size: int, progress: Any) -> int:
    """Write `table` chunk by chunk; return the rows written (newer than what Redis holds).

    The `_ts` read of the next chunk is sent ahead of this chunk's writes, so while Redis applies one chunk the
    next one is encoded here. Chunks never share a key (one row per entity), so the early read sees final values.
    """
    starts = range(0, table.num_rows, size)
    if not starts:
        return 0
    written, pending, pending_rows = 0, 0, 0
    chunk = _chunk(table, 0, size, layout)
    if not layout.skip_dedup:
        connection.send_packed_command(_stored_timestamps_command(chunk, layout), check_health=False)
    for start in starts:
        keep = None
        if not layout.skip_dedup:
            stored = stored_nanos(connection.read_response())
            keep = pa.array((stored == 0) | (chunk.nanos > stored))
        commands, replies = _write_commands(chunk, keep, layout)
        following = _chunk(table, start + size, size, layout) if start + size < table.num_rows else None
        _read_replies(connection, pending)
        if progress is not None:
            progress.update(pending_rows)
        if following is not None and not layout.skip_dedup:
            connection.send_packed_command(_stored_timestamps_command(following, layout), check_health=False)
        if len(commands):
            connection.send_packed_command([_payload(commands)], check_health=False)
        written += len(commands)
        pending, pending_rows = replies, chunk.rows.num_rows
        if following is not None:
            chunk = following
    _read_replies(connection, pending)
    if progress is not None:
        progress.update(pending_rows)
    return written


def _read_replies(connection: Any, count: int) -> None:
    """Read `count` write replies; an error reply raises redis.ResponseError."""
    for _ in range(count):
        connection.read_response()


@contextlib.contextmanager
def _connection(client: Any) -> Iterator[Any]:
    """One connection of the online store's client pool; dropped, not reused, if a pipeline failed midway."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        yield connection
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
