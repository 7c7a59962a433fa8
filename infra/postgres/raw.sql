-- One row per load (a file ingested, or a synthetic world generated or advanced), so every row can be traced.
CREATE TABLE IF NOT EXISTS raw.loads (
    load_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('events', 'users', 'synthetic')),
    source           text        NOT NULL,
    source_sha256    text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    rows_read        bigint      NOT NULL DEFAULT 0,
    rows_loaded      bigint      NOT NULL DEFAULT 0,
    rows_duplicate   bigint      NOT NULL DEFAULT 0,
    rows_quarantined bigint      NOT NULL DEFAULT 0,
    -- events: rows repeating an identical earlier row of the file (kept as their own events; among the loaded
    -- or duplicate rows), and the file's users raw.users did not know (added without attributes)
    rows_repeated    bigint      NOT NULL DEFAULT 0,
    users_added      bigint      NOT NULL DEFAULT 0
);
-- Databases created before these counts existed get them when the schema is applied again. Checked first: ALTER
-- TABLE locks raw.loads even when the column exists, and would wait for every load in progress.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute WHERE attrelid = 'raw.loads'::regclass AND attname = 'users_added'
    ) THEN
        ALTER TABLE raw.loads ADD COLUMN IF NOT EXISTS rows_repeated bigint NOT NULL DEFAULT 0,
                              ADD COLUMN IF NOT EXISTS users_added bigint NOT NULL DEFAULT 0;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS raw.users (
    user_id    text COLLATE "C" PRIMARY KEY CHECK (user_id <> ''),
    signup_at  timestamptz,
    plan       text,
    plan_price double precision,
    channel    text,
    region     text,
    load_id    bigint NOT NULL REFERENCES raw.loads (load_id)
);

-- The versions of each user's attributes (the users file's columns but signup_at), so that a snapshot at t reads
-- what was true before t rather than today's row of raw.users. A user's first version is valid from signup (or
-- from its load, when the file has no signup time or one after the load); a later load that changes the
-- attributes adds a version valid from that load's start; an unchanged row adds none. Users known only from
-- events (no attributes) have no version until a users file names them.
CREATE TABLE IF NOT EXISTS raw.user_attributes (
    user_id    text COLLATE "C" NOT NULL CHECK (user_id <> ''),
    valid_from timestamptz      NOT NULL,
    plan       text,
    plan_price double precision,
    channel    text,
    region     text,
    load_id    bigint           NOT NULL REFERENCES raw.loads (load_id),
    PRIMARY KEY (user_id, valid_from)
);
-- Databases whose users were loaded before attributes had versions: every user with attributes and no version
-- gets one, valid from signup (else its load). A no-op once done: every load since writes its versions.
INSERT INTO raw.user_attributes (user_id, valid_from, plan, plan_price, channel, region, load_id)
SELECT u.user_id, least(u.signup_at, l.started_at), u.plan, u.plan_price, u.channel, u.region, u.load_id
FROM raw.users u
JOIN raw.loads l ON l.load_id = u.load_id
WHERE num_nonnulls(u.plan, u.plan_price, u.channel, u.region) > 0
  AND NOT EXISTS (SELECT FROM raw.user_attributes a WHERE a.user_id = u.user_id);

-- event_key is the idempotency key: a 128-bit hash of the source's event_id when it has one, else of the row's
-- content (see churn_platform.data.ingest.event_key). Loading the same event twice can never make two rows.
CREATE TABLE IF NOT EXISTS raw.events (
    event_key       uuid PRIMARY KEY,
    user_id         text COLLATE "C" NOT NULL CHECK (user_id <> ''),
    event_type      text             NOT NULL,
    event_timestamp timestamptz      NOT NULL,
    value           double precision,
    event_id        text,
    load_id         bigint           NOT NULL
);
-- Feature snapshots read a user's events up to a time; labels scan forward from one.
CREATE INDEX IF NOT EXISTS events_user_time_idx ON raw.events (user_id, event_timestamp);
-- Incremental work ("events since the last snapshot") scans by time; events arrive roughly in time order.
CREATE INDEX IF NOT EXISTS events_time_brin ON raw.events USING brin (event_timestamp);

-- Rows that broke the contract, with where they came from and why; raw_record keeps every original value.
CREATE TABLE IF NOT EXISTS raw.quarantine (
    source_sha256  text        NOT NULL,
    row_number     bigint      NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('events', 'users')),
    source         text        NOT NULL,
    column_name    text        NOT NULL,
    reason         text        NOT NULL,
    raw_record     jsonb       NOT NULL,
    load_id        bigint      NOT NULL REFERENCES raw.loads (load_id),
    PRIMARY KEY (source_sha256, row_number)
);
CREATE INDEX IF NOT EXISTS quarantine_load_idx ON raw.quarantine (load_id);
