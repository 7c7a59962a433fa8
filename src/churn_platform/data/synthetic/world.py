"""The synthetic world in PostgreSQL: generate it, continue it, summarise it.

A world is written in one transaction (users, events, the oracle's probabilities, and the simulator state that
`advance_world` continues from), so a crash leaves the database as it was. Events stream into binary COPY while
the next days are simulated: the server parses one batch on one core while numpy builds the next on the other.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.types.json import Jsonb

from churn_platform import db
from churn_platform.data import binary_copy, labels
from churn_platform.data.binary_copy import Field
from churn_platform.data.synthetic import kinds, world_model
from churn_platform.data.synthetic.world_model import DayEvents, DayOracle, SimulatedState, WorldConfig

log = logging.getLogger(__name__)

USER_ID_DIGITS = 7
# Events are flushed to COPY in batches of about this many rows (bounded memory for large worlds).
EVENT_BATCH_ROWS = 400_000
WORLD_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('churn_platform.world'))"

COPY_EVENTS_SQL = (
    "COPY raw.events (event_key, user_id, event_type, event_timestamp, value, event_id, load_id)"
    " FROM STDIN (FORMAT BINARY)"
)
# Rows of a table truncated in the same transaction can be written already frozen: no later vacuum pass.
COPY_EVENTS_FROZEN_SQL = COPY_EVENTS_SQL.replace("(FORMAT BINARY)", "(FORMAT BINARY, FREEZE)")
COPY_ORACLE_SQL = "COPY synthetic.oracle_churn (user_id, day, horizon_days, p_churn) FROM STDIN (FORMAT BINARY)"
COPY_USERS_SQL = "COPY raw.users (user_id, signup_at, plan, plan_price, channel, region, load_id) FROM STDIN"
# The world's users keep the attributes they signed up with (a plan change is an event): one version each, valid
# from signup, copied from the rows just written (none for a user without attributes, as for a users file).
INSERT_USER_VERSIONS_SQL = """
INSERT INTO raw.user_attributes (user_id, valid_from, plan, plan_price, channel, region, load_id)
SELECT user_id, signup_at, plan, plan_price, channel, region, load_id FROM raw.users
WHERE load_id = %(load_id)s AND num_nonnulls(plan, plan_price, channel, region) > 0
"""
EXISTING_DATA_SQL = """
SELECT (SELECT count(*) FROM synthetic.worlds), (SELECT count(*) FROM raw.users),
       EXISTS (SELECT 1 FROM raw.events) OR EXISTS (SELECT 1 FROM raw.loads)
"""
# Replacing a world empties every table it fills, and the load history; identities restart so a replaced world
# is indistinguishable from a fresh one.
TRUNCATE_WORLD_SQL = """
TRUNCATE raw.events, raw.users, raw.user_attributes, raw.quarantine, raw.loads, synthetic.oracle_churn,
    synthetic.worlds
RESTART IDENTITY
"""
DERIVED_TABLES_SQL = (
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'features' AND table_type = 'BASE TABLE'"
)
INSERT_LOAD_SQL = "INSERT INTO raw.loads (kind, source) VALUES ('synthetic', %s) RETURNING load_id"
FINISH_LOAD_SQL = """
UPDATE raw.loads SET finished_at = now(), rows_read = %(rows)s, rows_loaded = %(rows)s WHERE load_id = %(load_id)s
"""
SAVE_WORLD_SQL = """
INSERT INTO synthetic.worlds (world_id, seed, config, start_date, days_simulated, state, runtime, updated_at)
VALUES (1, %(seed)s, %(config)s, %(start_date)s, %(days)s, %(state)s, %(runtime)s, now())
ON CONFLICT (world_id) DO UPDATE SET days_simulated = EXCLUDED.days_simulated, state = EXCLUDED.state,
    runtime = EXCLUDED.runtime, updated_at = EXCLUDED.updated_at
