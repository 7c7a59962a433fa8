"""Prediction-service figures under load from wrk, each next to its peer measured in the same run.

The service is the platform's BentoML service (`bentos/churn_service`) as the local stack starts it, over a trained
world of `--users` users x 120 days (PostgreSQL database `churn_bench_serving_<users>u_120d`, Redis db 10, an
embedded MLflow server with its data under the system temp folder), reused across runs unless `--rebuild`. wrk runs
in a second process on the same 2 cores, one thread, cycling through real user ids of the latest snapshot
(`serving_peers/users.lua`); every point runs `--seconds` after a 5 s warm-up at the same settings, and its p50/p99
come from wrk's `--latency` distribution.

- `/predict`: p50/p99 and req/s at each `--connections` count, the worker's resident memory after each run, and
  p99 at a paced ~200 req/s (wrk has no rate option: each of 8 connections waits between requests; the achieved
  rate is reported). Targets: p50 <= 2 ms at 1 connection, p99 <= 20 ms at ~200 req/s.
- `/predict_batch`, 100 users per request: p50/p99 and predictions/s at 1 and 4 connections (target 50,000/s),
  each next to the bare BentoML services answering 100 constants at the same settings (BentoML's own ceiling).
- Peers, each run right after ours at the same connection count (the machine may be shared: its load moves the
  figures, so neighbours in time are compared): a bare BentoML service answering a constant with the same worker
  count, stock (target: ours >= 0.7x its req/s) and with the service's BentoML choices (access log and tracing
  off, its request models, answers encoded by orjson: the same BentoML layers as ours, for comparison), and the
  path a user would otherwise build, `feast serve` for the features plus `mlflow models serve` for the champion
  behind a small Starlette gateway (`serving_peers/gateway.py`; target: ours >= 3x), with `feast serve`'s default
  worker restart every 1,000 requests and with restarts turned off.
Each run also reports the CPU that processes outside the bench took meanwhile.

    uv run python -m bench.serving [--seconds 60] [--connections 1 4 16] [--users 5000] [--rebuild] [--skip-peers]
        [--batch-only] [--batch-connections 1 4]

The service runs with `CHURN_SERVE_WORKERS` workers (default 1), and the bare BentoML peers with as many; e.g.
`CHURN_SERVE_WORKERS=2 uv run python -m bench.serving --batch-only --batch-connections 4 8`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from bench.serving_peers.servers import (
    BARE_PEER,
    FEAST_DEFAULT_MAX_REQUESTS,
    STOCK_PEER,
    PeerServer,
    running_bare_peers,
    running_peers,
)
from bench.serving_peers.service_probes import (
    logged_predictions,
    service_worker_connections,
    service_worker_rss_mib,
    wait_ready,
)
from bench.serving_peers.world import DAYS, BenchWorld, bench_settings, prepare_world, write_user_ids
from bench.serving_peers.wrk import WARMUP_S, Load, WrkResult, measure
from churn_platform import stack
from churn_platform.settings import Settings, get_settings

BATCH_USERS = 100
BATCH_CONNECTIONS = (1, 4)
PACED_RATE = 200
PACED_CONNECTIONS = 8

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)  # piped: not 80 columns


# --- results ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One measured point, the warm-up before it, and the service worker's memory after it."""

    warmup: WrkResult
    result: WrkResult
    rss_mib: float
    connections_per_worker: list[int]  # sampled mid-run, most first (empty if the sample failed)

    @property
    def answered(self) -> int:
        """Requests answered with a 2xx, warm-up included."""
        return sum(r.requests - r.non_2xx for r in (self.warmup, self.result))


@dataclass(frozen=True)
class Peer:
    """A peer's `/predict` runs, one per connection count."""

    name: str
    results: list[WrkResult]
    target: float | None  # ours / peer at least this (None: for comparison only)


@dataclass(frozen=True)
class ServiceFigures:
    """Everything measured: our service's points, and each peer's `/predict` runs next to ours."""

    rss_at_start_mib: float
    predict: list[Point]
    paced: Point | None  # None with --batch-only, as `predict` is empty
    paced_delay_ms: int
    batch: list[Point]
    bare_batch: list[Peer]  # the bare BentoML services' `/predict_batch`, after each of ours (none if skipped)
    peers: list[Peer]

    @property
    def answered(self) -> int:
        """Predictions of ours wrk saw answered, warm-ups included."""
        singles = sum(point.answered for point in [*self.predict, *([self.paced] if self.paced else [])])
        return singles + BATCH_USERS * sum(point.answered for point in self.batch)


