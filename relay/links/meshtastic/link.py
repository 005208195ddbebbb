"""Meshtastic radios as a link, through the real ``meshtastic`` library.

``meshtastic:///dev/ttyACM0`` (USB serial) or ``meshtastic+tcp://HOST[:4403]`` (WiFi node),
options in the query: ``port`` (app port number or name, default PRIVATE_APP 256),
``channel`` (index 0-7), ``hop_limit`` (0-7, default: the node's), ``want_ack`` (default off:
a late voice packet is useless, a retried one costs airtime twice), ``preset`` (for airtime;
default: what the node reports, else LONG_FAST), ``queue`` (datagrams held while the radio
is busy or away, default 32), ``timeout`` (seconds for the node's config handshake).

The library is thread-based: it paces serial writes (0.1 s each), waits for room in the
node's transmit queue, delivers packets on pypubsub's publishing thread. So every library
call runs on a daemon thread, received packets cross into asyncio with
``call_soon_threadsafe``, and the link never blocks the event loop. A dropped connection is
noticed (reader thread gone, or the node not configured for ``timeout`` seconds) and the link
reconnects with backoff; datagrams accepted meanwhile wait in the bounded queue, and when it
overflows the oldest are dropped, logged and counted (``stats.extra["dropped_while_down"]``).

A write that reached the socket has not necessarily reached the node: the node confirms each
packet it queued with a QueueStatus report naming the packet id. Datagrams still unconfirmed
when a connection dies are sent again on the next one (``resent``), and a packet the node
refuses (a report with an error) is retried and, after MAX_RETRIES, counted as
``send_failed`` -- so neither a dying TCP connection nor a full node loses a datagram silently.
Firmware too old to send these reports is not tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

from relay.errors import LinkError
from relay.links.base import Datagram, Inbox, Link, LinkStats
from relay.links.meshtastic.url import MTU, MeshtasticOptions, library, parse_url
from relay.links.threads import Worker, in_thread
from relay.radio.profiles import RadioProfile, firmware_default, preset

log = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.25, 5.0
MAX_RETRIES = 3  # sends of one datagram that failed while the connection looked healthy
WATCH_EVERY = 0.25  # seconds between connection health checks
NODE_SHARE = 8  # datagrams we let wait in the node (the firmware queues 16)
UNCONFIRMED_MAX = 64  # handed-over datagrams remembered until the node confirms them
SEND_GRACE = 1.0  # seconds a send may still finish after its connection died
BROADCAST = "^all"
_TOPICS = ("meshtastic.connection.lost", "meshtastic.connection.established")


def _transport_up(iface: Any) -> bool:
    """Whether the library has a socket / port right now (TCP drops it while reconnecting)."""
    name = "socket" if hasattr(iface, "socket") else "stream"
    return getattr(iface, name, None) is not None


def _alive(iface: Any) -> bool:
    thread = getattr(iface, "_rxThread", None)
    return thread is None or thread.is_alive()


def _quiet_close(iface: Any) -> None:
    """Close an interface whatever state it is in; never block on its queue status."""
    iface.queueStatus = None  # a close (or a stuck send) waiting for queue room gives up
    with contextlib.suppress(Exception):
        iface.close()


def _close_soon(iface: Any) -> None:
    """Close an interface on a thread of its own (closing blocks: pacing, reader join)."""
    threading.Thread(target=_quiet_close, args=(iface,), daemon=True).start()


class _Disconnected(LinkError):
    """The connection went away under a send: resend, without holding it against the datagram."""


class MeshtasticLink(Link):
    """A Meshtastic node reached over serial or TCP, reconnecting on its own."""

    def __init__(self, options: MeshtasticOptions, url: str) -> None:
        self.options = options
        self.url = url
        self.mtu = MTU
        self.stats = LinkStats()
        self.closed = False
        self.connected = False
        self.node_num: int | None = None
        self.last_error: str | None = None  # why the last connection attempt failed
        self._profile: RadioProfile = (
            preset(options.preset) if options.preset else firmware_default()
        )
        self._iface: Any = None
        self._candidate: Any = None
        self._worker: Worker | None = None
        self._dead: asyncio.Future[None] | None = None  # resolved when this connection ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._txq: deque[bytes] = deque()
        self._in_node: deque[float] = deque()  # estimated times our datagrams leave the node
        self._in_flight = False
        self._unconfirmed: dict[int, bytes] = {}  # packet id -> datagram, awaiting the node
        self._early: deque[int] = deque(maxlen=UNCONFIRMED_MAX)  # confirmed before registered
        self._node_confirms = False  # the node has sent a per-packet queue report
        self._retries = 0
        self._down_drops = 0
        self._inbox = Inbox()
        self._waiters: list[asyncio.Future[None]] = []
        # pypubsub holds listeners weakly: keep the bound methods referenced for our lifetime.
        self._listeners = (self._on_receive, self._on_connection)
        from pubsub import pub

        pub.subscribe(self._listeners[0], "meshtastic.receive")
        for topic in _TOPICS:
            pub.subscribe(self._listeners[1], topic)
        with contextlib.suppress(RuntimeError):  # opened inside a loop: start connecting now
            asyncio.get_running_loop()
            self._start()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "up" if self.connected else "down"
        return f"<MeshtasticLink {self.url} {state}>"

    @property
    def preset(self) -> str:
        """The modem preset airtime is computed for."""
        return self._profile.name

    def airtime(self, nbytes: int) -> float:
        return self._profile.airtime(nbytes)

    @property
    def queued(self) -> int:
        """Datagrams accepted and not yet handed to the library."""
        return len(self._txq) + int(self._in_flight)

    # -- asyncio plumbing

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._tasks = [
                asyncio.create_task(self._supervise(), name=f"{self.url} supervisor"),
                asyncio.create_task(self._pump(), name=f"{self.url} sender"),
            ]
        elif self._loop is not asyncio.get_running_loop():
            raise LinkError(f"{self.url} is in use by another event loop")
        return self._loop

    def _notify(self) -> None:
        waiting, self._waiters = self._waiters, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)

    async def _changed(self, timeout: float | None = None) -> None:
        """Wait until something changes (state, queue), or ``timeout`` seconds."""
        fut = self._start().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the node has answered the config handshake (LinkError on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.connected:
            if self.closed:
                raise LinkError(f"{self.url} is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                why = f": {self.last_error}" if self.last_error else ""
                raise LinkError(f"{self.url}: no connection to the node after {timeout:g} s{why}")
            await self._changed(left)

    # -- sending

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        self._refuse_if_closed()
        self._check_size(data, "Meshtastic")
        self._start()
        while len(self._txq) >= self.options.queue:
            if not self.connected:  # the radio is away: keep the newest, drop the oldest
                self._txq.popleft()
                self.stats.bump("dropped_while_down")
                if self._down_drops == 0:
                    log.warning("%s: node unreachable and queue full: dropping oldest", self.url)
                self._down_drops += 1
                break
            await self._changed()
            if self.closed:
                self.stats.refused += 1
                raise LinkError(f"{self.url} is closed")
        self._txq.append(data)
        self._notify()

    async def drain(self) -> None:
        """Wait until every accepted datagram has been handed to the node (or the link closed)."""
        while self.queued and not self.closed:
            await self._changed()

    def _send_blocking(self, iface: Any, data: bytes) -> int | None:
        if not _transport_up(iface):
            raise _Disconnected("no connection to the node")
        o = self.options
        packet = iface.sendData(
            data,
            destinationId=BROADCAST,
            portNum=o.port,
            wantAck=o.want_ack,
            channelIndex=o.channel,
            hopLimit=o.hop_limit,
        )
        return getattr(packet, "id", None)

    async def _room_in_node(self) -> None:
        """Keep at most NODE_SHARE datagrams in the node that (by our airtime estimate) have
        not left it yet. The library's own flow control follows the node's queue reports,
        which lag under load; a node whose queue overflows refuses packets and the library
        does not say so. Pacing by airtime keeps us well inside the firmware's queue."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._in_node and self._in_node[0] <= now:
                self._in_node.popleft()
            if len(self._in_node) < NODE_SHARE:
                return
            await asyncio.sleep(self._in_node[0] - now)

    def _handed_over(self, nbytes: int) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self._in_node[-1]) if self._in_node else now
        self._in_node.append(start + self.airtime(nbytes))

    async def _pump(self) -> None:
        while not self.closed:
            if not (self._txq and self.connected and _transport_up(self._iface)):
                await self._changed(WATCH_EVERY)
                continue
            await self._room_in_node()
            if not (self._txq and self.connected and _transport_up(self._iface)):
                continue
            iface, worker, dead = self._iface, self._worker, self._dead
            assert worker is not None and dead is not None
            data = self._txq.popleft()
            self._in_flight = True
            job = worker.submit(self._send_blocking, iface, data)
            try:
                await asyncio.wait({job, dead}, return_when=asyncio.FIRST_COMPLETED)
                if not job.done():  # the connection died under the call: did the write happen?
                    await asyncio.wait({job}, timeout=SEND_GRACE)
            except asyncio.CancelledError:  # closing: count it with the rest of the queue
                if not (job.done() and not job.cancelled() and job.exception() is None):
                    self._txq.appendleft(data)
                raise
            finally:
                self._in_flight = False
            if not job.done():  # stuck in the library: abandon it with its connection
                job.add_done_callback(lambda f: f.cancelled() or f.exception())
            error = job.exception() if job.done() else _Disconnected("connection lost mid-send")
            if error is None:
                self._retries = 0
                self._awaiting_node(job.result(), data)
                self._handed_over(len(data))
                self.stats.sent += 1
                self.stats.bytes_sent += len(data)
                self.stats.airtime_s += self.airtime(len(data))
            elif dead.done() or isinstance(error, _Disconnected | OSError):
                # It may have left before the connection went: a resend can duplicate it, and
                # the room's replay windows drop the copy. Losing it silently is worse.
                self._txq.appendleft(data)
                self.stats.bump("resent")
                log.info("%s: %s; the datagram will be resent", self.url, error)
            else:
                self._refused_by_node(data, error)
                await self._changed(WATCH_EVERY)  # pace retries to a node that says no
            self._notify()

    def _awaiting_node(self, packet_id: int | None, data: bytes) -> None:
        if not packet_id or not self._node_confirms:
            return
        if packet_id in self._early:
            self._early.remove(packet_id)
            return
        self._unconfirmed[packet_id] = data
        while len(self._unconfirmed) > UNCONFIRMED_MAX:
            del self._unconfirmed[next(iter(self._unconfirmed))]

    def _queue_report(self, iface: Any, packet_id: int, res: int) -> None:
        """The node's QueueStatus for one of our packets (on the loop)."""
        if iface is not self._iface or not packet_id:
            return
        self._node_confirms = True
        data = self._unconfirmed.pop(packet_id, None)
        if data is None:
            self._early.append(packet_id)
        elif res:
            self._refused_by_node(data, LinkError(f"the node refused the packet (error {res})"))
            self._notify()

    def _requeue_unconfirmed(self) -> None:
        """A connection died: what the node never confirmed goes out again, in order."""
        pending, self._unconfirmed = list(self._unconfirmed.values()), {}
        self._early.clear()
        if pending and not self.closed:
            self._txq.extendleft(reversed(pending))
            self.stats.bump("resent", len(pending))
            log.info(
                "%s: %d datagrams the node never confirmed will be resent", self.url, len(pending)
            )

    def _refused_by_node(self, data: bytes, error: BaseException | None) -> None:
        self._retries += 1
        if self._retries > MAX_RETRIES:
            self._retries = 0
            self.stats.bump("send_failed")
            log.warning(
                "%s: datagram dropped after %d failed sends: %s", self.url, MAX_RETRIES, error
            )
            return
        self._txq.appendleft(data)
        self.stats.bump("resent")
        log.info("%s: send failed (%s), will resend", self.url, error)

    # -- receiving

    def _on_receive(self, packet: dict[str, Any], interface: Any) -> None:
        """pypubsub, on the library's publishing thread."""
        if self.closed or interface is None:
            return
        if interface is not self._iface and interface is not self._candidate:
            return
        raw = packet.get("raw")
        if raw is None or not raw.HasField("decoded") or raw.decoded.portnum != self.options.port:
            return
        sender = packet.get("from")
        args = (bytes(raw.decoded.payload), raw.channel, sender, raw.rx_rssi, raw.rx_snr)
        self._to_loop(self._arrive, *args)

    def _on_connection(self, interface: Any) -> None:
        if interface is not None and interface in (self._iface, self._candidate):
            self._to_loop(self._notify)

    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(fn, *args)

    def _arrive(self, data: bytes, channel: int, sender: int | None, rssi: int, snr: float) -> None:
        loop = self._loop
        if self.closed or loop is None:
            return
        if channel != self.options.channel:
            self.stats.bump("other_channel")
            return
        if sender is not None and sender == self.node_num:
            return  # our own packet echoed back by a relaying node
        dgram = Datagram(data, loop.time(), rssi=rssi or None, snr=snr or None)
        self.stats.received += 1
        self._inbox.put(dgram)

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        if self._inbox:
            return self._inbox.get_nowait()
        return await self._inbox.get(self._start())

    # -- the connection

    def _make_interface(self) -> Any:
        lib = library()
        o = self.options
        timeout = max(1, round(o.timeout))
        if o.tcp:
            iface = lib.tcp_interface.TCPInterface(
                o.device, portNumber=o.tcp_port, connectNow=False, timeout=timeout
            )
        else:
            iface = lib.serial_interface.SerialInterface(
                o.device, connectNow=False, timeout=timeout
            )
        self._hook_queue_reports(iface)
        return iface

    @staticmethod
    def _connect_blocking(iface: Any) -> Any:
        try:
            iface.connect()
            iface.waitForConfig()
        except BaseException:
            _quiet_close(iface)
            raise
        return iface

    def _hook_queue_reports(self, iface: Any) -> None:
        """Hear the node's per-packet QueueStatus reports (the library keeps them to itself)."""
        handle = getattr(iface, "_handleQueueStatusFromRadio", None)
        if handle is None:
            return

        def report(status: Any) -> None:
            handle(status)
            self._to_loop(self._queue_report, iface, status.mesh_packet_id, status.res)

        iface._handleQueueStatusFromRadio = report

    def _adopt(self, iface: Any) -> None:
        self._iface, self._candidate = iface, None
        self._worker = Worker(name=f"{self.url} sender")
        self._dead = self._start().create_future()
        self.node_num = iface.myInfo.my_node_num if iface.myInfo else None
        self._learn_preset(iface)
        self.stats.bump("connects")
        if self.stats.extra["connects"] > 1:
            self.stats.bump("reconnects")
        dropped, self._down_drops = self._down_drops, 0
        log.info(
            "%s: connected to node %s (%s)%s",
            self.url,
            f"!{self.node_num:08x}" if self.node_num is not None else "?",
            self.preset,
            f"; {dropped} datagrams were dropped while it was away" if dropped else "",
        )

    def _learn_preset(self, iface: Any) -> None:
        if self.options.preset:
            return
        with contextlib.suppress(Exception):
            from meshtastic.protobuf import config_pb2

            lora = iface.localNode.localConfig.lora
            if lora.use_preset:
                name = config_pb2.Config.LoRaConfig.ModemPreset.Name(lora.modem_preset)
                self._profile = preset(name)

    def _forget(self) -> None:
        iface, worker, dead = self._iface, self._worker, self._dead
        self._iface, self._worker, self._dead = None, None, None
        self.connected = False
        self._requeue_unconfirmed()
        if dead is not None and not dead.done():
            dead.set_result(None)
        if worker is not None:
            worker.stop()
        if iface is not None:
            _close_soon(iface)
        self._notify()

    async def _supervise(self) -> None:
        backoff = BACKOFF_MIN
        while not self.closed:
            iface = self._candidate = self._make_interface()
            try:
                await in_thread(
                    self._connect_blocking, iface, name=f"{self.url} connect", orphan=_close_soon
                )
            except Exception as exc:
                self._candidate = None
                self.last_error = f"cannot reach the node ({exc})"
                self.stats.bump("connect_failures")
                level = (
                    logging.WARNING if self.stats.extra["connect_failures"] == 1 else logging.DEBUG
                )
                log.log(
                    level,
                    "%s: cannot reach the node (%s); retrying in %.2g s",
                    self.url,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)  # close() cancels this task
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._adopt(iface)
            backoff = BACKOFF_MIN
            await self._watch(iface)
            if not self.closed:
                self.stats.bump("connection_lost")
                log.warning("%s: connection to the node lost; reconnecting", self.url)
            self._forget()

    async def _watch(self, iface: Any) -> None:
        """Return when the connection is beyond the library's own recovery."""
        unconfigured_since: float | None = None
        while not self.closed and _alive(iface):
            up = iface.isConnected.is_set()
            now = time.monotonic()
            if up:
                unconfigured_since = None
            elif unconfigured_since is None:
                unconfigured_since = now
            elif now - unconfigured_since > self.options.timeout:
                return
            if up != self.connected:
                self.connected = up
                self._notify()
            await self._changed(WATCH_EVERY)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        from pubsub import pub

        with contextlib.suppress(Exception):
            pub.unsubscribe(self._listeners[0], "meshtastic.receive")
            for topic in _TOPICS:
                pub.unsubscribe(self._listeners[1], topic)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._txq:
            self.stats.bump("discarded_on_close", len(self._txq))
            log.warning("%s: %d queued datagrams discarded on close", self.url, len(self._txq))
            self._txq.clear()
        iface, candidate = self._iface, self._candidate
        self._iface = self._candidate = None
        for dying in (iface, candidate):
            if dying is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(in_thread(_quiet_close, dying), 5)
        self._forget()
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        self._inbox.clear()
        self._notify()


def open_url(url: str) -> Link:
    """A link to the node named by ``url``; it connects (and reconnects) in the background."""
    options = parse_url(url)
    library()
    return MeshtasticLink(options, url)
