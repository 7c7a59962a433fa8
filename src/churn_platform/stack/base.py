"""What every component of the local stack shares: its status, the record of what was started, and waiting."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import psutil

from churn_platform.connections import redact

STOP_TIMEOUT_S = 15.0


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


class ExternalServer(abc.ABC):
    """A server the user runs, configured by its URL: the platform checks it, and never starts or stops it.

    A subclass gives the component's name, how errors call it (`label`) and the setting that configured it, and
    its health check.
    """

    name: str
    label: str  # "<label> at <url> (<setting>) is unreachable: ..."
    setting: str
    embedded = False

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def health(self) -> tuple[bool, str]:
        """Whether the server at `url` answers, and what it said."""

    def start(self) -> str:
        """Check the server (there is nothing to start); return its URL, or raise a StackError naming the setting."""
        healthy, detail = self.health()
        if not healthy:
            raise StackError(f"{self.label} at {redact(self.url)} ({self.setting}) is {detail}")
        return self.url

    def stop(self) -> bool:
        return False  # not the platform's to stop

    def status(self) -> ComponentStatus:
        healthy, detail = self.health()
        return ComponentStatus(self.name, redact(self.url), healthy, False, detail)


# Importing Feast makes a process create a metrics folder of its own and name it in these variables; it deletes the
# folder when it exits. A server this process starts must not inherit them: they would name a folder gone as soon as
# the command that started it (`churn up`) has exited, and every later process that imports Feast there would fail.
PROCESS_METRICS_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a server this process starts: its own, without the metrics folder Feast made for this
    process (a folder the user configured is kept), with `overrides`."""
    environment = dict(os.environ)
    feast_metrics = sys.modules.get("feast.metrics")
    if feast_metrics is not None and getattr(feast_metrics, "_owns_mp_dir", False):
        owned = getattr(feast_metrics, "_prometheus_mp_dir", None)
        for name in PROCESS_METRICS_VARIABLES:
            if environment.get(name) == owned:
                del environment[name]
    environment.update(overrides)
    return environment


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """An opener for `url`: a loopback server is never reached through a proxy, whatever HTTP_PROXY says."""
    is_loopback = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if is_loopback else []))


def http_health(base_url: str, health_path: str, version_path: str, product: str) -> tuple[bool, str]:
    """GET the server's health route (any 2xx is healthy), then its version route for the detail."""
    base = base_url.rstrip("/")
    opener = opener_for(base_url)
    try:
        with opener.open(f"{base}{health_path}", timeout=3):
            pass  # any 2xx; an error status raises HTTPError
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"
    try:
        with opener.open(f"{base}{version_path}", timeout=3) as response:
            return True, f"{product} {response.read().decode().strip().strip(chr(34))}"
    except (urllib.error.URLError, OSError, ValueError):
        return True, f"{product} (version not readable)"


