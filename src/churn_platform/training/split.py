"""Splits in time: the latest labelled days test the model, never a random row split across time.

A label at t looks at (t, t + H], so every label that fits, calibrates or picks the model must be known before the
test window starts: a gap of at least the label horizon H lies before it. Two validation designs:

- `time`: train | gap H | validation | gap H | test. Model choice, calibration and threshold on a later window.
- `folds`: train | gap H | test. Model choice, calibration and threshold by K folds grouped by user inside the
  training window (training.folds): one gap instead of two, so short histories (or long horizons) fit.

`auto` takes `time` when the history fits it, else `folds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

ValidationDesign = Literal["time", "folds"]
ValidationChoice = Literal["auto", "time", "folds"]
VALIDATION_SETTING = "CHURN_TRAIN_VALIDATION"


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
    """Which snapshot days each part covers; a gap of at least `gap_days` before validation (`time`) and test.

    With the `folds` design there is no validation window (`validation` is None): the training window is
    cross-validated by user instead.
    """

    train: Window
    validation: Window | None
    test: Window
    gap_days: int
    design: ValidationDesign = "time"

    def __str__(self) -> str:
        if self.validation is None:
            return f"train {self.train} (validated by user folds), test {self.test} (a gap of {self.gap_days} days)"
        return f"train {self.train}, validation {self.validation}, test {self.test} (gaps of {self.gap_days} days)"

    @property
    def cut(self) -> date:
        """The first day of the window that judges the fitted model (validation, or test with `folds`): outcomes
        the fit may use are those known before it."""
        return (self.validation or self.test).first

    @property
    def outcomes_seen_through(self) -> date:
        """The last day any label used to fit, calibrate or choose the model looked at (before the test window)."""
        last_used = self.train if self.validation is None else self.validation
        return last_used.last + timedelta(days=self.gap_days)

    def masks(self, timestamps: pd.Series) -> tuple[npt.NDArray[np.bool_], ...]:
        """Boolean masks (train, validation, test) over snapshot timestamps (tz-aware UTC); the validation mask
        is all False with the `folds` design."""
        days = utc_days(timestamps)

        def inside(window: Window | None) -> npt.NDArray[np.bool_]:
            if window is None:
                return np.zeros(len(days), dtype=bool)
            return ((days >= window.first) & (days <= window.last)).to_numpy(dtype=bool)

        return inside(self.train), inside(self.validation), inside(self.test)


def utc_days(timestamps: pd.Series) -> pd.Series:
    """The UTC calendar day of each timestamp (a timestamp without a zone is taken as UTC)."""
    utc = timestamps.dt.tz_localize("UTC") if timestamps.dt.tz is None else timestamps.dt.tz_convert("UTC")
    days: pd.Series = utc.dt.date
    return days


@dataclass(frozen=True)
class SplitNeeds:
    """How many labelled days (first to last, inclusive) each design needs for given windows and horizon."""

    gap_days: int
    test_days: int
    validation_days: int

    @property
    def time(self) -> int:
        return self.test_days + self.validation_days + 2 * self.gap_days + 1

    @property
    def folds(self) -> int:
        return self.test_days + self.gap_days + 1

    def needed(self, design: ValidationDesign) -> int:
        return self.time if design == "time" else self.folds

    def explained(self, design: ValidationDesign) -> str:
        """e.g. "`time` needs 417 (28 test + 28 validation + 2 x 180 gap + 1)"."""
        if design == "time":
            parts = f"{self.test_days} test + {self.validation_days} validation + 2 x {self.gap_days} gap + 1"
        else:
            parts = f"{self.test_days} test + {self.gap_days} gap + 1"
        return f"`{design}` needs {self.needed(design)} ({parts})"

    def folds_fit_within(self, covered: int) -> str:
        """What would make `folds` fit `covered` days: a shorter test window or horizon, or a longer history."""
        options = []
        if covered - self.gap_days - 1 >= 1:
            test = covered - self.gap_days - 1
            options.append(f"a test window of at most {test} days (CHURN_TRAIN_TEST_DAYS={test})")
        if covered - self.test_days - 1 >= 1:
            horizon = covered - self.test_days - 1
            options.append(
                f"a label horizon of at most {horizon} days (CHURN_LABEL_HORIZON_DAYS={horizon}; a shorter horizon"
                " also labels more of the latest days)"
            )
        options.append("a longer history")
        return ", or ".join(options)


def choose_design(
    covered_days: int, choice: ValidationChoice, needs: SplitNeeds, *, span: str = ""
) -> ValidationDesign:
    """The design for a history covering `covered_days` labelled days: `auto` is `time` when it fits, else
    `folds`. Raises SplitError, saying which option would make the history trainable, when the choice cannot."""
    if choice == "auto":
        design: ValidationDesign = "time" if covered_days >= needs.time else "folds"
    else:
        design = choice
    if covered_days >= needs.needed(design):
        return design
    covered = f"labelled snapshots cover {covered_days} days{span}"
    if design == "time" and covered_days >= needs.folds:
        raise SplitError(
            f"{covered}; {needs.explained('time')}; {needs.explained('folds')}:"
            f" set {VALIDATION_SETTING}=folds (or auto)"
        )
    shown = [needs.explained("time")] if choice != "folds" else []
    shown.append(needs.explained("folds"))
    folds = f"{VALIDATION_SETTING}=folds (or auto)" if choice == "time" else "`folds`"
    raise SplitError(f"{covered}; {'; '.join(shown)}; {folds} fits with {needs.folds_fit_within(covered_days)}")


def training_split(
    snapshot_days: pd.Series,
    *,
    validation: ValidationChoice,
    gap_days: int,
    test_days: int,
    validation_days: int,
) -> TimeSplit:
    """The split for a validation choice (`auto`, `time` or `folds`) over the labelled snapshot days."""
    days = _labelled_days(snapshot_days, gap_days=gap_days, test_days=test_days, validation_days=validation_days)
    design = _fitting_design(days, validation, SplitNeeds(gap_days, test_days, validation_days))
    if design == "time":
        return time_split(snapshot_days, gap_days=gap_days, test_days=test_days, validation_days=validation_days)
    return folds_split(snapshot_days, gap_days=gap_days, test_days=test_days)


def time_split(snapshot_days: pd.Series, *, gap_days: int, test_days: int, validation_days: int) -> TimeSplit:
    """The last `test_days` labelled days for test, `validation_days` before them for validation, the rest for
    training, with `gap_days` (at least the label horizon) left out before validation and before test."""
    days = _labelled_days(snapshot_days, gap_days=gap_days, test_days=test_days, validation_days=validation_days)
    _fitting_design(days, "time", SplitNeeds(gap_days, test_days, validation_days))
    test = Window(days[-1] - timedelta(days=test_days - 1), days[-1])
    validation_last = test.first - timedelta(days=gap_days + 1)
    validation = Window(validation_last - timedelta(days=validation_days - 1), validation_last)
    train = Window(days[0], validation.first - timedelta(days=gap_days + 1))
    return TimeSplit(train, validation, test, gap_days, "time")


def folds_split(snapshot_days: pd.Series, *, gap_days: int, test_days: int) -> TimeSplit:
    """The last `test_days` labelled days for test; every labelled day at least `gap_days` before it trains (and is
    cross-validated by user for model choice, calibration and threshold)."""
    days = _labelled_days(snapshot_days, gap_days=gap_days, test_days=test_days, validation_days=1)
    _fitting_design(days, "folds", SplitNeeds(gap_days, test_days, 1))
    test = Window(days[-1] - timedelta(days=test_days - 1), days[-1])
    train = Window(days[0], test.first - timedelta(days=gap_days + 1))
    return TimeSplit(train, None, test, gap_days, "folds")


def _fitting_design(days: list[date], choice: ValidationChoice, needs: SplitNeeds) -> ValidationDesign:
    return choose_design((days[-1] - days[0]).days + 1, choice, needs, span=f" ({days[0]}..{days[-1]})")


def _labelled_days(snapshot_days: pd.Series, *, gap_days: int, test_days: int, validation_days: int) -> list[date]:
    if test_days < 1 or validation_days < 1 or gap_days < 0:
        raise SplitError(
            f"test and validation windows need at least one day and the gap cannot be negative"
            f" (test {test_days}, validation {validation_days}, gap {gap_days})"
        )
    days = sorted(set(utc_days(snapshot_days)))
    if not days:
        raise SplitError("no labelled snapshots to split")
    return days
