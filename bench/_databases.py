"""Fresh, throw-away databases for benchmarks, on the server their entrypoint resolved (`stack.running`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from churn_platform import db


@contextlib.contextmanager
def fresh_database(server: str, prefix: str = "churn_bench") -> Iterator[str]:
    """A new database with the platform schema on the PostgreSQL server of the URL `server`, dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg.conninfo.make_conninfo(server, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        db.init_schema(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
