"""The statistics of an A/B experiment between two churn models: pure functions over per-user figures.

The randomised unit is the user (a user's arm is fixed for the experiment), so every test here takes one value per
user: a user scored on several days contributes the mean loss of their predictions with known outcomes, never one
observation per prediction (repeated predictions of one user are not independent evidence).

- sample-ratio mismatch: Pearson's chi-square of the users per arm against the configured share;
- Welch's t-test on the per-user loss, with its confidence interval (Welch-Satterthwaite degrees of freedom);
- with shadow scores (both models scored every user), the paired t-test on each user's loss difference;
- the two-proportion z-test on the arms' churn rates (pooled standard error);
- a seeded bootstrap interval for the AUC difference, resampling users within each arm (scipy.stats.bootstrap);
- the posterior probability that the variant's expected loss is lower (flat prior, normal likelihood of each mean);
- the mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh, "Always valid inference",
  2015/2022): with a N(0, tau^2) mixture over the effect, the likelihood ratio of the observed difference is
  sqrt(v / (v + tau^2)) exp(d^2 tau^2 / (2 v (v + tau^2))), d the difference and v its variance; its reciprocal,
  kept as a running minimum over every look, is a p-value valid however often it is read;
- DeLong's test for two correlated ROC AUCs (both models scored on the same users), in the fast O(n log n) form of
  Sun and Xu (2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SampleRatio:
    users: tuple[int, ...]  # per arm
    expected_shares: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool  # p_value < alpha: the split itself is broken, no other figure can be trusted


def sample_ratio_mismatch(users: Sequence[int], shares: Sequence[float], alpha: float = 0.001) -> SampleRatio:
    """Pearson's chi-square of the users per arm against the configured shares (which sum to 1)."""
    observed = np.asarray(users, dtype="float64")
    expected = np.asarray(shares, dtype="float64") * observed.sum()
    if observed.sum() == 0 or np.any(expected == 0):
        return SampleRatio(tuple(int(u) for u in users), tuple(shares), 0.0, 1.0, False)
    chi2, p_value = stats.chisquare(observed, expected)
    return SampleRatio(tuple(int(u) for u in users), tuple(shares), float(chi2), float(p_value), bool(p_value < alpha))


@dataclass(frozen=True)
class Difference:
    """variant - control, with a two-sided test of no difference and a confidence interval."""

    estimate: float
    low: float
    high: float
    statistic: float
    p_value: float


def welch(control: FloatArray, variant: FloatArray, confidence: float = 0.95) -> Difference:
    """Welch's t-test of the mean (per-user loss) and its interval: variant - control."""
    a, b = np.asarray(control, dtype="float64"), np.asarray(variant, dtype="float64")
    result = stats.ttest_ind(b, a, equal_var=False)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    estimate = float(b.mean() - a.mean())
    return Difference(estimate, estimate - half, estimate + half, float(result.statistic), float(result.pvalue))


def paired(differences: FloatArray, confidence: float = 0.95) -> Difference:
    """The paired t-test of per-user differences (variant - control, both models on the same users) and its
    interval."""
    d = np.asarray(differences, dtype="float64")
    result = stats.ttest_1samp(d, 0.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    estimate = float(d.mean())
    p_value = 1.0 if math.isnan(result.pvalue) else float(result.pvalue)  # every difference 0: nothing to see
    return Difference(estimate, estimate - half, estimate + half, float(result.statistic), p_value)


def two_proportions(
    churned_control: int, users_control: int, churned_variant: int, users_variant: int, confidence: float = 0.95
) -> Difference:
    """The two-proportion z-test (pooled standard error) of the churn rates; the interval uses the unpooled one."""
    pa, pb = churned_control / users_control, churned_variant / users_variant
    pooled = (churned_control + churned_variant) / (users_control + users_variant)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / users_control + 1 / users_variant))
    z = (pb - pa) / se_pooled if se_pooled > 0 else 0.0
    se = math.sqrt(pa * (1 - pa) / users_control + pb * (1 - pb) / users_variant)
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    return Difference(pb - pa, pb - pa - half, pb - pa + half, z, float(2 * stats.norm.sf(abs(z))))


