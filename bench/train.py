"""Wall time and peak memory of one training run, per world size.

The run is `churn train` without the MLflow logging: the Feast training set, both candidates fitted and
calibrated, the test evaluation with permutation importance. It runs in a child process, so its peak resident
memory is its own (not the world generation's). Medians over `--repeats` runs.

    uv run python -m bench.train [--users 1000 100000] [--days 180] [--repeats 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from bench._databases import fresh_database
from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, snapshots
from churn_platform.settings import Settings, get_settings


def _train(url: str, results: Any) -> None:
    """One training run in this (child) process; its wall time and metrics go back through `results`."""
    os.environ["CHURN_DATABASE_URL"] = url
    get_settings.cache_clear()
    from churn_platform.training import pipeline

    started = time.perf_counter()
    settings = get_settings()
    result = pipeline.train(settings, stack.connect(settings, redis=True), register=False)
    seconds = time.perf_counter() - started
    trained = result.trained
    results.put((seconds, trained.rows, trained.candidate, trained.evaluation.roc_auc, trained.auc_to_oracle))


def child_peak_mib() -> float:
    """Peak resident memory of the largest child process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run(servers: Connections, users: int, days: int, repeats: int) -> None:
    with fresh_database(servers.database_url) as url:
        os.environ.update(CHURN_DATABASE_URL=url, CHURN_REDIS_URL=servers.redis)  # the training runs inherit them
        get_settings.cache_clear()
        settings = get_settings()
        started = time.perf_counter()
        world.generate_world(url, WorldConfig(users=users, days=days))
        until = snapshots.day_after_last_event(url)
        assert until is not None
        snapshots.refresh(url, settings, until)
        feast_repo.apply(settings, stack.connect(settings, redis=True))
        print(f"\n{users:,} users x {days} days (world, snapshots and labels in {time.perf_counter() - started:.0f} s)")
        context = multiprocessing.get_context("spawn")
        times, peaks = [], []
        for _ in range(repeats):
            results = context.Queue()
            child = context.Process(target=_train, args=(url, results))
            child.start()
            seconds, rows, candidate, auc, ratio = results.get()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"the training run failed (exit code {child.exitcode})")
            times.append(seconds)
            peaks.append(child_peak_mib())  # the largest child so far: runs are the same size, so it is this one
        print(f"  rows: {rows}; chose {candidate}; test AUC {auc:.4f} = {ratio or float('nan'):.3f} of the oracle")
        print(f"  one training run: wall time {statistics.median(times):.1f} s, peak memory {max(peaks):,.0f} MiB")
    get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--days", type=int, default=180, help="long enough for the split: train, 2 gaps, 2 windows")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    # Embedded PostgreSQL and Redis it had to start are stopped at the end.
    with stack.running(Settings(), redis=True) as servers:
        for users in args.users:
            run(servers, users, args.days, args.repeats)


if __name__ == "__main__":
    main()
