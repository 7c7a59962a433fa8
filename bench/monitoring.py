"""Monitoring run time: what `flows/monitor.py` does (`drift_runs.run_drift`, then `performance_runs.run_performance`)
over 7 days of served predictions for 100,000 users, against real PostgreSQL, the world's MLflow server and
Evidently. Target: one run in under 2 minutes on this machine.

The bench world of `--users` users x 120 days (`serving_peers/world.py`: a registered champion whose MLflow run
holds the drift reference; database `churn_bench_monitoring_<users>u_120d`, Redis db 12, data under the system temp
folder) is built once (about 6 minutes on 2 cores) and reused unless `--rebuild`. 32,000 users, because the drift
reference is up to `CHURN_MONITOR_REFERENCE_ROWS` (20,000) rows of the test window, and a model of 100,000 users
keeps all 20,000; a world of 2,000 users (built in a minute) keeps 1,304, and would time the reference's side of
Evidently's report and of the statistics too small. The world is prepared in a child process, so that no pooled
connection of Feast's stays open on its database, which is then copied (`CREATE DATABASE ... TEMPLATE`). In the copy,
the `--days` snapshot days ending at the newest labelled one are scaled to `--served-users` users each: their
snapshot and label rows cloned under new user ids (`<user>-c<k>`), and one prediction-log row per user and day
written as the service writes them (`copy_lines` + the writer's COPY), with the champion's probability for the row's
features, as if served that day. So the drift run compares all those rows with the reference, the realised
performance evaluates them all against their outcomes, and the estimate reads all their scores.

Medians over `--repeat` runs of: each whole run and their sum (the figure against the target), each run's steps
(timed through `on_step`), and so the Evidently part (`reports.drift_report` + `reports.save` on the
`CHURN_MONITOR_REPORT_ROWS` sampled rows, and the classification report); separately, the stored statistics alone
(`monitoring.drift.feature_drift` on every row) and, once, Evidently's drift report on every current row: why the
drift report samples. The copy database is dropped, and Redis db 12 flushed, at the end (`--drop-world`: the world
too).

    uv run --frozen python -m bench.monitoring [--users 32000] [--served-users 100000] [--days 7] [--repeat 3]
        [--rebuild] [--drop-world]

With nothing configured, the embedded PostgreSQL and Redis are used; e.g. on a machine with its own servers:
`CHURN_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres CHURN_REDIS_URL=redis://127.0.0.1:6379/12`.
"""

from __future__ import annotations

# Before scikit-learn: the package sets OpenMP's wait policy, which libgomp reads when it loads.
import churn_platform  # noqa: F401

# isort: split
import argparse
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import redis
from psycopg import sql

from bench.serving_peers.world import DAYS, BenchWorld, bench_settings, drop_world, prepare_world
from churn_platform import db, stack
from churn_platform.connections import Connections
from churn_platform.features.catalog import Catalog, catalog_from_settings
from churn_platform.features.population import snapshot_time
from churn_platform.features.snapshots import labels_table_name, table_name
from churn_platform.monitoring import drift, drift_runs, performance_runs, reports, served
from churn_platform.serving.as_of_scores import pipeline_scores
from churn_platform.serving.models import LoadedModel, load_version
from churn_platform.serving.prediction_log.rows import copy_lines, new_request_id
from churn_platform.serving.prediction_log.writer import COPY_SQL
from churn_platform.settings import Settings, get_settings
from churn_platform.training import registry

TARGET_S = 120.0
ONLINE_DB = 12  # a Redis database of its own: bench.serving and bench.features share db 10
DATABASE_PREFIX = "churn_bench_monitoring"
DATA_ROOT = Path(tempfile.gettempdir()) / "churn-bench-monitoring"
BATCH_USERS = 100  # users per logged request, as a /predict_batch call
SERVED_HOURS = 8  # a day's predictions are logged this long after its snapshot (before any materialization we know)
EVIDENTLY_STEP = "writing the Evidently report"  # the step name both runs give the report (`on_step`)

