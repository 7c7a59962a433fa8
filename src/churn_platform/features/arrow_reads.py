"""Query results out of PostgreSQL into Arrow with `COPY ... TO STDOUT` (CSV), parsed by pyarrow in bulk.

The read path of our Feast offline store (`feast_postgres`): the same Arrow tables stock Feast builds value by
value from `fetchall()`, at the speed of the server's COPY.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import pyarrow as pa
import pyarrow.csv as pcsv
from feast.errors import ZeroColumnQueryResult
from feast.infra.utils.postgres.connection_utils import _get_conn_kwargs, _get_conninfo
from feast.infra.utils.postgres.postgres_config import PostgreSQLConfig
from feast.type_map import pg_type_code_to_arrow

# Every value leaves the server in one known form: timestamps in UTC, ISO dates, floats with exact digits.
SESSION_SQL = "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, MDY'; SET extra_float_digits TO 1"
DESCRIBE_SQL = "SELECT * FROM (\n{query}\n) AS described LIMIT 0"
COPY_OUT_SQL = "COPY (\n{query}\n) TO STDOUT (FORMAT csv)"

# PostgreSQL type oid -> the Arrow type pyarrow parses COPY's CSV text as. The result is then cast to the type
# stock Feast maps the oid to (float4 goes through float64 as psycopg's Python floats do; timestamptz drops
# its zone, leaving naive UTC as stock Feast returns).
CSV_PARSE_TYPES: dict[int, Any] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int32(),
    23: pa.int32(),
    25: pa.string(),
    700: pa.float64(),
    701: pa.float64(),
    1042: pa.string(),
    1043: pa.string(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}
TEXT_OIDS = frozenset({25, 1042, 1043})

Connection = Any  # a psycopg2 connection (psycopg2 ships no type hints)


@contextlib.contextmanager
def connection(config: PostgreSQLConfig) -> Iterator[Connection]:
    """A psycopg2 connection to the offline store (autocommit), its session pinned to UTC / ISO / exact floats.

    psycopg2's `copy_expert` hands each COPY row to the sink from C; psycopg 3's `Copy` iterator, and even a raw
    `pgconn.get_copy_data` loop, spend about 5 us per row in Python. Measured on 800k short rows: server-side
    COPY 0.8 s, through psycopg2 0.85 s, through psycopg 3 4.5 s.
    """
    conn = psycopg2.connect(_get_conninfo(config), keepalives_idle=config.keepalives_idle, **_get_conn_kwargs(config))
    try:
        conn.autocommit = True
        conn.set_client_encoding("UTF8")
        with conn.cursor() as cur:
            cur.execute(SESSION_SQL)
        yield conn
    finally:
        conn.close()


def describe(conn: Connection, query: str) -> list[tuple[str, int]]:
    """The query's column names and type oids, without running it."""
    with conn.cursor() as cur:
        cur.execute(DESCRIBE_SQL.format(query=query))
        return [(column.name, column.type_code) for column in cur.description or ()]


def parseable(oids: Sequence[int]) -> bool:
    return all(oid in CSV_PARSE_TYPES for oid in oids)


def read_arrow(conn: Connection, query: str) -> pa.Table | None:
    """The query's result as stock Feast's Arrow table, read with COPY; None if a column's type is not parsed here."""
    columns = describe(conn, query)
    if not columns:
        raise ZeroColumnQueryResult(query)
    if not parseable([oid for _, oid in columns]):
        return None
    sink = io.BytesIO()
    with conn.cursor() as cur:
        cur.copy_expert(COPY_OUT_SQL.format(query=query), sink)
    return parse_csv(sink.getbuffer(), columns)


def parse_csv(data: memoryview, columns: Sequence[tuple[str, int]]) -> pa.Table:
    """PostgreSQL's CSV COPY text as Arrow: unquoted empty is NULL, quoted empty is the empty string."""
    schema = pa.schema([(name, pg_type_code_to_arrow(oid)) for name, oid in columns])
    if not len(data):
        return schema.empty_table()
    names = [f"c{i}" for i in range(len(columns))]
    parsed = pcsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pcsv.ReadOptions(column_names=names),
        # Quoted text may hold newlines; a single-column row with a NULL is an empty line.
        parse_options=pcsv.ParseOptions(
            newlines_in_values=any(oid in TEXT_OIDS for _, oid in columns), ignore_empty_lines=False
        ),
        convert_options=pcsv.ConvertOptions(
            column_types={n: CSV_PARSE_TYPES[oid] for n, (_, oid) in zip(names, columns, strict=True)},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    arrays = [parsed.column(i).cast(field.type, safe=False) for i, field in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)