"""
LOAD_WORLD_SQL = "SELECT config, state, runtime FROM synthetic.worlds WHERE world_id = 1"
LOCK_WORLD_SQL = LOAD_WORLD_SQL + " FOR UPDATE"
SCHEDULE_DRIFT_SQL = (
    "UPDATE synthetic.worlds SET config = jsonb_set(config, '{drift_at}', to_jsonb(%(day)s::int)), updated_at = now()"
    " WHERE world_id = 1"
)
EVENT_COUNTS_SQL = "SELECT event_type, count(*) FROM raw.events GROUP BY event_type ORDER BY count(*) DESC"


class WorldExistsError(RuntimeError):
    """The database already holds a world or loaded data, and `replace` was not asked for."""


class NoWorldError(RuntimeError):
    """`advance` was asked for, but the database holds no synthetic world."""


@dataclass(frozen=True)
class Written:
    """What one generate or advance wrote, and how long it took."""

    events: int
    oracle_rows: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class WorldSummary:
    """What `churn generate`, `churn world advance` and `churn world show` print."""

    config: WorldConfig
    first_day: date
    last_day: date
    users: int
    active_users: int
    events_by_type: dict[str, int]
    positive_label_rate: float | None
    labelled_snapshots: int
    written: Written | None = None  # None: a summary of what is stored, not of a write
    rate_sampled_one_in: int = 1  # the label rate is over one user in this many (large worlds)


def user_ids(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.bytes_]:
    """User ids `u0000042` for user indices, as fixed-width bytes (vectorised: no string formatting per row)."""
    if indices.size and int(indices.max()) >= 10**USER_ID_DIGITS:
        raise ValueError(f"a synthetic world holds at most {10**USER_ID_DIGITS - 1:,} users")
    digits = (indices[:, None] // 10 ** np.arange(USER_ID_DIGITS - 1, -1, -1)) % 10
    chars = np.empty((indices.shape[0], USER_ID_DIGITS + 1), dtype=np.uint8)
    chars[:, 0] = ord("u")
    chars[:, 1:] = digits + ord("0")
    return chars.view(f"S{USER_ID_DIGITS + 1}").ravel()


def _world_namespace(seed: int) -> bytes:
    """First 8 bytes of a synthetic event's key: the world's namespace (the last 8 are its sequence number)."""
    return hashlib.md5(f"churn-platform synthetic world {seed}".encode()).digest()[:8]


def _event_keys(namespace: bytes, seq: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
    keys = np.empty((seq.shape[0], 16), dtype=np.uint8)
    keys[:, :8] = np.frombuffer(namespace, dtype=np.uint8)
    keys[:, 8:] = seq.astype(">u8").view(np.uint8).reshape(-1, 8)
    return keys.view("V16").ravel()


def encode_events(events: DayEvents, namespace: bytes, load_id: int) -> list[memoryview]:
    """Binary COPY rows for raw.events, one fixed-width batch per event type."""
    # Format each user id once, then gather; group rows by type with one stable sort instead of a mask per type.
    ids = user_ids(np.arange(int(events.user_index.max(initial=0)) + 1))[events.user_index]
    order = np.argsort(events.event_code, kind="stable")
    bounds = np.searchsorted(events.event_code[order], np.arange(len(world_model.EVENT_TYPES) + 1))
    chunks = []
    for code, name in enumerate(world_model.EVENT_TYPES):
        rows = order[bounds[code] : bounds[code + 1]]
        n = rows.shape[0]
        if n == 0:
            continue
        type_bytes = name.encode()
        value = (
            Field("value", ">f8", events.value[rows])
            if name in world_model.VALUED_EVENT_TYPES
            else Field("value", None)
        )
        columns = [
            Field("event_key", "V16", _event_keys(namespace, events.seq[rows])),
            Field("user_id", f"S{USER_ID_DIGITS + 1}", ids[rows]),
            Field("event_type", f"S{len(type_bytes)}", type_bytes),
            Field("event_timestamp", ">i8", binary_copy.timestamptz(events.timestamp_us[rows])),
            value,
            Field("event_id", None),
            Field("load_id", ">i8", load_id),
        ]
        chunks.append(binary_copy.encode_rows(columns, n))
    return chunks


def encode_oracle(rows: list[DayOracle], config: WorldConfig) -> memoryview | None:
    """Binary COPY rows for synthetic.oracle_churn."""
    if not rows:
        return None
    users = np.concatenate([r.user_index for r in rows])
    days = np.concatenate([np.full(r.user_index.shape[0], r.day, dtype=np.int64) for r in rows])
    start = (np.datetime64(config.start_date, "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)
    p = np.concatenate([r.p_churn for r in rows])
    columns = [
        Field("user_id", f"S{USER_ID_DIGITS + 1}", user_ids(users)),
        Field("day", ">i4", binary_copy.date_values(start + days)),
        Field("horizon_days", ">i4", np.full(users.shape[0], config.horizon_days)),
        Field("p_churn", ">f4", np.clip(p, 0.0, 1.0)),
    ]
    return binary_copy.encode_rows(columns, users.shape[0])


def _write_users(
    cur: psycopg.Cursor[Any], state: SimulatedState, config: WorldConfig, users: npt.NDArray[np.int64], load_id: int
) -> None:
    epoch = np.datetime64(config.start_date, "s")
    signup = epoch + (state.signup_day[users] * world_model.SECONDS_PER_DAY + state.signup_second[users]).astype(
        "timedelta64[s]"
    )
    ids = user_ids(users)
    with cur.copy(COPY_USERS_SQL) as copy:
        for i, (u, (plan, price)) in enumerate(zip(users, state.signup_plans(users), strict=True)):
            copy.write_row(
                (
                    ids[i].decode(),
                    f"{signup[i]}+00:00",
                    plan,
                    price,
                    world_model.CHANNELS[int(state.channel[u])],
                    world_model.REGIONS[int(state.region[u])],
                    load_id,
                )
            )
    cur.execute(INSERT_USER_VERSIONS_SQL, {"load_id": load_id})


def _simulate_into(
    cur: psycopg.Cursor[Any],
    config: WorldConfig,
    state: SimulatedState,
    days: int,
    load_id: int,
    progress: Callable[[int], None] | None,
    *,
    freeze: bool = False,
) -> tuple[int, list[DayOracle]]:
    """Simulate `days` days, streaming events into COPY; return the events written and the oracle rows."""
    namespace = _world_namespace(config.seed)
    written = 0
    oracle: list[DayOracle] = []
    pending: list[DayEvents] = []
    pending_rows = 0
    # A queued writer pushes bytes to the server from a worker thread, so simulation continues meanwhile.
    statement = COPY_EVENTS_FROZEN_SQL if freeze else COPY_EVENTS_SQL
    with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
        copy.write(binary_copy.HEADER)
        for _ in range(days):
            simulated = kinds.simulate(config, state, 1)
            pending.append(simulated.events)
            pending_rows += len(simulated.events)
            oracle.extend(simulated.oracle)
            if pending_rows >= EVENT_BATCH_ROWS:
                for chunk in encode_events(DayEvents.concat(pending), namespace, load_id):
                    copy.write(chunk)
                written += pending_rows
                pending, pending_rows = [], 0
            if progress is not None:
                progress(1)
        if pending:
            for chunk in encode_events(DayEvents.concat(pending), namespace, load_id):
                copy.write(chunk)
            written += pending_rows
        copy.write(binary_copy.TRAILER)
    return written, oracle


def _save_state(cur: psycopg.Cursor[Any], config: WorldConfig, state: SimulatedState) -> None:
    cur.execute(
        SAVE_WORLD_SQL,
        {
            "seed": config.seed,
            "config": Jsonb(config.to_json()),
            "start_date": config.start_date,
            "days": state.day,
            "state": state.to_bytes(),
            "runtime": Jsonb(state.scalars()),
        },
    )


def ensure_can_generate(cur: psycopg.Cursor[Any], *, replace: bool) -> None:
    """Raise WorldExistsError if the database holds a world or loaded data and `replace` is not set."""
    if replace:
        return
    worlds, users, has_loads = cur.execute(EXISTING_DATA_SQL).fetchone() or (0, 0, False)
    if worlds or users or has_loads:
        what = "a synthetic world" if worlds else "loaded data"
        raise WorldExistsError(
            f"the database already holds {what} ({users:,} users, and loads in raw.loads); pass --replace to discard it"
        )


def _truncate_derived(cur: psycopg.Cursor[Any]) -> None:
    """Empty what was computed from the data a new world replaces: every table of the `features` schema."""
    tables = cur.execute(DERIVED_TABLES_SQL).fetchall()
    if tables:
        names = sql.SQL(", ").join(sql.Identifier("features", name) for (name,) in tables)
        cur.execute(sql.SQL("TRUNCATE {}").format(names))


def check_can_generate(url: str, *, replace: bool) -> None:
    """`ensure_can_generate` on its own connection: lets a caller refuse before it shows any progress."""
    with db.connect(url) as conn, conn.cursor() as cur:
        ensure_can_generate(cur, replace=replace)


def generate_world(
    url: str, config: WorldConfig, *, replace: bool = False, progress: Callable[[int], None] | None = None
) -> WorldSummary:
    """Simulate a new world of `config.days` days and load it, in one transaction.

    Refuses (WorldExistsError) when the database already holds a world or loaded users/events, unless `replace`.
    """
    started = time.perf_counter()
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.execute(WORLD_LOCK_SQL)
        ensure_can_generate(cur, replace=replace)
        # Always truncate (the tables are empty unless `replace`): a table truncated in the loading transaction
        # accepts COPY FREEZE, and with wal_level=minimal its load and index builds skip the WAL.
        cur.execute(TRUNCATE_WORLD_SQL)
        _truncate_derived(cur)
        state = kinds.new_world(config)
        load_id = _load_id(cur, f"synthetic world: seed={config.seed} users={config.users} days={config.days}")
        # The events table is empty here: load it without indexes and build them once at the end.
        with db.indexes_deferred(cur, "raw.events"):
            written, oracle = _simulate_into(cur, config, state, config.days, load_id, progress, freeze=True)
        with db.indexes_deferred(cur, "synthetic.oracle_churn"):
            _write_users_and_oracle(cur, state, config, np.arange(state.n_users, dtype=np.int64), load_id, oracle)
        cur.execute(FINISH_LOAD_SQL, {"rows": written, "load_id": load_id})
        _save_state(cur, config, state)
    seconds = time.perf_counter() - started
    return summarise(url, config, state, Written(written, sum(o.user_index.shape[0] for o in oracle), seconds))


def _write_users_and_oracle(
    cur: psycopg.Cursor[Any],
    state: SimulatedState,
    config: WorldConfig,
    users: npt.NDArray[np.int64],
    load_id: int,
    oracle: list[DayOracle],
) -> None:
    if users.size:
        _write_users(cur, state, config, users, load_id)
    payload = encode_oracle(oracle, config)
    if payload is not None:
        with cur.copy(COPY_ORACLE_SQL) as copy:
            copy.write(binary_copy.HEADER)
            copy.write(payload)
            copy.write(binary_copy.TRAILER)


def _load_id(cur: psycopg.Cursor[Any], source: str) -> int:
    row = cur.execute(INSERT_LOAD_SQL, (source,)).fetchone()
    assert row is not None
    return int(row[0])


def _locked_world(cur: psycopg.Cursor[Any]) -> tuple[WorldConfig, SimulatedState]:
    """The stored world, locked for this transaction (NoWorldError: none)."""
    cur.execute(WORLD_LOCK_SQL)
    row = cur.execute(LOCK_WORLD_SQL).fetchone()
    if row is None:
        raise NoWorldError("this database holds no synthetic world: run `churn generate` first")
    config = WorldConfig.from_json(row[0])
    return config, kinds.state_from_bytes(config, bytes(row[1]), row[2])


def advance_world(
    url: str, days: int, *, progress: Callable[[int], None] | None = None, label_rate: bool = True
) -> WorldSummary:
    """Continue the stored world by `days` days: new events, new arrivals, realised churn, in one transaction; its
    summary (with the positive-label rate unless not `label_rate`)."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    started = time.perf_counter()
    with db.connect(url) as conn, conn.cursor() as cur:
        config, state = _locked_world(cur)
        first_new_user = state.n_users
        load_id = _load_id(cur, f"synthetic world advance: days {state.day}..{state.day + days - 1}")
        written, oracle = _simulate_into(cur, config, state, days, load_id, progress)
        new_users = np.arange(first_new_user, state.n_users, dtype=np.int64)
        _write_users_and_oracle(cur, state, config, new_users, load_id, oracle)
        cur.execute(FINISH_LOAD_SQL, {"rows": written, "load_id": load_id})
        _save_state(cur, config, state)
    seconds = time.perf_counter() - started
    written_summary = Written(written, sum(o.user_index.shape[0] for o in oracle), seconds)
    return summarise(url, config, state, written_summary, label_rate=label_rate)


