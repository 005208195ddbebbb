"""A Link to a KISS TNC over any byte stream, surviving the stream going away.

The transports (:mod:`relay.links.kiss_tcp`, :mod:`relay.links.kiss_serial`) only open, read,
write and close bytes; everything else is here, once:

* **Connect.** The first ``send``/``recv``/``connect`` opens the stream; if the TNC cannot be
  reached then, that call raises LinkError with a hint. After that, a lost stream (EOF, reset,
  unplugged device) is retried with exponential backoff until ``close()``, and the TNC
  parameters from the URL are sent again after each connect (a restarted TNC forgot them).
* **Nothing silently lost.** ``send`` queues (bounded). While connected, a full queue makes
  ``send`` wait (back-pressure). While disconnected, the queue keeps filling and, when full,
  the oldest datagram is dropped, counted (``stats.dropped``, ``tx_dropped``) and logged. A
  frame whose write failed stays queued and goes out after reconnecting. The only
  unknowable loss is a frame the OS accepted in the instant the TNC died: KISS has no
  acknowledgements (the room layer's replay window absorbs the resulting duplicates too).
* **Pacing.** The TNC transmits at the modem's rate and queues the rest, so the writer keeps at
  most ``lead`` seconds of estimated airtime inside the TNC and the queue here, where it is
  counted, holds the rest. ``drain`` waits until the estimated airtime has passed.
* **Garbage** from the TNC is skipped and counted by the KISS decoder; frames for other TNC
  ports (``other_port``), command frames (``not_data``), frames shorter than any TNC
  transmits (``runt``) and, with a callsign, frames that are not AX.25 UI (``not_ax25_ui``)
  are dropped and counted too.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections import deque

from relay.errors import FramingError, LinkError, UsageError
from relay.links import ax25
from relay.links.base import Datagram, Inbox, Link, LinkStats
from relay.links.kiss import Command, Decoder, command_frame, data_frame
from relay.links.kiss_options import KissOptions
from relay.links.kiss_profile import kiss_profile

log = logging.getLogger(__name__)

MAX_RX_QUEUE = 1024


class Transport(abc.ABC):
    """A byte stream to a TNC. ``read`` returns b"" or raises OSError when it is gone."""

    name: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the stream; raise OSError (or LinkError) if the TNC cannot be reached."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Some bytes from the TNC, waiting for at least one; b"" at end of stream."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Hand ``data`` to the OS; raise OSError if the stream is gone."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the stream (idempotent, never raises)."""

    def unreachable(self, exc: BaseException) -> str:
        """The message for a TNC that cannot be reached at the first connect."""
        return f"cannot reach the KISS TNC at {self.name}: {exc}"


