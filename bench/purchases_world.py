"""Is the purchases world fit for its purpose? Oracle, recency, BG/NBD and a model that reads purchase histories.

For each `returns` setting and horizon H: a world of `--users` initial customers, simulated for `--months` of
history plus H days. At two cut-offs, a gradient-boosted model is trained on earlier snapshots (every four weeks,
each labelled once its horizon had passed by the cut-off) of features computed from the purchases alone, and the
customers in the population at the cut-off are ranked by it, by the oracle, by recency and by BG/NBD (the
platform's `training.baselines`, fitted on the histories at the cut-off). The features are the platform's purchase
catalog: counts, spend, active days, recency, tenure and the customer's usual gap. Prints the AUCs of "no purchase
within H days".

    uv run --frozen python -m bench.purchases_world [--users 20000] [--months 18] [--horizons 90 180]
"""

from __future__ import annotations

# Before scikit-learn: the package sets OpenMP's wait policy, which libgomp reads when it loads.
import churn_platform  # noqa: F401

# isort: split
import argparse
import time
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from churn_platform.data.synthetic import purchase_simulator
from churn_platform.data.synthetic.purchase_model import PurchaseState
from churn_platform.data.synthetic.purchase_oracle import no_purchase_probability
from churn_platform.data.synthetic.world_model import MICROS_PER_DAY, SECONDS_PER_DAY, DayEvents, WorldConfig
from churn_platform.training.baselines import fit_bgnbd, probability_no_purchase

Array = npt.NDArray[np.float64]
SNAPSHOT_EVERY_DAYS = 28
# The platform's purchase catalog, as columns of the feature matrix; the last two are categorical.
FEATURES = (
    "count_30d", "count_90d", "count_180d", "count_all", "value_sum_180d", "value_sum_all", "value_mean_all",
    "last_value", "active_days_180d", "active_days_all", "days_since_last_event", "tenure_days", "mean_gap_days",
    "current_gap_over_mean_gap", "channel", "region",
)  # fmt: skip
COLUMN = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class Purchases:
    """A world's purchases sorted by customer and time, in days since the world's start (fractional)."""

    who: npt.NDArray[np.int64]
    at: Array  # days, fractional
    day: npt.NDArray[np.int64]
    amount: Array
    new_day: npt.NDArray[np.bool_]  # the customer's first purchase of that day (counts an active day)
    signup: Array  # per customer: acquisition time in days, fractional
    channel: npt.NDArray[np.int64]
    region: npt.NDArray[np.int64]

    @classmethod
    def of(cls, config: WorldConfig, events: DayEvents, state: PurchaseState) -> Purchases:
        start_us = np.datetime64(config.start_date, "us").astype(np.int64)
        at = (events.timestamp_us - start_us) / MICROS_PER_DAY
        order = np.lexsort((at, events.user_index))
        who, at = events.user_index[order], at[order]
        day = np.floor(at).astype(np.int64)
        new_day = np.ones(who.shape[0], dtype=bool)
        new_day[1:] = (who[1:] != who[:-1]) | (day[1:] != day[:-1])
        signup = state.signup_day + state.signup_second / SECONDS_PER_DAY
        return cls(who, at, day, events.value[order], new_day, signup, state.channel, state.region)


def features(p: Purchases, users: npt.NDArray[np.int64], t: int) -> Array:
    """Per customer (all acquired before day t), the platform's purchase features from their purchases before t."""
    seen = p.day < t
    u, at, d, a, first_of_day = p.who[seen], p.at[seen], p.day[seen], p.amount[seen], p.new_day[seen]
    n = p.signup.shape[0]

    def count(mask: npt.NDArray[np.bool_], weights: Array | None = None) -> Array:
        return np.bincount(u[mask], weights=None if weights is None else weights[mask], minlength=n)[users].astype(
            np.float64
        )

    everything = np.ones(u.shape[0], dtype=bool)
    last_at = np.full(n, -np.inf)
    np.maximum.at(last_at, u, at)
    last_value = np.zeros(n)
    last_value[u] = a  # sorted by customer and time: the last write per customer is their latest purchase
    first_day, last_day = np.full(n, np.iinfo(np.int64).max), np.full(n, -1)
    np.minimum.at(first_day, u, d)
    np.maximum.at(last_day, u, d)
    counts = [count(d >= t - w) for w in (30, 90, 180)]
    total = count(everything)
    active_all = count(first_of_day)
    since = t - last_at[users]
    mean_gap = np.where(active_all > 1, (last_day[users] - first_day[users]) / np.maximum(active_all - 1, 1), np.nan)
    return np.column_stack([
        *counts, total, count(d >= t - 180, a), count(everything, a), count(everything, a) / total,
        last_value[users], count(first_of_day & (d >= t - 180)), active_all, since, t - p.signup[users], mean_gap,
        since / mean_gap, p.channel[users], p.region[users],
    ])  # fmt: skip


