"""Per-feature drift between a reference sample and the current data: the numbers stored and alerted on.

Numeric features get the two-sample Kolmogorov-Smirnov test (statistic and p-value as `scipy.stats.ks_2samp`
gives them), categorical features Pearson's chi-square test of homogeneity on their category counts
(`scipy.stats.chi2_contingency`, no continuity correction). Both also get the population stability index (PSI)
over bins fixed by the reference: the reference's deciles for a numeric feature (fewer when values repeat), its
categories plus one for any other value for a categorical one. Missing values are left out of both (their share
is data quality's business).

With tens of thousands of rows a test rejects for differences too small to matter, and the reference (training
data) is never the same population as a week of served users. So a feature drifts when its test rejects at
`alpha` AND its PSI reaches `psi_threshold` (0.1 is the usual "moderate shift"); the data drift when at least
`share` of the features do. docs/monitoring.md explains each number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

FloatArray = npt.NDArray[np.float64]
Test = Literal["ks", "chi_square"]

PSI_FLOOR = 1e-4  # a bin empty on one side counts as this share, so the PSI stays finite
PSI_QUANTILES = np.linspace(0.1, 0.9, 9)  # numeric bins: the reference's deciles
KS_EXACT_MAX_ROWS = 10_000  # scipy's `ks_2samp` computes an exact p-value up to this many rows on the larger side
OTHER = "\x00other"  # the categorical bin of values the reference never had


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01
    psi: float = 0.1
    share: float = 0.3


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison; statistic, p-value and PSI are None when a side has no value."""

    feature: str
    test: Test
    statistic: float | None
    p_value: float | None
    psi: float | None
    reference_rows: int  # rows with a value
    current_rows: int
    drifted: bool


@dataclass(frozen=True)
class DatasetDrift:
    features: list[FeatureDrift]
    share: float  # of the features that drifted
    drifted: bool  # share >= the threshold

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]


def ks_2samp(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """The two-sided two-sample KS statistic and p-value, equal to `scipy.stats.ks_2samp` (method `auto`).

    The statistic is read off both empirical CDFs at every observed value in one `searchsorted` per side. Large
    samples get scipy's asymptotic p-value (`kstwo` at the effective size), as `ks_2samp` does beyond
    `KS_EXACT_MAX_ROWS`; smaller ones go to `ks_2samp` itself for its exact p-value."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(current, dtype=np.float64))
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("ks_2samp: both samples need at least one value")
    if max(n1, n2) <= KS_EXACT_MAX_ROWS:
        found = stats.ks_2samp(a, b)
        return float(found.statistic), float(found.pvalue)
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / n1
    cdf_b = np.searchsorted(b, values, side="right") / n2
    statistic = float(np.max(np.abs(cdf_a - cdf_b)))
    m, n = sorted((float(n1), float(n2)), reverse=True)
    p_value = float(np.clip(stats.kstwo.sf(statistic, np.round(m * n / (m + n))), 0.0, 1.0))
    return statistic, p_value


def numeric_bins(reference: npt.ArrayLike) -> FloatArray:
    """Inner bin edges fixed by the reference: its distinct deciles (bins are (-inf, e1], (e1, e2], ..., (ek, inf))."""
    values = np.asarray(reference, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.empty(0)
    edges: FloatArray = np.unique(np.quantile(values, PSI_QUANTILES))
    return edges


def psi(reference_shares: npt.ArrayLike, current_shares: npt.ArrayLike) -> float:
    """Population stability index: sum over bins of (current - reference) x ln(current / reference), each share
    floored at PSI_FLOOR."""
    r = np.maximum(np.asarray(reference_shares, dtype=np.float64), PSI_FLOOR)
    c = np.maximum(np.asarray(current_shares, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_psi(reference: npt.ArrayLike, current: npt.ArrayLike, edges: FloatArray | None = None) -> float:
    """PSI of a numeric feature over the reference's bins (`numeric_bins`; missing values left out)."""
    return _present_psi(_present(reference), _present(current), edges)


def _present_psi(ref: FloatArray, cur: FloatArray, edges: FloatArray | None = None) -> float:
    """`numeric_psi` of values already without missing ones."""
    edges = numeric_bins(ref) if edges is None else edges
    bins = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=bins)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=bins)
    return psi(ref_counts / len(ref), cur_counts / len(cur))


def category_counts(reference: pd.Series, current: pd.Series) -> tuple[list[str], FloatArray, FloatArray]:
    """Counts per category, over the reference's categories (sorted) and, last, any other value."""
    ref = reference.dropna().astype(str)
    cur = current.dropna().astype(str)
    categories = sorted(ref.unique())
    known = set(categories)
    cur = cur.where(cur.isin(known), OTHER)
    ref_counts = ref.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
    cur_counts = cur.value_counts().reindex([*categories, OTHER], fill_value=0).to_numpy(dtype=np.float64)
    ref_with_other: FloatArray = np.append(ref_counts, 0.0)
    cur_with_other: FloatArray = np.asarray(cur_counts, dtype=np.float64)
    return [*categories, OTHER], ref_with_other, cur_with_other


def chi_square(reference: pd.Series, current: pd.Series) -> tuple[float, float, float]:
    """Pearson's chi-square test of homogeneity of the category counts (statistic, p-value) and the PSI."""
    _, ref_counts, cur_counts = category_counts(reference, current)
    shares = psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # one category on both sides: nothing can differ
        return 0.0, 1.0, shares
    found = stats.chi2_contingency(table, correction=False)
    return float(found.statistic), float(found.pvalue), shares


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    thresholds: Thresholds,
) -> DatasetDrift:
    """Every feature's test, statistic, p-value, PSI and drift flag, and whether the data drift."""
    results = []
    for name in numeric:
        ref, cur = _present(reference[name]), _present(current[name])
        if ref.size == 0 or cur.size == 0:
            results.append(FeatureDrift(name, "ks", None, None, None, ref.size, cur.size, False))
            continue
        statistic, p_value = ks_2samp(ref, cur)
        shift = _present_psi(ref, cur)
        drifted = p_value < thresholds.alpha and shift >= thresholds.psi
        results.append(FeatureDrift(name, "ks", statistic, p_value, shift, ref.size, cur.size, drifted))
    for name in categorical:
        ref_rows, cur_rows = int(reference[name].notna().sum()), int(current[name].notna().sum())
        if ref_rows == 0 or cur_rows == 0:
            results.append(FeatureDrift(name, "chi_square", None, None, None, ref_rows, cur_rows, False))
            continue
        statistic, p_value, shift = chi_square(reference[name], current[name])
        drifted = p_value < thresholds.alpha and shift >= thresholds.psi
        results.append(FeatureDrift(name, "chi_square", statistic, p_value, shift, ref_rows, cur_rows, drifted))
    if not results:
        raise ValueError("no feature to compare")
    share = sum(r.drifted for r in results) / len(results)
    return DatasetDrift(results, share, share >= thresholds.share)


def _present(values: npt.ArrayLike | pd.Series) -> FloatArray:
    array = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)
    present: FloatArray = array[~np.isnan(array)]
    return present