class KissLink(Link):
    """Datagrams through a KISS TNC (see the module docstring)."""

    backoff_min = 0.2  # seconds before the first reconnect attempt
    backoff_max = 5.0

    def __init__(self, url: str, transport: Transport, options: KissOptions) -> None:
        self.url = url
        self.transport = transport
        self.options = options
        self.mtu = options.mtu
        self.stats = LinkStats()
        self.closed = False
        self.connected = False
        self._profile = kiss_profile()
        self._decoder = Decoder(self._profile.max_frame, count=self.stats.bump, name=url)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._txq: deque[bytes] = deque()
        self._tx_wake = asyncio.Event()
        self._writing = False
        self._room: list[asyncio.Future[None]] = []
        self._idle: list[asyncio.Future[None]] = []
        self._inbox = Inbox(MAX_RX_QUEUE)
        self._air_until = 0.0  # loop time when the TNC should have sent all it was given

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<{type(self).__name__} {self.url} {state}>"

    # -- sizes and time

    def frame_bytes(self, nbytes: int) -> int:
        """What the TNC transmits for a datagram of ``nbytes`` (AX.25 header included)."""
        return nbytes + self.options.header_bytes

    def airtime(self, nbytes: int) -> float:
        o = self.options
        txdelay = o.modem.txdelay_ms if o.txdelay_ms is None else o.txdelay_ms
        txtail = o.modem.txtail_ms if o.txtail_ms is None else o.txtail_ms
        return self._profile.airtime(self.frame_bytes(nbytes), o.modem, txdelay, txtail)

    def queued(self) -> int:
        """Datagrams accepted by ``send`` and not yet handed to the TNC."""
        return len(self._txq)

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)

    # -- the Link interface

    async def connect(self) -> None:
        """Open the stream now (``send``/``recv`` do it on first use); LinkError if it fails."""
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise LinkError(f"{self.url} is in use by another event loop")
        self._loop = loop
        if self._task is None or self._task.done():
            self._first = loop.create_future()
            self._task = loop.create_task(self._run(self._first), name=f"kiss {self.url}")
        assert self._first is not None
        await asyncio.shield(self._first)

    async def ready(self) -> None:
        """What ``relay link check`` awaits before probing: the stream is open."""
        await self.connect()

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        if self.closed:
            self.stats.refused += 1
            raise LinkError(f"{self.url} is closed")
        self._check_size(data)
        await self.connect()
        while len(self._txq) >= self.options.queue:
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
        """Wait until every queued datagram went to the TNC and its estimated airtime passed.

        While the TNC is unreachable this waits for it to come back (wrap it in a timeout)."""
        if self.closed or self._loop is None:
            return
        while (self._txq or self._writing) and not self.closed:
            await self._wait(self._idle)
        if self.closed:
            return
        left = self._air_until - self._loop.time()
        if left > 0:
            await asyncio.sleep(left)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._txq:
            self.stats.bump("discarded_on_close", len(self._txq))
            log.warning(
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
        await self.transport.close()
        self.connected = False
        self._inbox.clear()
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        _wake(self._room)
        _wake(self._idle)

    # -- sending helpers

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.mtu:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes exceeds the link MTU of {self.mtu} bytes "
                f"({self.url})"
            )
        least = self._profile.min_frame
        if self.frame_bytes(len(data)) < least:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes is shorter than the {least}-byte minimum frame "
                f"KISS TNCs such as direwolf transmit; pad it or set a callsign (AX.25 framing)"
            )

    def _drop_oldest(self) -> None:
        self._txq.popleft()
        self.stats.dropped += 1
        self.stats.bump("tx_dropped")
        log.warning(
            "%s: TNC unreachable and %d datagrams already queued; dropped the oldest "
            "(%d dropped so far)",
            self.url,
            self.options.queue,
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

    def _encode(self, data: bytes) -> bytes:
        o = self.options
        if o.callsign is not None:
            data = ax25.encode_ui(o.dest, o.callsign, data)
        return data_frame(data, o.port)

    # -- the connection

    async def _run(self, first: asyncio.Future[None]) -> None:
        """Connect, serve, and reconnect with backoff until closed."""
        delay = self.backoff_min
        down_since: float | None = None
        assert self._loop is not None
        while not self.closed:
            try:
                await self.transport.open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # OSError, LinkError, or a driver's surprise: never hang
                if not isinstance(exc, OSError | LinkError):
                    log.error("%s: unexpected error opening the TNC", self.url, exc_info=exc)
                if not first.done():
                    first.set_exception(LinkError(self.transport.unreachable(exc)))
                    return
                self.stats.bump("reconnect_failures")
                log.info("%s: reconnect failed (%s); next try in %.1f s", self.url, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_min
            if not first.done():
                first.set_result(None)
            if down_since is not None:
                self.stats.bump("reconnects")
                log.warning(
                    "%s: reconnected after %.1f s; %d queued datagrams follow",
                    self.url,
                    self._loop.time() - down_since,
                    len(self._txq),
                )
            self.connected = True
            reason = await self._session()
            self.connected = False
            await self.transport.close()
            self._decoder.reset()
            if self.closed:
                return
            down_since = self._loop.time()
            self.stats.bump("disconnects")
            log.warning(
                "%s: lost the TNC (%s); reconnecting, %d datagrams queued",
                self.url,
                reason,
                len(self._txq),
            )
            await asyncio.sleep(self.backoff_min)

    async def _session(self) -> str:
        """Serve one open stream; return why it ended."""
        tasks = [
            asyncio.create_task(self._read_loop(), name=f"kiss read {self.url}"),
            asyncio.create_task(self._write_loop(), name=f"kiss write {self.url}"),
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
            if isinstance(exc, OSError | EOFError):
                return str(exc) or type(exc).__name__
            if exc is not None:
                log.error("%s: unexpected error; reconnecting", self.url, exc_info=exc)
                return f"unexpected {type(exc).__name__}: {exc}"
        return "stream ended"

    async def _read_loop(self) -> None:
        while True:
            chunk = await self.transport.read()
            if not chunk:
                raise EOFError("the TNC closed the connection")
            for frame in self._decoder.feed(chunk):
                self._on_frame(frame.command, frame.port, frame.payload)
            self._decoder.flush_garbage()

    async def _write_loop(self) -> None:
        assert self._loop is not None
        for command, value in self.options.tnc_settings():
            await self.transport.write(command_frame(command, value, self.options.port))
        while True:
            while not self._txq:
                self._tx_wake.clear()
                await self._tx_wake.wait()
            wait = self._air_until - self._loop.time() - self.options.lead_s
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # look again: the queue may have changed meanwhile
            data = self._txq[0]
            self._writing = True
            try:
                await self.transport.write(self._encode(data))
            finally:
                self._writing = False
            self._txq.popleft()  # only now: a failed write leaves it queued for the retry
            airtime = self.airtime(len(data))
            self._air_until = max(self._air_until, self._loop.time()) + airtime
            self.stats.sent += 1
            self.stats.bytes_sent += len(data)
            self.stats.airtime_s += airtime
            _wake(self._room)
            if not self._txq:
                _wake(self._idle)

    # -- receiving

    def _on_frame(self, command: Command, port: int, payload: bytes) -> None:
        if command is not Command.DATA:
            self.stats.bump("not_data")
            log.warning("%s: ignored a KISS %s frame from the TNC", self.url, command.name)
            return
        if port != self.options.port:
            self.stats.bump("other_port")
            return
        if len(payload) < self._profile.min_frame:  # no TNC sends these on air: line noise
            self.stats.bump("runt")
            log.warning("%s: dropped a %d-byte frame, too short to be real", self.url, len(payload))
            return
        if self.options.callsign is not None:
            try:
                payload = ax25.decode_ui(payload).info
            except FramingError as exc:
                self.stats.bump("not_ax25_ui")
                log.warning("%s: dropped a frame: %s", self.url, exc)
                return
        assert self._loop is not None
        self.stats.received += 1
        if self._inbox.put(Datagram(payload, self._loop.time())):
            self.stats.bump("rx_overflow")
            log.warning("%s: nobody is reading; dropped the oldest received datagram", self.url)


def _wake(futures: list[asyncio.Future[None]]) -> None:
    waiting = list(futures)
    futures.clear()
    for fut in waiting:
        if not fut.done():
            fut.set_result(None)