def schedule_drift(url: str, after_days: int) -> date:
    """Make the stored subscription world drift `after_days` simulated days from now: from that day on it follows
    the drift scenario's regime (an app launch and a price rise). The first drifted day's date."""
    if after_days < 0:
        raise ValueError(f"--drift-at: expected 0 or more days from now, got {after_days}")
    with db.connect(url) as conn, conn.cursor() as cur:
        config, state = _locked_world(cur)
        if config.kind != "subscription":
            raise ValueError(f"the drift scenario changes a subscription world; this one is a {config.kind} world")
        if config.drift_at is not None and config.drift_at < state.day:
            drifted = config.start_date + timedelta(days=config.drift_at)
            raise ValueError(f"this world drifts already (since {drifted}, day {config.drift_at})")
        day = state.day + after_days
        cur.execute(SCHEDULE_DRIFT_SQL, {"day": day})
    return config.start_date + timedelta(days=day)


def days_simulated(url: str) -> int | None:
    """How many days the stored world has simulated (None: no world); cheap enough to poll."""
    with db.connect(url) as conn:
        row = conn.execute("SELECT days_simulated FROM synthetic.worlds WHERE world_id = 1").fetchone()
    return None if row is None else int(row[0])


def load_world(url: str) -> tuple[WorldConfig, SimulatedState] | None:
    """The stored world's configuration and state, or None."""
    with db.connect(url) as conn:
        row = conn.execute(LOAD_WORLD_SQL).fetchone()
    if row is None:
        return None
    config = WorldConfig.from_json(row[0])
    return config, kinds.state_from_bytes(config, bytes(row[1]), row[2])


