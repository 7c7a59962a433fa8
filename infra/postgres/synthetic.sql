-- The synthetic world: its configuration and the simulator state that `churn world advance` continues from.
CREATE TABLE IF NOT EXISTS synthetic.worlds (
    world_id       integer PRIMARY KEY CHECK (world_id = 1),  -- one world per database
    seed           bigint      NOT NULL,
    config         jsonb       NOT NULL,
    start_date     date        NOT NULL,
    days_simulated integer     NOT NULL,
    state          bytea       NOT NULL,  -- per-user latent arrays (numpy npz)
    runtime        jsonb       NOT NULL,  -- the random generator's state and counters
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The simulator's own probability that an active user churns within the next H days, as of the start of `day`
-- (before any event of that day): the ceiling a model that knew the world could reach (oracle AUC).
CREATE TABLE IF NOT EXISTS synthetic.oracle_churn (
    user_id       text COLLATE "C" NOT NULL,
    day           date    NOT NULL,
    horizon_days  integer NOT NULL,
    p_churn       real    NOT NULL CHECK (p_churn BETWEEN 0 AND 1),
    PRIMARY KEY (user_id, day)
);
