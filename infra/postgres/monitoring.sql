-- Drift runs: one row per `churn monitor drift`, what it compared and what it found. The current data are the
-- features the service actually scored in the window (the prediction log joined to the snapshots through each
-- prediction's snapshot_at), the reference a sample of the training data kept with the model version.
CREATE TABLE IF NOT EXISTS monitoring.drift_runs (
    run_id          bigserial PRIMARY KEY,
    ran_at          timestamptz      NOT NULL DEFAULT now(),
    catalog         text             NOT NULL,
    model_name      text             NOT NULL,
    model_version   text             NOT NULL,
    window_start    timestamptz      NOT NULL,  -- snapshot times in (window_start, window_end]
    window_end      timestamptz      NOT NULL,
    reference_rows  integer          NOT NULL CHECK (reference_rows > 0),
    current_rows    integer          NOT NULL CHECK (current_rows > 0),
    features        integer          NOT NULL CHECK (features > 0),
    drifted         integer          NOT NULL CHECK (drifted >= 0 AND drifted <= features),
    drift_share     double precision NOT NULL CHECK (drift_share >= 0 AND drift_share <= 1),
    dataset_drift   boolean          NOT NULL,
    score_ks        double precision,  -- the served scores of this version against its scores on the reference
    score_p_value   double precision,
    score_psi       double precision,
    alpha           double precision NOT NULL,
    psi_threshold   double precision NOT NULL,
    share_threshold double precision NOT NULL,
    report_path     text,
    mlflow_run_id   text,
    CHECK (window_end >= window_start)
);
CREATE INDEX IF NOT EXISTS drift_runs_model_idx ON monitoring.drift_runs (model_name, window_end);

-- Per run and feature: the test used (KS for numeric, chi-square for categorical), its statistic and p-value, the
-- population stability index over bins fixed by the reference, and whether the feature drifted.
CREATE TABLE IF NOT EXISTS monitoring.feature_drift (
    run_id          bigint           NOT NULL REFERENCES monitoring.drift_runs ON DELETE CASCADE,
    feature         text             NOT NULL,
    test            text             NOT NULL CHECK (test IN ('ks', 'chi_square')),
    statistic       double precision,  -- NULL when a side has no value to test
    p_value         double precision,
    psi             double precision,
    reference_rows  integer          NOT NULL,  -- rows with a value (missing values are data quality's business)
    current_rows    integer          NOT NULL,
    drifted         boolean          NOT NULL,
    PRIMARY KEY (run_id, feature)
);

-- Realised performance per model version and snapshot day, once the horizon has passed (the prediction log joined
-- to the labels through each prediction's snapshot_at). Recomputing a day replaces its row.
CREATE TABLE IF NOT EXISTS monitoring.performance (
    model_name        text             NOT NULL,
    model_version     text             NOT NULL,
    day               date             NOT NULL,  -- the snapshot's UTC day
    horizon_days      integer          NOT NULL,
    rows              integer          NOT NULL CHECK (rows > 0),
    positives         integer          NOT NULL CHECK (positives >= 0 AND positives <= rows),
    roc_auc           double precision,  -- NULL when the day's outcomes are all one class
    pr_auc            double precision,
    log_loss          double precision NOT NULL,
    brier             double precision NOT NULL,
    calibration_error double precision NOT NULL,
    positive_rate     double precision NOT NULL,
    mean_score        double precision NOT NULL,
    evaluated_at      timestamptz      NOT NULL,
    PRIMARY KEY (model_name, model_version, day, horizon_days)
);

-- Data quality of the features served in a drift run's window, per feature and snapshot day: the share of served
-- rows whose value is missing (beside the reference's own share, as some features are legitimately empty), stale
-- (the share of predictions served with features past the service's age limit: monitoring/quality.py),
-- outside the reference's range (numeric), and the categories the reference never saw (categorical).
CREATE TABLE IF NOT EXISTS monitoring.feature_quality (
    run_id            bigint           NOT NULL REFERENCES monitoring.drift_runs ON DELETE CASCADE,
    feature           text             NOT NULL,
    day               date             NOT NULL,  -- the snapshot's UTC day
    rows              integer          NOT NULL CHECK (rows > 0),
    missing_share     double precision NOT NULL CHECK (missing_share >= 0 AND missing_share <= 1),
    reference_missing double precision NOT NULL CHECK (reference_missing >= 0 AND reference_missing <= 1),
    stale_share       double precision CHECK (stale_share >= 0 AND stale_share <= 1),  -- NULL: none judged
    out_of_range      double precision CHECK (out_of_range >= 0 AND out_of_range <= 1),  -- NULL: categorical
    new_categories    text[],  -- NULL: numeric
    PRIMARY KEY (run_id, feature, day)
);

-- Estimated performance: what the scores alone say a window's figures are, before its outcomes arrive
-- (confidence-based estimation of calibrated scores), per model version and snapshot day. The realised figures
-- join it from monitoring.performance once the horizon has passed. Recomputing a day replaces its row.
CREATE TABLE IF NOT EXISTS monitoring.estimated_performance (
    model_name     text             NOT NULL,
    model_version  text             NOT NULL,
    day            date             NOT NULL,
    horizon_days   integer          NOT NULL,
    outcome_days   integer          NOT NULL DEFAULT 0,  -- days of the horizon whose outcomes the estimate saw
    rows           integer          NOT NULL CHECK (rows > 0),
    decided        integer          NOT NULL DEFAULT 0,  -- predictions whose outcome was already known
    roc_auc        double precision,  -- NULL when no pair can be told apart (all scores 0, or all 1)
    brier          double precision NOT NULL,
    positive_rate  double precision NOT NULL,
    estimated_at   timestamptz      NOT NULL,
    PRIMARY KEY (model_name, model_version, day, horizon_days, outcome_days)
);

-- Estimates from before outcomes were seen: one per day, made from the scores alone (outcome_days 0).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'monitoring' AND table_name = 'estimated_performance' AND column_name = 'outcome_days'
    ) THEN
        ALTER TABLE monitoring.estimated_performance
            ADD COLUMN outcome_days integer NOT NULL DEFAULT 0,
            ADD COLUMN decided integer NOT NULL DEFAULT 0,
            DROP CONSTRAINT estimated_performance_pkey,
            ADD PRIMARY KEY (model_name, model_version, day, horizon_days, outcome_days);
    END IF;
END $$;

-- Every alert of the platform, monitoring's and the service's. One row per episode of a condition: while the
-- condition holds, raising it again updates last_seen and counts it (the partial unique index keeps one open row
-- per source, kind and subject); once resolved (by hand, or by the check that raised it finding the condition
-- gone) the row stays as history and the next occurrence opens a new one.
CREATE TABLE IF NOT EXISTS monitoring.alerts (
    id          bigserial PRIMARY KEY,
    severity    text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    source      text        NOT NULL CHECK (source <> ''),  -- drift, quality, performance, estimate, serving
    kind        text        NOT NULL CHECK (kind <> ''),
    subject     text        NOT NULL,
    message     text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    occurrences integer     NOT NULL DEFAULT 1 CHECK (occurrences > 0),
    resolved_at timestamptz,
    resolved_by text,
    notified_at timestamptz,  -- when the webhook took it (NULL: no webhook, or not delivered)
    CHECK (last_seen >= first_seen),
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON monitoring.alerts (source, kind, subject)
    WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_last_seen_idx ON monitoring.alerts (last_seen);

-- The service kept its alerts in serving.alerts, one row per occurrence: they move here as resolved history, one
-- row per kind and subject (the service raises a condition again when it still holds).
DO $$
BEGIN
    IF to_regclass('serving.alerts') IS NOT NULL THEN
        INSERT INTO monitoring.alerts
            (severity, source, kind, subject, message, first_seen, last_seen, occurrences, resolved_at, resolved_by)
        SELECT CASE WHEN kind = 'model_refused' THEN 'critical' ELSE 'warning' END, 'serving', kind, subject,
               (array_agg(message ORDER BY raised_at DESC, id DESC))[1], min(raised_at), max(raised_at), count(*),
               max(raised_at), 'moved from serving.alerts'
        FROM serving.alerts
        GROUP BY kind, subject;
        DROP TABLE serving.alerts;
    END IF;
END $$;

-- Every evaluation of the retraining triggers (churn_platform.monitoring.retraining), fired or not: each trigger's
-- value, threshold and reason in `triggers`, and what the entrypoint did about a fired one in `action`.
CREATE TABLE IF NOT EXISTS monitoring.retraining_evaluations (
    id               bigserial PRIMARY KEY,
    evaluated_at     timestamptz NOT NULL,
    model_name       text        NOT NULL,
    champion_version text        NOT NULL,
    fired            boolean     NOT NULL,
    reason           text        NOT NULL,
    triggers         jsonb       NOT NULL,
    action           text
);
CREATE INDEX IF NOT EXISTS retraining_evaluations_model_idx
    ON monitoring.retraining_evaluations (model_name, evaluated_at);