# --- reporting --------------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


PEERS_LEGEND = """\
  bare BentoML, stock: BentoML with its defaults, {workers} worker(s), async APIs answering constants
    (serving_peers/bare_service.py); no timer fix, no gc.freeze.
  bare BentoML: the same constants with the service's BentoML choices (access log and tracing off, its request
    models, answers encoded once by orjson): what BentoML itself costs ours per request.
  peer path: `feast serve` (defaults: 1 worker, restarted every {max_requests:,} requests, --max-requests, plus up to
    50 of jitter) + `mlflow models serve -m models:/<name>@champion --env-manager local` (1 worker) + the gateway
    (serving_peers/gateway.py: Starlette under 1 uvicorn worker, httpx.AsyncClient, no access log).
  peer path, no restarts: the same with `feast serve --max-requests 0`."""
OTHERS_CPU_NOTE = (
    "other CPU: cores kept busy during a measured run by processes this bench did not start, of {cores}: other users"
    " of the machine, and the shared PostgreSQL and Redis servers' work for the bench (the prediction log, feature"
    " reads), so an upper bound on what other users took from the server and wrk."
)
LATENCY_COLUMNS = ("p50 ms", "p99 ms", "max ms", "errors", "other CPU")  # latency_cells, in this order
TEXT_COLUMNS = frozenset({"load", "server", "errors", "target"})


def titled_table(title: str, columns: Sequence[str]) -> Table:
    """A table whose text columns are left-aligned and number columns right-aligned."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    return table


def latency_cells(result: WrkResult) -> list[str]:
    return [
        f"{result.p50_ms:.2f}", f"{result.p99_ms:.2f}", f"{result.max_ms:.1f}", result.problems,
        f"{result.other_cpu:.2f}",
    ]  # fmt: skip


def predict_table(points: Sequence[Point], paced: Point, paced_delay: int) -> Table:
    """One row per connection count and one for the paced run, with the worker's memory after each."""
    table = titled_table(
        "/predict (1 user per request)",
        ("load", "req/s", *LATENCY_COLUMNS, "worker RSS after", "target"),
    )
    for point in points:
        result = point.result
        target = f"p50 <= 2 ms: {verdict(result.p50_ms <= 2)}" if result.connections == 1 else ""
        load = f"{result.connections} connection{'s' if result.connections > 1 else ''}"
        table.add_row(load, f"{result.ok_per_s:,.0f}", *latency_cells(result), f"{point.rss_mib:,.0f} MiB", target)
    table.add_row(
        f"paced ~{PACED_RATE}/s ({PACED_CONNECTIONS} conn., {paced_delay} ms pause)", f"{paced.result.ok_per_s:,.0f}",
        *latency_cells(paced.result), f"{paced.rss_mib:,.0f} MiB",
        f"p99 <= 20 ms: {verdict(paced.result.p99_ms <= 20)}",
    )  # fmt: skip
    return table


def batch_table(points: Sequence[Point], bare: Sequence[Peer]) -> Table:
    """Ours at each connection count, then each bare BentoML service's constant answers at the same settings."""
    table = titled_table(
        f"/predict_batch ({BATCH_USERS} users per request)",
        (
            "server",
            "connections",
            "per worker",
            "req/s",
            "predictions/s",
            *LATENCY_COLUMNS,
            "worker RSS after",
            "target",
        ),
    )
    for point in points:
        result = point.result
        per_s = result.ok_per_s * BATCH_USERS
        split = "+".join(map(str, point.connections_per_worker)) or "?"
        table.add_row(
            "ours", str(result.connections), split, f"{result.ok_per_s:,.0f}", f"{per_s:,.0f}", *latency_cells(result),
            f"{point.rss_mib:,.0f} MiB", f">= 50,000/s: {verdict(per_s >= 50_000)}",
        )  # fmt: skip
    for peer in bare:
        for point, theirs in zip(points, peer.results, strict=True):
            ratio = point.result.ok_per_s / theirs.ok_per_s
            table.add_row(
                peer.name, str(theirs.connections), "", f"{theirs.ok_per_s:,.0f}",
                f"{theirs.ok_per_s * BATCH_USERS:,.0f}", *latency_cells(theirs), "", f"ours / this: {ratio:.2f}x",
            )  # fmt: skip
    return table


