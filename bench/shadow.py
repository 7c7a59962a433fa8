"""What shadow scoring costs the prediction service: `/predict` and `/predict_batch` during an A/B experiment, with
CHURN_SERVE_SHADOW_SCORING off and on, in alternating rounds on the same world, as a ratio on / off.

The world is the serving bench's (`bench.serving`: `--users` users x 120 days, PostgreSQL database
`churn_bench_serving_<users>u_120d`, Redis db 10, its own MLflow server), reused unless `--rebuild`. The experiment
splits users 50 / 50 between the champion and a second registered version of the same model (a copy: the shadow
costs exactly one more scoring of that model; a challenger of another kind costs its own scoring instead). Each
round starts the service with shadow scoring off, then on (a restart each: it is a service setting), and runs wrk at
one connection: `/predict` (one user) and `/predict_batch` (100 users), `--seconds` each after a warm-up. The figure
is the median over `--rounds` rounds of each setting's requests/s and p50, and the median of each round's ratio
on / off.

    uv run python -m bench.shadow [--seconds 20] [--rounds 5] [--users 5000] [--rebuild]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from bench.serving_peers.service_probes import wait_ready
from bench.serving_peers.world import BenchWorld, bench_settings, prepare_world, write_user_ids
from bench.serving_peers.wrk import Load, WrkResult, measure
from churn_platform import stack
from churn_platform.experiments import records
from churn_platform.settings import Settings, get_settings
from churn_platform.training import registry

EXPERIMENT = "shadow-bench"
BATCH_USERS = 100
COPY_ALIAS = "shadow_bench_copy"  # the second version, found again when the world is reused

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Round:
    shadow: bool
    predict: WrkResult
    batch: WrkResult
    shadow_rows: int  # log rows with a shadow score after the round (none with it off)


def second_version(settings: Settings) -> str:
    """A second registered version of the champion's model (registered once, then found by its alias)."""
    from mlflow import MlflowClient

    uri = stack.mlflow_tracking_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    references = registry.model_references(uri, settings.model_name)
    if COPY_ALIAS in references.aliases:
        return references.aliases[COPY_ALIAS]
    champion = client.get_model_version(settings.model_name, references.aliases["champion"])
    copy = client.create_model_version(
        settings.model_name, str(champion.source), run_id=champion.run_id, tags=dict(champion.tags),
        model_id=str(champion.source).removeprefix("models:/"),
    )  # fmt: skip
    client.set_registered_model_alias(settings.model_name, COPY_ALIAS, copy.version)
    return str(copy.version)


def start_experiment(settings: Settings, database_url: str, variant: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM serving.experiments WHERE name = %s", (EXPERIMENT,))
        conn.execute("UPDATE serving.experiments SET stopped_at = now() WHERE stopped_at IS NULL")
    uri = stack.mlflow_tracking_uri(settings)
    records.start_experiment(database_url, EXPERIMENT, variant, 0.5,
                             registered=registry.model_references(uri, settings.model_name))  # fmt: skip


def shadow_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT count(*) FROM serving.prediction_log WHERE shadow_probability IS NOT NULL")
        row = found.fetchone()
    return 0 if row is None else int(row[0])


def one_round(shadow: bool, ids: Path, seconds: float, database_url: str) -> Round:
    """Start the service with shadow scoring `shadow`, measure both routes, stop it."""
    os.environ["CHURN_SERVE_SHADOW_SCORING"] = "true" if shadow else "false"
    get_settings.cache_clear()
    settings = get_settings()
    service = stack.components(settings)[-1]
    url = service.start()
    try:
        wait_ready(url, settings.serve_start_timeout_s)
        time.sleep(settings.serve_poll_interval_s)  # the experiment is read at start; one poll more for certain
        predict = measure(Load(f"{url}/predict", ids, 1), seconds)[1]
        batch = measure(Load(f"{url}/predict_batch", ids, 1, BATCH_USERS), seconds)[1]
    finally:
        service.stop()
    return Round(shadow, predict, batch, shadow_rows(database_url))


def report(rounds: list[Round]) -> None:
    """Per route: each setting's median req/s and p50, and the median of each round's on / off ratio (the two runs
    of a round are neighbours in time: a load that moves the machine moves both)."""
    table = Table(title="shadow scoring during an A/B experiment (1 connection, medians over rounds)")
    for column in ("route", "off: req/s", "on: req/s", "req/s on / off", "off: p50 ms", "on: p50 ms", "p50 on / off"):
        table.add_column(column, justify="right")
    off_rounds = [r for r in rounds if not r.shadow]
    on_rounds = [r for r in rounds if r.shadow]
    for route in ("predict", "batch"):
        off = [getattr(r, route) for r in off_rounds]
        on = [getattr(r, route) for r in on_rounds]
        rate = statistics.median(b.ok_per_s / a.ok_per_s for a, b in zip(off, on, strict=True))
        p50 = statistics.median(b.p50_ms / a.p50_ms for a, b in zip(off, on, strict=True))
        name = "/predict" if route == "predict" else f"/predict_batch ({BATCH_USERS} users)"
        rates = [statistics.median(r.ok_per_s for r in runs) for runs in (off, on)]
        p50s = [statistics.median(r.p50_ms for r in runs) for runs in (off, on)]
        table.add_row(name, f"{rates[0]:,.0f}", f"{rates[1]:,.0f}", f"{rate:.3f}", f"{p50s[0]:.2f}", f"{p50s[1]:.2f}",
                      f"{p50:.3f}")  # fmt: skip
    console.print(table)
    for r in rounds:
        console.print(
            f"shadow {'on ' if r.shadow else 'off'}: /predict {r.predict.ok_per_s:,.0f} req/s"
            f" (p50 {r.predict.p50_ms:.2f} ms), /predict_batch {r.batch.ok_per_s:,.0f} req/s"
            f" (p50 {r.batch.p50_ms:.2f} ms); other processes {r.predict.other_cpu:.2f} / {r.batch.other_cpu:.2f}"
            f" cores; log rows with a shadow score so far {r.shadow_rows:,}"
        )


def run(args: argparse.Namespace) -> None:
    with stack.running(Settings(), redis=True) as servers:
        bench = BenchWorld(args.users, servers.database_url, servers.redis)
        settings = bench_settings(bench)
        try:
            console.print(f"world: {prepare_world(bench, settings, args.rebuild)}")
            stack.up(settings, only=("postgres", "redis", "mlflow"))
            ids = settings.data_dir / "user_ids.txt"
            write_user_ids(settings, ids, bench.users)
            variant = second_version(settings)
            start_experiment(settings, bench.database_url, variant)
            console.print(f"experiment {EXPERIMENT}: champion against version {variant} (a copy), 50 / 50")
            rounds = []
            for number in range(args.rounds):
                for shadow in (False, True):
                    console.print(f"[dim]round {number + 1}: shadow scoring {'on' if shadow else 'off'}[/]")
                    rounds.append(one_round(shadow, ids, args.seconds, bench.database_url))
            report(rounds)
            if rounds[-1].shadow_rows == 0:
                raise SystemExit("no log row holds a shadow score: shadow scoring did not run")
        finally:
            records.stop_experiment(bench.database_url, EXPERIMENT)
            stack.down(settings)
            get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="length of each measured wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (off, on)")
    parser.add_argument("--users", type=int, default=5_000, help="users in the bench world")
    parser.add_argument("--rebuild", action="store_true", help="build the world again even if it exists")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
