"""Benchmark: ingest 1.4M realistic events from Parquet and from CSV, against a plain COPY of the same rows.

Writes both files into a temporary folder, loads each into a fresh schema-initialised database (3 runs per
format, each into a new database, dropped afterwards) and prints the median events/s, the ratio to the
500,000 events/s target and to the peer: a plain `COPY ... (FORMAT csv)` of the same CSV into a table with no
index, no key and no validation, measured in the same run. Each Parquet run then loads a second file of 100,000
new events into the 1.4M-event table: the incremental path (no target). Every run prints the path it took.

    uv run python -m bench.ingest       # on CHURN_DATABASE_URL's server, or the embedded stack when unset
    uv run python -m bench.ingest -v    # also log the split of every load (copy / indexes, or staging / insert)
    uv run python -m bench.ingest --events 200000   # a smaller file (the incremental one scales with it)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench._databases import fresh_database
from churn_platform import stack
from churn_platform.data.ingest.loads import LoadSummary, ingest_events
from churn_platform.settings import Settings

TARGET_EVENTS_PER_S = 500_000
EVENTS = 1_400_000
NEW_EVENTS = 100_000  # the incremental load's file: events of the year after
USERS = 1_000
RUNS = 3
YEAR_START_S = 1_704_067_200  # 2024-01-01T00:00:00Z
YEAR_S = 366 * 86_400
EVENT_TYPES = np.array(["login", "page_view", "feature_use", "purchase", "support_ticket"])
EVENT_TYPE_P = np.array([0.30, 0.42, 0.20, 0.05, 0.03])
# Share of events by hour of day (UTC): quiet nights, busy evenings.
HOURLY = np.array([1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 6, 6, 6, 6, 7, 8, 9, 8, 6, 4, 2], dtype=float)

PEER_TABLE = """CREATE TABLE events_peer (
    user_id text, event_type text, event_timestamp timestamptz, value double precision, event_id text)"""
PEER_COPY = "COPY events_peer (user_id, event_type, event_timestamp, value) FROM STDIN (FORMAT csv, HEADER)"

console = Console()


def realistic_events(seed: int = 7, events: int = EVENTS, year_start_s: int = YEAR_START_S) -> pa.Table:
    """`events` events of ~1,000 users over a year (2024): skewed activity, daily rhythm, priced purchases, churners."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=USERS)
    starts = rng.uniform(0, 0.5, USERS) * YEAR_S  # first day in the year
    churners = rng.random(USERS) < 0.25
    ends = np.where(churners, starts + rng.uniform(0.1, 1.0, USERS) * (YEAR_S - starts), YEAR_S)
    weights = activity * (ends - starts)
    per_user = rng.multinomial(events - int(churners.sum()), weights / weights.sum())
    user = np.repeat(np.arange(USERS), per_user)
    day_s = np.floor(rng.uniform(starts[user], ends[user]) / 86_400) * 86_400
    seconds = day_s + rng.choice(24, size=len(user), p=HOURLY / HOURLY.sum()) * 3_600 + rng.uniform(0, 3_600, len(user))
    kinds = EVENT_TYPES[rng.choice(len(EVENT_TYPES), size=len(user), p=EVENT_TYPE_P)]
    prices = np.round(rng.lognormal(3.0, 0.8, len(user)), 2)
    values = np.where(kinds == "purchase", prices, np.nan)
    # One cancel per churner, at the end of its activity.
    churned = np.flatnonzero(churners)
    user = np.concatenate([user, churned])
    seconds = np.concatenate([seconds, ends[churned]])
    kinds = np.concatenate([kinds, np.full(len(churned), "cancel")])
    values = np.concatenate([values, np.full(len(churned), np.nan)])
    order = np.argsort(seconds, kind="stable")
    micros = (year_start_s + seconds[order]) * 1e6
    return pa.table(
        {
            "user_id": pa.array(np.char.add("user_", np.char.zfill(user[order].astype(str), 5))),
            "event_type": pa.array(kinds[order]),
            "event_timestamp": pa.array(micros.astype(np.int64)).cast(pa.timestamp("us", tz="UTC")),
            "value": pa.array(values[order], from_pandas=True),
        }
    )


