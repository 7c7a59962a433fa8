"""The serving store on a real PostgreSQL: A/B experiments and the background prediction-log writer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from churn_platform import db
from churn_platform.experiments import records
from churn_platform.experiments.assignment import bucket
from churn_platform.experiments.records import (
    ExperimentError,
    experiment_summary,
    list_experiments,
    running_experiment,
    stop_experiment,
)
from churn_platform.model.aliases import ModelReferences
from churn_platform.serving.prediction_log import (
    PredictionLogWriter,
    PredictionRecord,
    copy_lines,
    new_request_id,
)

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
NAIVE_SOON = datetime.now() + timedelta(days=1)  # a time without a zone: whose clock?
# What the registry holds in these tests, which are about the records (the registry's side: test_experiment_start.py).
REGISTERED = ModelReferences("churn", frozenset({"3", "4", "7"}), {"champion": "3", "challenger": "4"})


def start_experiment(url: str, name: str, variant: str, variant_share: float, **options: Any) -> records.Experiment:
    return records.start_experiment(url, name, variant, variant_share, registered=REGISTERED, **options)


def _record(user_id: str, request_id: uuid.UUID | None = None, **overrides: Any) -> PredictionRecord:
    values: dict[str, Any] = {
        "request_id": request_id or uuid.uuid4(), "predicted_at": T0, "user_id": user_id, "experiment": None,
        "arm": "champion", "model_alias": "champion", "model_version": "3", "churn_probability": 0.25,
        "feature_hash": "0123456789abcdef", "snapshot_at": T0, "latency_ms": 1.5, "endpoint": "predict",
    }  # fmt: skip
    return PredictionRecord(**(values | overrides))


def _logged_users(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT user_id FROM serving.prediction_log ORDER BY user_id")]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def make_writer() -> Iterator[Callable[..., PredictionLogWriter]]:
    """Started writers, closed after the test whatever happened."""
    writers: list[PredictionLogWriter] = []

    def make(url: str, **options: Any) -> PredictionLogWriter:
        writer = PredictionLogWriter(url, **{"retry_max_s": 0.5, **options})
        writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close(timeout_s=1)


@pytest.fixture
def later_database_url(server_url: str) -> Iterator[str]:
    """The URL of a database that does not exist yet (the test creates it), dropped after the test."""
    name = f"churn_test_later_{uuid.uuid4().hex[:12]}"
    yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    with psycopg.connect(psycopg.conninfo.make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- experiments ---------------------------------------------------------------------------------------------------


def test_the_schema_applies_twice_and_admits_one_unstopped_experiment(database_url: str) -> None:
    db.init_schema(database_url)  # idempotent
    insert = "INSERT INTO serving.experiments (name, variant, variant_share, salt) VALUES (%s, 'challenger', 0.5, 's')"
    with psycopg.connect(database_url) as conn:
        conn.execute(insert, ("first",))
        with pytest.raises(psycopg.errors.UniqueViolation, match="experiments_one_running"):
            conn.execute(insert, ("second",))


def test_the_schema_drops_the_primary_key_of_an_earlier_log(database_url: str) -> None:
    primary_keys = (
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'serving.prediction_log'::regclass AND contype = 'p'"
    )
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE serving.prediction_log ADD PRIMARY KEY (request_id, user_id)")  # as it was made

    db.init_schema(database_url)

    with psycopg.connect(database_url) as conn:
        assert conn.execute(primary_keys).fetchone() == (0,)


def test_an_experiment_starts_routes_and_stops(database_url: str) -> None:
    started = start_experiment(database_url, "checkout-v2", "challenger", 0.3, created_by="ana")

    running = running_experiment(database_url)
    assert running == started
    assert (running.control, running.variant, running.variant_share, running.created_by) == (
        "champion", "challenger", 0.3, "ana",
    )  # fmt: skip
    assert len(running.salt) == 32 and running.is_running()
    expected_arm = "variant" if bucket("checkout-v2", running.salt, "user-1") < 0.3 else "control"
    assert running.arm_for("user-1") == expected_arm

    stopped = stop_experiment(database_url)

    assert stopped.name == "checkout-v2" and stopped.stopped_at is not None and not stopped.is_running()
    assert running_experiment(database_url) is None
    assert list_experiments(database_url) == [stopped]


def test_a_second_experiment_is_refused_while_one_runs(database_url: str) -> None:
    start_experiment(database_url, "first", "challenger", 0.5)

    with pytest.raises(ExperimentError, match="'first' is running"):
        start_experiment(database_url, "second", "7", 0.5)
    assert [e.name for e in list_experiments(database_url)] == ["first"]


def test_a_name_is_used_once(database_url: str) -> None:
    start_experiment(database_url, "checkout-v2", "challenger", 0.5)
    stop_experiment(database_url, "checkout-v2")

    with pytest.raises(ExperimentError, match="'checkout-v2' was already used"):
        start_experiment(database_url, "checkout-v2", "challenger", 0.5)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "", "variant": "challenger", "variant_share": 0.5}, "name must be a non-empty"),
        ({"name": "e", "variant": "challenger", "variant_share": 0.0}, "variant_share must be strictly between"),
        ({"name": "e", "variant": "challenger", "variant_share": 1.0}, "variant_share must be strictly between"),
        ({"name": "e", "variant": "challenger", "variant_share": float("nan")}, "variant_share must be a number"),
        ({"name": "e", "variant": " ", "variant_share": 0.5}, "variant must be a non-empty"),
        ({"name": "e", "variant": "champion", "variant_share": 0.5}, "both 'champion'"),
        ({"name": "e", "variant": "challenger", "variant_share": 0.5, "salt": ""}, "salt must be a non-empty"),
        ({"name": "e", "variant": "7", "variant_share": 0.5, "ends_at": T0}, "ends_at must be in the future"),
        ({"name": "e", "variant": "7", "variant_share": 0.5, "ends_at": NAIVE_SOON}, "ends_at must be timezone-aware"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_parameter(
    database_url: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExperimentError, match=message):
        start_experiment(database_url, **arguments)
    assert list_experiments(database_url) == []


def test_stopping_names_what_is_missing(database_url: str) -> None:
    with pytest.raises(ExperimentError, match="no experiment is running"):
        stop_experiment(database_url)
    with pytest.raises(ExperimentError, match="no experiment named 'nope'"):
        stop_experiment(database_url, "nope")
    start_experiment(database_url, "done", "challenger", 0.5)
    stop_experiment(database_url)
    with pytest.raises(ExperimentError, match="'done' was already stopped"):
        stop_experiment(database_url, "done")


def test_an_experiment_past_its_planned_end_stops_routing_and_makes_room(database_url: str) -> None:
    ends_at = datetime.now(UTC) + timedelta(seconds=1)
    start_experiment(database_url, "short", "challenger", 0.5, ends_at=ends_at)
    assert running_experiment(database_url) is not None
    assert running_experiment(database_url, now=ends_at) is None

    time.sleep(max((ends_at - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    assert running_experiment(database_url) is None
    start_experiment(database_url, "next", "challenger", 0.5)

    short, following = list_experiments(database_url)
    assert short.stopped_at == ends_at  # recorded as ending when it was planned to
    assert running_experiment(database_url) == following


def test_sql_recomputes_the_assignment_bucket(database_url: str) -> None:
    query = """
    SELECT ('x' || left(encode(sha256(convert_to(%(salt)s, 'UTF8') || '\\x00'::bytea
        || convert_to(%(name)s, 'UTF8') || '\\x00'::bytea || convert_to(u, 'UTF8')), 'hex'), 16))::bit(64)::bigint
    FROM unnest(%(users)s::text[]) AS u
    """
    users = [f"user-{i}" for i in range(200)] + ["ünïcode", ""]
    with psycopg.connect(database_url) as conn:
        signed = [row[0] for row in conn.execute(query, {"salt": "s3cr3t", "name": "checkout-v2", "users": users})]

    from_sql = [(value % 2**64 >> 11) / 2**53 for value in signed]
    assert from_sql == [bucket("checkout-v2", "s3cr3t", user) for user in users]


def test_the_summary_counts_the_log_per_arm(database_url: str, make_writer: Callable[..., PredictionLogWriter]) -> None:
    experiment = start_experiment(database_url, "checkout-v2", "challenger", 0.4)
    writer = make_writer(database_url)
    users = [f"user-{i}" for i in range(300)]
    batch_request = uuid.uuid4()
    for i, user in enumerate(users):  # one batch request for all users, then a single request for each even user
        requests = [(batch_request, "predict_batch")] + ([(uuid.uuid4(), "predict")] if i % 2 == 0 else [])
        arm = experiment.arm_for(user)
        version = "4" if arm == "variant" else "3"
        probability = None if i == 0 else 0.1 * (i % 10)
        for request_id, endpoint in requests:
            writer.submit(
                _record(
                    user, request_id, experiment="checkout-v2", arm=arm, endpoint=endpoint, model_version=version,
                    churn_probability=probability,
                )
            )  # fmt: skip
    assert writer.flush(timeout_s=20)

    summary = experiment_summary(database_url, "checkout-v2")

    assert summary["name"] == "checkout-v2" and summary["running"] is True
    for arm in ("control", "variant"):
        members = [i for i, user in enumerate(users) if experiment.arm_for(user) == arm]
        rows = [i for i in members for _ in range(2 if i % 2 == 0 else 1)]
        scored = [0.1 * (i % 10) for i in rows if i != 0]
        counts = summary["arms"][arm]
        assert counts["users"] == len(members) and counts["predictions"] == len(rows)
        assert counts["requests"] == 1 + sum(1 for i in members if i % 2 == 0)
        assert counts["scored"] == len(scored)
        assert counts["mean_probability"] == pytest.approx(sum(scored) / len(scored))
        assert counts["model_versions"] == (["4"] if arm == "variant" else ["3"])
    with pytest.raises(ExperimentError, match="no experiment named 'other'"):
        experiment_summary(database_url, "other")


# --- the prediction-log writer -------------------------------------------------------------------------------------


def test_rows_from_many_threads_are_written_exactly_once(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    writer = make_writer(database_url, batch_rows=700)
    threads, per_thread = 8, 2_500

    def submit_all(thread: int) -> None:
        for i in range(per_thread):
            writer.submit(_record(f"t{thread}-u{i:05d}"))

    workers = [threading.Thread(target=submit_all, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert writer.flush(timeout_s=30)

    logged = _logged_users(database_url)
    assert len(logged) == len(set(logged)) == threads * per_thread
    stats = writer.stats()
    assert (stats["written"], stats["dropped"], stats["rejected"], stats["pending"]) == (threads * per_thread, 0, 0, 0)
    assert writer.close(timeout_s=5) is True
    writer.submit(_record("after-close"))
    assert writer.stats()["dropped"] == 1  # a closed writer holds nothing


def test_rows_wait_for_a_database_that_appears_later(
    later_database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    writer = make_writer(later_database_url)
    for i in range(300):
        writer.submit(_record(f"u{i:03d}"))

    _wait_until(lambda: writer.stats()["consecutive_failures"] >= 3)
    stats = writer.stats()
    assert stats["pending"] == 300 and stats["written"] == 0
    assert stats["last_error"] is not None and "does not exist" in stats["last_error"]
    assert writer.flush(timeout_s=0.2) is False

    db.init_schema(later_database_url)  # the database appears, with its schema

    assert writer.flush(timeout_s=20)
    assert _logged_users(later_database_url) == [f"u{i:03d}" for i in range(300)]
    assert writer.stats()["written"] == 300 and writer.stats()["consecutive_failures"] == 0


def test_a_full_buffer_drops_exactly_the_oldest_overflow(
    later_database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    writer = make_writer(later_database_url, max_buffer=100, batch_rows=30)
    for i in range(150):
        writer.submit(_record(f"u{i:03d}"))

    _wait_until(lambda: writer.stats()["consecutive_failures"] >= 2)
    assert (writer.stats()["dropped"], writer.stats()["pending"]) == (50, 100)

    db.init_schema(later_database_url)

    assert writer.flush(timeout_s=20)
    assert _logged_users(later_database_url) == [f"u{i:03d}" for i in range(50, 150)]
    assert (writer.stats()["written"], writer.stats()["dropped"]) == (100, 50)


def test_a_batch_cut_off_mid_write_is_replayed_without_duplicates(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    # The first insert into the log kills its own connection after the rows are in, before the commit.
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE SEQUENCE serving.test_cut_once")
        conn.execute(
            """CREATE FUNCTION serving.test_cut_connection() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('serving.test_cut_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                RETURN NULL;
            END $$"""
        )
        conn.execute(
            "CREATE TRIGGER test_cut AFTER INSERT ON serving.prediction_log"
            " FOR EACH STATEMENT EXECUTE FUNCTION serving.test_cut_connection()"
        )
    writer = make_writer(database_url, batch_rows=500)
    for i in range(2_000):
        writer.submit(_record(f"u{i:04d}"))

    assert writer.flush(timeout_s=20)

    assert _logged_users(database_url) == [f"u{i:04d}" for i in range(2_000)]
    stats = writer.stats()
    assert (stats["written"], stats["duplicates"], stats["rejected"]) == (2_000, 0, 0)
    assert "terminating connection" in str(stats["last_error"])


def _server_address(database_url: str) -> str | tuple[str, int]:
    """Where a libpq URL's server listens: its unix socket file (the embedded server's only listener), or host and
    port."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _connect(address: str | tuple[str, int]) -> socket.socket:
    if isinstance(address, tuple):
        return socket.create_connection(address)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.connect(address)
    return unix


