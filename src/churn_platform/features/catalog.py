"""The feature catalog: every feature is data, from which the snapshot SQL, the Feast schema and the docs follow.

A snapshot of user u at time t (midnight UTC) uses only events with `event_timestamp < t`: daily buckets end at
t, so a window of w days covers exactly the buckets of days t - w .. t - 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from churn_platform.settings import USER_ATTRIBUTES, Settings

Dtype = Literal["int", "float", "text"]
UserColumn = Literal["plan", "channel", "region"]

# Feast's names for a catalog's objects are defined here once; feature_repo/ and the library both read them.
FEATURES_SCHEMA = "features"  # the PostgreSQL schema of the snapshot tables
ENTITY = "user"
JOIN_KEY = "user_id"
# Snapshots are daily: a value older than two days is stale (Feast's view TTL, and our online reads' default).
SNAPSHOT_TTL = timedelta(days=2)
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class EventCount:
    """Events of one type in the last `window_days` days (None: the user's whole history)."""

    event_type: str
    window_days: int | None
    dtype: Dtype = "int"

    @property
    def name(self) -> str:
        return f"{_slug(self.event_type)}_count_{_window_suffix(self.window_days)}"

    @property
    def meaning(self) -> str:
        return f"number of `{self.event_type}` events {_window_words(self.window_days)}"


@dataclass(frozen=True)
class EventValueSum:
    """Sum of the `value` of one event type in the last `window_days` days (None: the whole history)."""

    event_type: str
    window_days: int | None
    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return f"{_slug(self.event_type)}_value_sum_{_window_suffix(self.window_days)}"

    @property
    def meaning(self) -> str:
        return f"sum of the `value` of `{self.event_type}` events {_window_words(self.window_days)}"


@dataclass(frozen=True)
class EventValueMean:
    """Mean `value` of one event type over the last `window_days` days (None: the whole history)."""

    event_type: str
    window_days: int | None
    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return f"{_slug(self.event_type)}_value_mean_{_window_suffix(self.window_days)}"

    @property
    def meaning(self) -> str:
        return f"mean `value` of `{self.event_type}` events {_window_words(self.window_days)} (empty without one)"


@dataclass(frozen=True)
class LastEventValue:
    """The `value` of the user's last event of one type before the snapshot."""

    event_type: str
    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return f"{_slug(self.event_type)}_value_last"

    @property
    def meaning(self) -> str:
        return f"`value` of the last `{self.event_type}` event before the snapshot (empty without one)"


@dataclass(frozen=True)
class ActiveDays:
    """Distinct days with at least one event in the last `window_days` days (None: the whole history)."""

    window_days: int | None
    dtype: Dtype = "int"

    @property
    def name(self) -> str:
        return f"active_days_{_window_suffix(self.window_days)}"

    @property
    def meaning(self) -> str:
        return f"distinct days with any event {_window_words(self.window_days)}"


@dataclass(frozen=True)
class MeanGapDays:
    """The user's usual gap: days from the first to the last active day over the active days minus one."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "mean_gap_days"

    @property
    def meaning(self) -> str:
        return (
            "mean days between consecutive active days over the whole history before the snapshot (empty with"
            " fewer than two active days)"
        )


@dataclass(frozen=True)
class GapRatio:
    """The current silence over the usual gap: above 1, quieter than usual."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "current_gap_over_mean_gap"

    @property
    def meaning(self) -> str:
        return "`days_since_last_event` over `mean_gap_days` (above 1: quieter than usual; empty without a gap)"


@dataclass(frozen=True)
class GapSpread:
    """How regular the user's rhythm is: the spread of the gaps between active days over their mean."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "gap_days_cv"

    @property
    def meaning(self) -> str:
        return (
            "standard deviation over mean of the days between consecutive active days, over the whole history"
            " (0: like clockwork, about 1: as irregular as chance; empty with fewer than two gaps)"
        )


@dataclass(frozen=True)
class RecentGapRatio:
    """Whether the rhythm is slowing: the last two gaps between active days over the usual gap."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "recent_gaps_over_mean_gap"

    @property
    def meaning(self) -> str:
        return (
            "mean of the last two gaps between active days over `mean_gap_days` (above 1: slowing down; empty"
            " with fewer than two gaps)"
        )


@dataclass(frozen=True)
class ActivityTrend:
    """Daily event rate over the short window divided by the daily rate over the long one (1 = steady)."""

    short_days: int
    long_days: int
    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return f"activity_trend_{self.short_days}d_{self.long_days}d"

    @property
    def meaning(self) -> str:
        return (
            f"events per day in the last {self.short_days} days over events per day in the last {self.long_days}"
            " days (1 = steady, below 1 = slowing down; empty when there were no events in the long window)"
        )


@dataclass(frozen=True)
class DaysSinceLastEvent:
    """Days from the last event before the snapshot to the snapshot."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "days_since_last_event"

    @property
    def meaning(self) -> str:
        return "days between the last event before the snapshot and the snapshot (fractional)"


@dataclass(frozen=True)
class TenureDays:
    """Days since the user signed up (or, without a signup time, was first seen)."""

    dtype: Dtype = "float"

    @property
    def name(self) -> str:
        return "tenure_days"

    @property
    def meaning(self) -> str:
        return "days between signup (or the first event, without a signup time) and the snapshot"


@dataclass(frozen=True)
class UserAttribute:
    """A column of `raw.users`, as it is."""

    column: UserColumn
    dtype: Dtype = "text"

    @property
    def name(self) -> str:
        return self.column

    @property
    def meaning(self) -> str:
        return f"the user's `{self.column}` as of the snapshot (the version of raw.user_attributes valid before t)"


Feature = (
    EventCount
    | EventValueSum
    | EventValueMean
    | LastEventValue
    | ActiveDays
    | ActivityTrend
    | DaysSinceLastEvent
    | TenureDays
    | MeanGapDays
    | GapRatio
    | GapSpread
    | RecentGapRatio
    | UserAttribute
)
WindowedFeature = EventCount | EventValueSum | EventValueMean | ActiveDays


@dataclass(frozen=True)
class Catalog:
    """An ordered, named set of features (a feature service version names one)."""

    name: str
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        bad = [n for n in names if not NAME.match(n)]
        if bad:
            raise ValueError(f"catalog {self.name}: feature names must be lower-case identifiers, got {bad}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"catalog {self.name}: feature names repeat: {repeated}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def table(self) -> str:
        """`features.<catalog name>`: one snapshot table per catalog version, so a model names its features."""
        return f"{FEATURES_SCHEMA}.{self.name}"

    @property
    def source_name(self) -> str:
        """The Feast data source over the snapshot table."""
        return f"{self.name}_snapshots"

    @property
    def feature_view_name(self) -> str:
        """The Feast feature view of the catalog's features."""
        return f"{self.name}_user_features"

    @property
    def feature_service_name(self) -> str:
        """The versioned Feast feature service: the catalog's own name, which a model version records."""
        return self.name

    @property
    def event_types(self) -> list[str]:
        """The event types the catalog counts or sums, in first-use order."""
        seen: dict[str, None] = {}
        for f in self.features:
            if isinstance(f, EventCount | EventValueSum | EventValueMean | LastEventValue):
                seen.setdefault(f.event_type)
        return list(seen)

    @property
    def labels_table(self) -> str:
        """`features.<catalog name>_labels`: the labels of this catalog's snapshots, per horizon."""
        return f"{FEATURES_SCHEMA}.{self.name}_labels"

    @property
    def longest_window_days(self) -> int:
        windows = [1]
        for f in self.features:
            if isinstance(f, EventCount | EventValueSum | EventValueMean | ActiveDays) and f.window_days:
                windows.append(f.window_days)
            elif isinstance(f, ActivityTrend):
                windows.append(f.long_days)
        return max(windows)


def default_catalog(
    event_types: Sequence[str],
    valued_event_types: Iterable[str] = (),
    *,
    count_windows: Sequence[int] = (7, 30),
    value_window: int = 30,
    user_attributes: Sequence[UserColumn] = ("plan", "channel"),
    name: str = "churn_v1",
) -> Catalog:
    """A sensible catalog for any set of event types: counts per window and over the whole history, value sums,
    means and last values, activity, recency, tenure, and the user's rhythm: the usual gap between active days, how
    regular it is and whether the last gaps are longer.

    A business whose only event is `purchase` with a value gets recency, frequency and monetary features (the
    RFM a retention team knows) and their trends, without code changes.
    """
    features: list[Feature] = []
    for event_type in event_types:
        features.extend(EventCount(event_type, w) for w in count_windows)
        features.append(EventCount(event_type, None))
    for event_type in valued_event_types:
        features += [
            EventValueSum(event_type, value_window),
            EventValueSum(event_type, None),
            EventValueMean(event_type, None),
            LastEventValue(event_type),
        ]
    short, long = min(count_windows), max(count_windows)
    features += [ActiveDays(long), ActiveDays(None), ActivityTrend(short, long), DaysSinceLastEvent(), TenureDays()]
    features += [MeanGapDays(), GapRatio(), GapSpread(), RecentGapRatio()]
    features += [UserAttribute(column) for column in user_attributes]
    return Catalog(name, tuple(features))


def _window_suffix(window_days: int | None) -> str:
    return "all" if window_days is None else f"{window_days}d"


def _window_words(window_days: int | None) -> str:
    return (
        "over the whole history before the snapshot"
        if window_days is None
        else (f"in the {window_days} days before the snapshot")
    )


def _slug(event_type: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", event_type.lower()).strip("_")
    return slug if slug and slug[0].isalpha() else f"e_{slug}"


def catalog_from_settings(settings: Settings) -> Catalog:
    """The catalog the platform is configured for: event types and windows come from settings, not code."""
    return default_catalog(
        settings.feature_event_types,
        settings.feature_valued_event_types,
        count_windows=settings.feature_windows_days,
        value_window=max(settings.feature_windows_days),
        user_attributes=[_user_column(c) for c in settings.feature_user_attributes],
        name=settings.feature_catalog,
    )


def _user_column(column: str) -> UserColumn:
    if column not in USER_ATTRIBUTES:
        raise ValueError(f"{column!r} is not a user attribute (known: {list(USER_ATTRIBUTES)})")
    return column  # type: ignore[return-value]


def catalog_markdown(catalog: Catalog) -> str:
    """docs/features.md: every feature of the catalog with its meaning (generated; do not edit by hand)."""
    lines = [
        f"# Features: catalog `{catalog.name}`",
        "",
        "Generated from the feature catalog by `churn features docs`; do not edit by hand. The catalog comes from",
        "configuration (`CHURN_FEATURE_EVENT_TYPES`, `CHURN_FEATURE_VALUED_EVENT_TYPES`,",
        "`CHURN_FEATURE_WINDOWS_DAYS`, `CHURN_FEATURE_USER_ATTRIBUTES`), so your own event types give their own",
        "features without code changes.",
        "",
        "Every feature of a snapshot at time t (midnight UTC) uses only events with `event_timestamp < t`;",
        "a window of w days covers the days t - w .. t - 1.",
        "",
        "| feature | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{f.name}` | {f.dtype} | {f.meaning} |" for f in catalog.features]
    return "\n".join(lines) + "\n"