def peers_table(ours: Sequence[WrkResult], peers: Sequence[Peer]) -> Table:
    """Our `/predict` runs, then each peer's at the same connection counts, with ours / theirs in req/s."""
    table = titled_table(
        "/predict next to its peers (same wrk settings)",
        ("server", "connections", "req/s", *LATENCY_COLUMNS, "ours / this", "target"),
    )
    for result in ours:
        table.add_row("ours", str(result.connections), f"{result.ok_per_s:,.0f}", *latency_cells(result), "1.00x", "")
    for peer in peers:
        for mine, theirs in zip(ours, peer.results, strict=True):
            ratio = mine.ok_per_s / theirs.ok_per_s
            target = "" if peer.target is None else f">= {peer.target:g}x: {verdict(ratio >= peer.target)}"
            table.add_row(
                peer.name, str(theirs.connections), f"{theirs.ok_per_s:,.0f}", *latency_cells(theirs),
                f"{ratio:.2f}x", target,
            )  # fmt: skip
    return table


# --- the measurements -------------------------------------------------------------------------------------------------


def progress(what: str) -> None:
    load = os.getloadavg()[0]
    console.print(f"[dim]{time.strftime('%H:%M:%S')}  {what}  (load average {load:.2f})[/dim]")


def measured_point(load: Load, seconds: float, settings: Settings) -> Point:
    """One point of ours, with the workers' share of wrk's connections sampled halfway through the measured run."""
    split: list[list[int]] = []
    sampler = threading.Timer(min(WARMUP_S, seconds) + seconds / 2, lambda: split.append(worker_split(settings)))
    sampler.start()
    try:
        warmup, result = measure(load, seconds)
    finally:
        sampler.cancel()
    return Point(warmup, result, service_worker_rss_mib(settings), split[0] if split else [])


def worker_split(settings: Settings) -> list[int]:
    try:
        return service_worker_connections(settings)
    except (psutil.Error, RuntimeError):
        return []


def bench_predict(
    url: str, ids: Path, connections: Sequence[int], seconds: float, settings: Settings, peers: Sequence[PeerServer]
) -> tuple[list[Point], list[Peer]]:
    """`/predict` at each connection count: ours, then each peer right after it with the same settings."""
    ours, theirs = [], {peer.name: list[WrkResult]() for peer in peers}
    for count in connections:
        progress(f"ours: /predict, {count} connections")
        ours.append(measured_point(Load(f"{url}/predict", ids, count), seconds, settings))
        for peer in peers:
            progress(f"{peer.name}: /predict, {count} connections")
            theirs[peer.name].append(measure(Load(f"{peer.url}/predict", ids, count), seconds)[1])
    return ours, [Peer(peer.name, theirs[peer.name], peer.target) for peer in peers]


def paced_delay_ms(p50_ms: float) -> int:
    """The pause per connection that makes PACED_CONNECTIONS connections send about PACED_RATE requests a second."""
    return max(1, round(PACED_CONNECTIONS * 1000 / PACED_RATE - p50_ms))


def bench_batch(
    url: str, ids: Path, args: argparse.Namespace, settings: Settings, bare: Sequence[PeerServer]
) -> tuple[list[Point], list[Peer]]:
    """`/predict_batch` at each connection count: ours, then each bare BentoML service's right after it."""
    points, theirs, seconds = [], {peer.name: list[WrkResult]() for peer in bare}, args.seconds
    for count in args.batch_connections:
        progress(f"ours: /predict_batch, {count} connections")
        load = Load(f"{url}/predict_batch", ids, count, users_per_request=BATCH_USERS)
        points.append(measured_point(load, seconds, settings))
        for peer in bare:
            progress(f"{peer.name}: /predict_batch, {count} connections")
            bare_load = Load(f"{peer.url}/predict_batch", ids, count, users_per_request=BATCH_USERS)
            theirs[peer.name].append(measure(bare_load, seconds)[1])
    return points, [Peer(peer.name, theirs[peer.name], None) for peer in bare]


