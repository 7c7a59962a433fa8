"""What a catalog's snapshots and labels were computed under: its features and the churn definition, hashed.

Snapshots and labels of one catalog name are appended day by day. If the features or the churn rule change
between two runs, the new rows would silently mix with the old: so the first run records the definitions in
`features.catalog_definitions`, and every later run checks them, refusing a change unless asked to start over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql

from churn_platform.data.labels import ChurnDefinition
from churn_platform.features.catalog import FEATURES_SCHEMA, Catalog

CREATE_SQL = """
CREATE TABLE IF NOT EXISTS features.catalog_definitions (
    catalog          text PRIMARY KEY,
    definitions_hash text NOT NULL,
    definitions      jsonb NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now()
)"""
STORED_SQL = "SELECT definitions_hash, definitions FROM features.catalog_definitions WHERE catalog = %s"
RECORD_SQL = """
INSERT INTO features.catalog_definitions (catalog, definitions_hash, definitions) VALUES (%s, %s, %s)
ON CONFLICT (catalog) DO UPDATE SET definitions_hash = EXCLUDED.definitions_hash,
    definitions = EXCLUDED.definitions, recorded_at = now()
"""
TABLE_EXISTS_SQL = "SELECT to_regclass(%s) IS NOT NULL"


class DefinitionChangedError(ValueError):
    """The catalog's stored snapshots or labels were computed under other definitions."""


def described(catalog: Catalog, definition: ChurnDefinition) -> dict[str, Any]:
    """The definitions as data: every feature's kind and parameters in order, and the churn rule."""
    features = [{"kind": type(f).__name__, **asdict(f)} for f in catalog.features]
    return {"catalog": catalog.name, "features": features, "churn": definition.as_json()}


def definitions_hash(catalog: Catalog, definition: ChurnDefinition) -> str:
    """sha256 of `described`: what a model version records as the definitions it was trained under."""
    return hashlib.sha256(json.dumps(described(catalog, definition), sort_keys=True).encode()).hexdigest()


def _tables(catalog: Catalog) -> list[sql.Composed]:
    return [
        sql.SQL("{}.{}").format(sql.Identifier(FEATURES_SCHEMA), sql.Identifier(name))
        for name in (catalog.name, f"{catalog.name}_labels")
    ]


def _has_rows(conn: psycopg.Connection, catalog: Catalog) -> bool:
    for table, name in zip(_tables(catalog), (catalog.table, catalog.labels_table), strict=True):
        exists = conn.execute(TABLE_EXISTS_SQL, (name,)).fetchone()
        if exists and exists[0]:
            row = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(table)).fetchone()
            if row and row[0]:
                return True
    return False


def _change(stored: dict[str, Any] | None, catalog: Catalog, definition: ChurnDefinition) -> str:
    """One line on what differs between the stored definitions and these."""
    if stored is None:
        return "by an earlier version that recorded no definitions"
    was, now = stored.get("churn", {}), definition.as_json()
    if was != now:
        return f"under another churn definition (stored: {was}; now: {now})"
    names = [f.get("kind", "?") for f in stored.get("features", [])]
    return f"with other features ({len(names)} stored, {len(catalog.features)} now)"


def check(conn: psycopg.Connection, catalog: Catalog, definition: ChurnDefinition) -> None:
    """Raise DefinitionChangedError if the catalog's stored rows were computed under other definitions."""
    conn.execute(CREATE_SQL)
    row = conn.execute(STORED_SQL, (catalog.name,)).fetchone()
    if row is None:
        if _has_rows(conn, catalog):
            raise _refusal(None, catalog, definition)
        return
    if row[0] != definitions_hash(catalog, definition):
        raise _refusal(row[1], catalog, definition)


def claim(conn: psycopg.Connection, catalog: Catalog, definition: ChurnDefinition, *, replace: bool) -> None:
    """Record the definitions the catalog's rows are computed under; with `replace`, drop rows computed under
    others first. Without it, a change raises DefinitionChangedError."""
    conn.execute(CREATE_SQL)
    if replace:
        for table in _tables(catalog):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    else:
        check(conn, catalog, definition)
    conn.execute(
        RECORD_SQL, (catalog.name, definitions_hash(catalog, definition), json.dumps(described(catalog, definition)))
    )


def _refusal(stored: dict[str, Any] | None, catalog: Catalog, definition: ChurnDefinition) -> DefinitionChangedError:
    return DefinitionChangedError(
        f"{catalog.table} was computed {_change(stored, catalog, definition)}: name a new catalog version"
        f" (CHURN_FEATURE_CATALOG, e.g. {_next_name(catalog.name)}) to compute it beside the old one, or recompute"
        " this one with `churn features compute --replace`"
    )


def _next_name(name: str) -> str:
    stem, _, number = name.rpartition("_v")
    return f"{stem}_v{int(number) + 1}" if stem and number.isdigit() else f"{name}_v2"