def ingest_in_fresh_database(server: str, paths: Sequence[Path]) -> list[LoadSummary]:
    """Ingest the files in order into a fresh database (each load's own end-to-end timing); all rows must load."""
    with fresh_database(server, "churn_bench_ingest") as url:
        summaries = [ingest_events(url, path) for path in paths]
    for summary in summaries:
        if summary.rows_loaded != summary.rows_read:
            raise RuntimeError(f"expected every row loaded, got {summary}")
    return summaries


def time_peer_copy(server: str, csv_path: Path) -> float:
    """Seconds for a plain CSV COPY of the same rows into a table with no index (what PostgreSQL can take)."""
    with fresh_database(server, "churn_bench_ingest") as url, psycopg.connect(url) as conn:
        conn.execute(PEER_TABLE)
        started = time.perf_counter()
        with conn.cursor().copy(PEER_COPY) as copy, csv_path.open("rb") as handle:
            while block := handle.read(1 << 20):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def median_ingest_rates(server: str, label: str, paths: Sequence[Path]) -> list[float]:
    """Median events/s of each file's load, over RUNS fresh databases that load the files in order."""
    runs = []
    for run in range(1, RUNS + 1):
        runs.append(ingest_in_fresh_database(server, paths))
        for i, summary in enumerate(runs[-1]):
            what = f"{label} run {run}" if i == 0 else f"  then {summary.rows_read:,} new events"
            console.print(
                f"  {what}: {summary.seconds:.2f} s ({summary.rows_per_second:,.0f} events/s, {summary.method})"
            )
    return [statistics.median(run[i].rows_per_second for run in runs) for i in range(len(paths))]


def median_peer_rate(server: str, csv_path: Path, events: int) -> float:
    seconds = []
    for run in range(1, RUNS + 1):
        seconds.append(time_peer_copy(server, csv_path))
        console.print(f"  peer run {run}: {seconds[-1]:.2f} s ({events / seconds[-1]:,.0f} events/s)")
    return events / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log the split of every load")
    parser.add_argument("--events", type=int, default=EVENTS, help=f"events in the file (default {EVENTS:,})")
    args = parser.parse_args()
    new_events = max(args.events * NEW_EVENTS // EVENTS, 1)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    # An embedded PostgreSQL it had to start is stopped at the end.
    with stack.running(Settings()) as servers, tempfile.TemporaryDirectory(prefix="churn-bench-") as folder:
        server = servers.database_url
        events = realistic_events(events=args.events)
        parquet_path, csv_path = Path(folder) / "events.parquet", Path(folder) / "events.csv"
        new_path = Path(folder) / "new_events.parquet"
        pq.write_table(events, parquet_path)
        pacsv.write_csv(events, csv_path)
        pq.write_table(realistic_events(seed=8, events=new_events, year_start_s=YEAR_START_S + YEAR_S), new_path)
        console.print(f"{events.num_rows:,} events of {USERS:,} users; {RUNS} runs per format, median reported")
        parquet, incremental = median_ingest_rates(server, "parquet ingest", [parquet_path, new_path])
        (csv,) = median_ingest_rates(server, "csv ingest", [csv_path])
        peer = median_peer_rate(server, csv_path, events.num_rows)
    table = Table(title=f"ingest of {events.num_rows:,} events (target {TARGET_EVENTS_PER_S:,} events/s)")
    for column in ("path", "median events/s", "vs target", "vs peer"):
        table.add_column(column, justify="right")
    rows = [
        ("parquet", parquet, True),
        ("csv", csv, True),
        (f"incremental: +{new_events:,} into {events.num_rows:,}", incremental, False),
        ("peer: plain COPY csv, no index", peer, True),
    ]
    for name, rate, has_target in rows:
        versus_target = f"{rate / TARGET_EVENTS_PER_S:.2f}x" if has_target else "-"
        table.add_row(name, f"{rate:,.0f}", versus_target, f"{rate / peer:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