class LostCommitProxy:
    """A TCP proxy to PostgreSQL (over TCP or its unix socket) that lets the first COMMIT through, then cuts the
    connection before the server's answer comes back: the batch is committed, and its writer never hears so. With
    `hold`, it keeps the COMMIT and the server's side of the connection instead: the transaction stays open, as
    after a network partition."""

    def __init__(self, database_url: str, *, hold: bool = False) -> None:
        self.upstream = _server_address(database_url)
        self.hold = hold
        self.held: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()  # set once the COMMIT is through: nothing more goes back to that client
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = _connect(self.upstream)
            first = not self.cut.is_set()
            threading.Thread(target=self._to_server, args=(client, server, first), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, first), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, cut: bool) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if cut and not self.cut.is_set() and b"COMMIT" in data:
                    self.cut.set()
                    if self.hold:
                        self.held.append(server)
                        break
                    server.sendall(data)
                    time.sleep(0.5)  # the server commits; its answer is swallowed below
                    break
                server.sendall(data)
        for end in (client,) if server in self.held else (client, server):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def _to_client(self, server: socket.socket, client: socket.socket, cut: bool) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if cut and self.cut.is_set():
                    return
                client.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for server in self.held:
            server.close()


def test_a_batch_committed_without_acknowledgment_is_not_written_again(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    proxy = LostCommitProxy(database_url)
    try:
        writer = make_writer(psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=proxy.port))
        writer.submit_many([_record(f"u{i:04d}") for i in range(1_000)])  # one batch

        assert writer.flush(timeout_s=20)
    finally:
        proxy.close()

    assert proxy.cut.is_set()
    assert _logged_users(database_url) == [f"u{i:04d}" for i in range(1_000)]  # each once
    stats = writer.stats()
    assert (stats["written"], stats["duplicates"], stats["rejected"]) == (1_000, 1_000, 0)
    assert stats["last_error"] is not None  # the broken connection was seen and recovered from