# The (user, day) rows served in the copy: every snapshot row of the days (k = 0) and clones k = 1, 2, ... of them,
# up to `users` per day; a clone's user id is `<user>-c<k>`.
SERVED_SQL = """
CREATE TEMPORARY TABLE bench_served AS
SELECT user_id, CASE WHEN k = 0 THEN user_id ELSE user_id || '-c' || k END AS served_id, event_timestamp, k
FROM (
    SELECT s.user_id, s.event_timestamp, k,
           row_number() OVER (PARTITION BY s.event_timestamp ORDER BY k, s.user_id) AS n
    FROM {snapshots} s CROSS JOIN generate_series(0, %(clones)s) AS k
    WHERE s.event_timestamp = ANY(%(days)s)
) numbered
WHERE n <= %(users)s
"""
POPULATION_SQL = """
SELECT event_timestamp, count(*) FROM {snapshots} WHERE event_timestamp = ANY(%(days)s) GROUP BY 1 ORDER BY 1
"""
CLONE_SNAPSHOTS_SQL = """
INSERT INTO {snapshots} (user_id, event_timestamp, {columns})
SELECT c.served_id, s.event_timestamp, {source_columns}
FROM bench_served c JOIN {snapshots} s USING (user_id, event_timestamp) WHERE c.k > 0
"""
CLONE_LABELS_SQL = """
INSERT INTO {labels} (user_id, event_timestamp, horizon_days, churned)
SELECT c.served_id, l.event_timestamp, l.horizon_days, l.churned
FROM bench_served c JOIN {labels} l USING (user_id, event_timestamp) WHERE c.k > 0
"""
ORIGINAL_FEATURES_SQL = (
    "SELECT user_id, event_timestamp, {columns} FROM {snapshots} WHERE event_timestamp = ANY(%(days)s)"
)
SERVED_ROWS_SQL = "SELECT user_id, served_id, event_timestamp FROM bench_served ORDER BY event_timestamp, served_id"


class MonitoringWorld(BenchWorld):
    """The serving bench's world under names of its own: its database, data folder and Redis db are this bench's."""

    prefix = DATABASE_PREFIX
    online_db = ONLINE_DB
    data_root = DATA_ROOT


# --- the world and its scaled copy ------------------------------------------------------------------------------------


def progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {what}  (load average {os.getloadavg()[0]:.2f})", flush=True)


def prepare_in_child(bench: MonitoringWorld, rebuild: bool) -> str:
    """`prepare_world` in a process of its own: Feast's registry engine keeps pooled connections to the world's
    database for the life of a process, and a database with a session cannot be copied."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_prepare, bench, rebuild).result()


def _prepare(bench: MonitoringWorld, rebuild: bool) -> str:
    return prepare_world(bench, bench_settings(bench), rebuild)


@contextmanager
def database_copy(bench: MonitoringWorld) -> Iterator[str]:
    """A throw-away copy of the world's database (its URL), dropped on exit."""
    name = f"{bench.name}_copy_{uuid.uuid4().hex[:8]}"
    admin = psycopg.conninfo.make_conninfo(bench.server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(bench.name)))
    try:
        yield psycopg.conninfo.make_conninfo(bench.server_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Served:
    days: list[date]
    base_users: list[int]  # the world's own users on each day's snapshot
    rows: int  # prediction-log rows written
    model_version: str


def scale_served_population(url: str, settings: Settings, connections: Connections, days: int, users: int) -> Served:
    """Serve `users` users on each of the `days` snapshot days ending at the newest labelled one, in the copy."""
    catalog = catalog_from_settings(settings)
    last = performance_runs.newest_label_day(url, settings)
    if last is None:
        raise SystemExit("the world has no labelled snapshot: nothing to evaluate")
    window = [last - timedelta(days=days - 1 - k) for k in range(days)]
    times = [snapshot_time(day) for day in window]
    registered = drift_runs.resolve_version(settings, connections, None)
    model = load_version(connections.mlflow, registered.name, registered.version)
    snapshots, labels = table_name(catalog), labels_table_name(catalog)
    with db.connect(url) as conn:
        population = conn.execute(sql.SQL(POPULATION_SQL).format(snapshots=snapshots), {"days": times}).fetchall()
        if len(population) != days:
            raise SystemExit(f"{len(population)} of the {days} snapshot days ending {last} have rows")
        base = [count for _, count in population]
        clones = math.ceil(users / min(base)) - 1
        conn.execute(sql.SQL(SERVED_SQL).format(snapshots=snapshots), {"clones": clones, "days": times, "users": users})
        scores = _original_scores(conn, catalog, snapshots, times, model)
        columns = [sql.Identifier(f.name) for f in catalog.features]
        conn.execute(
            sql.SQL(CLONE_SNAPSHOTS_SQL).format(
                snapshots=snapshots,
                columns=sql.SQL(", ").join(columns),
                source_columns=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in columns),
            )
        )
        conn.execute(sql.SQL(CLONE_LABELS_SQL).format(labels=labels))
        served_rows = pd.DataFrame(
            conn.execute(SERVED_ROWS_SQL).fetchall(), columns=["user_id", "served_id", "event_timestamp"]
        )
        conn.commit()
    served_rows = served_rows.merge(scores, on=["user_id", "event_timestamp"], how="left", validate="many_to_one")
    _log_as_served(url, served_rows, registered.version)
    with psycopg.connect(url, autocommit=True) as conn:  # as autovacuum would, after a day's worth of writes
        for table in (snapshots, labels, sql.SQL("serving.prediction_log")):
            conn.execute(sql.SQL("ANALYZE {}").format(table))
    return Served(window, base, len(served_rows), registered.version)


