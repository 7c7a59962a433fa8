"""A training run's metrics side by side with the trivial baseline and the oracle, as rows for a table."""

from __future__ import annotations

from churn_platform.training.pipeline import TrainResult

ROWS = (
    ("ROC AUC", "test_roc_auc", "baseline_roc_auc", "oracle_roc_auc"),
    ("PR AUC", "test_pr_auc", None, None),
    ("log loss", "test_log_loss", None, None),
    ("Brier score", "test_brier", None, None),
    ("expected calibration error", "test_ece", None, None),
    ("precision at threshold", "test_precision", None, None),
    ("recall at threshold", "test_recall", None, None),
    ("F1 at threshold", "test_f1", None, None),
    ("lift, riskiest 10%", "test_lift_top10", None, None),
    ("recall, riskiest 10%", "test_recall_top10", None, None),
    ("model AUC / oracle AUC", "auc_to_oracle", None, None),
)


def metric_rows(result: TrainResult) -> list[tuple[str, str, str, str]]:
    """(metric, model, baseline, oracle) as text; a dash where a column does not apply."""
    metrics = result.trained.metrics()

    def shown(key: str | None) -> str:
        return "-" if key is None or key not in metrics else f"{metrics[key]:.4f}"

    return [(label, shown(model), shown(baseline), shown(oracle)) for label, model, baseline, oracle in ROWS]


def metrics_markdown(result: TrainResult) -> str:
    trained = result.trained
    version = f"version {result.registered.version}" if result.registered else "not registered"
    lines = [
        f"# {trained.candidate}, {version}",
        "",
        f"Split: {trained.split}; rows {trained.rows}.",
        "",
        "| metric | model | baseline (days since last event) | oracle |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {model} | {baseline} | {oracle} |" for label, model, baseline, oracle in metric_rows(result)
    ]
    return "\n".join(lines) + "\n"
