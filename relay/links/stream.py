"""The connection lifecycle shared by links that reconnect on their own (KISS, MQTT).

:class:`ReconnectingLink` owns the transmit queue, the receive inbox and one background task
per link that connects, serves the connection and reconnects with exponential backoff until
``close()``. The first connection failing raises LinkError from ``send``/``recv``/``connect``.
``send`` queues (bounded): while connected a full queue makes it wait (back-pressure); while
disconnected the oldest queued datagram is dropped, counted (``stats.dropped``,
``tx_dropped``) and logged. Subclasses say how to open and close a connection, how to read
and write on it, and what a datagram must look like.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections import deque

from relay.errors import LinkError, RelayError
from relay.links.base import Datagram, Inbox, Link, LinkStats


class ReconnectingLink(Link):
    """A link with a bounded transmit queue and a self-healing connection (see above)."""

    backoff_min = 0.2  # seconds before the first reconnect attempt
    backoff_max = 5.0
    kind: str  # names the background tasks: "<kind> <url>", "<kind> read <url>", ...
    peer: str  # what is at the other end, for log messages ("TNC", "broker")
    open_error = "unexpected error connecting"  # logged for a surprising connect failure
    ended = "connection ended"  # the reason when a session ends without an error
    settle_jitter = False  # randomise the pause after losing the connection
    _log: logging.Logger  # the subclass module's logger, so log names stay per link kind

    def __init__(self, url: str, mtu: int, rx_limit: int) -> None:
        self.url = url
        self.mtu = mtu
        self.stats = LinkStats()
        self.closed = False
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._txq: deque[bytes] = deque()
        self._tx_wake = asyncio.Event()
        self._writing = False
        self._room: list[asyncio.Future[None]] = []
        self._idle: list[asyncio.Future[None]] = []
        self._inbox = Inbox(rx_limit)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<{type(self).__name__} {self.url} {state}>"

    # -- hooks

    @abc.abstractmethod
    def _tx_limit(self) -> int:
        """How many datagrams ``send`` queues before it waits or drops."""

    @abc.abstractmethod
    def _open_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions an expected connect failure raises (others are logged as errors)."""

    @abc.abstractmethod
    def _stream_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions an expected loss of the connection raises (others are logged)."""

    @abc.abstractmethod
    def _unreachable(self, exc: BaseException) -> str:
        """The LinkError message when the first connect fails."""

    @abc.abstractmethod
    async def _open(self) -> object:
        """Open one connection and return it (raises when the peer cannot be reached)."""

    @abc.abstractmethod
    async def _disconnect(self, conn: object) -> None:
        """Close ``conn`` after its session ended (never raises)."""

    @abc.abstractmethod
    async def _read_loop(self, conn: object) -> None:
        """Receive from ``conn`` until it fails."""

    @abc.abstractmethod
    async def _write_loop(self, conn: object) -> None:
        """Send the queue over ``conn`` until it fails."""

    def _first_failure(self, exc: BaseException) -> RelayError:
        """What the first connect failing raises: LinkError (the peer cannot be reached);
        a driver may say UsageError instead when the user's settings are what is wrong."""
        return LinkError(self._unreachable(exc))

    async def _prepare(self, conn: object, first: asyncio.Future[None]) -> str | None:
        """Set up a fresh connection; a reason string ends the session before it starts."""
        return None

    async def _release(self) -> None:
        """Extra clean-up in ``close()`` once the background task is gone."""

    # -- queue views

    def queued(self) -> int:
        """Datagrams accepted by ``send`` and not yet delivered to the peer."""
        return len(self._txq)

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)

    # -- the Link interface

    async def connect(self) -> None:
        """Connect now (``send``/``recv`` do it on first use); LinkError if it fails."""
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise LinkError(f"{self.url} is in use by another event loop")
        self._loop = loop
        if self._task is None or self._task.done():
            self._first = loop.create_future()
            self._task = loop.create_task(self._run(self._first), name=f"{self.kind} {self.url}")
        assert self._first is not None
        await asyncio.shield(self._first)

    async def ready(self) -> None:
        """What ``relay link check`` awaits before probing: the link is connected."""
        await self.connect()

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        if self.closed:
            self.stats.refused += 1
            raise LinkError(f"{self.url} is closed")
        self._check_size(data)
        await self.connect()
        while len(self._txq) >= self._tx_limit():
            if not self.connected:
                self._drop_oldest()
                break
            await self._wait(self._room)
            if self.closed:
                self.stats.refused += 1
                raise LinkError(f"{self.url} is closed")
        if not self.connected:
            self.stats.bump("queued_while_down")
        self._txq.append(data)
        self._tx_wake.set()

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        if not self._inbox:
            await self.connect()
        assert self._loop is not None
        return await self._inbox.get(self._loop)

    async def drain(self) -> None:
        """Wait until every queued datagram was delivered.

        While the peer is unreachable this waits for it to come back (wrap it in a timeout)."""
        if self.closed or self._loop is None:
            return
        while (self._txq or self._writing) and not self.closed:
            await self._wait(self._idle)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._txq:
            self.stats.bump("discarded_on_close", len(self._txq))
            self._log.warning(
                "%s: closed with %d datagrams not yet sent; they are discarded",
                self.url,
                len(self._txq),
            )
            self._txq.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._release()
        self.connected = False
        self._inbox.clear()
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        wake(self._room)
        wake(self._idle)

    # -- helpers

    def _drop_oldest(self) -> None:
        self._txq.popleft()
        self.stats.dropped += 1
        self.stats.bump("tx_dropped")
        self._log.warning(
            "%s: %s unreachable and %d datagrams already queued; dropped the oldest "
            "(%d dropped so far)",
            self.url,
            self.peer,
            self._tx_limit(),
            self.stats.extra["tx_dropped"],
        )

    async def _wait(self, waiters: list[asyncio.Future[None]]) -> None:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)

    async def _next_to_send(self) -> None:
        """Wait until the transmit queue holds something."""
        while not self._txq:
            self._tx_wake.clear()
            await self._tx_wake.wait()

    def _sent(self) -> None:
        """Wake the senders waiting for room and, once the queue is empty, ``drain``."""
        wake(self._room)
        if not self._txq:
            wake(self._idle)

    # -- the connection

    async def _run(self, first: asyncio.Future[None]) -> None:
        """Connect, serve, and reconnect with backoff until closed."""
        delay = self.backoff_min
        down_since: float | None = None
        assert self._loop is not None
        while not self.closed:
            try:
                conn = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # expected failures, or a driver's surprise: never hang
                if not isinstance(exc, self._open_errors()):
                    self._log.error("%s: %s", self.url, self.open_error, exc_info=exc)
                if not first.done():
                    first.set_exception(self._first_failure(exc))
                    return
                self.stats.bump("reconnect_failures")
                self._log.info(
                    "%s: reconnect failed (%s); next try in %.1f s", self.url, exc, delay
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_min
            try:
                reason = await self._session(conn, first, down_since)
            finally:
                self.connected = False
                await self._disconnect(conn)
            if self.closed:
                return
            down_since = self._loop.time()
            self.stats.bump("disconnects")
            self._log.warning(
                "%s: lost the %s (%s); reconnecting, %d datagrams queued",
                self.url,
                self.peer,
                reason,
                len(self._txq),
            )
            jitter = random.uniform(0.8, 1.2) if self.settle_jitter else 1
            await asyncio.sleep(self.backoff_min * jitter)

    async def _session(
        self, conn: object, first: asyncio.Future[None], down_since: float | None
    ) -> str:
        """Serve one connection; return why it ended."""
        assert self._loop is not None
        failed = await self._prepare(conn, first)
        if failed is not None:
            return failed
        self.connected = True
        if not first.done():
            first.set_result(None)
        if down_since is not None:
            self.stats.bump("reconnects")
            self._log.warning(
                "%s: reconnected after %.1f s; %d queued datagrams follow",
                self.url,
                self._loop.time() - down_since,
                len(self._txq),
            )
        tasks = [
            asyncio.create_task(self._read_loop(conn), name=f"{self.kind} read {self.url}"),
            asyncio.create_task(self._write_loop(conn), name=f"{self.kind} write {self.url}"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            if isinstance(exc, self._stream_errors()):
                return str(exc) or type(exc).__name__
            if exc is not None:
                self._log.error("%s: unexpected error; reconnecting", self.url, exc_info=exc)
                return f"unexpected {type(exc).__name__}: {exc}"
        return self.ended


def wake(futures: list[asyncio.Future[None]]) -> None:
    """Resolve every future in ``futures`` (the waiters for room or for an empty queue)."""
    waiting = list(futures)
    futures.clear()
    for fut in waiting:
        if not fut.done():
            fut.set_result(None)
