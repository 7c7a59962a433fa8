"""A user's CSV or Parquet file, read in chunks of Arrow record batches (never the whole file in memory).

CSV is read with every column as text, so a bad value becomes a quarantined row instead of a failed read;
Parquet keeps its types and the contract checks them before any row is read.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churn_platform.data.ingest.contract import Contract, ContractError, check_columns, check_schema

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
# Arrow parses a CSV in blocks of this many bytes; blocks are gathered until a chunk has `chunk_rows` rows.
CSV_BLOCK_BYTES = 16 << 20
ROW_ESTIMATE_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """A file whose shape (format, columns, their types) satisfies a contract."""

    path: Path
    format: str  # "csv" or "parquet"
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        """How the file is named in messages, `raw.loads.source` and `raw.quarantine.source`."""
        return str(self.path)


def file_format(path: Path) -> str:
    """ "csv" or "parquet", from the file's extension."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ContractError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv, .parquet or .pq")


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle))
    except StopIteration:
        raise ContractError(f"{path}: the file is empty; a CSV file starts with a header row") from None
    except UnicodeDecodeError as exc:
        raise ContractError(f"{path}: the header is not UTF-8 text ({exc.reason})") from None


def open_source(path: Path, contract: Contract, *, timezone: str | None) -> SourceFile:
    """Check a file's shape against the contract before anything is written; raise ContractError if it fails."""
    path = path.resolve()
    fmt = file_format(path)
    if fmt == "csv":
        columns = _csv_header(path)
        check_columns(contract, columns, str(path))
    else:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ContractError(f"{path}: not a readable Parquet file ({exc})") from None
        check_schema(contract, schema, str(path), timezone=timezone)
        columns = schema.names
    return SourceFile(path, fmt, tuple(columns))


def _csv_blocks(source: SourceFile) -> Iterator[pa.RecordBatch]:
    try:
        reader = pacsv.open_csv(
            source.path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in source.columns},
                strings_can_be_null=False,  # an empty field stays "", the contract decides what it means
            ),
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except pa.ArrowInvalid as exc:  # a row with the wrong number of fields, bytes that are not UTF-8, ...
        raise ContractError(f"{source.name}: malformed CSV: {exc}") from None


def _rebatch(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `chunk_rows` rows (the last one may be shorter), whatever the reader's block size."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= chunk_rows:
            merged = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
            yield merged.slice(0, chunk_rows)
            rest = merged.slice(chunk_rows)
            pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _parquet_batches(source: SourceFile, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(source.path)
    try:
        yield from parquet.iter_batches(batch_size=chunk_rows)
    finally:
        parquet.close()


def iter_chunks(source: SourceFile, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's rows, in file order, in record batches of about `chunk_rows` rows."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    if source.format == "csv":
        return _rebatch(_csv_blocks(source), chunk_rows)
    return _parquet_batches(source, chunk_rows)


def estimate_rows(path: Path) -> int:
    """The number of data rows, cheaply: exact for Parquet (footer metadata), estimated for CSV.

    The CSV estimate scales the line count of the first MiB to the file size (exact for small files); it is
    meant for a progress bar's total, not for accounting.
    """
    if file_format(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    size = path.stat().st_size
    with path.open("rb") as handle:
        sample = handle.read(ROW_ESTIMATE_SAMPLE_BYTES)
    lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") or not sample else 1)
    if len(sample) >= size:
        return max(lines - 1, 0)
    return max(round(size * lines / len(sample)) - 1, 0)


def file_sha256(path: Path) -> str:
    """The file's sha256: with the row number, the key of its quarantined rows."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
