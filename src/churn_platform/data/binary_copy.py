"""PostgreSQL binary COPY rows built with numpy: no per-row Python, no text formatting of timestamps.

A binary COPY row is a field count followed by (length, bytes) per field, big-endian. When every field of a
batch has a fixed width, the whole batch is one numpy structured array whose memory *is* the COPY payload.
Rows with different widths (say, a NULL next to a float) go in separate batches: COPY does not care about order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)

# PostgreSQL's epoch for date and timestamp binary values.
PG_EPOCH_DAYS_FROM_UNIX = 10_957
PG_EPOCH_MICROS_FROM_UNIX = PG_EPOCH_DAYS_FROM_UNIX * 86_400 * 1_000_000


@dataclass(frozen=True)
class Field:
    """One column of a batch: its name, its big-endian numpy dtype (None for a NULL), and the values."""

    name: str
    dtype: str | None
    values: npt.ArrayLike | None = None


def encode_rows(fields: Sequence[Field], n_rows: int) -> memoryview:
    """The binary COPY rows (no header) for `n_rows` rows of the given fixed-width fields, without a copy."""
    layout: list[tuple[str, str]] = [("nfields", ">i2")]
    for f in fields:
        layout.append((f"{f.name}__len", ">i4"))
        if f.dtype is not None:
            layout.append((f.name, f.dtype))
    rows = np.empty(n_rows, dtype=np.dtype(layout))
    rows["nfields"] = len(fields)
    for f in fields:
        if f.dtype is None:
            rows[f"{f.name}__len"] = -1
            continue
        rows[f"{f.name}__len"] = np.dtype(f.dtype).itemsize
        rows[f.name] = f.values
    return rows.data.cast("B")


def timestamptz(unix_micros: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Unix-epoch microseconds as PostgreSQL timestamptz binary values."""
    return unix_micros - PG_EPOCH_MICROS_FROM_UNIX


def date_values(unix_days: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Days since the Unix epoch as PostgreSQL date binary values."""
    return unix_days - PG_EPOCH_DAYS_FROM_UNIX


def fixed_text(labels: Sequence[str]) -> tuple[npt.NDArray[np.bytes_], str]:
    """Labels of equal length as a bytes array and its dtype, for a text column of fixed width."""
    width = {len(label.encode()) for label in labels}
    if len(width) != 1:
        raise ValueError(f"fixed_text needs labels of one length, got lengths {sorted(width)}")
    size = width.pop()
    return np.array([label.encode() for label in labels], dtype=f"S{size}"), f"S{size}"
