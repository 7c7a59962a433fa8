"""Wall time and peak memory of one training run, per world size.

The run is `churn train` without the MLflow logging: the Feast training set, both candidates fitted and
calibrated, the test evaluation with permutation importance. It runs in a child process, so its peak resident
memory is its own (not the world generation's). Medians over `--repeats` runs.

`--busy N` keeps N other processes spinning during each run, as on a machine shared with the database or anything
else. `--wait-policy passive default active` times the run with each OpenMP wait policy in the child's environment
and prints the ratios to `passive`, the platform's setting (src/churn_platform/__init__.py): `default` is the
variable set empty, which the platform leaves as it is and libgomp, after a warning ("Invalid value"), reads as
unset (threads spin a while, then sleep); `active` keeps them spinning.

    uv run python -m bench.train [--users 1000 100000] [--days 180] [--repeats 1] [--busy 0]
        [--wait-policy passive default active]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def busy_cores(processes: int) -> Iterator[None]:
    """`processes` other processes spinning for the length of the block."""
    spinning: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            spinning.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


@contextmanager
def wait_policy(policy: str) -> Iterator[None]:
    """OMP_WAIT_POLICY for the processes started in the block (`default`: empty), restored after it."""
    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = "" if policy == "default" else policy.upper()
    try:
        yield
    finally:
        if before is None:
            del os.environ["OMP_WAIT_POLICY"]
        else:
            os.environ["OMP_WAIT_POLICY"] = before


def timed_run(url: str, policy: str, busy: int) -> tuple[float, Any]:
    """One training run in a child process started with the OpenMP wait policy, while `busy` processes spin."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_train, args=(url, results))
    with busy_cores(busy), wait_policy(policy):
        child.start()  # the spawned child reads the policy before it loads libgomp
        while True:
            try:
                seconds, *figures = results.get(timeout=1.0)
                break
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the training run failed (exit code {child.exitcode})") from None
        child.join()
    return seconds, figures


def run(servers: Connections, users: int, days: int, repeats: int, busy: int, policies: list[str]) -> None:
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
        medians: dict[str, float] = {}
        for policy in policies:
            times, peaks = [], []
            for _ in range(repeats):
                seconds, (rows, candidate, auc, ratio) = timed_run(url, policy, busy)
                times.append(seconds)
                peaks.append(child_peak_mib())  # the largest child so far: runs are the same size, so it is this one
            medians[policy] = statistics.median(times)
            print(f"  rows: {rows}; chose {candidate}; test AUC {auc:.4f} = {ratio or float('nan'):.3f} of the oracle")
            print(
                f"  one training run (OpenMP wait policy {policy}, {busy} other processes spinning): wall time"
                f" {medians[policy]:.1f} s, peak memory {max(peaks):,.0f} MiB"
            )
        for policy in [p for p in policies if p != "passive"] if "passive" in medians else []:
            print(f"  {policy} / passive wall time: {medians[policy] / medians['passive']:.2f}x")
    get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--days", type=int, default=180, help="long enough for the split: train, 2 gaps, 2 windows")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="other processes spinning during each run")
    parser.add_argument("--wait-policy", nargs="+", choices=["passive", "default", "active"], default=["passive"])
    args = parser.parse_args()
    # Embedded PostgreSQL and Redis it had to start are stopped at the end.
    with stack.running(Settings(), redis=True) as servers:
        for users in args.users:
            run(servers, users, args.days, args.repeats, args.busy, args.wait_policy)


if __name__ == "__main__":
    main()