def wait_until(check: Callable[[], tuple[bool, str]], timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    healthy, detail = check()
    while not healthy:
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become healthy within {timeout_s:.0f} s: {detail}")
        time.sleep(0.1)
        healthy, detail = check()
    return detail


def pid_alive(pid: int) -> bool:
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


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (with SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def running_record(record: StackRecord, name: str) -> tuple[int, str] | None:
    """A recorded server's PID and URL while it runs; a reused PID has another start time and is ignored."""
    entry = record.read().get(name)
    if not entry:
        return None
    pid = int(str(entry["pid"]))
    if not pid_alive(pid):
        return None
    try:
        if psutil.Process(pid).create_time() != float(str(entry["started"])):
            return None
    except psutil.Error:
        return None
    return pid, str(entry["url"])


def stop_process_group(pid: int) -> None:
    """SIGTERM the group a `start_new_session` child leads (`mlflow server` and its uvicorn), then SIGKILL the rest.

    Descendants that left the group (BentoML's supervisor starts each worker in a session of its own) are stopped
    the same way once the group is gone, if their parent did not stop them.
    """
    try:
        leads_its_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    if not leads_its_group:
        raise StackError(f"process {pid} does not lead its own process group: not stopping it")
    strays = _descendants_outside_group(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        if _wait_group_gone(pid):
            break
    for process in strays:
        with contextlib.suppress(psutil.Error):
            process.terminate()  # psutil checks the start time: a reused PID is not signalled
    _, alive = psutil.wait_procs(strays, timeout=STOP_TIMEOUT_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _descendants_outside_group(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    strays = []
    for child in children:
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(child.pid) != pid:
                strays.append(child)
    return strays


def _wait_group_gone(pid: int) -> bool:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        pid_alive(pid)  # reaps the leader when this process started it
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def last_line(path: Path) -> str:
    """': ' and the last non-empty line of a log (usually the error), or '' when there is none."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""


def wait_for_child(
    process: subprocess.Popen[bytes] | None,
    healthy: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    setting: str,
    log_path: Path,
    forget: Callable[[], None],
) -> float:
    """Wait until `healthy()`; return the seconds it took. A child that exits or never answers is stopped and
    forgotten (`forget`), and the error names its log's last line. `process` None: a server started earlier."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s and (process is None or process.poll() is None):
        if healthy():
            return time.monotonic() - began
        time.sleep(0.2)
    code = None if process is None else process.poll()
    if process is not None:
        if code is None:
            stop_process_group(process.pid)
        forget()
    why = f"exited with code {code}" if code is not None else f"did not answer within {timeout_s:.0f} s ({setting})"
    raise StackError(f"{what} {why}; log: {log_path}{last_line(log_path)}")


def stop_recorded(record: StackRecord, name: str) -> int | None:
    """Stop the recorded server `name` (verified to be the one started) and forget it; its PID, or None."""
    recorded = running_record(record, name)
    record.put(name, None)
    if recorded is None:
        return None
    stop_process_group(recorded[0])
    return recorded[0]


class EmbeddedHttpServer(abc.ABC):
    """A server the platform runs as a child process on a loopback port (MLflow, Prefect): started once (a running
    one is waited for, never doubled), recorded in `stack.json` before it turns healthy (so a server that never does
    is not orphaned), stopped with its process group.

    A subclass names itself and its settings, and gives its health check, what it prepares before the start (its
    database), how it spawns, and its URL on a port.
    """

    name: str
    label: str  # "embedded <label> server"
    port_setting: str  # CHURN_<X>_PORT
    url_setting: str  # the variable that configures an external server instead
    timeout_setting: str  # CHURN_<X>_START_TIMEOUT_S
    embedded = True

    def __init__(self, data_dir: Path, port: int, timeout_s: float) -> None:
        self.directory = (data_dir / self.name).resolve()
        self.log_path = self.directory / f"{self.name}.log"
        self.port = port
        self.timeout_s = timeout_s
        self.record = StackRecord(data_dir)

    @abc.abstractmethod
    def health(self, url: str) -> tuple[bool, str]: ...

    @abc.abstractmethod
    def prepare(self) -> dict[str, str]:
        """Everything the server needs before it starts; what to record of it (e.g. where its database is)."""

    @abc.abstractmethod
    def spawn(self, port: int, environment: dict[str, str]) -> list[str]:
        """The command on `port`; `environment` (a copy of this process's) may be extended in place."""

    @abc.abstractmethod
    def url(self, port: int) -> str: ...

    def start(self) -> str:
        recorded = running_record(self.record, self.name)
        if recorded is not None:  # running, maybe still starting: wait for it rather than start a second server
            url = recorded[1]
            wait_until(lambda: self.health(url), self.timeout_s, f"embedded {self.label} server (log: {self.log_path})")
            return url
        port = self.port or free_loopback_port()
        if not loopback_port_is_free(port):
            raise StackError(
                f"port {port} on 127.0.0.1 is taken: set {self.port_setting} to a free port (0 picks one), "
                f"or {self.url_setting} to use the server listening there"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        recorded_too = self.prepare()
        environment = child_environment()
        command = self.spawn(port, environment)
        url = self.url(port)
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                command, cwd=self.directory, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; `churn down` stops its process group
            )  # fmt: skip
        self.record.put(
            self.name,
            {"pid": process.pid, "started": psutil.Process(process.pid).create_time(), "url": url,
             "log": str(self.log_path), **recorded_too},
        )  # fmt: skip
        took = wait_for_child(
            process, lambda: self.health(url)[0], timeout_s=self.timeout_s, what=f"embedded {self.label} server",
            setting=self.timeout_setting, log_path=self.log_path, forget=lambda: self.record.put(self.name, None),
        )  # fmt: skip
        logging.getLogger(__name__).info(
            "started embedded %s (pid %s) on %s in %.1f s", self.label, process.pid, url, took
        )
        return url

    def stop(self) -> bool:
        pid = stop_recorded(self.record, self.name)
        if pid is not None:
            logging.getLogger(__name__).info("stopped embedded %s (pid %s)", self.label, pid)
        return pid is not None

    def status(self) -> ComponentStatus:
        recorded = running_record(self.record, self.name)
        if recorded is None:
            return ComponentStatus(self.name, None, False, True, self.not_running())
        healthy, detail = self.health(recorded[1])
        if not healthy:
            detail = f"running but not answering: {detail} (log: {self.log_path})"
        else:
            detail = self.healthy_detail(detail, self.record.read().get(self.name) or {})
        return ComponentStatus(self.name, recorded[1], healthy, True, detail)

    def not_running(self) -> str:
        return "not running"

    def healthy_detail(self, detail: str, recorded: dict[str, object]) -> str:
        return detail