@dataclass(frozen=True)
class Outcomes:
    """One arm's predictions with known outcomes, grouped by user (rows of a user are contiguous)."""

    labels: npt.NDArray[np.int64]
    scores: FloatArray
    starts: npt.NDArray[np.intp]  # the first row of each user; a user's rows run to the next user's start

    @classmethod
    def of(
        cls, users: Sequence[str] | npt.NDArray[np.object_], labels: npt.ArrayLike, scores: npt.ArrayLike
    ) -> Outcomes:
        order = np.argsort(np.asarray(users), kind="stable")
        ordered = np.asarray(users)[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if ordered.size else np.array([], np.intp)
        return cls(
            np.asarray(labels, dtype="int64")[order], np.asarray(scores, dtype="float64")[order], starts.astype(np.intp)
        )

    @property
    def users(self) -> int:
        return int(self.starts.size)

    def rows_of(self, users: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The rows of the given users (indices into `starts`, repeats allowed), in that order."""
        ends = np.r_[self.starts[1:], self.labels.size]
        lengths = ends[users] - self.starts[users]
        first = np.repeat(self.starts[users] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return first + np.arange(int(lengths.sum()))

    def auc(self, users: npt.NDArray[np.intp] | None = None) -> float:
        rows = slice(None) if users is None else self.rows_of(users)
        return auc(self.labels[rows], self.scores[rows])


def auc(labels: npt.NDArray[np.int64], scores: FloatArray) -> float:
    """ROC AUC by midranks (the Mann-Whitney statistic; NaN with one class): the bootstrap's thousands of calls."""
    positive = labels.astype(bool)
    m = int(positive.sum())
    n = labels.size - m
    if m == 0 or n == 0:
        return math.nan
    ranks = stats.rankdata(scores, method="average")
    return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * n))


def auc_interval(
    outcomes: Outcomes, *, seed: int, resamples: int = 1_000, confidence: float = 0.95
) -> tuple[float, float, float]:
    """One arm's ROC AUC and its percentile interval from resampling users (seeded)."""
    found = stats.bootstrap(
        (np.arange(outcomes.users, dtype="float64"),), lambda users: outcomes.auc(users.astype(np.intp)),
        n_resamples=resamples, confidence_level=confidence, method="percentile", vectorized=False,
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return outcomes.auc(), float(found.confidence_interval.low), float(found.confidence_interval.high)


def bootstrap_auc_difference(
    control: Outcomes, variant: Outcomes, *, seed: int, resamples: int = 1_000, confidence: float = 0.95
) -> Difference:
    """variant AUC - control AUC with a percentile interval from resampling users within each arm (seeded); the
    p-value is twice the smaller share of resampled differences on either side of zero."""

    def difference(control_users: FloatArray, variant_users: FloatArray) -> float:
        return variant.auc(variant_users.astype(np.intp)) - control.auc(control_users.astype(np.intp))

    # scipy resamples each sample on its own; the statistic receives the resampled user indices of each arm
    found = stats.bootstrap(
        (np.arange(control.users, dtype="float64"), np.arange(variant.users, dtype="float64")),
        difference, n_resamples=resamples, confidence_level=confidence, method="percentile", vectorized=False,
        paired=False, random_state=np.random.default_rng(seed),
    )  # fmt: skip
    draws = np.asarray(found.bootstrap_distribution, dtype="float64")
    draws = draws[~np.isnan(draws)]
    p_value = min(1.0, 2 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0)))) if draws.size else 1.0
    estimate = variant.auc() - control.auc()
    return Difference(estimate, float(found.confidence_interval.low), float(found.confidence_interval.high),
                      estimate, p_value)  # fmt: skip


def probability_variant_better(control: FloatArray, variant: FloatArray) -> float:
    """P(variant's expected loss < control's) under a flat prior: each arm's mean loss is a posteriori
    normal around its sample mean with its standard error."""
    a, b = np.asarray(control, dtype="float64"), np.asarray(variant, dtype="float64")
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    if se == 0:
        return 0.5 if a.mean() == b.mean() else float(b.mean() < a.mean())
    return float(stats.norm.cdf((a.mean() - b.mean()) / se))


def msprt_likelihood_ratio(difference: float, variance: float, tau: float) -> float:
    """The mixture likelihood ratio of an observed difference with the given variance, mixing N(0, tau^2)."""
    if variance <= 0:
        return math.inf if difference != 0 else 1.0
    mixed = variance + tau**2
    return math.sqrt(variance / mixed) * math.exp(difference**2 * tau**2 / (2 * variance * mixed))


