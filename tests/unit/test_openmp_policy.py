"""Every entrypoint sets OpenMP's wait policy before scikit-learn loads libgomp, which reads it once, on loading
(src/churn_platform/__init__.py): an entrypoint that imports scikit-learn first runs with spinning threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Imports one module in a fresh interpreter and reports OMP_WAIT_POLICY at the moment scikit-learn is imported, or
# as soon as the policy is set while scikit-learn is not loaded yet (what follows cannot change the answer, and the
# rest of a heavy entrypoint's imports would only cost time).
PROBE = """
import importlib, os, sys

class Watch:
    def find_spec(self, name, path=None, target=None):
        policy = os.environ.get("OMP_WAIT_POLICY")
        if name.split(".")[0] == "sklearn" or policy == "PASSIVE":
            print("when scikit-learn loads: OMP_WAIT_POLICY =", repr(policy), flush=True)
            os._exit(0)
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print("scikit-learn is not imported", flush=True)
"""


def entrypoint_modules() -> list[str]:
    """The CLI, the BentoML service, every flow and every benchmark script (not the peers it measures against)."""
    modules = ["churn_platform.cli", "bentos.churn_service.service"]
    for folder in ("flows", "bench"):
        modules += [f"{folder}.{p.stem}" for p in sorted((ROOT / folder).glob("*.py")) if not p.stem.startswith("_")]
    return modules


def policy_at_sklearn_import(modules: list[str]) -> dict[str, str]:
    """Each module's probe output, the probes run side by side."""
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    probes = {
        module: subprocess.Popen(
            [sys.executable, "-c", PROBE, module],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for module in modules
    }
    return {module: probe.communicate(timeout=120)[0] for module, probe in probes.items()}


def test_every_entrypoint_sets_the_wait_policy_before_scikit_learn_loads() -> None:
    outputs = policy_at_sklearn_import(entrypoint_modules())
    assert len(outputs) > 10
    wrong = {
        module: output.strip().splitlines()[-1:]
        for module, output in outputs.items()
        if "OMP_WAIT_POLICY = 'PASSIVE'" not in output and "scikit-learn is not imported" not in output
    }
    assert not wrong, f"entrypoints that load scikit-learn before the wait policy is set: {wrong}"


def test_the_probe_sees_an_entrypoint_that_imports_scikit_learn_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sklearn_first.py").write_text("import sklearn.metrics\nimport churn_platform\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    output = policy_at_sklearn_import(["sklearn_first"])["sklearn_first"]
    assert "OMP_WAIT_POLICY = None" in output
