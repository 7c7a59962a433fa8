"""Drift statistics: the platform's per-feature KS / chi-square and PSI against Evidently's data-drift preset, on
the same rows.

Reference and current frames shaped like the churn catalog's served features (counts, sums, means, recency, gap
ratios, two categorical attributes; a few features shifted in the current frame), `--rows` on each side. Each
repetition times `monitoring.drift.feature_drift` (what the platform stores) and Evidently's `DataDriftPreset` run
on the same frames with its per-column tests set to KS and chi-square (`num_method="ks"`, `cat_method="chisquare"`:
the same KS; Evidently's chi-square tests the current counts against the reference's shares (goodness of fit), ours
the two samples' counts (homogeneity), the same work), and, separately, the preset as the platform runs it for its
report (PSI per column). Medians over `--repeat` runs; the ratio is Evidently's time over ours (target: >= 10x).

    uv run --frozen python -m bench.drift [--rows 700000] [--repeat 5]
"""

from __future__ import annotations

# Before scikit-learn: the package sets OpenMP's wait policy, which libgomp reads when it loads.
import churn_platform  # noqa: F401

# isort: split
import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from churn_platform.monitoring import drift

NUMERIC = 17
CATEGORICAL = ("plan", "channel")
TARGET_RATIO = 10.0


def frames(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reference and current frames: counts (Poisson), amounts (gamma), recency (exponential), ratios (lognormal),
    categories; features 0, 5 and 10 shift in the current frame."""
    rng = np.random.default_rng(seed)
    numeric = [f"feature_{k:02d}" for k in range(NUMERIC)]

    def one(shifted: bool) -> pd.DataFrame:
        columns: dict[str, object] = {}
        for k, name in enumerate(numeric):
            shift = 1.3 if shifted and k % 5 == 0 else 1.0
            kind = k % 4
            if kind == 0:
                columns[name] = rng.poisson(4 * shift, rows).astype(np.float64)
            elif kind == 1:
                columns[name] = rng.gamma(2.0, 20 * shift, rows)
            elif kind == 2:
                columns[name] = rng.exponential(10 * shift, rows)
            else:
                values = rng.lognormal(0, 0.5 * shift, rows)
                values[rng.random(rows) < 0.05] = np.nan  # missing: users without a gap yet
                columns[name] = values
        columns["plan"] = rng.choice(["basic", "standard", "pro"], rows, p=[0.5, 0.3, 0.2])
        columns["channel"] = rng.choice(["organic", "paid", "referral", "partner"], rows)
        return pd.DataFrame(columns)

    return one(False), one(True), numeric


def timed(call: Callable[[], object], repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def evidently_preset(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], **options: object) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=list(CATEGORICAL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Report([DataDriftPreset(**options)]).run(  # type: ignore[arg-type]
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=700_000, help="rows on each side")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    reference, current, numeric = frames(args.rows, seed=1)
    ours = timed(
        lambda: drift.feature_drift(reference, current, numeric, list(CATEGORICAL), drift.Thresholds()), args.repeat
    )
    found = drift.feature_drift(reference, current, numeric, list(CATEGORICAL), drift.Thresholds())
    same_tests = timed(
        lambda: evidently_preset(reference, current, numeric, num_method="ks", cat_method="chisquare"), args.repeat
    )
    as_reported = timed(lambda: evidently_preset(reference, current, numeric, method="psi"), args.repeat)

    features = NUMERIC + len(CATEGORICAL)
    print(f"{args.rows:,} reference and {args.rows:,} current rows x {features} features, median of {args.repeat}")
    print(f"  ours (KS / chi-square, p-values, PSI; {len(found.drifted_features)} drifted): {ours:8.2f} s")
    print(f"  Evidently DataDriftPreset, KS / chi-square:                {same_tests:8.2f} s")
    print(f"  Evidently DataDriftPreset, PSI (the report's setting):      {as_reported:8.2f} s")
    ratio = same_tests / ours
    verdict = "met" if ratio >= TARGET_RATIO else "not met"
    print(f"Evidently / ours, same tests: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: {verdict});"
          f" with PSI: {as_reported / ours:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
