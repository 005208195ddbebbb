"""A Link to a KISS TNC over any byte stream, surviving the stream going away.

The transports (:mod:`relay.links.kiss.tcp`, :mod:`relay.links.kiss.serial`) only open, read,
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
import logging

from relay.errors import FramingError, LinkError, UsageError
from relay.links.base import Datagram
from relay.links.kiss import ax25
from relay.links.kiss.codec import Command, Decoder, command_frame, data_frame
from relay.links.kiss.options import KissOptions
from relay.links.kiss.profile import kiss_profile
from relay.links.stream import ReconnectingLink

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


class KissLink(ReconnectingLink):
    """Datagrams through a KISS TNC (see the module docstring)."""

    kind = "kiss"
    peer = "TNC"
    open_error = "unexpected error opening the TNC"
    ended = "stream ended"
    _log = log

    def __init__(self, url: str, transport: Transport, options: KissOptions) -> None:
        super().__init__(url, options.mtu, MAX_RX_QUEUE)
        self.transport = transport
        self.options = options
        self._profile = kiss_profile()
        self._decoder = Decoder(self._profile.max_frame, count=self.stats.bump, name=url)
        self._air_until = 0.0  # loop time when the TNC should have sent all it was given

    # -- sizes and time

    def frame_bytes(self, nbytes: int) -> int:
        """What the TNC transmits for a datagram of ``nbytes`` (AX.25 header included)."""
        return nbytes + self.options.header_bytes

    def airtime(self, nbytes: int) -> float:
        o = self.options
        txdelay = o.modem.txdelay_ms if o.txdelay_ms is None else o.txdelay_ms
        txtail = o.modem.txtail_ms if o.txtail_ms is None else o.txtail_ms
        return self._profile.airtime(self.frame_bytes(nbytes), o.modem, txdelay, txtail)

    # -- the Link interface (the rest is ReconnectingLink's)

    async def drain(self) -> None:
        """Wait until every queued datagram went to the TNC and its estimated airtime passed.

        While the TNC is unreachable this waits for it to come back (wrap it in a timeout)."""
        await super().drain()
        if self.closed or self._loop is None:
            return
        left = self._air_until - self._loop.time()
        if left > 0:
            await asyncio.sleep(left)

    # -- ReconnectingLink hooks

    def _tx_limit(self) -> int:
        return self.options.queue

    def _open_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError, LinkError)

    def _stream_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError, EOFError)

    def _unreachable(self, exc: BaseException) -> str:
        return self.transport.unreachable(exc)

    async def _open(self) -> Transport:
        await self.transport.open()
        return self.transport

    async def _disconnect(self, conn: object) -> None:
        await self.transport.close()
        self._decoder.reset()

    async def _release(self) -> None:
        await self.transport.close()

    def _check_size(self, data: bytes) -> None:
        super()._check_size(data)
        least = self._profile.min_frame
        if self.frame_bytes(len(data)) < least:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes is shorter than the {least}-byte minimum frame "
                f"KISS TNCs such as direwolf transmit; pad it or set a callsign (AX.25 framing)"
            )

    def _encode(self, data: bytes) -> bytes:
        o = self.options
        if o.callsign is not None:
            data = ax25.encode_ui(o.dest, o.callsign, data)
        return data_frame(data, o.port)

    # -- the connection

    async def _read_loop(self, conn: object) -> None:
        while True:
            chunk = await self.transport.read()
            if not chunk:
                raise EOFError("the TNC closed the connection")
            for frame in self._decoder.feed(chunk):
                self._on_frame(frame.command, frame.port, frame.payload)
            self._decoder.flush_garbage()

    async def _write_loop(self, conn: object) -> None:
        assert self._loop is not None
        for command, value in self.options.tnc_settings():
            await self.transport.write(command_frame(command, value, self.options.port))
        while True:
            await self._next_to_send()
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
            self._sent()

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