def summarise(
    url: str, config: WorldConfig, state: SimulatedState, written: Written | None = None, *, label_rate: bool = True
) -> WorldSummary:
    """Users, events by type and the positive-label rate of what the database now holds, and what was written.

    The rate uses the world's own churn definition over its oracle's horizon: a subscription world's `cancel`
    events, or no purchase within the horizon in a purchases world. It reads every snapshot's horizon (seconds on a
    large world): without `label_rate` it is left out.
    """
    with db.connect(url) as conn:
        by_type = {str(t): int(n) for t, n in conn.execute(EVENT_COUNTS_SQL)}
        rate = (
            labels.positive_label_rate(conn, kinds.churn_definition(config), config.horizon_days)
            if label_rate
            else labels.LabelRate(0, None)
        )
    active = state.active_users()
    return WorldSummary(
        config=config,
        first_day=config.start_date,
        last_day=date.fromordinal(config.start_date.toordinal() + state.day - 1),
        users=state.n_users,
        active_users=active,
        events_by_type=by_type,
        positive_label_rate=rate.rate,
        labelled_snapshots=rate.snapshots,
        written=written,
        rate_sampled_one_in=rate.sampled_one_in,
    )


def summary_rows(summary: WorldSummary) -> list[tuple[str, str]]:
    """The summary as (what, value) rows, for the CLI's table and the flows' Markdown artifact."""
    cfg = summary.config
    rate = "-" if summary.positive_label_rate is None else f"{summary.positive_label_rate:.1%}"
    sampled = "" if summary.rate_sampled_one_in == 1 else f" (of one user in {summary.rate_sampled_one_in})"
    purchases = cfg.kind == "purchases"
    churn = f"no purchase within {cfg.horizon_days} days" if purchases else f"churn within {cfg.horizon_days} days"
    return [
        ("kind", f"purchases (returns: {cfg.returns})" if purchases else cfg.kind),
        ("seed", str(cfg.seed)),
        ("period", f"{summary.first_day} .. {summary.last_day}"),
        *([] if purchases else [("drift from day", "-" if cfg.drift_at is None else str(cfg.drift_at))]),
        ("users (active now)", f"{summary.users:,} ({summary.active_users:,})"),
        ("events in database", f"{sum(summary.events_by_type.values()):,}"),
        *((f"  {t}", f"{n:,}") for t, n in summary.events_by_type.items()),
        (f"{churn} of a snapshot", f"{rate} of {summary.labelled_snapshots:,} snapshots{sampled}"),
    ] + (
        []
        if summary.written is None
        else [
            ("events written", f"{summary.written.events:,}"),
            ("time taken", f"{summary.written.seconds:.1f} s ({summary.written.events_per_second:,.0f} events/s)"),
        ]
    )


def summary_markdown(summary: WorldSummary) -> str:
    """The summary as a Markdown table (for Prefect artifacts and reports)."""
    lines = ["| what | value |", "|---|---:|"]
    lines += [f"| {what.strip()} | {value} |" for what, value in summary_rows(summary)]
    return "\n".join(lines)
