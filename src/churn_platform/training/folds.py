"""Validation by user folds inside the training window (the `folds` design of training.split).

Every row of one user lies in one fold, so a candidate is never scored on a user it was fitted on; the folds are
stratified by the label (churn is rare) and shuffled with the training seed. The folds share calendar time, so
they measure how a model generalises to other users, not to the future: the test window, after a gap of the label
horizon, is what measures the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import cross_val_predict

from churn_platform.model.candidates import CANDIDATES, Labels
from churn_platform.model.encoding import FloatMatrix

Indices = npt.NDArray[np.intp]
Fold = tuple[Indices, Indices]  # (rows fitted on, rows scored)
Scores = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


class FoldError(ValueError):
    """The training window cannot be cross-validated by user with the folds asked for."""


def user_folds(user_ids: npt.ArrayLike, labels: Labels, *, folds: int, seed: int) -> list[Fold]:
    """K folds of the rows, grouped by user (no user on both sides of a fold) and stratified by user: users who
    ever churn in the window are dealt round the folds apart from those who never do, in an order shuffled by
    `seed`. Linear in the rows (scikit-learn's StratifiedGroupKFold loops in Python over users: ~7 s for 30,000)."""
    users = np.asarray(user_ids)
    distinct, row_user = np.unique(users, return_inverse=True)
    if folds < 2 or len(distinct) < folds:
        raise FoldError(
            f"{folds} user folds need at least 2 folds and as many users; the training window holds"
            f" {len(distinct)} users: lower CHURN_TRAIN_FOLDS"
        )
    ever_churned = np.zeros(len(distinct), dtype=bool)
    ever_churned[row_user[labels == 1]] = True
    order = np.random.default_rng(seed).permutation(len(distinct))
    # Churners first, then the rest, each in shuffled order, dealt 0, 1, ..., K-1, 0, ...: every fold gets
    # its share of both, and the fold sizes differ by at most one user per stratum.
    dealt = np.concatenate([order[ever_churned[order]], order[~ever_churned[order]]])
    user_fold = np.empty(len(distinct), dtype=np.intp)
    user_fold[dealt] = np.arange(len(distinct)) % folds
    row_fold = user_fold[row_user]
    found = [(np.flatnonzero(row_fold != k), np.flatnonzero(row_fold == k)) for k in range(folds)]
    for number, (_, scored) in enumerate(found, start=1):
        if len(np.unique(labels[scored])) < 2:
            raise FoldError(
                f"user fold {number} of {folds} holds one class only ({len(scored)} rows): the training window has"
                " too few churned (or retained) users for that many folds: lower CHURN_TRAIN_FOLDS"
            )
    return found


@dataclass(frozen=True)
class FoldedCandidate:
    """A candidate's out-of-fold decision scores (each row scored by the fold model that did not see its user)."""

    name: str
    out_of_fold: Scores  # uncalibrated decision function, one per training row
    fold_roc_auc: tuple[float, ...]

    @property
    def roc_auc(self) -> float:
        """The mean of the per-fold ROC AUCs: each fold model ranks only its own held-out users."""
        return float(np.mean(self.fold_roc_auc))

    def platt_log_loss(self, labels: Labels, judged: Mask | None = None) -> float:
        """Log loss of the out-of-fold scores after a sigmoid fitted on them (what calibration will make of them),
        over the `judged` rows (all by default)."""
        from sklearn.linear_model import LogisticRegression

        rows = slice(None) if judged is None else judged
        column, y = self.out_of_fold[rows].reshape(-1, 1), labels[rows]
        platt = LogisticRegression(C=np.inf).fit(column, y)
        return float(log_loss(y, platt.predict_proba(column)[:, 1], labels=[0, 1]))


def cross_validate(
    name: str, x: FloatMatrix, y: Labels, folds: list[Fold], seed: int, judged: Mask | None = None
) -> FoldedCandidate:
    """Fit the candidate once per fold and score the held-out users: K fits. Each fold's ROC AUC is over its
    `judged` rows (all by default; training.censoring's completed labels are fitted on, never judged by)."""
    scores = cross_val_predict(CANDIDATES[name](seed), x, y, cv=folds, method="decision_function")
    out_of_fold = np.asarray(scores, dtype=np.float64)
    aucs = []
    for number, (_, scored) in enumerate(folds, start=1):
        rows = scored if judged is None else scored[judged[scored]]
        if len(np.unique(y[rows])) < 2:
            raise FoldError(
                f"user fold {number} of {len(folds)} has one class only among its {len(rows)} complete labels:"
                " lower CHURN_TRAIN_FOLDS"
            )
        aucs.append(float(roc_auc_score(y[rows], out_of_fold[rows])))
    return FoldedCandidate(name, out_of_fold, tuple(aucs))
