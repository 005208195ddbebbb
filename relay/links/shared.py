"""One radio, several members: taps that share a link as if each were a radio of its own.

A gateway (``relay web``) runs one member per person on one physical link. Every tap hears
everything the radio hears, and what one tap sends goes out on the radio *and* reaches the
other taps at once, as it would reach their radios on the air (a grant sent by the gateway's
moderator must reach the browser speaker it names). A tap never hears its own datagrams,
like a half-duplex radio.
"""

from __future__ import annotations

import asyncio
import contextlib

from relay.errors import LinkError
from relay.links.base import Datagram, Inbox, Link

TAP_QUEUE = 512  # datagrams a slow tap may fall behind before its oldest are dropped


class SharedLink:
    """Owns ``link``; hands out :meth:`tap` links and pumps received datagrams into them."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._taps: list[_Tap] = []
        self._pump: asyncio.Task[None] | None = None
        self.closed = False

    def tap(self) -> Link:
        """A new member's view of the radio (closing it leaves the radio open)."""
        if self.closed:
            raise LinkError(f"{self.link.url} is closed")
        tap = _Tap(self)
        self._taps.append(tap)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run(), name="relay-shared")
        return tap

    @property
    def taps(self) -> int:
        return len(self._taps)

    async def _run(self) -> None:
        try:
            while True:
                dgram = await self.link.recv()
                for tap in list(self._taps):
                    tap.deliver(dgram)
        except LinkError as exc:
            for tap in list(self._taps):
                tap.inbox.fail(exc)

    def _sent(self, source: _Tap, data: bytes) -> None:
        dgram = Datagram(data, asyncio.get_running_loop().time())
        for tap in list(self._taps):
            if tap is not source:
                tap.deliver(dgram)

    def _drop(self, tap: _Tap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    async def close(self) -> None:
        """Close every tap and the radio."""
        self.closed = True
        for tap in list(self._taps):
            await tap.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError):
                await self._pump
        with contextlib.suppress(LinkError, OSError):
            await self.link.close()


class _Tap(Link):
    def __init__(self, shared: SharedLink) -> None:
        self._shared = shared
        base = shared.link
        self.url = base.url
        self.mtu = base.mtu
        self.stats = base.stats  # the radio's counters: what a member's health line shows
        self.inbox = Inbox(TAP_QUEUE)
        self.closed = False
        profile = getattr(base, "profile", None)
        if profile is None:
            profile = getattr(getattr(base, "ether", None), "profile", None)
        self.profile = profile

    def deliver(self, dgram: Datagram) -> None:
        if not self.closed:
            self.inbox.put(dgram)

    async def send(self, data: bytes) -> None:
        self._refuse_if_closed()
        self._check_size(data)
        await self._shared.link.send(data)
        self._shared._sent(self, data)

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        return await self.inbox.get(asyncio.get_running_loop())

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._shared._drop(self)
            self.inbox.fail(LinkError(f"{self.url} is closed"))

    def airtime(self, nbytes: int) -> float:
        return self._shared.link.airtime(nbytes)

    async def drain(self) -> None:
        await self._shared.link.drain()
