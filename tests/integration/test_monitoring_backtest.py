"""Monitoring over a simulated quarter: sixty days without drift, then a world that drifts. Drift must be flagged
soon after it starts and never before; the performance estimated from the scores alone must come close to the
realised one while the relation between features and churn holds."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.integration.feature_worlds import platform_settings, redis_db_url
from tests.integration.monitoring_backtest import run_backtest

from churn_platform.data.synthetic.world_model import WorldConfig
from churn_platform.settings import Settings

BACKTEST_DB = 11  # a Redis database of its own (Feast's online store is configured, never written here)
USERS, TRAINED_THROUGH, WINDOW, HORIZON = 1_500, 200, 7, 30
DRIFT_AT = TRAINED_THROUGH + 60  # sixty monitored days without drift, then thirty drifted ones
MONITORED = 90
DAYS = TRAINED_THROUGH + MONITORED + HORIZON  # the last monitored day's outcome is in the data
DETECTION_BOUND_DAYS = 14  # measured: 9 (the simulated users' behaviour moves to the new regime over weeks)
ESTIMATE_MEDIAN_ERROR_BOUND, ESTIMATE_MAX_ERROR_BOUND = 0.015, 0.05  # measured: 0.007 and 0.031 over 24 windows


def test_drift_is_flagged_within_the_bound_never_before_and_estimates_track_a_stable_world(
    make_database: Callable[[], str], stack_settings: Settings, mlflow_server: str, tmp_path: Path
) -> None:
    url = make_database()
    environment = {"MLFLOW_TRACKING_URI": mlflow_server, "CHURN_MODEL_NAME": f"churn_backtest_{uuid.uuid4().hex[:8]}",
                   "CHURN_DATA_DIR": str(tmp_path)}  # fmt: skip
    with platform_settings(url, redis_db_url(stack_settings, BACKTEST_DB), **environment) as settings:
        assert settings.label_horizon_days == HORIZON
        config = WorldConfig(users=USERS, days=DAYS, seed=17, drift_at=DRIFT_AT)
        backtest = run_backtest(settings, url, config, trained_through=TRAINED_THROUGH, monitored_days=MONITORED,
                                window_days=WINDOW)  # fmt: skip
    for w in backtest.windows:  # shown with -s, and on failure
        flag = " DRIFT" if w.drifted else ""
        print(f"window to {w.end}: drift share {w.drift_share:.2f}{flag}, estimated AUC {w.estimated_auc:.3f},"
              f" realised {w.realised_auc}, drifted: {', '.join(w.drifted_features)}")  # fmt: skip

    # Sixty days without drift: no window flagged (nominal: alpha = 0.01 of them, so none of 54)
    alarms, clean = backtest.false_alarms()
    assert clean == 60 - WINDOW + 1
    assert alarms <= stack_settings.monitor_drift_alpha * clean, f"{alarms} of {clean} windows flagged"
    # then the drift is flagged within the bound
    delay = backtest.detection_delay()
    assert delay is not None and delay <= DETECTION_BOUND_DAYS, f"drift flagged {delay} days after it started"
    # While outcomes come from the world the model was calibrated on, the estimate is the realised AUC's centre
    stable = backtest.estimate_errors(backtest.before_drift(HORIZON))
    assert len(stable) >= 20
    assert statistics.median(stable) <= ESTIMATE_MEDIAN_ERROR_BOUND, f"median error {statistics.median(stable):.3f}"
    assert max(stable) <= ESTIMATE_MAX_ERROR_BOUND, f"largest error {max(stable):.3f}"
