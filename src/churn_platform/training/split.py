"""Time-based splits: train on earlier snapshots, validate and test on later ones, never a random row split.

Between train and validation, and between validation and test, lies a gap of at least the label horizon H: a
label at t looks at (t, t + H], so without the gap a training label would see the period it is tested on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd


class SplitError(ValueError):
    """The labelled history is too short for the windows asked for."""


@dataclass(frozen=True)
class Window:
    first: date
    last: date  # inclusive

    def __str__(self) -> str:
        return f"{self.first}..{self.last}"


@dataclass(frozen=True)
class TimeSplit:
    """Which snapshot days each part covers; the gaps between them are at least `gap_days`."""

    train: Window
    validation: Window
    test: Window
    gap_days: int

    def __str__(self) -> str:
        return f"train {self.train}, validation {self.validation}, test {self.test} (gaps of {self.gap_days} days)"

    def masks(self, timestamps: pd.Series) -> tuple[npt.NDArray[np.bool_], ...]:
        """Boolean masks (train, validation, test) over snapshot timestamps (tz-aware UTC)."""
        days = utc_days(timestamps)
        windows = (self.train, self.validation, self.test)
        return tuple(((days >= w.first) & (days <= w.last)).to_numpy(dtype=bool) for w in windows)


def utc_days(timestamps: pd.Series) -> pd.Series:
    """The UTC calendar day of each timestamp (a timestamp without a zone is taken as UTC)."""
    utc = timestamps.dt.tz_localize("UTC") if timestamps.dt.tz is None else timestamps.dt.tz_convert("UTC")
    days: pd.Series = utc.dt.date
    return days


def time_split(snapshot_days: pd.Series, *, gap_days: int, test_days: int, validation_days: int) -> TimeSplit:
    """The last `test_days` labelled days for test, `validation_days` before them for validation, the rest for
    training, with `gap_days` (at least the label horizon) left out before validation and before test."""
    if test_days < 1 or validation_days < 1 or gap_days < 0:
        raise SplitError(
            f"test and validation windows need at least one day and the gap cannot be negative"
            f" (test {test_days}, validation {validation_days}, gap {gap_days})"
        )
    days = sorted(set(utc_days(snapshot_days)))
    if not days:
        raise SplitError("no labelled snapshots to split")
    last = days[-1]
    test = Window(last - timedelta(days=test_days - 1), last)
    validation_last = test.first - timedelta(days=gap_days + 1)
    validation = Window(validation_last - timedelta(days=validation_days - 1), validation_last)
    train = Window(days[0], validation.first - timedelta(days=gap_days + 1))
    if train.last < train.first:
        needed = test_days + validation_days + 2 * gap_days + 1
        raise SplitError(
            f"labelled snapshots cover {(last - days[0]).days + 1} days ({days[0]}..{last}); a split with"
            f" {test_days} test days, {validation_days} validation days and two gaps of {gap_days} days needs at"
            f" least {needed}: simulate or load a longer history, or shorten the windows"
        )
    return TimeSplit(train, validation, test, gap_days)
