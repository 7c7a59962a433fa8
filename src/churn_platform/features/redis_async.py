"""Many users' Redis hashes read without blocking the event loop: one write of every HGETALL, then the replies.

The prediction service answers on one asyncio loop. A blocking read holds that loop while Redis works (about
0.8 ms for 100 users), so every other request waits with it, and redis-py then spends a Python call per reply.
`AsyncHashReader` keeps a few connections of its own to the online store's Redis (the same host, port, database
and credentials as the store's client), writes a batch's commands in one RESP payload and lets hiredis parse the
replies as they arrive, inside the loop's own data callback. An online store this reader cannot reach by itself
(TLS, Sentinel, a cluster, a credential provider, RESP3) is read by the blocking client on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis

DEFAULT_TIMEOUT_S = 10.0  # when the store's client sets none: a request must not wait on Redis forever
MAX_CONNECTIONS = 8  # per event loop: a burst of requests queues for a connection instead of opening hundreds


class RespConnection(asyncio.Protocol):
    """One connection: writes a payload of commands and collects exactly as many replies as it holds."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader()
        self._replies: list[Any] = []
        self._expected = 0
        self._waiter: asyncio.Future[list[Any]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nothing asked: the connection is closed before its next use (see `exchange`)
        replies, gets = self._replies, self._reader.gets
        try:
            while len(replies) < self._expected:
                reply = gets()
                if reply is False:
                    return
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self.close()  # the stream is out of step: nothing more on it can be trusted
            waiter.set_exception(redis.ConnectionError(f"Redis sent an unreadable reply: {exc}"))
            return
        waiter.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(redis.ConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"))

    async def exchange(self, payload: bytes, replies: int) -> list[Any]:
        """Write `payload` and return its `replies` replies (hiredis.ReplyError instances for error replies)."""
        if self.transport is None or self.closed or self._reader.has_data():
            raise redis.ConnectionError("the connection is closed or holds unread data")
        self._replies, self._expected = [], replies
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Close the connection, from its loop's thread or any other (a loop already closed has no sockets left
        to close)."""
        self.closed = True
        transport = self.transport
        if transport is None or self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            transport.close()
        else:
            try:
                self.loop.call_soon_threadsafe(transport.close)
            except RuntimeError:  # the loop closed meanwhile
                pass


def command(*parts: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def hgetall_payload(keys: Sequence[bytes]) -> bytes:
    return b"".join([b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(key), key) for key in keys])


def reply_errors(replies: Sequence[Any]) -> None:
    """Raise the first error reply as redis-py would (a key of another type, a refused command)."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))


class AsyncHashReader:
    """HGETALL of many keys on the running loop, over connections of its own to one Redis server."""

    def __init__(
        self, host: str, port: int, *, db: int = 0, username: Any = None, password: Any = None,
        timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
    ) -> None:  # fmt: skip
        self.host, self.port, self.db = host, port, db
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        handshake = []
        if username or password:  # as redis-py: AUTH only with credentials (a numeric password is a password)
            secret = b"" if password is None else str(password).encode()
            handshake.append(command(b"AUTH", *((str(username).encode(), secret) if username else (secret,))))
        if db:
            handshake.append(command(b"SELECT", str(db).encode()))
        self._handshake, self._handshake_replies = b"".join(handshake), len(handshake)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[RespConnection] = []
        self._slots = asyncio.Semaphore(max_connections)  # connections in use on this loop

    @classmethod
    def for_client(cls, client: Any) -> AsyncHashReader | None:
        """A reader for the server of a redis-py client, or None where it cannot connect as that client does."""
        if not isinstance(client, redis.Redis):
            return None  # a cluster routes each key itself
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        plain = pool.connection_class is redis.Connection and type(pool) is redis.ConnectionPool
        if not plain or kwargs.get("credential_provider") is not None or kwargs.get("protocol") in (3, "3"):
            return None
        return cls(
            str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)), db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"), password=kwargs.get("password"),
            timeout_s=float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S),
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"AsyncHashReader(redis://{self.host}:{self.port}/{self.db})"

    async def hgetall(self, keys: Sequence[bytes]) -> list[Any]:
        """Every key's HGETALL reply (a flat [field, value, ...] list, empty for a missing key), in order.

        A connection that fails is dropped and the read is tried once more on a new one (it changes nothing).
        """
        if not keys:
            return []
        payload = hgetall_payload(keys)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections (and the queue for them) belong to the loop that opened them
            self.close()
            self._loop, self._slots = loop, asyncio.Semaphore(self.max_connections)
        async with self._slots:
            return await self._read(payload, len(keys))

    async def _read(self, payload: bytes, replies_expected: int) -> list[Any]:
        for attempt in (1, 2):
            connection: RespConnection | None = None
            try:
                connection = await self._acquire()
                async with asyncio.timeout(self.timeout_s):
                    replies = await connection.exchange(payload, replies_expected)
            except (OSError, TimeoutError, redis.ConnectionError) as exc:
                if connection is not None:
                    connection.close()
                if attempt == 2:
                    message = f"reading the online store at {self}: {str(exc) or type(exc).__name__}"
                    raise redis.ConnectionError(message) from exc
                continue
            except BaseException:
                if connection is not None:
                    connection.close()  # cancelled mid-read: its replies may still arrive
                raise
            self._release(connection)
            reply_errors(replies)
            return replies
        raise AssertionError("unreachable")

    async def _acquire(self) -> RespConnection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return await self._connect(asyncio.get_running_loop())

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> RespConnection:
        async with asyncio.timeout(self.timeout_s):
            _, connection = await loop.create_connection(RespConnection, self.host, self.port)
            if self._handshake:
                try:
                    reply_errors(await connection.exchange(self._handshake, self._handshake_replies))
                except BaseException:
                    connection.close()
                    raise
        return connection

    def _release(self, connection: RespConnection) -> None:
        if connection.loop is self._loop and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close the idle connections (from any thread)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
