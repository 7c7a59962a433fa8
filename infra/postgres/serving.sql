-- A/B experiments: which share of users the service sends to the variant instead of the control. A user's arm is a
-- salted hash of (salt, experiment, user_id) (churn_platform.experiments.assignment), so it is sticky for the whole
-- experiment and reproducible here: the first 8 bytes of sha256(salt || '\x00' || name || '\x00' || user_id).
CREATE TABLE IF NOT EXISTS serving.experiments (
    name          text PRIMARY KEY CHECK (name <> ''),
    control       text             NOT NULL DEFAULT 'champion' CHECK (control <> ''),  -- an alias or a version
    variant       text             NOT NULL CHECK (variant <> ''),  -- an alias such as 'challenger', or a version
    variant_share double precision NOT NULL CHECK (variant_share > 0 AND variant_share < 1),
    salt          text             NOT NULL CHECK (salt <> ''),
    started_at    timestamptz      NOT NULL DEFAULT now(),
    ends_at       timestamptz,  -- the planned end: the service stops splitting traffic then, even if not stopped
    stopped_at    timestamptz,
    created_by    text,
    CHECK (ends_at IS NULL OR ends_at > started_at),
    CHECK (stopped_at IS NULL OR stopped_at >= started_at)
);
-- At most one experiment not stopped: every user is in at most one experiment, so arms never mix two tests.
CREATE UNIQUE INDEX IF NOT EXISTS experiments_one_running ON serving.experiments ((true)) WHERE stopped_at IS NULL;

-- One row per answered prediction (a batch request writes one row per user, all with its request_id; a user named
-- twice in a batch is answered, and logged, twice), written by the
-- service's background writer. arm is 'control' or 'variant' inside an experiment, 'fallback' when the user's arm
-- had no loaded model and the champion answered instead, and 'champion' when no experiment was running.
-- churn_probability is NULL when the user had no features to score. snapshot_at is the snapshot the scored features
-- came from (the newest among the feature views read; NULL without features): monitoring joins a prediction to its
-- features and its outcome through it, not through the wall clock, so a world whose calendar is not the wall
-- clock's is monitored as production is. Inside an experiment with shadow scoring on (CHURN_SERVE_SHADOW_SCORING),
-- shadow_version and shadow_probability are the other arm's model and its score of the same features: the A/B
-- analysis compares both models on the same users through them. No foreign key to experiments: a log row is
-- never refused for bookkeeping, and the writer's COPY stays a plain append. No primary key either: request ids
-- are unique by construction (UUIDv7), the writer never writes a batch twice (it asks PostgreSQL whether a batch
-- whose commit was not acknowledged went through), and a unique index would cost about a fifth of each row's write.
CREATE TABLE IF NOT EXISTS serving.prediction_log (
    request_id        uuid             NOT NULL,
    predicted_at      timestamptz      NOT NULL,
    user_id           text COLLATE "C" NOT NULL CHECK (user_id <> ''),
    experiment        text,
    arm               text             NOT NULL CHECK (arm IN ('control', 'variant', 'fallback', 'champion')),
    model_alias       text,
    model_version     text             NOT NULL,
    churn_probability double precision CHECK (churn_probability >= 0 AND churn_probability <= 1),
    feature_hash      text             NOT NULL,
    snapshot_at       timestamptz,
    latency_ms        double precision NOT NULL CHECK (latency_ms >= 0),
    endpoint          text             NOT NULL CHECK (endpoint IN ('predict', 'predict_batch')),
    shadow_version    text,
    shadow_probability double precision CHECK (shadow_probability >= 0 AND shadow_probability <= 1),
    CHECK ((experiment IS NULL) = (arm = 'champion'))
);
-- A log made before the columns gets them (a nullable column without a default is a catalog change, no rewrite), and
-- a log made before had a primary key: drop it. Both only when needed, so that applying the schema to a current log
-- never takes the table's exclusive lock while the service writes to it.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = 'serving.prediction_log'::regclass AND attname = 'snapshot_at' AND NOT attisdropped
    ) THEN
        ALTER TABLE serving.prediction_log ADD COLUMN snapshot_at timestamptz;
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = 'serving.prediction_log'::regclass AND attname = 'shadow_probability' AND NOT attisdropped
    ) THEN
        -- the range check without a scan: NOT VALID checks new rows only, and every old row's value is NULL
        ALTER TABLE serving.prediction_log ADD COLUMN shadow_version text,
            ADD COLUMN shadow_probability double precision,
            ADD CONSTRAINT prediction_log_shadow_probability_check
                CHECK (shadow_probability >= 0 AND shadow_probability <= 1) NOT VALID;
    END IF;
    IF EXISTS (
        SELECT FROM pg_constraint WHERE conrelid = 'serving.prediction_log'::regclass AND contype = 'p'
    ) THEN
        ALTER TABLE serving.prediction_log DROP CONSTRAINT prediction_log_pkey;
    END IF;