@dataclass(frozen=True)
class Sequential:
    """The mixture SPRT at one look: always-valid p-value (the running minimum over every look so far)."""

    difference: float  # variant - control (mean per-user loss)
    variance: float  # of the difference
    likelihood_ratio: float
    p_value: float  # min(previous, 1 / likelihood ratio)
    rejects: bool  # p_value < alpha

    def users_needed(self, alpha: float, tau: float, users_now: int) -> int | None:
        """Users (both arms together) the test needs before it rejects at `alpha` if the observed difference and
        per-user variance held; None when there is no difference to find."""
        if self.rejects:
            return users_now
        if self.difference == 0 or users_now == 0 or not math.isfinite(self.variance):
            return None
        unit_variance = self.variance * users_now  # the variance of the difference shrinks as 1 / users
        needed = users_now
        while needed < 10**9:
            needed *= 2
            if msprt_likelihood_ratio(self.difference, unit_variance / needed, tau) >= 1 / alpha:
                break
        else:
            return None
        low, high = needed // 2, needed
        while high - low > max(1, low // 100):  # to 1%
            middle = (low + high) // 2
            if msprt_likelihood_ratio(self.difference, unit_variance / middle, tau) >= 1 / alpha:
                high = middle
            else:
                low = middle
        return high


def msprt(control: FloatArray, variant: FloatArray, tau: float, alpha: float, previous_p: float = 1.0) -> Sequential:
    """The two-sample mixture SPRT on per-user loss (normal approximation of each mean, plug-in variances)."""
    a, b = np.asarray(control, dtype="float64"), np.asarray(variant, dtype="float64")
    if a.size < 2 or b.size < 2:
        return Sequential(math.nan, math.inf, 1.0, previous_p, previous_p < alpha)
    difference = float(b.mean() - a.mean())
    variance = float(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    ratio = msprt_likelihood_ratio(difference, variance, tau)
    p_value = min(previous_p, 1.0 / ratio if ratio > 0 else 1.0)
    return Sequential(difference, variance, ratio, p_value, p_value < alpha)


def paired_msprt(differences: FloatArray, tau: float, alpha: float, previous_p: float = 1.0) -> Sequential:
    """The one-sample mixture SPRT on paired per-user differences (variant's loss - control's, same users)."""
    d = np.asarray(differences, dtype="float64")
    if d.size < 2:
        return Sequential(math.nan, math.inf, 1.0, previous_p, previous_p < alpha)
    difference, variance = float(d.mean()), float(d.var(ddof=1) / d.size)
    ratio = msprt_likelihood_ratio(difference, variance, tau)
    p_value = min(previous_p, 1.0 / ratio if ratio > 0 else 1.0)
    return Sequential(difference, variance, ratio, p_value, p_value < alpha)


@dataclass(frozen=True)
class DeLong:
    auc_control: float
    auc_variant: float
    variance: float  # of the AUC difference
    z: float
    p_value: float


def _midrank(x: FloatArray) -> FloatArray:
    """Ranks from 1, ties sharing their mean rank."""
    return np.asarray(stats.rankdata(x, method="average"), dtype="float64")


def delong_components(labels: npt.ArrayLike, scores: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """AUC and the structural components (placement values) of positives (V10) and negatives (V01)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype="float64")
    positives, negatives = s[y], s[~y]
    m, n = positives.size, negatives.size
    rank_all = _midrank(np.r_[positives, negatives])
    rank_positive, rank_negative = _midrank(positives), _midrank(negatives)
    v10 = (rank_all[:m] - rank_positive) / n  # share of negatives each positive beats (ties half)
    v01 = 1.0 - (rank_all[m:] - rank_negative) / m  # share of positives that beat each negative
    auc = float(v10.mean())
    return auc, v10, v01


def delong(labels: npt.ArrayLike, control_scores: FloatArray, variant_scores: FloatArray) -> DeLong:
    """DeLong's test that two models scored on the same rows have the same ROC AUC."""
    auc_a, v10_a, v01_a = delong_components(labels, control_scores)
    auc_b, v10_b, v01_b = delong_components(labels, variant_scores)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    m, n = v10_a.size, v01_a.size
    covariance = s10 / m + s01 / n
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    z = (auc_b - auc_a) / math.sqrt(variance) if variance > 0 else 0.0
    return DeLong(auc_a, auc_b, variance, z, float(2 * stats.norm.sf(abs(z))))
