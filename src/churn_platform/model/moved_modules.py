"""Where the model's own types lived in earlier versions of the platform, so versions registered then still load.

A registered version stores its scikit-learn pipeline with skops, which names each of our types by its module path
(`churn_platform.training.encoding.FeatureEncoder`). Those modules moved to `churn_platform.model`; loading an older
version imports the old path, so the old names are made to resolve to the modules that hold those types now.
"""

from __future__ import annotations

import importlib.util
import sys

MOVED_MODULES = {
    "churn_platform.training.encoding": "churn_platform.model.encoding",
    "churn_platform.training.candidates": "churn_platform.model.candidates",
}


def resolve_moved_modules() -> None:
    """Make each old module path import the module that now holds its types (idempotent; no real module is
    shadowed: an old path is only set where nothing is importable under it)."""
    for old, new in MOVED_MODULES.items():
        if old not in sys.modules and importlib.util.find_spec(old) is None:
            sys.modules[old] = importlib.import_module(new)
