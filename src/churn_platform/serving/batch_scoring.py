"""Scoring a request's users once their features are read and their routes known: features -> matrix -> scores.

Each model scores its users in one call on a numpy matrix (`FeatureEncoder.transform_batch`, no DataFrame per
request); users without any stored feature get no score, never an invented one. Each scored row's encoded vector is
hashed for the prediction log, and every user gets an outcome and, when something is irregular, a message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import mmh3
import numpy as np
import numpy.typing as npt

from churn_platform.features.feature_batch import MISSING, PRESENT, STALE, FeatureBatch, FeatureVector
from churn_platform.model.encoding import FeatureEncoder
from churn_platform.serving.models import LoadedModel
from churn_platform.serving.prediction_log.rows import Shadow
from churn_platform.serving.routing import Route

log = logging.getLogger(__name__)
_FAILED_SHADOWS: set[str] = set()  # versions whose shadow scoring failed, reported once each
Outcome = Literal["ok", "no_features", "unknown_user"]
NO_FEATURES_HASH = "no-features"


def score_batch(
    batch: FeatureBatch, routes: Sequence[Route], featureless: npt.NDArray[np.bool_]
) -> tuple[list[float | None], list[str], list[Shadow | None] | None]:
    """Each user's probability (None for the `featureless`), the hash of the vector its model scored, and, when a
    route has a shadow model, each user's shadow score (None where there is none; no list at all without shadows)."""
    probabilities: list[float | None] = [None] * len(batch.user_ids)
    hashes = [NO_FEATURES_HASH] * len(batch.user_ids)
    shadows: list[Shadow | None] | None = None
    for rows in _rows_by_model(routes, featureless):
        route = routes[rows[0]]
        model = route.model
        matrix = model.encoder.transform_batch(batch, rows)
        scores = model.score(matrix).tolist()
        for i, p, hashed in zip(rows.tolist(), scores, row_hashes(matrix), strict=True):
            probabilities[i] = p
            hashes[i] = hashed
        shadow = route.shadow
        if shadow is not None:
            if shadows is None:
                shadows = [None] * len(batch.user_ids)
            shadow_scores = _shadow_scores(batch, rows, matrix, scores, model, shadow)
            if shadow_scores is not None:
                for i, p in zip(rows.tolist(), shadow_scores, strict=True):
                    shadows[i] = (shadow.version, p)
    return probabilities, hashes, shadows


def _shadow_scores(
    batch: FeatureBatch, rows: npt.NDArray[np.intp], matrix: npt.NDArray[np.float64], scores: list[float],
    model: LoadedModel, shadow: LoadedModel,
) -> list[float] | None:  # fmt: skip
    """The shadow model's scores of the rows; None (logged) if it fails: the answers never depend on it."""
    if shadow.version == model.version:  # an A/A test: the same model scores the same features alike
        return scores
    try:
        same = same_encoding(shadow.encoder, model.encoder)
        return list(shadow.score(matrix if same else shadow.encoder.transform_batch(batch, rows)).tolist())
    except Exception:
        if shadow.version not in _FAILED_SHADOWS:  # once per version: a broken shadow must not flood the log
            _FAILED_SHADOWS.add(shadow.version)
            log.exception("shadow scoring by version %s failed; its rows are logged without a shadow", shadow.version)
        return None


def same_encoding(a: FeatureEncoder, b: FeatureEncoder) -> bool:
    """Two fitted encoders that turn any features into the same matrix (the same features, the same categories)."""
    return a is b or (
        list(a.numeric) == list(b.numeric)
        and list(a.categorical) == list(b.categorical)
        and a.categories_ == b.categories_
    )


def _rows_by_model(routes: Sequence[Route], featureless: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.intp]]:
    """The rows each route scores (users with features), grouped by model version (and shadow)."""
    if len({id(route) for route in routes}) == 1:
        rows = np.flatnonzero(~featureless)
        return [rows] if len(rows) else []
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, (none, route) in enumerate(zip(featureless.tolist(), routes, strict=True)):
        if not none:
            shadow = None if route.shadow is None else route.shadow.version
            groups.setdefault((route.model.version, shadow), []).append(i)
    return [np.asarray(rows, dtype=np.intp) for rows in groups.values()]


def row_hashes(matrix: npt.NDArray[np.float64]) -> list[str]:
    """A short hash of each encoded feature vector the model scored, so log rows can be grouped and joined by
    input: the first 8 bytes of MurmurHash3 (x64, 128 bits, seed 0) of the row's float64 bytes, as 16 hex digits.
    `NO_FEATURES_HASH` stands for a user that had none. Not a cryptographic hash: nothing relies on it being hard
    to forge."""
    raw = np.ascontiguousarray(matrix, dtype=np.float64).tobytes()
    width = matrix.shape[1] * 8
    hash_bytes = mmh3.hash_bytes
    return [hash_bytes(raw[start : start + width])[:8].hex() for start in range(0, len(raw), width)]


def outcomes(
    batch: FeatureBatch, featureless: npt.NDArray[np.bool_], probabilities: list[float | None], unknown: set[str]
) -> tuple[list[Outcome], list[str | None]]:
    """Each user's outcome and message; only users with something to say are looked at one by one."""
    result: list[Outcome] = ["ok"] * len(batch)
    messages: list[str | None] = [None] * len(batch)
    states = batch.states
    irregular = np.flatnonzero((states != PRESENT).any(axis=1) | featureless).tolist()
    if not irregular:
        return result, messages
    snapshots = batch.snapshot_times()
    for i in irregular:
        user_id = batch.user_ids[i]
        if user_id in unknown:
            result[i], messages[i] = "unknown_user", f"unknown user {user_id!r}"
        elif probabilities[i] is None:
            result[i] = "no_features"
            messages[i] = f"user {user_id!r} has no features in the online store (not materialized yet): no score"
        elif (states[i] == STALE).any():
            messages[i] = (
                f"{int((states[i] == STALE).sum())} features are stale (snapshot {snapshots[i]:%Y-%m-%d %H:%M})"
            )
        else:
            missing = [name for name, state in zip(batch.names, states[i].tolist(), strict=True) if state == MISSING]
            messages[i] = f"features missing, scored as missing by the model: {missing}"
    return result, messages


def risk_band(probability: float | None, edges: tuple[float, float]) -> str:
    """`low` / `medium` / `high` from the band edges; `unknown` without a score."""
    if probability is None:
        return "unknown"
    return "high" if probability >= edges[1] else "medium" if probability >= edges[0] else "low"


def featureless_ids(batch: FeatureBatch) -> list[str]:
    """The users of a batch without any stored feature (unknown, or known but not materialized yet)."""
    return [batch.user_ids[i] for i in np.flatnonzero(batch.featureless).tolist()]


def has_no_features(vector: FeatureVector) -> bool:
    return set(vector.status.values()) <= {"missing"}
