"""The platform database: connections, the schema under `infra/postgres/`, and table checksums."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from churn_platform.connections import redact

log = logging.getLogger(__name__)

# Applied in this order; each file is idempotent (IF NOT EXISTS), so `churn db init` can run any number of times.
SCHEMA_FILES = ("schemas.sql", "raw.sql", "synthetic.sql", "serving.sql", "monitoring.sql")

# The tables whose content defines a world or a load, with the key that orders their checksum.
CHECKSUM_TABLES: dict[str, tuple[str, ...]] = {
    "raw.users": ("user_id",),
    "raw.user_attributes": ("user_id", "valid_from"),
    "raw.events": ("event_key",),
    "raw.quarantine": ("source_sha256", "row_number"),
    "synthetic.oracle_churn": ("user_id", "day"),
}
CHECKSUM_SESSION_SQL = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL extra_float_digits = 1"
# Load bookkeeping (timestamps of when a load ran) is not content: left out of checksums.
CHECKSUM_EXCLUDED_COLUMNS = frozenset({"load_id"})


def schema_dir() -> Path:
    """`infra/postgres/` in a source checkout, or the copy packaged with the wheel."""
    packaged = resources.files("churn_platform") / "sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "infra" / "postgres"


class DatabaseUnreachableError(RuntimeError):
    """The PostgreSQL server of a URL does not answer."""


def socket_url(socket_dir: Path, database: str) -> str:
    """A libpq URL for a server that listens on a unix socket only."""
    return f"postgresql://postgres@/{database}?host={quote(str(socket_dir), safe='/')}"


def sqlalchemy_url(url: str, database: str) -> str:
    """A `postgresql+psycopg://` SQLAlchemy URL to `database` on the server of a libpq URL (TCP or unix socket).

    A socket folder cannot be a URL's host: like libpq, SQLAlchemy's psycopg dialect takes it as `?host=`.
    """
    return _sqlalchemy_url(url, database, "psycopg")


def asyncpg_url(url: str, database: str) -> str:
    """A `postgresql+asyncpg://` SQLAlchemy URL to `database` on the server of a libpq URL (the Prefect server's
    database): a socket folder as `?host=`, its port as the URL's port (asyncpg names the socket file by it)."""
    return _sqlalchemy_url(url, database, "asyncpg")


def _sqlalchemy_url(url: str, database: str, driver: str) -> str:
    params = {key: str(value) for key, value in psycopg.conninfo.conninfo_to_dict(url).items() if value is not None}
    host, port = params.pop("host", None), params.pop("port", None)
    user, password = params.pop("user", None), params.pop("password", None)
    params.pop("dbname", None)
    if driver == "asyncpg":
        if "sslmode" in params:
            params["ssl"] = params.pop("sslmode")  # asyncpg's name for it, same values
        for libpq_only in ("connect_timeout", "application_name", "options"):
            params.pop(libpq_only, None)  # asyncpg's connect takes none of these as URL parameters
    if host is not None and host.startswith("/"):
        params["host"] = host
        if port is not None and driver == "psycopg":
            params["port"] = port
            port = None
        host = None
    return URL.create(
        f"postgresql+{driver}",
        username=user,
        password=password,
        host=host,
        port=int(port) if port else None,
        database=database,
        query=params,
    ).render_as_string(hide_password=False)