END $$;
-- Request ids begin with their time, so a BRIN index finds a request's rows by id too.
CREATE INDEX IF NOT EXISTS prediction_log_request_brin ON serving.prediction_log USING brin (request_id);
-- Monitoring reads time ranges; rows arrive in time order, so a BRIN index is tiny and enough.
CREATE INDEX IF NOT EXISTS prediction_log_time_brin ON serving.prediction_log USING brin (predicted_at);
-- Monitoring reads windows of snapshot times, which also arrive in order.
CREATE INDEX IF NOT EXISTS prediction_log_snapshot_brin ON serving.prediction_log USING brin (snapshot_at);
-- The A/B analysis reads one experiment's rows by arm.
CREATE INDEX IF NOT EXISTS prediction_log_experiment_arm_idx ON serving.prediction_log (experiment, arm)
    WHERE experiment IS NOT NULL;

-- Every analysis of an experiment (`churn ab report`, flows/ab_analysis.py): the verdict's history, and the
-- sequential test's always-valid p-value, which each analysis keeps as the running minimum of the ones before it.
CREATE TABLE IF NOT EXISTS serving.experiment_analyses (
    id                          bigserial PRIMARY KEY,
    name                        text             NOT NULL REFERENCES serving.experiments (name) ON DELETE CASCADE,
    analysed_at                 timestamptz      NOT NULL,
    users_control               integer          NOT NULL,
    users_variant               integer          NOT NULL,
    outcome_users_control       integer          NOT NULL,  -- users with at least one known outcome
    outcome_users_variant       integer          NOT NULL,
    log_loss_control            double precision,  -- mean per-user log loss
    log_loss_variant            double precision,
    srm_p                       double precision NOT NULL,
    welch_p                     double precision,
    sequential_p                double precision,
    probability_variant_better  double precision,
    winner                      text CHECK (winner IN ('control', 'variant')),
    reason                      text             NOT NULL,
    details                     jsonb            NOT NULL  -- every figure of the analysis
);
-- With shadow scores, both models on the same users: their count, the paired sequential test's running p-value and
-- DeLong's p-value; decisive_test says which sequential test the verdict rests on. Added in place to a table made
-- before them (a small table: the brief lock does not matter).
ALTER TABLE serving.experiment_analyses
    ADD COLUMN IF NOT EXISTS paired_users integer,
    ADD COLUMN IF NOT EXISTS paired_sequential_p double precision,
    ADD COLUMN IF NOT EXISTS delong_p double precision,
    ADD COLUMN IF NOT EXISTS decisive_test text NOT NULL DEFAULT 'split' CHECK (decisive_test IN ('paired', 'split'));
CREATE INDEX IF NOT EXISTS experiment_analyses_name_idx ON serving.experiment_analyses (name, analysed_at);

-- What each declared winner changed (churn_platform.experiments.decision): promoted (the variant became the champion
-- and the experiment stopped), kept (the control won: the experiment stopped, the champion stays) or recommended
-- (automatic promotion is off: nothing moved, a person acts in the MLflow UI); who or what decided, and why.
CREATE TABLE IF NOT EXISTS serving.experiment_decisions (
    id              bigserial PRIMARY KEY,
    name            text        NOT NULL REFERENCES serving.experiments (name) ON DELETE CASCADE,
    analysis_id     bigint      REFERENCES serving.experiment_analyses (id) ON DELETE SET NULL,
    decided_at      timestamptz NOT NULL DEFAULT now(),
    winner          text        NOT NULL CHECK (winner IN ('control', 'variant')),
    winner_version  text,
    action          text        NOT NULL CHECK (action IN ('promoted', 'kept', 'recommended')),
    champion_before text,
    champion_after  text,
    decided_by      text        NOT NULL,
    reason          text        NOT NULL
);
CREATE INDEX IF NOT EXISTS experiment_decisions_name_idx ON serving.experiment_decisions (name, decided_at);