def _original_scores(
    conn: psycopg.Connection, catalog: Catalog, snapshots: sql.Composed, times: list[datetime], model: LoadedModel
) -> pd.DataFrame:
    """The champion's P(churn) of each original (user, snapshot) row of the days: its clones have its features."""
    names = [f.name for f in catalog.features]
    statement = sql.SQL(ORIGINAL_FEATURES_SQL).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, names)), snapshots=snapshots
    )
    with conn.cursor() as cur:
        cur.execute(statement, {"days": times})
        features = pd.DataFrame(cur.fetchall(), columns=["user_id", "event_timestamp", *names])
    features["p_churn"] = pipeline_scores(model, features)
    return features[["user_id", "event_timestamp", "p_churn"]]


def _log_as_served(url: str, rows: pd.DataFrame, version: str) -> None:
    """One prediction-log row per served (user, day), in requests of BATCH_USERS, as the service's writer logs them."""
    route = (None, "champion", "champion", version)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for _, day in rows.groupby("event_timestamp", sort=True):
            at: datetime = day["event_timestamp"].iloc[0].to_pydatetime()
            lines: list[str] = []
            ids, scores = day["served_id"].tolist(), day["p_churn"].astype(float).tolist()
            predicted_at = at + timedelta(hours=SERVED_HOURS)
            for start in range(0, len(ids), BATCH_USERS):
                count = len(ids[start : start + BATCH_USERS])
                lines += copy_lines(
                    new_request_id(), predicted_at + timedelta(milliseconds=start), 1.0, "predict_batch",
                    ids[start : start + BATCH_USERS], [route] * count, scores[start : start + BATCH_USERS],
                    ["0" * 16] * count, [at] * count,
                )  # fmt: skip
            with cur.copy(COPY_SQL) as copy:
                copy.write("".join(lines))
        conn.commit()


# --- measuring --------------------------------------------------------------------------------------------------------


@dataclass
class Steps:
    """An `on_step` callback that keeps when each step began; a step lasts until the next one or the run's end."""

    marks: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, description: str) -> None:
        self.marks.append((description, time.perf_counter()))

    def durations(self, ended: float) -> dict[str, float]:
        ends = [t for _, t in self.marks[1:]] + [ended]
        return {name: end - began for (name, began), end in zip(self.marks, ends, strict=True)}


@dataclass(frozen=True)
class Run:
    drift_s: float
    performance_s: float
    drift_steps: dict[str, float]
    performance_steps: dict[str, float]
    drift_run: drift_runs.DriftRun
    performance_run: performance_runs.PerformanceRun

    @property
    def total_s(self) -> float:
        return self.drift_s + self.performance_s


