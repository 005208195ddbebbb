"""One simulated LoRa channel shared by many processes: ``relay ether``.

:class:`EtherServer` hosts one :class:`relay.links.sim.Ether` on the real-time event loop and
lets radio nodes in other processes (terminals, test harnesses) join it over TCP. Every
connection is one node: after the HELLO/WELCOME handshake (:mod:`relay.links.sim.codec`) the
server attaches a :class:`~relay.links.sim.SimLink` for it and pumps frames both ways:

* DATA from the node -> ``link.send()``, answered by ACK (or NACK with the reason) once the
  datagram is in the node's transmit queue — the node waits for that answer, so the channel's
  back-pressure reaches it;
* ``link.recv()`` -> DATA to the node.

A node that breaks the protocol is logged, counted (``stats.garbage``) and disconnected; a
node that vanishes (even in the middle of a frame) just leaves. Neither affects the others.
The channel itself keeps its physics: airtime, half duplex, collisions, loss, duty cycle.

The server binds 127.0.0.1 by default. The channel carries sealed packets only, but anyone
who can connect can listen and transmit, as on a real radio channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass

from relay.errors import DutyCycleExceeded, FramingError, LinkError, UsageError
from relay.links.sim.channel import Ether, GilbertElliott, SimLink
from relay.links.sim.codec import (
    NODE_TO_ETHER,
    PROTOCOL_VERSION,
    Ack,
    ChannelInfo,
    Data,
    Decoder,
    Drain,
    Drained,
    Error,
    Hello,
    Message,
    Nack,
    NackKind,
    Welcome,
    encode,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7300
HELLO_TIMEOUT = 5.0  # seconds a new connection has to introduce itself
MAX_INFLIGHT = 16  # DATA/DRAIN frames a node may send ahead of the answers (it should wait)
_READ_SIZE = 4096

log = logging.getLogger("relay.ether")


@dataclass(slots=True)
class ServerStats:
    """What the server did with its connections (the channel's own stats are ``ether.stats``)."""

    connections: int = 0  # accepted, ever
    active: int = 0  # nodes attached right now
    garbage: int = 0  # connections dropped for breaking the protocol
    refused: int = 0  # handshakes refused (protocol version, node name taken)
    cut_off: int = 0  # nodes that disconnected in the middle of a frame
    datagrams_in: int = 0  # DATA accepted from nodes onto the channel
    datagrams_out: int = 0  # DATA forwarded to nodes


class _Conn:
    """One TCP connection; writes are serialised so frames never interleave."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder(NODE_TO_ETHER)
        self.lock = asyncio.Lock()
        peer = writer.get_extra_info("peername")
        self.label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.name: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.label})" if self.name else self.label

    async def send(self, msg: Message) -> None:
        async with self.lock:
            self.writer.write(encode(msg))
            await self.writer.drain()

    def send_nowait(self, msg: Message) -> None:
        """Best effort, for goodbyes: never raises."""
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(encode(msg))


class _Ended(Exception):
    """The node's stream ended cleanly."""


class EtherServer:
    """Serve one :class:`Ether` to nodes over TCP.

    >>> server = EtherServer(Ether(preset("SHORT_FAST")), port=0)   # doctest: +SKIP
    >>> await server.start(); server.url                            # doctest: +SKIP
    'sim://127.0.0.1:40123'
    """

    def __init__(
        self,
        ether: Ether | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise UsageError(f"port must be 0..65535 (0: any free port), got {port!r}")
        self.ether = ether if ether is not None else Ether(name="ether")
        self.host = host
        self.port = port
        self.hello_timeout = hello_timeout
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._closing = False

    # -- lifecycle

    @property
    def url(self) -> str:
        """The URL nodes open to join this channel."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sim://{host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Bind and start accepting nodes (``port=0`` picks a free port: read ``.port``)."""
        if self._server is not None:
            raise UsageError("this ether server is already started")
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                f"is another ether running there? pick another with --port"
            ) from None
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.debug("listening on %s:%d (%s)", self.host, self.port, self.ether.profile.name)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting, tell every node the ether is going away, disconnect them."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.send_nowait(Error("the ether is shutting down"))
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        log.debug("stopped")

    async def __aenter__(self) -> EtherServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what nodes are told

    def channel_info(self, link: SimLink) -> ChannelInfo:
        ether = self.ether
        model = ether.loss
        burst = 1.0 / model.p_bad_to_good if isinstance(model, GilbertElliott) else None
        if isinstance(model, GilbertElliott) and model.p_bad_to_good == 0:
            burst = None
        return ChannelInfo(
            profile=ether.profile,
            node=link.name,
            channel=ether.name,
            duty_cycle=ether.duty_cycle,
            duty_policy=ether.duty_policy,
            duty_window=ether.duty_window,
            loss=model.mean_loss,
            burst=burst,
            seed=ether.seed,
            queue_size=link._queue_size,
            lbt=bool(getattr(ether, "lbt", False)),
        )

    def summary(self) -> dict[str, float]:
        """Channel and server counters in one flat dict (for ``--verbose`` and tests)."""
        out: dict[str, float] = {"nodes": len(self.ether.nodes)}
        out.update(asdict(self.ether.stats))
        out.update({f"server_{k}": v for k, v in asdict(self.stats).items()})
        out["occupancy"] = self.ether.occupancy() if self.ether.stats.transmissions else 0.0
        return out

    # -- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.close()
            return
        self._conns[task] = conn
        self.stats.connections += 1
        link: SimLink | None = None
        try:
            hello = await asyncio.wait_for(self._read_hello(conn), self.hello_timeout)
            if hello is None:
                log.debug("%s connected and left without a word", conn)
                return
            link = self._attach(conn, hello)
            if link is None:
                return
            await conn.send(Welcome(self.channel_info(link)))
            self.stats.active += 1
            log.info("node %s joined (%d on the channel)", conn, len(self.ether.nodes))
            await self._pump(conn, link)
        except _Ended:
            pass
        except FramingError as exc:
            self._drop(conn, str(exc))
        except TimeoutError:
            self.stats.garbage += 1
            log.warning("dropped %s: no HELLO within %g s", conn, self.hello_timeout)
            conn.send_nowait(Error("no HELLO in time"))
        except (ConnectionError, OSError) as exc:
            log.info("node %s: connection lost (%s)", conn, exc)
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception:  # pragma: no cover - a bug here must not take the channel down
            log.exception("node %s: unexpected error; dropped", conn)
        finally:
            if link is not None:
                self.stats.active -= 1
                if not link.closed:
                    await link.close()
                log.info("node %s left (%d on the channel)", conn, len(self.ether.nodes))
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            self._conns.pop(task, None)

    def _drop(self, conn: _Conn, why: str) -> None:
        self.stats.garbage += 1
        log.warning("dropped %s: protocol error: %s", conn, why)
        conn.send_nowait(Error(f"protocol error: {why}"))

    async def _read_hello(self, conn: _Conn) -> Hello | None:
        while True:
            chunk = await conn.reader.read(_READ_SIZE)
            if not chunk:
                conn.decoder.eof()  # mid-frame: FramingError
                return None
            msgs = conn.decoder.feed(chunk)
            if not msgs:
                continue
            first, rest = msgs[0], msgs[1:]
            if not isinstance(first, Hello):
                raise FramingError(f"expected HELLO first, got {type(first).__name__.upper()}")
            if rest:  # a node must wait for WELCOME before sending anything else
                raise FramingError("frames after HELLO before WELCOME")
            return first

    def _attach(self, conn: _Conn, hello: Hello) -> SimLink | None:
        if hello.version != PROTOCOL_VERSION:
            why = (
                f"protocol version {hello.version} is not supported "
                f"(this ether speaks {PROTOCOL_VERSION}); use the same relay version"
            )
        else:
            try:
                link = self.ether.attach(hello.name or None, queue_size=hello.queue_size or None)
            except UsageError as exc:
                why = str(exc)
            else:
                conn.name = link.name
                return link
        self.stats.refused += 1
        log.warning("refused %s: %s", conn, why)
        conn.send_nowait(Error(why))
        return None

    async def _pump(self, conn: _Conn, link: SimLink) -> None:
        inbox: asyncio.Queue[Data | Drain] = asyncio.Queue(maxsize=MAX_INFLIGHT)

        async def read() -> None:
            while True:
                chunk = await conn.reader.read(_READ_SIZE)
                if not chunk:
                    try:
                        conn.decoder.eof()
                    except FramingError as exc:
                        self.stats.cut_off += 1
                        log.info("node %s disconnected mid-frame (%s)", conn, exc)
                    raise _Ended
                for msg in conn.decoder.feed(chunk):
                    if not isinstance(msg, Data | Drain):
                        raise FramingError(f"unexpected {type(msg).__name__.upper()}")
                    try:
                        inbox.put_nowait(msg)
                    except asyncio.QueueFull:
                        raise FramingError(
                            f"more than {MAX_INFLIGHT} frames sent without waiting for answers"
                        ) from None

        async def transmit() -> None:
            while True:
                msg = await inbox.get()
                reply: Message
                if isinstance(msg, Drain):
                    await link.drain()
                    reply = Drained()
                else:
                    try:
                        await link.send(msg.data)
                    except DutyCycleExceeded as exc:
                        reply = Nack(NackKind.DUTY_CYCLE, str(exc))
                    except UsageError as exc:
                        reply = Nack(NackKind.USAGE, str(exc))
                    except LinkError as exc:
                        reply = Nack(NackKind.LINK, str(exc))
                    else:
                        reply = Ack()
                        self.stats.datagrams_in += 1
                await conn.send(reply)

        async def forward() -> None:
            while True:
                datagram = await link.recv()
                await conn.send(Data(datagram.data))
                self.stats.datagrams_out += 1

        tasks = [asyncio.create_task(f()) for f in (read, transmit, forward)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # re-raise what ended the connection
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