def test_a_batch_left_open_by_a_lost_connection_is_ended_and_written_once(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    proxy = LostCommitProxy(database_url, hold=True)
    try:
        writer = make_writer(psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=proxy.port))
        writer.submit_many([_record(f"u{i:04d}") for i in range(1_000)])

        assert writer.flush(timeout_s=20)
    finally:
        proxy.close()

    assert proxy.cut.is_set()
    assert _logged_users(database_url) == [f"u{i:04d}" for i in range(1_000)]
    stats = writer.stats()
    assert (stats["written"], stats["duplicates"], stats["rejected"]) == (1_000, 0, 0)


def test_rows_the_table_refuses_are_rejected_and_the_rest_written(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    bad = [
        _record("bad-probability", churn_probability=1.5),
        _record("bad-nan", churn_probability=float("nan")),
        _record("bad-arm", arm="bogus"),
        _record("bad-arm-outside-experiment", arm="variant"),
        _record("bad-endpoint", endpoint="explain"),
        _record("bad-nul\x00"),
        _record("bad-type", feature_hash={"not": "text"}),
        _record(""),
    ]
    writer = make_writer(database_url, batch_rows=2_000)
    good = [f"u{i:03d}" for i in range(200)]
    for i, user in enumerate(good):
        writer.submit(_record(user))
        if i % 25 == 0:
            writer.submit(bad[i // 25])

    assert writer.flush(timeout_s=20)

    assert _logged_users(database_url) == good
    assert (writer.stats()["written"], writer.stats()["rejected"]) == (200, len(bad))
    writer.submit(_record("u999"))  # the writer goes on with the next batches
    assert writer.flush(timeout_s=20)
    assert "u999" in _logged_users(database_url)


def test_bulk_formatted_rows_read_back_exactly(
    database_url: str, make_writer: Callable[..., PredictionLogWriter]
) -> None:
    users = ["plain", "tab\there", "back\\slash", "new\nline", "carriage\rreturn", "ünïcødé ✓", "\\N", "  spaced  "]
    route = ("exp\t1", "control", None, "7")
    request_id = new_request_id()
    other = ("exp\t1", "variant", "challenger", "8")
    routes = [route if i % 3 else other for i in range(len(users))]
    scores = [i / 10 for i in range(len(users))]
    hashes = [f"{i:016x}" for i in range(len(users))]
    day_before = T0 - timedelta(days=1)
    snapshots = [day_before if i == 2 else T0 - timedelta(hours=1) for i in range(len(users))]
    shadows = [None if i == 4 else ("8" if i % 3 else "7", 1 - i / 10) for i in range(len(users))]
    lines = copy_lines(request_id, T0, 2.5, "predict_batch", users, routes, scores, hashes, snapshots, shadows)
    no_score = (None, "champion", "champion", "7")
    lines += copy_lines(new_request_id(), T0, 0.0, "predict", ["no-score"], [no_score], [None], ["no-features"], [None])
    writer = make_writer(database_url)

    writer.submit_lines(lines)
    bad_route = (None, "champion", 7, "7")
    writer.submit_rows(new_request_id(), T0, 1.0, "predict", ["bad-route"], [bad_route], [0.5], ["ab"], [T0])  # type: ignore[list-item]
    naive = T0.replace(tzinfo=None)
    writer.submit_rows(new_request_id(), T0, 1.0, "predict", ["naive"], [no_score], [0.5], ["ab"], [naive])
    assert writer.flush(timeout_s=20)
    assert writer.stats()["rejected"] == 2  # a value of the wrong type: refused when formatted, not written

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, request_id, predicted_at, experiment, arm, model_alias, churn_probability, feature_hash,"
            " latency_ms, endpoint, snapshot_at, shadow_version, shadow_probability FROM serving.prediction_log"
            " ORDER BY churn_probability NULLS LAST"
        ).fetchall()
    assert [row[0] for row in rows] == [*users, "no-score"]
    first = rows[1]
    assert first[1:] == (
        request_id, T0, "exp\t1", "control", None, 0.1, f"{1:016x}", 2.5, "predict_batch", T0 - timedelta(hours=1),
        "8", 0.9,
    )  # fmt: skip
    assert [tuple(row[11:]) if row[11] else None for row in rows[:-1]] == shadows  # each row's shadow score, or none
    assert [row[3:6] for row in rows[:-1:3]] == [("exp\t1", "variant", "challenger")] * 3  # the other route's rows
    assert [row[10] for row in rows] == [*snapshots, None]
    assert rows[-1][3:7] == (None, "champion", "champion", None) and rows[-1][11:] == (None, None)


def test_request_ids_are_uuid7_in_time_order() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_request_id())
        time.sleep(0.002)

    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs((ids[0].int >> 80) / 1000 - time.time()) < 5  # unix milliseconds first
