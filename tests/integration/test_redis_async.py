"""The event-loop reader of many Redis hashes, against the session's real Redis server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from tests.integration.feature_worlds import redis_db_url

from churn_platform.features.redis_async import AsyncHashReader, RespConnection
from churn_platform.settings import Settings

DB = 9  # keys of their own (a random prefix), removed after


@pytest.fixture
def server(stack_settings: Settings) -> Iterator[tuple[redis.Redis, list[bytes]]]:
    """A client of database DB and three keys: two hashes and a string."""
    client = redis.Redis.from_url(redis_db_url(stack_settings, DB))
    prefix = f"redis-async-test:{uuid.uuid4().hex}:".encode()
    keys = [prefix + b"a", prefix + b"b", prefix + b"text"]
    client.hset(keys[0], mapping={b"f1": b"\x00\x01", b"f2": b"two"})
    client.hset(keys[1], mapping={b"f1": b"\r\n$3\r\n"})  # RESP framing inside a value
    client.set(keys[2], b"not a hash")
    try:
        yield client, keys
    finally:
        client.delete(*keys)
        client.close()


def reader_of(client: redis.Redis) -> AsyncHashReader:
    reader = AsyncHashReader.for_client(client)
    assert reader is not None
    return reader


def test_replies_come_back_in_order_with_missing_keys_empty(server: tuple[redis.Redis, list[bytes]]) -> None:
    client, keys = server
    reader = reader_of(client)
    wanted = [keys[1], keys[0] + b"-missing", keys[0]]

    replies = asyncio.run(reader.hgetall(wanted))

    assert [dict(zip(r[0::2], r[1::2], strict=True)) for r in replies] == [client.hgetall(k) for k in wanted]
    assert replies[1] == []


@pytest.mark.parametrize("noticed", [False, True], ids=["dropped-unnoticed", "dropped-noticed"])
def test_a_connection_the_server_dropped_is_replaced(server: tuple[redis.Redis, list[bytes]], noticed: bool) -> None:
    client, keys = server
    reader = reader_of(client)

    async def read_kill_read() -> list[object]:
        await reader.hgetall(keys[:1])  # leaves one pooled connection
        transport = reader._idle[0].transport
        assert transport is not None
        host, port = transport.get_extra_info("sockname")[:2]
        client.client_kill(f"{host}:{port}")  # the server drops that connection alone
        if noticed:
            await asyncio.sleep(0.05)  # the loop sees the close before the next read: a new connection is taken
        # else the next read writes on the dropped connection, fails, and is tried again on a new one
        return await reader.hgetall(keys[:1])

    assert asyncio.run(read_kill_read()) == [[b"f1", b"\x00\x01", b"f2", b"two"]]


def test_a_burst_of_reads_shares_a_bounded_number_of_connections(server: tuple[redis.Redis, list[bytes]]) -> None:
    client, keys = server
    kwargs = client.connection_pool.connection_kwargs
    reader = AsyncHashReader(kwargs["host"], kwargs["port"], db=DB, max_connections=3)
    opened = []
    connect = reader._connect

    async def counted_connect(loop: asyncio.AbstractEventLoop) -> RespConnection:
        connection = await connect(loop)
        opened.append(connection)
        return connection

    reader._connect = counted_connect  # type: ignore[method-assign]

    async def burst() -> list[list[object]]:
        return await asyncio.gather(*(reader.hgetall(keys[i % 2 : i % 2 + 1]) for i in range(40)))

    replies = asyncio.run(burst())

    expected = {key: [item for pair in client.hgetall(key).items() for item in pair] for key in keys[:2]}
    assert replies == [[expected[keys[i % 2]]] for i in range(40)]
    assert 1 <= len(opened) <= 3


def test_an_error_reply_is_raised_and_the_connection_stays_usable(server: tuple[redis.Redis, list[bytes]]) -> None:
    client, keys = server
    reader = reader_of(client)

    async def read_bad_then_good() -> list[object]:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await reader.hgetall(keys)
        return await reader.hgetall(keys[:1])

    assert asyncio.run(read_bad_then_good()) == [[b"f1", b"\x00\x01", b"f2", b"two"]]


def test_credentials_and_database_are_sent_before_reading(
    server: tuple[redis.Redis, list[bytes]], stack_settings: Settings
) -> None:
    client, keys = server
    parts = urlsplit(redis_db_url(stack_settings, DB))
    user, password = f"churn-test-{uuid.uuid4().hex[:8]}", 123456  # Feast's connection string gives numbers as int
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        host, port = parts.hostname or "localhost", parts.port or 6379
        right = AsyncHashReader(host, port, db=DB, username=user, password=password)
        wrong = AsyncHashReader(host, port, db=DB, username=user, password=1)

        assert asyncio.run(right.hgetall(keys[:1])) == [[b"f1", b"\x00\x01", b"f2", b"two"]]  # database DB's key
        with pytest.raises(redis.ResponseError, match=r"WRONGPASS|invalid"):
            asyncio.run(wrong.hgetall(keys[:1]))
    finally:
        client.acl_deluser(user)


def test_an_unreachable_server_is_named() -> None:
    reader = AsyncHashReader("127.0.0.1", 1, timeout_s=2)

    with pytest.raises(redis.ConnectionError, match=r"127\.0\.0\.1:1"):
        asyncio.run(reader.hgetall([b"any"]))


def test_clients_it_cannot_speak_for_are_read_on_a_thread() -> None:
    tls = redis.Redis(host="localhost", ssl=True)
    resp3 = redis.Redis(host="localhost", protocol=3)

    assert AsyncHashReader.for_client(tls) is None
    assert AsyncHashReader.for_client(resp3) is None
    assert AsyncHashReader.for_client(redis.Redis(host="localhost", port=6380, db=3)) is not None
