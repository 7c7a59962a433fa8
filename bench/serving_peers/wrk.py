"""Running wrk against a route and reading its `--latency` summary, with the CPU other processes took meanwhile.

Used by `bench/serving.py`; wrk cycles through user ids with `users.lua`, next to this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

WRK_SCRIPT = Path(__file__).resolve().parent / "users.lua"
WRK_THREADS = 1  # one event loop keeps 16 connections busy and leaves the second core to the server
WRK_TIMEOUT = "10s"  # a stall shows as latency, not as a timed-out request
WARMUP_S = 5
LATENCY_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput of successful responses, the latency distribution, and what went wrong."""

    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    other_cpu: float = 0.0  # cores busy with processes this bench did not start during the run (a shared machine)

    @property
    def ok_per_s(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds

    @property
    def problems(self) -> str:
        parts = [f"{self.non_2xx:,} non-2xx"] if self.non_2xx else []
        parts += [f"{self.socket_errors:,} socket errors"] if self.socket_errors else []
        return ", ".join(parts) or "none"


def wrk_duration_ms(text: str) -> float:
    """wrk's formatted duration (`812.00us`, `1.52ms`, `1.20s`, `2.00m`) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * LATENCY_UNITS_MS[match[2]]


def wrk_field(pattern: str, output: str) -> re.Match[str]:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise ValueError(f"wrk output without {pattern!r}:\n{output}")
    return match


def parse_wrk(output: str, connections: int) -> WrkResult:
    """The summary wrk prints with `--latency`."""
    done = wrk_field(r"^\s+(\d+) requests in ([\d.]+\w+),", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        connections=connections,
        requests=int(done[1]),
        seconds=wrk_duration_ms(done[2]) / 1e3,
        p50_ms=wrk_duration_ms(wrk_field(r"^\s+50%\s+(\S+)", output)[1]),
        p99_ms=wrk_duration_ms(wrk_field(r"^\s+99%\s+(\S+)", output)[1]),
        max_ms=wrk_duration_ms(wrk_field(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output)[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


@dataclass(frozen=True)
class Load:
    """What wrk sends: a route, how many users per request, connections, and a pause per connection (paced)."""

    url: str
    ids_file: Path
    connections: int
    users_per_request: int = 1
    delay_ms: int = 0


def run_wrk(load: Load, seconds: float) -> WrkResult:
    command = [
        "wrk", f"-t{min(WRK_THREADS, load.connections)}", f"-c{load.connections}", f"-d{seconds:.0f}s",
        f"--timeout={WRK_TIMEOUT}", "--latency", "-s", str(WRK_SCRIPT), load.url,
        "--", str(load.ids_file), str(load.users_per_request),
    ]  # fmt: skip
    environment = {**os.environ, "WRK_DELAY_MS": str(load.delay_ms)}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return parse_wrk(done.stdout, load.connections)


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the machine, CPU seconds of this process and everything it started) so far.

    A process's own times plus those of its children it has waited for (wrk, a restarted gunicorn worker) cover the
    tree: a descendant that exits moves its time into its parent's children's times.
    """
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + times.irq + times.softirq + times.steal  # guest is in user
    ours = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            own = process.cpu_times()
            ours += own.user + own.system + own.children_user + own.children_system
    return busy, ours


def measure(load: Load, seconds: float) -> tuple[WrkResult, WrkResult]:
    """A warm-up at the same settings, then the measured run; both returned (the log check counts both).

    The measured run also records how many cores other processes kept busy meanwhile: on a shared machine they
    take CPU from the server and wrk, and the figures move with them.
    """
    warmup = run_wrk(load, min(WARMUP_S, seconds))
    busy, ours = cpu_seconds()
    began = time.monotonic()
    result = run_wrk(load, seconds)
    busy_after, ours_after = cpu_seconds()
    others = max(0.0, (busy_after - busy) - (ours_after - ours)) / (time.monotonic() - began)
    return warmup, dataclasses.replace(result, other_cpu=others)
