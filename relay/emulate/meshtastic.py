"""Fake Meshtastic nodes on a simulated mesh, reachable by the real client library.

Each :class:`FakeNode` speaks the firmware's stream API (framed ``ToRadio`` / ``FromRadio``
protobufs) to clients on a TCP port (like a WiFi node on 4403) or a pseudo-terminal (like a
USB node at 115200 baud). A packet a client hands its node goes into that node's transmit
queue, then over a :class:`relay.links.sim.Ether` (airtime, loss, collisions, half duplex,
in real time) and comes out of every other node as ``FromRadio.packet`` to their clients.

Scope: one hop (every node hears every other), one channel table, no encryption, no routing
or acknowledgements; enough for the real library and relay's links to run unchanged. Nothing
a client sends can crash a node: junk is skipped and counted (:meth:`MeshEmulator.summary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from meshtastic.protobuf import mesh_pb2

from relay.emulate.meshtastic_air import (
    DATA_PAYLOAD_LEN,
    Identity,
    decode_air,
    encode_air,
    handshake,
    parse_to_radio,
    queue_status,
)
from relay.emulate.meshtastic_stream import STALE, StreamCounters, StreamDecoder, frame
from relay.emulate.pty import PtyPort
from relay.errors import UsageError
from relay.links.sim.channel import Ether, SimLink
from relay.radio.profiles import preset as lookup_preset

log = logging.getLogger(__name__)

NODE_BASE = 0x5E1A0000  # node numbers: NODE_BASE + 1, + 2, ...
TX_QUEUE = 16  # the firmware's MAX_TX_QUEUE: what queueStatus advertises
TX_HARD_LIMIT = 2 * TX_QUEUE  # room for packets a client wrote before it saw free=0
ERRNO_UNKNOWN = 32  # firmware ErrorCode for a refused packet
MAX_CLIENT_BACKLOG = 256 * 1024  # bytes queued to a client that does not read


@dataclass(slots=True)
class EmulatorStats:
    """What the emulated mesh did; junk on the streams is in :class:`StreamCounters`."""

    sessions: int = 0  # want_config handshakes answered
    packets_in: int = 0  # packets clients handed to their node
    packets_out: int = 0  # packets delivered to clients
    queue_full: int = 0  # packets refused: transmit queue full
    refused: int = 0  # packets refused: no decoded payload or payload too big
    to_local: int = 0  # packets for the node itself (admin requests): not relayed
    no_client: int = 0  # packets a node heard while no client was connected
    client_backlog: int = 0  # frames dropped because a client stopped reading
    dropped_on_stop: int = 0  # packets waiting in a transmit queue when the node stopped
    other: int = 0  # ToRadio messages the emulator ignores (xmodem, MQTT proxy)


class _Session:
    """One client conversation on a TCP connection or a pty."""

    def __init__(self, node: FakeNode, write: Callable[[bytes], None], name: str) -> None:
        self.node = node
        self.name = name
        self._write = write
        self.decoder = StreamDecoder(parse_to_radio, node.mesh.counters)
        self.configured = False
        self.backlog: Callable[[], int] = lambda: 0
        self._expiry: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self._handle(lambda now: self.decoder.feed(data, now))

    def _expire(self) -> None:
        self._expiry = None
        self._handle(self.decoder.expire)

    def ended(self) -> None:
        """The client went away: frames buried behind a cut-off one are still handled."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._handle(lambda now: self.decoder.close())

    def _handle(self, step: Callable[[float], list[mesh_pb2.ToRadio]]) -> None:
        c = self.decoder.counters
        junk = (c.garbage_bytes, c.bad_frames, c.oversize, c.truncated)
        loop = asyncio.get_running_loop()
        for msg in step(loop.time()):
            self.node.handle(self, msg)
        if self.decoder.pending and self._expiry is None:
            self._expiry = loop.call_later(STALE, self._expire)
        if (c.garbage_bytes, c.bad_frames, c.oversize, c.truncated) != junk:
            log.info(
                "%s: skipped junk from %s (mesh totals: %d garbage bytes, %d bad frames)",
                self.node.ident.user_id,
                self.name,
                c.garbage_bytes,
                c.bad_frames + c.oversize + c.truncated,
            )

    def send(self, msg: mesh_pb2.FromRadio) -> None:
        if self.backlog() > MAX_CLIENT_BACKLOG:
            self.node.mesh.stats.client_backlog += 1
            return
        self._write(frame(msg.SerializeToString()))