def monitoring_run(settings: Settings, connections: Connections) -> Run:
    """One monitoring run as the flow makes it: drift and data quality, then performance (alert delivery aside:
    no webhook is configured)."""
    drift_steps, performance_steps = Steps(), Steps()
    began = time.perf_counter()
    found = drift_runs.run_drift(settings, connections, on_step=drift_steps)
    between = time.perf_counter()
    evaluated = performance_runs.run_performance(settings, connections, on_step=performance_steps)
    ended = time.perf_counter()
    return Run(
        between - began, ended - between, drift_steps.durations(between), performance_steps.durations(ended), found,
        evaluated,
    )  # fmt: skip


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


@dataclass(frozen=True)
class Separately:
    """The stored statistics and Evidently's drift report, each on every current row of the run's window."""

    current_rows: int
    feature_drift_s: list[float]
    evidently_all_rows_s: float


def separately(settings: Settings, connections: Connections, run: drift_runs.DriftRun, repeat: int) -> Separately:
    registered = drift_runs.resolve_version(settings, connections, run.model_version)
    reference = registry.logged_reference(connections.mlflow, registered.run_id)
    assert reference is not None
    catalog = catalog_from_settings(settings)
    current = served.served_features(connections.database_url, catalog, run.window)
    features = [f for f in catalog.features if f.name in reference.columns]
    numeric = [f.name for f in features if f.dtype != "text"]
    categorical = [f.name for f in features if f.dtype == "text"]
    thresholds = drift.Thresholds(
        settings.monitor_drift_alpha, settings.monitor_psi_threshold, settings.monitor_drift_share
    )
    ours = [
        timed(lambda: drift.feature_drift(reference, current, numeric, categorical, thresholds)) for _ in range(repeat)
    ]

    def evidently_on_every_row() -> None:
        snapshot = reports.drift_report(
            reference, current, numeric=numeric, categorical=categorical, psi_threshold=settings.monitor_psi_threshold,
            drift_share=settings.monitor_drift_share, name="every row", timestamp=run.window.end, metadata={},
        )  # fmt: skip
        html = settings.reports_folder / "every-row" / "drift.html"
        reports.save(snapshot, html, settings.reports_folder, f"{registered.name}-every-row")

    return Separately(len(current), ours, timed(evidently_on_every_row))


# --- reporting --------------------------------------------------------------------------------------------------------


LABEL_WIDTH = 80


def row(label: str, values: list[float]) -> str:
    """A label, the median of the values and each value in brackets, in run order."""
    each = " / ".join(f"{v:.1f}" for v in values)
    return f"{label:<{LABEL_WIDTH}}{statistics.median(values):7.2f} s  ({each})"


def print_figures(runs: list[Run], alone: Separately, settings: Settings, served_rows: int) -> None:
    last = runs[-1]
    performance = last.performance_run
    realised = performance.overall.rows if performance.overall is not None else 0
    estimated = sum(e.rows for e in performance.estimates.values())
    sample = min(settings.monitor_report_rows, last.drift_run.current_rows)
    print(f"\nmedian of {len(runs)} monitoring runs (each run's figure in brackets, in order)")
    print(row(f"run_drift: {last.drift_run.current_rows:,} current rows against {last.drift_run.reference_rows:,}"
              " reference rows", [r.drift_s for r in runs]))  # fmt: skip
    for name in last.drift_steps:
        print(row(f"    {name}", [r.drift_steps.get(name, 0.0) for r in runs]))
    print(row(f"run_performance: {realised:,} rows with outcomes, {estimated:,} scores estimated",
              [r.performance_s for r in runs]))  # fmt: skip
    for name in last.performance_steps:
        print(row(f"    {name}", [r.performance_steps.get(name, 0.0) for r in runs]))
    totals = [r.total_s for r in runs]
    total = statistics.median(totals)
    print(row("monitoring run: run_drift + run_performance", totals))
    verdict = "met" if total < TARGET_S else "not met"
    print(f"=> {served_rows:,} prediction-log rows monitored in {total:.1f} s (target < {TARGET_S:.0f} s: {verdict})")

    drift_report = [r.drift_steps[EVIDENTLY_STEP] for r in runs]
    classification = [r.performance_steps.get(EVIDENTLY_STEP, 0.0) for r in runs]
    evidently = [a + b for a, b in zip(drift_report, classification, strict=True)]
    print("\nwhere the time goes")
    print(row(f"Evidently drift report + save, {sample:,} sampled current rows (run_drift)", drift_report))
    print(row(f"Evidently classification report + save, {realised:,} rows (run_performance)", classification))
    print(row(f"Evidently, both reports ({statistics.median(evidently) / total:.0%} of the run)", evidently))
    print(row(f"stored drift statistics alone: feature_drift on all {alone.current_rows:,} rows",
              alone.feature_drift_s))  # fmt: skip
    every_row = alone.evidently_all_rows_s
    print(row(f"Evidently drift report + save on all {alone.current_rows:,} current rows (once)", [every_row]))
    print(f"=> Evidently on every current row: {every_row / statistics.median(drift_report):.1f}x the sampled report,"
          f" {every_row / statistics.median(alone.feature_drift_s):.0f}x the stored statistics on the same rows;"
          f" the run samples {settings.monitor_report_rows:,} (CHURN_MONITOR_REPORT_ROWS)")  # fmt: skip


