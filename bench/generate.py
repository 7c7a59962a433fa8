"""Events generated and loaded per second by `churn generate`, against the 500,000 events/s target.

For the default world (1,000 users, 365 days) and a wide one (100,000 users, 90 days), each into a fresh database,
repeated; prints the median. The peer, measured in the same run on the default world's events: the usual pandas
route (DataFrame -> to_csv -> COPY) into an index-less copy of raw.events.

    uv run python bench/generate.py [--repeats 3] [--skip-wide]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import pandas as pd
import psycopg

from bench._databases import fresh_database
from churn_platform import stack
from churn_platform.data.synthetic import simulator, world, world_model
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.settings import Settings

TARGET_EVENTS_PER_S = 500_000


def measure_generate(server: str, config: WorldConfig) -> tuple[int, float]:
    with fresh_database(server) as url:
        written = world.generate_world(url, config).written
    assert written is not None
    return written.events, written.seconds


def measure_pandas_peer(server: str, config: WorldConfig) -> tuple[int, float]:
    """Simulate the same world, then load its events the way a pandas user would: to_csv, then COPY."""
    with fresh_database(server) as url:
        started = time.perf_counter()
        state = simulator.new_world(config)
        events = simulator.simulate(config, state, config.days).events
        frame = pd.DataFrame(
            {
                "user_id": [f"u{i:07d}" for i in events.user_index],
                "event_type": pd.Categorical.from_codes(events.event_code, pd.Index(world_model.EVENT_TYPES)),
                "event_timestamp": pd.to_datetime(events.timestamp_us, unit="us", utc=True),
                "value": events.value,
            }
        )
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False)
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE peer_events (user_id text, event_type text, event_timestamp timestamptz,"
                         " value double precision)")  # fmt: skip
            with conn.cursor().copy("COPY peer_events FROM STDIN (FORMAT CSV)") as copy:
                copy.write(buffer.getvalue())
        return len(events), time.perf_counter() - started


def report(name: str, runs: list[tuple[int, float]]) -> float:
    rates = [n / s for n, s in runs]
    median = statistics.median(rates)
    print(f"{name:<44} {runs[0][0]:>12,} events  median {median:>11,.0f} events/s  "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip
    return median


def run(server: str, repeats: int, skip_wide: bool) -> None:
    default = WorldConfig()
    ours = report("churn generate, 1,000 users x 365 days", [measure_generate(server, default) for _ in range(repeats)])
    peer = report(
        "peer: pandas to_csv + COPY, same world", [measure_pandas_peer(server, default) for _ in range(repeats)]
    )
    print(f"{'':<44} ratio to peer: {ours / peer:.1f}x; to the {TARGET_EVENTS_PER_S:,}/s target: "
          f"{ours / TARGET_EVENTS_PER_S:.2f}x")  # fmt: skip
    if not skip_wide:
        wide = WorldConfig(users=100_000, days=90)
        runs = [measure_generate(server, wide) for _ in range(repeats)]
        rate = report("churn generate, 100,000 users x 90 days", runs)
        print(f"{'':<44} to the {TARGET_EVENTS_PER_S:,}/s target: {rate / TARGET_EVENTS_PER_S:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-wide", action="store_true", help="only the default world")
    args = parser.parse_args()

    with stack.running(Settings()) as servers:  # an embedded PostgreSQL it had to start is stopped at the end
        run(servers.database_url, args.repeats, args.skip_wide)


if __name__ == "__main__":
    main()
