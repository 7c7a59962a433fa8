"""The data contracts for a user's own files: which columns the events and users files have, and their types.

A contract is data, not code: ingestion, validation and the docs (`docs/data-contract.md`) read it. A file that
breaks the contract's *shape* (a required column missing, a column of the wrong type, an unknown column) is
rejected whole with a `ContractError`; a *value* that breaks it (an empty user_id, an unparseable timestamp) sends
only its row to `raw.quarantine`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import pyarrow as pa


class ContractError(ValueError):
    """A whole file was rejected: its message names the file, the column and why."""


class ValueType(Enum):
    """The logical type of a contract column, stored as the PostgreSQL type in the value."""

    TEXT = "text"
    FLOAT = "double precision"
    TIMESTAMP = "timestamptz"


@dataclass(frozen=True)
class Column:
    """One column of a contract."""

    name: str
    type: ValueType
    required: bool
    description: str
    non_empty: bool = False  # an empty or blank value sends the row to quarantine
    integer_ids: bool = False  # integer Parquet columns are accepted and loaded as their decimal text


@dataclass(frozen=True)
class Contract:
    """The columns a file of one kind may have; `kind` matches `raw.loads.kind` and `raw.quarantine.kind`."""

    kind: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


EVENTS = Contract(
    kind="events",
    columns=(
        Column("user_id", ValueType.TEXT, True, "who did it", non_empty=True, integer_ids=True),
        Column("event_type", ValueType.TEXT, True, "what happened, e.g. login, purchase, cancel", non_empty=True),
        Column("event_timestamp", ValueType.TIMESTAMP, True, "when it happened, with a UTC offset"),
        Column("value", ValueType.FLOAT, False, "an amount attached to the event, e.g. a purchase's price"),
        Column("event_id", ValueType.TEXT, False, "the source system's id of the event", integer_ids=True),
    ),
)

USERS = Contract(
    kind="users",
    columns=(
        Column("user_id", ValueType.TEXT, True, "the user's id, as in the events", non_empty=True, integer_ids=True),
        Column("signup_at", ValueType.TIMESTAMP, False, "when the user signed up, with a UTC offset"),
        Column("plan", ValueType.TEXT, False, "the subscription plan"),
        Column("plan_price", ValueType.FLOAT, False, "the plan's price per period"),
        Column("channel", ValueType.TEXT, False, "the acquisition channel"),
        Column("region", ValueType.TEXT, False, "the user's region"),
    ),
)


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def accepts(column: Column, arrow_type: pa.DataType) -> bool:
    """Whether a Parquet column of `arrow_type` can hold this contract column.

    Text is accepted everywhere (it is parsed value by value, so a bad value is quarantined, not fatal); besides
    text: timestamps and dates for TIMESTAMP, any number for FLOAT, integers for id columns.
    """
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if _is_text(arrow_type) or (pa.types.is_null(arrow_type) and not column.required):
        return True
    if column.type is ValueType.TIMESTAMP:
        return bool(pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type))
    if column.type is ValueType.FLOAT:
        return bool(
            pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
        )
    return column.integer_ids and bool(pa.types.is_integer(arrow_type))


def expected_types(column: Column) -> str:
    """The accepted Parquet types of a column, in words, for error messages."""
    if column.type is ValueType.TIMESTAMP:
        return "a timestamp (or ISO-8601 text)"
    if column.type is ValueType.FLOAT:
        return "a number (or numeric text)"
    return "text or an integer" if column.integer_ids else "text"


def check_columns(contract: Contract, names: Sequence[str], source: str) -> None:
    """Reject a file whose header lacks a required column, repeats one, or has a column the contract lacks.

    Unknown columns are rejected rather than ignored: the platform keeps everything a file gives it, so a
    column it has nowhere to store is refused instead of silently dropped.
    """
    counts = Counter(names)
    repeated = sorted(n for n, count in counts.items() if count > 1)
    if repeated:
        raise ContractError(f"{source}: column(s) {', '.join(repeated)} appear more than once in the header")
    missing = [n for n in contract.required if n not in counts]
    if missing:
        raise ContractError(
            f"{source}: required column(s) {', '.join(missing)} missing; "
            f"the {contract.kind} contract has columns {', '.join(contract.names)}"
        )
    unknown = [n for n in names if n not in contract.names]
    if unknown:
        raise ContractError(
            f"{source}: unknown column(s) {', '.join(unknown)}; the {contract.kind} contract only has "
            f"{', '.join(contract.names)} (drop or rename the others)"
        )


def check_schema(contract: Contract, schema: pa.Schema, source: str, *, timezone: str | None) -> None:
    """Reject a Parquet file whose columns are missing, unknown or of a type the contract cannot hold."""
    check_columns(contract, schema.names, source)
    for field in schema:
        column = contract.column(field.name)
        arrow_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_null(arrow_type) and column.required:
            raise ContractError(f"{source}: required column {field.name} has no values (its type is null)")
        if not accepts(column, arrow_type):
            raise ContractError(
                f"{source}: column {field.name} has type {field.type}; expected {expected_types(column)}"
            )
        naive = (pa.types.is_timestamp(arrow_type) and arrow_type.tz is None) or pa.types.is_date(arrow_type)
        if naive and timezone is None:
            raise ContractError(
                f"{source}: column {field.name} has type {field.type}, which has no time zone; "
                "store UTC offsets (timestamp with tz) or give the zone the values are in (--timezone)"
            )
