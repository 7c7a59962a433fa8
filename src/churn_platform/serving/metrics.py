"""The service's own state in Prometheus' text format, appended to BentoML's `/metrics`.

Per worker process (label `worker`): which version each reference serves, whether the registry answers, and the
prediction log's counters, so a log that falls behind or drops rows shows on a dashboard, not only in a log file.
"""

from __future__ import annotations

import os

from churn_platform.serving.predictor import ChurnPredictor

LOG_STATES = ("written", "duplicates", "dropped", "rejected", "pending")


def prometheus_text(predictor: ChurnPredictor) -> str:
    worker = f'worker="{os.getpid()}"'
    lines = [
        "# HELP churn_model_serving 1 for each model version a reference (alias or version) serves.",
        "# TYPE churn_model_serving gauge",
    ]
    for reference, model in sorted(predictor.models.current().items()):
        lines.append(f'churn_model_serving{{{worker},reference="{reference}",version="{model.version}"}} 1')
    lines += [
        "# HELP churn_registry_reachable 1 when the last poll of the model registry succeeded.",
        "# TYPE churn_registry_reachable gauge",
        f"churn_registry_reachable{{{worker}}} {0 if predictor.models.registry_error else 1}",
        "# HELP churn_prediction_log_rows Prediction-log rows by state since the worker started.",
        "# TYPE churn_prediction_log_rows gauge",
    ]
    stats = predictor.log.stats()
    lines += [f'churn_prediction_log_rows{{{worker},state="{state}"}} {int(stats[state])}' for state in LOG_STATES]
    experiment = predictor.experiment
    lines += [
        "# HELP churn_experiment_running 1 while the service routes by this experiment.",
        "# TYPE churn_experiment_running gauge",
    ]
    if experiment is not None:
        lines.append(f'churn_experiment_running{{{worker},experiment="{experiment.name}"}} 1')
    return "\n".join(lines) + "\n"
