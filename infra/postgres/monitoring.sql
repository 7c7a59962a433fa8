-- Drift runs: one row per `churn monitor drift`, what it compared and what it found. The current data are the
-- features the service actually scored in the window (the prediction log joined to the snapshots through each
-- prediction's snapshot_at), the reference a sample of the training data kept with the model version.
CREATE TABLE IF NOT EXISTS monitoring.drift_runs (
    run_id          bigserial PRIMARY KEY,
    ran_at          timestamptz      NOT NULL DEFAULT now(),
    catalog         text             NOT NULL,
    model_name      text             NOT NULL,
    model_version   text             NOT NULL,
    window_start    timestamptz      NOT NULL,  -- snapshot times in [window_start, window_end]
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