class FakeNode:
    """One emulated radio: an identity, a transmit queue and a place on the simulated air."""

    def __init__(self, mesh: MeshEmulator, index: int, link: SimLink) -> None:
        self.mesh = mesh
        self.index = index
        self.ident = Identity(NODE_BASE + index + 1, f"relay emulated {index}", f"E{index}")
        self.link = link
        self.sessions: set[_Session] = set()
        self._txq: deque[bytes] = deque()
        self._tx_ready = asyncio.Event()
        self._in_flight = False
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._ptys: list[PtyPort] = []

    @property
    def free(self) -> int:
        return TX_QUEUE - len(self._txq) - int(self._in_flight)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._transmit()),
                asyncio.create_task(self._receive()),
            ]

    # -- serving clients

    async def serve_tcp(self, host: str, port: int) -> int:
        server = await asyncio.start_server(self._tcp_client, host, port)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def serve_pty(self, link: str | None = None) -> str:
        session: _Session | None = None
        port = PtyPort(lambda data: session.data_received(data) if session else None, link=link)
        session = _Session(self, port.write, f"pty {port.path}")
        session.backlog = lambda: port.backlog
        port.start()
        self._ptys.append(port)
        self.sessions.add(session)
        return port.device

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")

        def write(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        session = _Session(self, write, f"tcp {peer}")
        session.backlog = writer.transport.get_write_buffer_size
        self.sessions.add(session)
        self._writers.add(writer)
        try:
            while data := await reader.read(4096):
                session.data_received(data)
        except (ConnectionError, OSError) as exc:
            log.info("%s: client %s dropped: %s", self.ident.user_id, peer, exc)
        finally:
            session.ended()
            self.sessions.discard(session)
            self._writers.discard(writer)
            writer.close()

    async def stop_serving(self) -> None:
        """The device goes away: listeners, connections and ptys close; queued packets drop."""
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for port in self._ptys:
            port.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._ptys.clear()
        self.sessions.clear()
        if self._txq:
            log.info("%s: %d queued packets dropped on stop", self.ident.user_id, len(self._txq))
            self.mesh.stats.dropped_on_stop += len(self._txq)
            self._txq.clear()

    async def close(self) -> None:
        await self.stop_serving()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.link.close()

    # -- the stream API

    def handle(self, session: _Session, msg: mesh_pb2.ToRadio) -> None:
        kind = msg.WhichOneof("payload_variant")
        if kind == "want_config_id":
            self.mesh.stats.sessions += 1
            others = [n.ident for n in self.mesh.nodes if n is not self]
            for reply in handshake(self.ident, others, self.mesh.preset, msg.want_config_id):
                session.send(reply)
            session.send(queue_status(self.free, TX_QUEUE))
            session.configured = True
        elif kind == "packet":
            self._from_client(session, msg.packet)
        elif kind == "heartbeat":
            session.send(queue_status(self.free, TX_QUEUE))
        elif kind == "disconnect":
            session.configured = False
        else:
            self.mesh.stats.other += 1

    def _from_client(self, session: _Session, pkt: mesh_pb2.MeshPacket) -> None:
        stats = self.mesh.stats
        if not pkt.HasField("decoded") or len(pkt.decoded.payload) > DATA_PAYLOAD_LEN:
            stats.refused += 1
            session.send(queue_status(self.free, TX_QUEUE, pkt.id, ERRNO_UNKNOWN))
            return
        if pkt.to == self.ident.num:
            stats.to_local += 1
            session.send(queue_status(self.free, TX_QUEUE, pkt.id))
            return
        if len(self._txq) >= TX_HARD_LIMIT:
            stats.queue_full += 1
            log.warning("%s: transmit queue full, packet %08x refused", self.ident.user_id, pkt.id)
            session.send(queue_status(0, TX_QUEUE, pkt.id, ERRNO_UNKNOWN))
            return
        self._txq.append(encode_air(pkt, self.ident.num))
        self._tx_ready.set()
        stats.packets_in += 1
        session.send(queue_status(self.free, TX_QUEUE, pkt.id))

    # -- the air

    async def _transmit(self) -> None:
        while True:
            while not self._txq:
                self._tx_ready.clear()
                await self._tx_ready.wait()
            air = self._txq.popleft()
            self._in_flight = True
            try:
                await self.link.send(air)
                await self.link.drain()
            finally:
                self._in_flight = False
            for session in list(self.sessions):
                if session.configured:
                    session.send(queue_status(self.free, TX_QUEUE))

    async def _receive(self) -> None:
        while True:
            dgram = await self.link.recv()
            try:
                pkt = decode_air(dgram.data)
            except Exception as exc:  # junk on the simulated air: count and go on
                self.mesh.counters.bad_frames += 1
                log.warning("%s: undecodable transmission skipped: %s", self.ident.user_id, exc)
                continue
            if pkt.to not in (0xFFFFFFFF, self.ident.num):
                continue
            listeners = [s for s in self.sessions if s.configured]
            if not listeners:
                self.mesh.stats.no_client += 1
            for session in listeners:
                session.send(mesh_pb2.FromRadio(packet=pkt))
                self.mesh.stats.packets_out += 1

    def inject(self, data: bytes) -> None:
        """Write raw bytes to every client of this node (fault tests: line noise)."""
        for session in self.sessions:
            session._write(data)


class MeshEmulator:
    """Several fake nodes sharing one simulated LoRa channel.

    Listen before talk is on by default: Meshtastic firmware waits for a clear channel
    (with a random contention window) before it transmits.
    """

    def __init__(
        self,
        nodes: int = 2,
        *,
        preset: str = "LONG_FAST",
        loss: float = 0.0,
        burst: float | None = None,
        seed: int | None = 0,
        lbt: bool = True,
    ) -> None:
        if not 1 <= nodes <= 64:
            raise UsageError(f"--nodes must be 1..64, got {nodes}")
        profile = lookup_preset(preset)
        self.preset = profile.name
        # The air frames carry the real Meshtastic header and Data protobuf: no extra overhead.
        air = dataclasses.replace(profile, mtu=255, link_overhead_bytes=0)
        self.ether = Ether(air, loss=loss, burst=burst, seed=seed, name="meshtastic", lbt=lbt)
        self.stats = EmulatorStats()
        self.counters = StreamCounters()
        self.nodes = [
            FakeNode(self, i, self.ether.attach(f"node{i}", queue_size=1)) for i in range(nodes)
        ]

    def node(self, index: int) -> FakeNode:
        if not 0 <= index < len(self.nodes):
            raise UsageError(f"no emulated node {index} (there are {len(self.nodes)})")
        return self.nodes[index]

    async def serve_tcp(self, index: int, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve node ``index`` on a TCP port (0: any free port); returns the port."""
        node = self.node(index)
        node.start()
        return await node.serve_tcp(host, port)

    async def serve_pty(self, index: int, link: str | None = None) -> str:
        """Serve node ``index`` on a new pty; returns the device path to open."""
        node = self.node(index)
        node.start()
        return node.serve_pty(link)

    async def stop_node(self, index: int) -> None:
        """Unplug node ``index``: its clients lose the connection."""
        await self.node(index).stop_serving()

    def inject(self, index: int, data: bytes) -> None:
        self.node(index).inject(data)

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()

    def summary(self) -> dict[str, float]:
        """Every counter of the mesh, the streams and the simulated channel, flat."""
        out: dict[str, float] = {}
        out.update(dataclasses.asdict(self.stats))
        out.update({f"stream_{k}": v for k, v in dataclasses.asdict(self.counters).items()})
        out.update({f"air_{k}": v for k, v in dataclasses.asdict(self.ether.stats).items()})
        return out


T = TypeVar("T")


class EmulatorThread:
    """A :class:`MeshEmulator` on its own event loop in a daemon thread.

    Lets blocking clients (the meshtastic library, a test) and the emulator run side by side
    without sharing an event loop, as a real device and its host would.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="mesh")
        self._thread.start()
        self.mesh: MeshEmulator = self.run(self._make)

    async def _make(self) -> MeshEmulator:
        return MeshEmulator(**self._kwargs)

    def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 10) -> T:
        """Run ``fn(*args)`` on the emulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the emulator's loop (its state is not thread-safe)."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.mesh.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
