"""Evaluation on the test window: ranking, calibration and business metrics, each next to the classical baselines
(recency, BG/NBD) and (for a synthetic world) the oracle, with the plots that show them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

Scores = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
TOP_SHARE = 0.10  # "the riskiest 10% of users": the list a retention team would call first


def best_f1_threshold(y: Labels, p: Scores) -> float:
    """The probability threshold that maximizes F1 (chosen on validation, applied to test)."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(precision), where=total > 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def expected_calibration_error(y: Labels, p: Scores, bins: int = 10) -> float:
    """Mean |observed rate - mean predicted| over equal-width probability bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            error += in_bin.mean() * abs(float(y[in_bin].mean()) - float(p[in_bin].mean()))
    return error


def top_share_metrics(y: Labels, p: Scores, share: float = TOP_SHARE) -> tuple[float, float]:
    """(lift, recall) among the `share` highest-scored rows; ties broken by row order, deterministically."""
    count = max(1, round(share * len(p)))
    top = np.argsort(-p, kind="stable")[:count]
    base_rate = float(y.mean())
    rate = float(y[top].mean())
    return (rate / base_rate if base_rate else float("nan")), (float(y[top].sum()) / max(1.0, float(y.sum())))


@dataclass(frozen=True)
class Evaluation:
    """Test-window metrics of one model (names as logged to MLflow, with the test_ prefix)."""

    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    ece: float
    threshold: float
    precision: float
    recall: float
    f1: float
    lift_top10: float
    recall_top10: float
    positive_rate: float
    rows: int

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        return {f"{prefix}{name}": float(value) for name, value in vars(self).items()}


def evaluate(y: Labels, p: Scores, threshold: float) -> Evaluation:
    predicted = (p >= threshold).astype(np.int64)
    lift, recall_top = top_share_metrics(y, p)
    return Evaluation(
        roc_auc=float(roc_auc_score(y, p)),
        pr_auc=float(average_precision_score(y, p)),
        log_loss=float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        brier=float(brier_score_loss(y, p)),
        ece=expected_calibration_error(y, p),
        threshold=threshold,
        precision=float(precision_score(y, predicted, zero_division=0)),
        recall=float(recall_score(y, predicted, zero_division=0)),
        f1=float(f1_score(y, predicted, zero_division=0)),
        lift_top10=lift,
        recall_top10=recall_top,
        positive_rate=float(y.mean()),
        rows=len(y),
    )


def write_plots(
    folder: Path,
    y: Labels,
    p: Scores,
    *,
    recency: Scores,
    bgnbd: Scores | None,
    oracle: Scores | None,
    importance: dict[str, float],
) -> list[Path]:
    """ROC, precision-recall, calibration, lift and feature-importance plots as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    curves = {"model": p, "recency (days since last event)": recency}
    if bgnbd is not None:
        curves["BG/NBD (P no purchase in the horizon)"] = bgnbd
    if oracle is not None:
        curves["oracle (the world's own probability)"] = oracle
    written = []

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, scores in curves.items():
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label=f"{label}: AUC {roc_auc_score(y, scores):.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend(loc="lower right", fontsize=8)
    written.append(_save(fig, folder / "roc.png"))

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, scores in curves.items():
        precision, recall, _ = precision_recall_curve(y, scores)
        ax.plot(recall, precision, label=f"{label}: AP {average_precision_score(y, scores):.3f}")
    ax.axhline(float(y.mean()), ls=":", c="grey", label="churn rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test window")
    ax.legend(loc="upper right", fontsize=8)
    written.append(_save(fig, folder / "precision_recall.png"))

    fig, ax = plt.subplots(figsize=(5.5, 5))
    edges = np.quantile(p, np.linspace(0, 1, 11))
    index = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, 9)
    predicted = [float(p[index == b].mean()) for b in range(10) if (index == b).any()]
    observed = [float(y[index == b].mean()) for b in range(10) if (index == b).any()]
    ax.plot(predicted, observed, marker="o", label="model (deciles of predicted risk)")
    top = max(max(predicted), max(observed)) * 1.05
    ax.plot([0, top], [0, top], ls=":", c="grey", label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability", ylabel="observed churn rate", title="Calibration, test window")
    ax.legend(loc="upper left", fontsize=8)
    written.append(_save(fig, folder / "calibration.png"))

    fig, ax = plt.subplots(figsize=(5.5, 5))
    shares = np.linspace(0.01, 1.0, 100)
    for label, scores in curves.items():
        order = np.argsort(-scores, kind="stable")
        captured = np.cumsum(y[order]) / max(1, y.sum())
        lifts = [captured[max(0, int(s * len(y)) - 1)] / s for s in shares]
        ax.plot(shares * 100, lifts, label=label)
    ax.axhline(1.0, ls=":", c="grey")
    ax.axvline(TOP_SHARE * 100, ls="--", c="grey", lw=0.8)
    ax.set(xlabel="riskiest users contacted (%)", ylabel="lift over random", title="Lift, test window")
    ax.legend(loc="upper right", fontsize=8)
    written.append(_save(fig, folder / "lift.png"))

    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.3 * len(importance))))
    ordered = sorted(importance.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in ordered], [v for _, v in ordered])
    ax.set(xlabel="drop in test ROC AUC when the feature is shuffled", title="Permutation importance")
    written.append(_save(fig, folder / "feature_importance.png"))
    return written


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