def no_purchase_within(p: Purchases, users: npt.NDArray[np.int64], t: int, horizon: int) -> npt.NDArray[np.bool_]:
    within = (p.day >= t) & (p.day < t + horizon)
    bought = np.zeros(p.signup.shape[0], dtype=bool)
    bought[p.who[within]] = True
    return ~bought[users]


def bgnbd_histories(x: Array) -> tuple[Array, Array, Array]:
    """BG/NBD's (x, t_x, T) from the feature rows: repeat purchases, the last one's time and the age, in days."""
    age = x[:, COLUMN["tenure_days"]]
    repeat = x[:, COLUMN["count_all"]] - 1
    t_x = np.where(repeat > 0, age - x[:, COLUMN["days_since_last_event"]], 0.0)
    return repeat, t_x, age


def evaluate(config: WorldConfig, cutoffs: list[int]) -> list[dict[str, float]]:
    state = purchase_simulator.new_world(config)
    oracle_at: dict[int, tuple[npt.NDArray[np.int64], Array]] = {}
    parts, done = [], 0
    for cutoff in sorted(cutoffs):
        parts.append(purchase_simulator.simulate(config, state, cutoff - done, with_oracle=False).events)
        done = cutoff
        population = np.flatnonzero(state.signup_day < cutoff)
        oracle_at[cutoff] = (population, no_purchase_probability(config, state, cutoff, population))
    parts.append(purchase_simulator.simulate(config, state, config.days + config.horizon_days - done,
                                             with_oracle=False).events)  # fmt: skip
    purchases = Purchases.of(config, DayEvents.concat(parts), state)
    h = config.horizon_days
    categorical = [COLUMN["channel"], COLUMN["region"]]
    results = []
    for cutoff in cutoffs:
        xs, ys = [], []
        for t in range(60, cutoff - h + 1, SNAPSHOT_EVERY_DAYS):
            users = np.flatnonzero(state.signup_day < t)
            xs.append(features(purchases, users, t))
            ys.append(no_purchase_within(purchases, users, t, h))
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, categorical_features=categorical,
                                               random_state=0).fit(np.vstack(xs), np.concatenate(ys))  # fmt: skip
        users, p_oracle = oracle_at[cutoff]
        x = features(purchases, users, cutoff)
        y = no_purchase_within(purchases, users, cutoff, h)
        histories = bgnbd_histories(x)
        bgnbd = probability_no_purchase(fit_bgnbd(*histories).params, *histories, horizon=float(h))
        results.append({
            "cutoff": cutoff, "customers": len(users), "positive": float(y.mean()),
            "oracle": roc_auc_score(y, p_oracle), "recency": roc_auc_score(y, x[:, COLUMN["days_since_last_event"]]),
            "bgnbd": roc_auc_score(y, bgnbd), "model": roc_auc_score(y, model.predict_proba(x)[:, 1]),
        })  # fmt: skip
    return results


def _row(returns: str, horizon: int, r: dict[str, float]) -> str:
    head = f"{returns:7s} {horizon:3d} {r['cutoff']:5.0f} {r['customers']:9,.0f} {r['positive']:8.1%}"
    aucs = f"{r['oracle']:.3f}  {r['recency']:.3f}  {r['bgnbd']:.3f}  {r['model']:.3f}"
    gains = f"{r['model'] / r['oracle']:12.3f} {r['model'] - r['recency']:+9.3f} {r['model'] - r['bgnbd']:+7.3f}"
    return f"{head} | {aucs} | {gains}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--horizons", type=int, nargs="+", default=[90, 180])
    parser.add_argument("--returns", nargs="+", default=["rare", "common"], choices=["rare", "common"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    history = round(args.months * 30.44)
    print("returns  H  cutoff customers positive | oracle recency bgnbd  model | model/oracle  -recency  -bgnbd")
    for returns in args.returns:
        for horizon in args.horizons:
            started = time.perf_counter()
            config = replace(WorldConfig(), users=args.users, days=history, seed=args.seed, kind="purchases",
                             horizon_days=horizon, returns=returns)  # fmt: skip
            for r in evaluate(config, [history - 91, history]):
                print(_row(returns, horizon, r))
            print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