def bench_service(url: str, ids: Path, args: argparse.Namespace, settings: Settings) -> ServiceFigures:
    """`/predict` (with the peers unless skipped), then paced at ~200 req/s, then `/predict_batch` (alone, next to
    the bare BentoML services, with --batch-only)."""
    rss_at_start = service_worker_rss_mib(settings)
    peers_context: contextlib.AbstractContextManager[list[PeerServer]] = contextlib.nullcontext([])
    if not args.skip_peers:
        progress("starting the peers")
        peers_context = running_bare_peers(settings) if args.batch_only else running_peers(settings)
    with peers_context as peers:
        predict: list[Point] = []
        peer_figures: list[Peer] = []
        paced, delay = None, 0
        if not args.batch_only:
            predict, peer_figures = bench_predict(url, ids, args.connections, args.seconds, settings, peers)
            delay = paced_delay_ms(min(predict, key=lambda point: point.result.connections).result.p50_ms)
            progress(f"ours: /predict paced at ~{PACED_RATE}/s")
            paced_load = Load(f"{url}/predict", ids, PACED_CONNECTIONS, delay_ms=delay)
            paced = measured_point(paced_load, args.seconds, settings)
        bare = [peer for peer in peers if peer.name in (STOCK_PEER, BARE_PEER)]
        batch, bare_batch = bench_batch(url, ids, args, settings, bare)
    return ServiceFigures(rss_at_start, predict, paced, delay, batch, bare_batch, peer_figures)


def print_figures(figures: ServiceFigures, database_url: str, settings: Settings) -> None:
    console.print(OTHERS_CPU_NOTE.format(cores=os.cpu_count()))
    if figures.paced is not None:
        console.print(predict_table(figures.predict, figures.paced, figures.paced_delay_ms))
    console.print(f"worker RSS after start-up, before the first warm-up: {figures.rss_at_start_mib:,.0f} MiB")
    console.print(batch_table(figures.batch, figures.bare_batch))
    console.print(log_check(database_url, figures.answered))
    if figures.peers:
        console.print(peers_table([point.result for point in figures.predict], figures.peers))
        console.print(PEERS_LEGEND.format(workers=settings.serve_workers, max_requests=FEAST_DEFAULT_MAX_REQUESTS))


def log_check(database_url: str, answered: int) -> str:
    """Whether the service's log writer kept up: rows written against the predictions wrk counted as answered."""
    written = logged_predictions(database_url)
    return (
        f"prediction log: {written:,} rows written for {answered:,} predictions wrk counted as answered"
        f" ({written - answered:+,}; requests still in flight when a wrk run stops are written but not counted)"
    )


def run(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    # With nothing configured, the embedded PostgreSQL and Redis this run had to start are stopped when it ends; the
    # world's own MLflow server and prediction service (in its data folder) are stopped by `bench_world`.
    with stack.running(Settings(), redis=True) as servers:
        bench_world(BenchWorld(args.users, servers.database_url, servers.redis), args)
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print(f"whole run: {time.perf_counter() - began:.0f} s")


def bench_world(bench: BenchWorld, args: argparse.Namespace) -> None:
    """Prepare the world, serve it, measure and print; its MLflow server and service are stopped after."""
    settings = bench_settings(bench)
    console.print(f"[bold]serving bench[/bold]: {bench.users:,} users x {DAYS} days, database {bench.name}")
    console.print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    try:
        progress("preparing the world")
        console.print(f"world: {prepare_world(bench, settings, args.rebuild)}")
        ids = settings.data_dir / "user_ids.txt"
        console.print(f"wrk cycles through {write_user_ids(settings, ids, bench.users):,} users of the latest snapshot")
        stack.up(settings)
        url = stack.service_url(settings)
        wait_ready(url, settings.serve_start_timeout_s)
        console.print(f"service: {url}, {settings.serve_workers} worker(s); log {settings.data_dir / 'service'}")

        figures = bench_service(url, ids, args, settings)
        print_figures(figures, bench.database_url, settings)
    finally:
        stack.down(settings)
        get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of each measured wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16], help="for /predict and peers")
    parser.add_argument("--users", type=int, default=5_000, help="users in the bench world")
    parser.add_argument("--rebuild", action="store_true", help="build the world again even if it exists")
    parser.add_argument("--skip-peers", action="store_true", help="measure only the platform's service")
    parser.add_argument(
        "--batch-only", action="store_true", help="measure only /predict_batch (next to the bare BentoML services)"
    )
    parser.add_argument(
        "--batch-connections", type=int, nargs="+", default=list(BATCH_CONNECTIONS), help="for /predict_batch"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
