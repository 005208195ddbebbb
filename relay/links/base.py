"""The one interface every link implements: simulated channel, radios, MQTT.

A link moves opaque datagrams (already sealed packets). It knows its MTU and, for radios,
how long a datagram of a given size occupies the air, so the planner and the runtime can
budget airtime without knowing which radio is behind it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field


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
