"""Feature vectors to the numeric matrix every candidate model takes.

One encoder for training and serving: numeric features pass through (missing stays NaN, each model handles it),
text features are one-hot encoded over the categories seen in training (an unseen category is all zeros). It
takes a DataFrame (training, batch scoring), a list of feature dicts, or an online `FeatureBatch` (the serving
path: columns, with no DataFrame or dict built per request).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

if TYPE_CHECKING:
    from churn_platform.features.feature_batch import FeatureBatch

FloatMatrix = npt.NDArray[np.float64]
_STORED_CODES = "_stored_codes"  # the serving path's cache, kept out of the pickled encoder


class FeatureEncoder(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Numeric features as they are, text features one-hot over the categories seen when fitted."""

    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> None:
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, frame: pd.DataFrame, y: object = None) -> FeatureEncoder:
        missing = [c for c in (*self.numeric, *self.categorical) if c not in frame.columns]
        if missing:
            raise ValueError(f"the training frame lacks the features {missing}")
        self.categories_ = {name: sorted(str(v) for v in frame[name].dropna().unique()) for name in self.categorical}
        self.output_names_ = [*self.numeric] + [
            f"{name}={value}" for name in self.categorical for value in self.categories_[name]
        ]
        self._positions = {
            name: {value: i for i, value in enumerate(values)} for name, values in self.categories_.items()
        }
        return self

    @property
    def feature_names(self) -> list[str]:
        return list(self.numeric) + list(self.categorical)

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.object_]:
        return np.asarray(self.output_names_, dtype=object)

    def transform(self, frame: pd.DataFrame) -> FloatMatrix:
        numeric = frame[list(self.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
        blocks = [numeric]
        for name in self.categorical:
            positions = self._positions[name]
            codes = frame[name].map(lambda v, p=positions: p.get(str(v), -1) if v is not None else -1)
            blocks.append(_one_hot(codes.to_numpy(dtype=np.int64), len(positions)))
        return np.hstack(blocks)

    def transform_batch(self, batch: FeatureBatch, rows: npt.NDArray[np.intp] | None = None) -> FloatMatrix:
        """The same encoding for an online feature batch's users (`rows` of it, or all): straight from its columns."""
        blocks = [batch.numeric(self.numeric, rows)]
        caches = self.__dict__.setdefault(_STORED_CODES, {})  # stored encoding -> category position, per feature
        for name in self.categorical:
            positions = self._positions[name]
            codes = batch.codes(name, positions, caches.setdefault(name, {}), rows)
            blocks.append(_one_hot(codes, len(positions)))
        return np.hstack(blocks)

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().__getstate__())  # a copy: BaseEstimator may hand out __dict__ itself
        state.pop(_STORED_CODES, None)  # a serving cache, never part of the fitted encoder
        return state

    def transform_rows(self, rows: Sequence[Mapping[str, Any]]) -> FloatMatrix:
        """The same encoding for feature dicts (None = missing), without building a DataFrame."""
        values = np.array([[row.get(name) for name in self.numeric] for row in rows], dtype=object)
        values = values.reshape(len(rows), len(self.numeric))
        missing = np.frompyfunc(lambda value: value is None, 1, 1)(values).astype(bool)
        blocks = [np.where(missing, np.nan, values).astype(np.float64)]
        for name in self.categorical:
            positions = self._positions[name]
            codes = np.fromiter((positions.get(str(row.get(name)), -1) for row in rows), np.int64, len(rows))
            blocks.append(_one_hot(codes, len(positions)))
        return np.hstack(blocks)


def _one_hot(codes: npt.NDArray[np.int64], width: int) -> FloatMatrix:
    out = np.zeros((len(codes), width), dtype=np.float64)
    known = codes >= 0
    out[np.flatnonzero(known), codes[known]] = 1.0
    return out
