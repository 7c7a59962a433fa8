"""A server the stack starts outlives the command that started it: it must not inherit the metrics folder Feast
made for that command, which Feast deletes when the command exits (every later import of Feast in the server, e.g.
each flow run of the deployment server, failed with FileNotFoundError)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from churn_platform.stack.base import PROCESS_METRICS_VARIABLES, child_environment

STARTER = """
import subprocess, sys
import feast  # makes this process's metrics folder, deleted when it exits
from churn_platform.stack.base import child_environment
child = "import time, pathlib; time.sleep(2); import feast; pathlib.Path(sys.argv[1]).write_text('imported')"
subprocess.Popen([sys.executable, "-c", "import sys\\n" + child, sys.argv[1]], env=child_environment(),
                 start_new_session=True)
"""


def test_a_server_started_by_a_command_that_imported_feast_can_import_it_after_the_command_exits(
    tmp_path: Path,
) -> None:
    # Given a command that imports Feast, starts a server and exits at once
    done = tmp_path / "imported"
    subprocess.run([sys.executable, "-c", STARTER, str(done)], check=True, timeout=120)

    # Then the server, importing Feast after that, succeeds
    deadline = time.monotonic() + 120
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert done.exists() and done.read_text() == "imported"


def test_a_metrics_folder_the_user_configured_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import feast.metrics

    monkeypatch.setattr(feast.metrics, "_owns_mp_dir", False)
    for name in PROCESS_METRICS_VARIABLES:
        monkeypatch.setenv(name, "/var/lib/metrics")
    environment = child_environment(EXTRA="1")
    assert all(environment[name] == "/var/lib/metrics" for name in PROCESS_METRICS_VARIABLES)
    assert environment["EXTRA"] == "1"
