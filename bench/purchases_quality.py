"""A shop's churn through the platform: the model against the oracle, recency and BG/NBD on the purchases world.

For each `returns` setting (rare / common) and horizon H (90 / 180 days): a purchases world of `--users`
customers and `--months` of history plus H days, configured as a shop would configure the platform
(non-contractual churn: no `purchase` within H days). At two cut-offs c it backtests the platform as if the data
ended at c:

- **train**: `churn train` on the snapshots labelled by c (t + H <= c); its report's test window gives the model's,
  the recency baseline's, the fitted BG/NBD's and the oracle's ROC AUC on the same rows;
- **score**: `churn score --as-of c` with that version ranks every customer of the snapshot at c; the realised
  outcome (no purchase in the H days after c) gives the AUC of the scores, of recency and of a BG/NBD fitted on
  the histories at c, next to the oracle's.

The platform's target on this world: model AUC >= 0.97 of the oracle's, and >= 0.01 above recency and BG/NBD.

    uv run --frozen python -m bench.purchases_quality [--users 20000] [--months 18] [--horizons 90 180]
        [--returns rare common] [--cutoffs earlier later]
"""

from __future__ import annotations

# Before scikit-learn: the package sets OpenMP's wait policy, which libgomp reads when it loads.
import churn_platform  # noqa: F401

# isort: split
import argparse
import dataclasses
import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from sklearn.metrics import roc_auc_score

from bench._databases import fresh_database
from churn_platform import stack
from churn_platform.connections import Connections
from churn_platform.data.labels import ChurnDefinition
from churn_platform.data.synthetic import world
from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.features import feast_repo, snapshots
from churn_platform.serving.as_of_scores import score_as_of
from churn_platform.settings import Settings, get_settings
from churn_platform.training import pipeline
from churn_platform.training.baselines import bgnbd_baseline
from churn_platform.training.purchase_histories import customer_histories, row_histories

DAYS_PER_MONTH = 30.44
TARGET_TO_ORACLE = 0.97
TARGET_LIFT = 0.01
# How a shop configures the platform (docs/data-contract.md): churn is no purchase within the horizon.
SHOP_ENVIRONMENT = {
    "CHURN_CHURN_DEFINITION": "non_contractual",
    "CHURN_CHURN_EVENT_TYPES": "",
    "CHURN_ACTIVITY_EVENT_TYPES": "purchase",
    "CHURN_FEATURE_EVENT_TYPES": "purchase",
    "CHURN_FEATURE_VALUED_EVENT_TYPES": "purchase",
    "CHURN_FEATURE_WINDOWS_DAYS": "30,90,180",
    "CHURN_FEATURE_USER_ATTRIBUTES": "channel,region",
    "CHURN_FEATURE_CATALOG": "shop_v1",
}
ORACLE_SQL = "SELECT user_id, p_churn FROM synthetic.oracle_churn WHERE day = %s AND horizon_days = %s"


@dataclasses.dataclass(frozen=True)
class Figures:
    """ROC AUCs on one set of rows."""

    model: float
    recency: float
    bgnbd: float | None
    oracle: float | None
    rows: int

    def passes(self) -> bool:
        return (
            self.oracle is not None
            and self.bgnbd is not None
            and self.model >= TARGET_TO_ORACLE * self.oracle
            and self.model - self.recency >= TARGET_LIFT
            and self.model - self.bgnbd >= TARGET_LIFT
        )

    def line(self, what: str) -> str:
        ratio = "-" if not self.oracle else f"{self.model / self.oracle:.3f}"
        bgnbd = "-" if self.bgnbd is None else f"{self.bgnbd:.4f}"
        oracle = "-" if self.oracle is None else f"{self.oracle:.4f}"
        verdict = "ok" if self.passes() else "BELOW TARGET"
        return (
            f"  {what:<28} model {self.model:.4f}  recency {self.recency:.4f}  BG/NBD {bgnbd}  oracle {oracle}"
            f"  model/oracle {ratio}  ({self.rows:,} rows)  {verdict}"
        )


@dataclasses.dataclass(frozen=True)
class Case:
    returns: str
    horizon: int
    cutoffs: tuple[date, ...]


def _shop_settings(url: str, servers: Connections, horizon: int, model_name: str) -> Settings:
    """The settings a shop would set, in the environment too: Feast's repository reads them from there."""
    os.environ.update(
        SHOP_ENVIRONMENT,
        CHURN_DATABASE_URL=url,
        CHURN_REDIS_URL=servers.redis,
        MLFLOW_TRACKING_URI=servers.mlflow,
        CHURN_LABEL_HORIZON_DAYS=str(horizon),
        CHURN_MODEL_NAME=model_name,
    )
    get_settings.cache_clear()
    return get_settings()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _backtest_train(settings: Settings, connections: Connections, cutoff: date) -> tuple[Figures, str]:
    """`churn train` as of the cut-off: snapshots whose horizon has passed by then."""
    last_labelled = cutoff - timedelta(days=settings.label_horizon_days)
    result = pipeline.train(settings, connections, end=last_labelled + timedelta(days=1))
    trained = result.trained
    assert result.registered is not None
    figures = Figures(
        model=trained.evaluation.roc_auc,
        recency=trained.recency_roc_auc,
        bgnbd=trained.bgnbd_roc_auc,
        oracle=trained.oracle_roc_auc,
        rows=trained.evaluation.rows,
    )
    return figures, str(result.registered.version)


