"""The conditions monitoring alerts on, each evaluated by the run that computes its figures (thresholds are settings).

A check that holds raises its alert (once while it holds); one that no longer holds resolves it. The subject names
what the alert is about (a model version, a feature, a feature view), so one condition of one subject is one alert.
"""

from __future__ import annotations

from churn_platform.monitoring import drift
from churn_platform.monitoring.alerts import Check
from churn_platform.monitoring.performance import Figures
from churn_platform.monitoring.quality import FeatureQuality, window_summary
from churn_platform.monitoring.served import Window
from churn_platform.settings import Settings

TEST_AUC_METRIC = "test_roc_auc"  # the version's ROC AUC on its test window, logged at training


def version_subject(model_name: str, version: str) -> str:
    return f"{model_name} v{version}"


def drift_checks(subject: str, result: drift.DatasetDrift, thresholds: drift.Thresholds, window: Window) -> list[Check]:
    names = ", ".join(result.drifted_features) or "none"
    message = (
        f"{len(result.drifted_features)} of {len(result.features)} served features drifted ({result.share:.0%};"
        f" alert at {thresholds.share:.0%}) in snapshots {window}: {names}"
    )
    return [Check("drift", "dataset_drift", subject, result.drifted, message, "warning")]


def quality_checks(settings: Settings, subject: str, view: str, quality: list[FeatureQuality]) -> list[Check]:
    """Missing values above the reference's share by the margin, per feature; stale features, per feature view.
    Subjects name the version too: each version's runs compare with its own reference."""
    checks = []
    for q in window_summary(quality):
        checks.append(Check(
            "quality", "missing_values", f"{q.feature} for {subject}",
            q.missing_share - q.reference_missing > settings.monitor_missing_share,
            f"{q.feature} is missing in {q.missing_share:.1%} of the served rows against {q.reference_missing:.1%} in"
            f" the reference (alert above {settings.monitor_missing_share:.0%} more)",
        ))  # fmt: skip
    judged = {q.day: q.stale_share for q in quality if q.stale_share is not None}
    if judged:  # no judged prediction: unknown, which neither raises nor resolves
        worst = max(judged, key=lambda day: judged[day])
        checks.append(Check(
            "quality", "stale_features", f"{view} for {subject}", judged[worst] > settings.monitor_stale_share,
            f"{judged[worst]:.1%} of the predictions on snapshots of {worst} were served with features older than"
            f" {settings.serve_feature_max_age_hours:g} h (alert above {settings.monitor_stale_share:.0%}): is"
            " materialization running after each snapshot?",
        ))  # fmt: skip
    return checks


def auc_checks(
    settings: Settings, subject: str, test_auc: float | None, roc_auc: float | None, rows: int, *, source: str,
    what: str,
) -> list[Check]:  # fmt: skip
    """ROC AUC (realised, or estimated) below the version's test AUC minus the margin."""
    if test_auc is None or roc_auc is None:
        return []
    floor = test_auc - settings.monitor_auc_margin
    return [Check(
        source, "auc_below_test", subject, roc_auc < floor,
        f"{what} ROC AUC {roc_auc:.3f} over {rows:,} predictions is below the test AUC {test_auc:.3f} minus"
        f" {settings.monitor_auc_margin:g}",
        "critical",
    )]  # fmt: skip


def calibration_checks(settings: Settings, subject: str, figures: Figures) -> list[Check]:
    """Realised expected calibration error above the threshold."""
    return [Check(
        "performance", "calibration_error", subject, figures.calibration_error > settings.monitor_calibration_threshold,
        f"expected calibration error {figures.calibration_error:.3f} over {figures.rows:,} predictions (alert above"
        f" {settings.monitor_calibration_threshold:g}): churn rate {figures.positive_rate:.3f} against a mean score"
        f" {figures.mean_score:.3f}",
    )]  # fmt: skip
