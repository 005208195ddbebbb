"""The one interface every link implements: simulated channel, radios, MQTT.

A link moves opaque datagrams (already sealed packets). It knows its MTU and, for radios,
how long a datagram of a given size occupies the air, so the planner and the runtime can
budget airtime without knowing which radio is behind it.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.errors import LinkError, UsageError


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram as it came off a link."""

    data: bytes
    time: float  # event-loop time of arrival (virtual or real seconds)
    rssi: float | None = None
    snr: float | None = None


@dataclass(slots=True)
class LinkStats:
    """Counters a link keeps; what a user reads to see what the channel did."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    airtime_s: float = 0.0
    refused: int = 0  # duty cycle / MTU / closed
    dropped: int = 0  # lost on the channel as seen by this end (when known)
    extra: dict[str, int] = field(default_factory=dict)

    def bump(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n


class Inbox:
    """A link's receive queue: datagrams that arrived, and the ``recv`` calls waiting for one.

    A datagram goes to the oldest receiver still waiting, else into the queue (which, with
    ``limit``, drops its oldest datagram to make room). A receiver cancelled after it was
    handed a datagram gives it back, so cancelling ``recv`` never loses one.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._queue: deque[Datagram] = deque()
        self._waiters: deque[asyncio.Future[Datagram]] = deque()

    def __len__(self) -> int:
        """Datagrams queued and not yet taken."""
        return len(self._queue)

    def put(self, dgram: Datagram) -> bool:
        """Deliver one datagram; True when the queue was full and its oldest was dropped."""
        if self._hand_over(dgram):
            return False
        dropped = self.limit is not None and len(self._queue) >= self.limit
        if dropped:
            self._queue.popleft()
        self._queue.append(dgram)
        return dropped

    def get_nowait(self) -> Datagram:
        """The oldest queued datagram; IndexError when none is queued."""
        return self._queue.popleft()

    async def get(self, loop: asyncio.AbstractEventLoop) -> Datagram:
        """The oldest queued datagram, else wait (on ``loop``) for the next one to arrive."""
        if self._queue:
            return self._queue.popleft()
        fut: asyncio.Future[Datagram] = loop.create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give_back(fut.result())  # handed a datagram, then cancelled
            raise

    def fail(self, exc: BaseException) -> None:
        """Wake every waiting receiver with ``exc`` (queued datagrams stay queued)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def clear(self) -> None:
        """Drop every queued datagram."""
        self._queue.clear()

    def forget_waiters(self) -> None:
        """Drop the waiting receivers without waking them (their event loop is gone)."""
        self._waiters.clear()

    def _hand_over(self, dgram: Datagram) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(dgram)
                return True
        return False

    def _give_back(self, dgram: Datagram) -> None:
        if not self._hand_over(dgram):
            self._queue.appendleft(dgram)


class Link(abc.ABC):
    """An async datagram link.

    ``send`` returns once the link has accepted the datagram (it may wait for room in the
    transmit queue: that is the link's back-pressure); ``recv`` waits for the next datagram.
    """

    url: str
    mtu: int
    stats: LinkStats

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Queue one datagram for transmission. Raises UsageError if it exceeds the MTU."""

    @abc.abstractmethod
    async def recv(self) -> Datagram:
        """Wait for the next datagram. Raises LinkError once the link is closed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the link; pending receivers get LinkError."""

    def _refuse_if_closed(self) -> None:
        """LinkError (counted as refused) once the link is closed."""
        if getattr(self, "closed", False):
            self.stats.refused += 1
            raise LinkError(f"{self.url} is closed")

    def _check_size(self, data: bytes, where: str | None = None) -> None:
        """UsageError (counted as refused) for a datagram the link cannot carry."""
        if len(data) > self.mtu:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes exceeds the link MTU of {self.mtu} bytes "
                f"({where or self.url})"
            )

    def airtime(self, nbytes: int) -> float:
        """Seconds the channel is occupied by one datagram of ``nbytes`` (0 for wired links)."""
        return 0.0

    async def drain(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Wait until everything queued has left the link (default: nothing is queued)."""

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


LinkFactory = Callable[[str], Link]