def _backtest_score(settings: Settings, connections: Connections, cutoff: date, version: str) -> Figures:
    """`churn score --as-of` the cut-off, judged by what happened in the H days after it."""
    horizon = settings.label_horizon_days
    scored = score_as_of(settings, connections, cutoff, version).frame
    scored = scored[scored["churned"].notna()].reset_index(drop=True)
    y = scored["churned"].astype(bool).to_numpy()
    at = _midnight(cutoff)
    definition = ChurnDefinition.from_settings(settings)
    rows = pd.DataFrame({"user_id": scored["user_id"], "event_timestamp": at})
    histories = row_histories(connections.database_url, rows, definition)
    recency = (histories["age"] - histories["t_x"]).to_numpy()
    baseline = bgnbd_baseline(
        customer_histories(connections.database_url, at, definition), histories, fitted_as_of=at, horizon_days=horizon
    )
    with psycopg.connect(connections.database_url) as conn:
        oracle: dict[str, float] = dict(conn.execute(ORACLE_SQL, (cutoff, horizon)).fetchall())
    p_oracle = scored["user_id"].map(oracle).to_numpy(dtype=np.float64)
    return Figures(
        model=float(roc_auc_score(y, scored["p_churn"])),
        recency=float(roc_auc_score(y, recency)),
        bgnbd=None if baseline is None else float(roc_auc_score(y, baseline.p_churn)),
        oracle=None if np.isnan(p_oracle).any() else float(roc_auc_score(y, p_oracle)),
        rows=len(scored),
    )


def run_case(servers: Connections, case: Case, users: int, history_days: int, seed: int) -> list[bool]:
    verdicts = []
    with fresh_database(servers.database_url) as url:
        model_name = f"shop_{case.returns}_{case.horizon}d"
        settings = _shop_settings(url, servers, case.horizon, model_name)
        connections = dataclasses.replace(servers, database_url=url)
        started = time.perf_counter()
        config = WorldConfig(
            users=users,
            days=history_days + case.horizon + 2,  # the outcome at the later cut-off is known in full
            seed=seed,
            horizon_days=case.horizon,
            kind="purchases",
            returns=case.returns,  # type: ignore[arg-type]
        )
        world.generate_world(url, config)
        generated = time.perf_counter()
        until = snapshots.day_after_last_event(url)
        assert until is not None
        run_, labelled = snapshots.refresh(url, settings, until)
        feast_repo.apply(settings, connections)
        print(
            f"\nreturns {case.returns}, H = {case.horizon} days: {users:,} customers x {config.days} days"
            f" (world {generated - started:.0f} s; {run_.rows_written:,} snapshots, {labelled:,} labels in"
            f" {time.perf_counter() - generated:.0f} s)"
        )
        for cutoff in case.cutoffs:
            began = time.perf_counter()
            trained, version = _backtest_train(settings, connections, cutoff)
            scored = _backtest_score(settings, connections, cutoff, version)
            print(f"  cut-off {cutoff} (version {version}, {time.perf_counter() - began:.0f} s):")
            print(trained.line("churn train (its test window)"))
            print(scored.line(f"churn score --as-of {cutoff}"))
            verdicts += [trained.passes(), scored.passes()]
    return verdicts


def cases(
    horizons: list[int], history_days: int, start: date, returns: list[str], cutoffs: list[str]
) -> Iterator[Case]:
    late = start + timedelta(days=history_days)
    named = {"earlier": late - timedelta(days=91), "later": late}
    for setting in returns:
        for horizon in horizons:
            yield Case(setting, horizon, tuple(named[name] for name in cutoffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=18, help="history before the later cut-off")
    parser.add_argument("--horizons", type=int, nargs="+", default=[90, 180])
    parser.add_argument("--returns", nargs="+", choices=["rare", "common"], default=["rare", "common"])
    parser.add_argument("--cutoffs", nargs="+", choices=["earlier", "later"], default=["earlier", "later"])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    history_days = round(args.months * DAYS_PER_MONTH)
    verdicts: list[bool] = []
    with stack.running(Settings(), redis=True, mlflow=True) as servers:
        for case in cases(args.horizons, history_days, WorldConfig.start_date, args.returns, args.cutoffs):
            verdicts += run_case(servers, case, args.users, history_days, args.seed)
    print(f"\n{sum(verdicts)} of {len(verdicts)} backtests reach the target (>= {TARGET_TO_ORACLE} of the oracle,"
          f" >= {TARGET_LIFT} above recency and BG/NBD)")  # fmt: skip


if __name__ == "__main__":
    main()