# --- the run ----------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per reference download
    with stack.running(Settings(), redis=True) as servers:
        bench = MonitoringWorld(args.users, servers.database_url, servers.redis)
        settings = bench_settings(bench)
        print(f"monitoring bench: base world {bench.users:,} users x {DAYS} days (database {bench.name});"
              f" {args.served_users:,} served users x {args.days} days; {os.cpu_count()} cores")  # fmt: skip
        try:
            measure(bench, settings, args)
        finally:
            stack.down(settings)  # the world's MLflow server
            redis.Redis.from_url(bench.redis_url).flushdb()
            if args.drop_world:
                drop_world(bench, settings)
            get_settings.cache_clear()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; whole bench"
          f" {time.perf_counter() - began:.0f} s")  # fmt: skip


def measure(bench: MonitoringWorld, settings: Settings, args: argparse.Namespace) -> None:
    progress("preparing the world (child process)")
    print(f"world: {prepare_in_child(bench, args.rebuild)}")
    started = time.perf_counter()
    with database_copy(bench) as url, tempfile.TemporaryDirectory(prefix="churn-bench-reports-") as folder:
        copied = time.perf_counter() - started
        os.environ.update({"CHURN_DATABASE_URL": url, "CHURN_REPORTS_DIR": folder})
        get_settings.cache_clear()
        settings = get_settings()
        with stack.running(settings, mlflow=True) as connections:
            progress(f"scaling the served population in the copy ({copied:.1f} s to copy)")
            started = time.perf_counter()
            served_days = scale_served_population(url, settings, connections, args.days, args.served_users)
            scaled = time.perf_counter() - started
            print(f"copy: CREATE DATABASE ... TEMPLATE {copied:.1f} s; scaled in {scaled:.1f} s: snapshot days"
                  f" {served_days.days[0]}..{served_days.days[-1]}, {min(served_days.base_users):,}-"
                  f"{max(served_days.base_users):,} world users a day cloned to {args.served_users:,},"
                  f" {served_days.rows:,} prediction-log rows of v{served_days.model_version}")  # fmt: skip
            print(f"load average before the runs: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            runs = []
            for k in range(args.repeat):
                progress(f"monitoring run {k + 1} of {args.repeat}")
                runs.append(monitoring_run(settings, connections))
            progress("the stored statistics and Evidently on every row, separately")
            alone = separately(settings, connections, runs[-1].drift_run, args.repeat)
        print_figures(runs, alone, settings, served_days.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=32_000, help="users in the base world (cloned to --served-users)")
    parser.add_argument("--served-users", type=int, default=100_000, help="users served on each snapshot day")
    parser.add_argument("--days", type=int, default=7, help="snapshot days served, ending at the newest labelled one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build the world again even if it exists")
    parser.add_argument("--drop-world", action="store_true", help="drop the world's databases and data at the end")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
