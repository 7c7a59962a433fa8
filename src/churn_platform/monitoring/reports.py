"""Evidently reports: the HTML a person opens, and the workspace `evidently ui` shows (a project per model name).

Evidently is the report of record for people; the numbers that drive alerts are computed by `monitoring.drift` and
stored in PostgreSQL. The data-drift preset runs with the PSI per column at the platform's PSI threshold and its
drift share, so the report's verdicts read like the stored ones (the stored flag also asks the KS or chi-square
test to reject; Evidently bins PSI its own way, so its values differ a little from the stored ones).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

WORKSPACE_FOLDER = "evidently"  # under the reports folder: `evidently ui --workspace <reports>/evidently`


@dataclass(frozen=True)
class SavedReport:
    html: Path
    workspace_run: str | None  # the snapshot's id in the Evidently workspace


def workspace_path(reports_folder: Path) -> Path:
    return reports_folder / WORKSPACE_FOLDER


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    psi_threshold: float,
    drift_share: float,
    name: str,
    timestamp: datetime,
    metadata: dict[str, str],
) -> Any:
    """Evidently's data-drift and data-summary presets on these rows: an Evidently `Snapshot` (save it with `save`)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    columns = [*numeric, *categorical]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns, method="psi", threshold=psi_threshold, drift_share=drift_share, include_tests=False
    )
    # The summary preset shows each column's missing values, range and categories on both sides: data quality.
    report = Report([preset, DataSummaryPreset(columns=columns)], metadata=metadata)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # A feature constant in the window (a count that is zero for everyone) makes numpy's correlation matrix,
        # which the preset draws, divide by zero: normal in a week of data, and not our figures.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
            timestamp=timestamp,
            name=name,
        )


def classification_report(
    joined: pd.DataFrame, *, name: str, timestamp: datetime, metadata: dict[str, str], threshold: float | None = None
) -> Any:
    """Evidently's classification preset on realised outcomes (columns `churned` 0/1 and `churn_probability`)."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    frame = pd.DataFrame({"target": joined["churned"].astype("int64"), "prediction": joined["churn_probability"]})
    definition = DataDefinition(
        classification=[BinaryClassification(target="target", prediction_probas="prediction", pos_label=1)],  # type: ignore[arg-type]
        numerical_columns=["prediction"],
    )
    # include_tests=False breaks the preset in Evidently 0.7.23 (its by-label metrics get a list, not a dict)
    report = Report([ClassificationPreset(probas_threshold=threshold)], metadata=metadata)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            current_data=Dataset.from_pandas(frame, data_definition=definition), timestamp=timestamp, name=name
        )


def save(snapshot: Any, html: Path, reports_folder: Path, project: str) -> SavedReport:
    """Write the HTML and add the snapshot to the workspace's project `project` (created when missing). A
    workspace that cannot take it is logged, never fatal: the HTML and the stored numbers are what count."""
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    try:
        from evidently.ui.workspace import Workspace

        workspace = Workspace.create(str(workspace_path(reports_folder)))
        found = workspace.search_project(project)
        target = found[0] if found else workspace.create_project(project, description=f"monitoring of {project}")
        added = workspace.add_run(target.id, snapshot, include_data=False)
        return SavedReport(html, str(added.id))
    except Exception as exc:  # the workspace is a convenience: the report is written
        log.warning("could not add the report to the Evidently workspace at %s: %s", reports_folder, exc)
        return SavedReport(html, None)
