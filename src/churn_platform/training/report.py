"""A training run's metrics side by side with the classical baselines (recency, BG/NBD) and the oracle, as rows for
a table."""

from __future__ import annotations

from churn_platform.training.pipeline import TrainResult

COLUMNS = ("metric", "model", "recency", "BG/NBD", "oracle")
# (label, model metric, recency baseline's, BG/NBD's, oracle's): None where a column does not apply
ROWS: tuple[tuple[str, str | None, str | None, str | None, str | None], ...] = (
    ("ROC AUC", "test_roc_auc", "recency_roc_auc", "bgnbd_roc_auc", "oracle_roc_auc"),
    ("PR AUC", "test_pr_auc", None, None, None),
    ("log loss", "test_log_loss", None, None, None),
    ("Brier score", "test_brier", None, None, None),
    ("expected calibration error", "test_ece", None, None, None),
    ("precision at threshold", "test_precision", None, None, None),
    ("recall at threshold", "test_recall", None, None, None),
    ("F1 at threshold", "test_f1", None, None, None),
    ("lift, riskiest 10%", "test_lift_top10", None, None, None),
    ("recall, riskiest 10%", "test_recall_top10", None, None, None),
    ("model AUC - baseline AUC", None, "model_lift_over_recency_auc", "model_lift_over_bgnbd_auc", None),
    ("model AUC / oracle AUC", "auc_to_oracle", None, None, None),
)


def metric_rows(result: TrainResult) -> list[tuple[str, ...]]:
    """(metric, model, recency, BG/NBD, oracle) as text; a dash where a column does not apply or has no value."""
    metrics = result.trained.metrics()

    def shown(key: str | None) -> str:
        return "-" if key is None or key not in metrics else f"{metrics[key]:.4f}"

    return [(label, *(shown(key) for key in keys)) for label, *keys in ROWS]


def metrics_markdown(result: TrainResult) -> str:
    trained = result.trained
    version = f"version {result.registered.version}" if result.registered else "not registered"
    lines = [
        f"# {trained.candidate}, {version}",
        "",
        f"Split: {trained.split}; rows {trained.rows}.",
        "",
        "| metric | model | recency (days since last event) | BG/NBD (P no purchase in the horizon) | oracle |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in metric_rows(result)]
    return "\n".join(lines) + "\n"
