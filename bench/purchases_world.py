"""Is the purchases world fit for its purpose? Oracle, recency, BG/NBD and a model that reads purchase histories.

For each `returns` setting and horizon H: a world of `--users` initial customers, simulated for `--months` of
history plus H days. At two cut-offs, a gradient-boosted model is trained on earlier snapshots (every two weeks,
each labelled once its horizon had passed by the cut-off) of features computed from the purchases alone, and the
customers in the population at the cut-off are ranked by it, by the oracle, by recency and by BG/NBD (fitted by
maximum likelihood on the histories at the cut-off). Prints the AUCs of "no purchase within H days".

    uv run --frozen python -m bench.purchases_world [--users 20000] [--months 18] [--horizons 90 180]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import numpy.typing as npt
from scipy import optimize, special
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from churn_platform.data.synthetic import purchase_simulator
from churn_platform.data.synthetic.purchase_oracle import no_purchase_probability
from churn_platform.data.synthetic.world_model import MICROS_PER_DAY, DayEvents, WorldConfig

Array = npt.NDArray[np.float64]
SNAPSHOT_EVERY_DAYS = 28


def _event_days(config: WorldConfig, events: DayEvents) -> npt.NDArray[np.int64]:
    epoch_day = (np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)
    return events.timestamp_us // MICROS_PER_DAY - epoch_day


def features(
    users: npt.NDArray[np.int64], signup: npt.NDArray[np.int64], channel: npt.NDArray[np.int64],
    day: npt.NDArray[np.int64], who: npt.NDArray[np.int64], amount: Array, t: int,
) -> Array:  # fmt: skip
    """Per user, what their purchases before day t show (users all acquired before t)."""
    seen = day < t
    d, u, a = day[seen], who[seen], amount[seen]
    n = signup.shape[0]
    count = np.bincount(u, minlength=n).astype(float)
    last = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last, u, d)
    spend = np.bincount(u, weights=a, minlength=n)
    last_amount = np.zeros(n)
    order = np.lexsort((d, u))
    last_amount[u[order]] = a[order]  # the last write per user is its latest purchase
    windows = [np.bincount(u[d >= t - w], minlength=n).astype(float) for w in (30, 90, 180)]
    age = (t - signup[users]).astype(float)
    recency = (t - last[users]).astype(float)
    c = count[users]
    span = (last[users] - signup[users]).astype(float)
    mean_gap = np.where(c > 1, span / np.maximum(c - 1, 1), np.nan)
    return np.column_stack([
        recency, c, *(w[users] for w in windows), mean_gap, recency / mean_gap, spend[users] / c,
        last_amount[users], age, c / np.maximum(age, 1.0), channel[users],
    ])  # fmt: skip


def no_purchase_within(day: npt.NDArray[np.int64], who: npt.NDArray[np.int64], users: npt.NDArray[np.int64],
                       t: int, horizon: int) -> npt.NDArray[np.bool_]:  # fmt: skip
    within = (day >= t) & (day < t + horizon)
    bought = np.zeros(int(max(users.max(), who.max())) + 1, dtype=bool)
    bought[who[within]] = True
    return ~bought[users]


def bgnbd_no_purchase(x: Array, t_x: Array, big_t: Array, horizon: int) -> Array:
    """BG/NBD (Fader, Hardie & Lee 2005), fitted by maximum likelihood: P(no purchase in (T, T + H])."""

    def negative_log_likelihood(log_params: Array) -> float:
        r, alpha, a, b = np.exp(log_params)
        common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        beta = special.betaln(a, b + x) - special.betaln(a, b)
        first = beta - (r + x) * np.log(alpha + big_t)
        second = special.betaln(a + 1, b + x - 1) - special.betaln(a, b) - (r + x) * np.log(alpha + t_x)
        with np.errstate(invalid="ignore"):
            mix = np.where(x > 0, np.logaddexp(first, second), first)
        return -float(np.sum(common + mix))

    fit = optimize.minimize(negative_log_likelihood, np.log([0.5, 10.0, 1.0, 3.0]), method="Nelder-Mead",
                            options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6})  # fmt: skip
    r, alpha, a, b = np.exp(fit.x)
    odds_dead = np.where(x > 0, a / (b + np.maximum(x, 1) - 1) * ((alpha + big_t) / (alpha + t_x)) ** (r + x), 0.0)
    p_alive = 1.0 / (1.0 + odds_dead)
    # Dropout happens only right after a purchase, so without one in the window the customer stays as they were.
    result: Array = 1.0 - p_alive + p_alive * ((alpha + big_t) / (alpha + big_t + horizon)) ** (r + x)
    return result


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
    events = DayEvents.concat(parts)
    day, who, amount = _event_days(config, events), events.user_index, events.value
    signup, channel, h = state.signup_day, state.channel, config.horizon_days
    results = []
    for cutoff in cutoffs:
        xs, ys = [], []
        for t in range(60, cutoff - h + 1, SNAPSHOT_EVERY_DAYS):
            users = np.flatnonzero(signup < t)
            xs.append(features(users, signup, channel, day, who, amount, t))
            ys.append(no_purchase_within(day, who, users, t, h))
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, categorical_features=[11],
                                               random_state=0).fit(np.vstack(xs), np.concatenate(ys))  # fmt: skip
        users, p_oracle = oracle_at[cutoff]
        x = features(users, signup, channel, day, who, amount, cutoff)
        y = no_purchase_within(day, who, users, cutoff, h)
        repeat = x[:, 1] - 1
        t_x = np.where(repeat > 0, x[:, 9] - x[:, 0], 0.0)  # age - recency: time of the last purchase
        bgnbd = bgnbd_no_purchase(repeat, t_x, x[:, 9], h)
        results.append({
            "cutoff": cutoff, "customers": len(users), "positive": float(y.mean()),
            "oracle": roc_auc_score(y, p_oracle), "recency": roc_auc_score(y, x[:, 0]),
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