def ensure_database(url: str) -> None:
    """Create the URL's database if the server does not have it yet (connecting through `postgres`)."""
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    database = str(conninfo.get("dbname") or "postgres")
    if database == "postgres":
        return
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres", connect_timeout=5)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                log.info("created database %s", database)
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        pass  # created by a concurrent caller
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachableError(f"PostgreSQL at {redact(url)} is unreachable: {exc}") from exc


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg connection to the platform database."""
    return psycopg.connect(url, autocommit=autocommit)


ROW_KEYS_TABLE_SQL = """
CREATE TEMP TABLE {table} (
    row_id bigint PRIMARY KEY, user_id text COLLATE "C" NOT NULL, t timestamptz NOT NULL
) ON COMMIT DROP
"""


def copy_row_keys(cur: psycopg.Cursor[Any], table: str, rows: pd.DataFrame) -> None:
    """A temporary table `table` (row_id, user_id, t), dropped at commit: row i of `rows` (user_id,
    event_timestamp) as row_id i, for a query to look each row up by the events index."""
    stamps = pd.to_datetime(rows["event_timestamp"], utc=True)
    name = sql.Identifier(table)
    cur.execute(sql.SQL(ROW_KEYS_TABLE_SQL).format(table=name))
    with cur.copy(sql.SQL("COPY {} (row_id, user_id, t) FROM STDIN").format(name)) as copy:
        for row_id, (user_id, stamp) in enumerate(zip(rows["user_id"], stamps, strict=True)):
            copy.write_row((row_id, str(user_id), stamp.to_pydatetime()))


def init_schema(url: str) -> list[str]:
    """Create the database if needed and apply every schema file in one transaction; return the files applied."""
    ensure_database(url)
    folder = schema_dir()
    with connect(url) as conn:
        # Two processes initialising at once would race on CREATE ... IF NOT EXISTS; serialise them.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('churn_platform.init_schema'))")
        for name in SCHEMA_FILES:
            conn.execute((folder / name).read_text())  # type: ignore[arg-type]
    log.info("schema applied from %s", folder)
    return list(SCHEMA_FILES)


@dataclass(frozen=True)
class TableChecksum:
    """Row count and an order-independent-of-storage md5 of a table's content."""

    table: str
    rows: int
    md5: str


def table_checksum(conn: psycopg.Connection, table: str, key: tuple[str, ...]) -> TableChecksum:
    """md5 over the table's rows as text, in key order, leaving out load bookkeeping columns."""
    schema, name = table.split(".")
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, name),
        )
        if row[0] not in CHECKSUM_EXCLUDED_COLUMNS
    ]
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(row({cols})::text, E'\\n' ORDER BY {key})), md5('')) FROM {table}"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        key=sql.SQL(", ").join(sql.Identifier(k) for k in key),
        table=sql.Identifier(schema, name),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return TableChecksum(table, int(row[0]), str(row[1]))


def checksums(url: str) -> list[TableChecksum]:
    """Checksums of every content table: equal checksums mean equal data."""
    with connect(url) as conn:
        # Rows are hashed as text: pin every setting that changes how a value prints, so the same data gives
        # the same checksum whatever the server's or client's time zone and formats.
        conn.execute(CHECKSUM_SESSION_SQL)
        return [table_checksum(conn, table, key) for table, key in CHECKSUM_TABLES.items()]


INDEX_DEFINITIONS_SQL = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)
FROM pg_index i
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
WHERE i.indrelid = %s::regclass
ORDER BY i.indisunique DESC, i.indexrelid
"""


@contextlib.contextmanager
def indexes_deferred(cur: psycopg.Cursor[Any], table: str) -> Iterator[None]:
    """Drop a table's indexes (and its primary key) for a bulk load, and build them again afterwards.

    Building an index once over loaded rows is several times faster than maintaining it row by row. Run this
    inside the load's transaction: other sessions never see the table without its indexes, and a failed load
    rolls the drop back too. The definitions are read from the catalog, so infra/postgres stays their one source.
    Unique indexes are built first: rows with a duplicate key fail the load before the other builds start.
    """
    definitions = cur.execute(INDEX_DEFINITIONS_SQL, (table,)).fetchall()
    for index, _, constraint, _ in definitions:
        if constraint:
            cur.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(_qualified(table), sql.Identifier(constraint))
            )
        else:
            cur.execute(sql.SQL("DROP INDEX {}").format(_qualified(index)))
    yield
    cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for _, index_definition, constraint, constraint_definition in definitions:
        if constraint:
            cur.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(_qualified(table), sql.Identifier(constraint))
                + sql.SQL(constraint_definition)  # type: ignore[arg-type]
            )
        else:
            cur.execute(index_definition)


def _qualified(name: str) -> sql.Composed:
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))
