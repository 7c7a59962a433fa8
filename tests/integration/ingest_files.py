"""Files and database reads shared by the ingestion tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from churn_platform import db

NOW = datetime(2025, 1, 1, tzinfo=UTC)
HEADER = "user_id,event_type,event_timestamp,value,event_id\n"
INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'raw' ORDER BY indexname"


def write_csv(folder: Path, name: str, body: str, header: str = HEADER) -> Path:
    path = folder / name
    path.write_text(header + body)
    return path


def write_parquet(folder: Path, name: str, columns: dict[str, pa.Array]) -> Path:
    path = folder / name
    pq.write_table(pa.table(columns), path)
    return path


def six_rows_with_a_bad_one(folder: Path) -> Path:
    body = "".join(f"u{i},login,2024-01-0{i}T10:00:00Z,,\n" for i in range(1, 6)) + ",login,2024-01-06T10:00:00Z,,\n"
    return write_csv(folder, "six.csv", body)


def query_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def stored_events(url: str) -> list[tuple[Any, ...]]:
    return query_rows(
        url,
        "SELECT user_id, event_type, event_timestamp, value, event_id FROM raw.events"
        " ORDER BY event_timestamp, user_id, event_type",
    )


def snapshot(url: str) -> tuple[object, ...]:
    """Everything a load can write: content checksums, the load log, the load ids rows point to, the indexes."""
    return (
        db.checksums(url),
        query_rows(url, "SELECT * FROM raw.loads ORDER BY load_id"),
        query_rows(url, "SELECT user_id, load_id FROM raw.users ORDER BY user_id"),
        query_rows(url, "SELECT event_key, load_id FROM raw.events ORDER BY event_key"),
        query_rows(url, INDEXES),
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]
