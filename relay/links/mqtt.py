"""A Link over an MQTT broker: how bridges and internet-only members meet.

URL::

    mqtt://[USER[:PASS]@]HOST[:PORT][?room=HINTS&prefix=relay&client=ID&queue=N&qos=1&linger=20]
    mqtts://[USER[:PASS]@]HOST[:PORT][?ca=/path/to/ca.pem&...]   (TLS; default port 8883)

* ``room`` — comma-separated room hints, each as 2 hex digits (``room=3f,a0``); the link
  subscribes only to those rooms' topics. Without it the link carries every room.
  :meth:`MqttLink.set_rooms` changes the set while running (hints rotate hourly).
* ``prefix`` — the first topic level(s), default ``relay``.
* ``client`` — the MQTT client id, default ``relay-`` and 8 random hex digits.
* ``queue`` — datagrams kept while the broker is unreachable (default 1024).
* ``qos`` — ``1`` (default): every batch is acknowledged by the broker (PUBACK) before it
  leaves the queue, so a broker or connection failure re-sends it (a possible duplicate,
  which dedup and the replay window absorb). ``0``: batches leave the queue once written to
  the socket; what the connection or broker loses then is not seen by either end. Voice is
  loss-tolerant and replay-protected, so ``qos=0`` is a fair choice for busy bridges.
  ``qos`` is for publishing; subscriptions are always QoS 0 (see ``SUBSCRIBE_QOS``).
* ``linger`` — milliseconds (0..200, default 20): after a publish, packets are collected for
  up to this long and published together, one message per room hint. An idle link sends
  the next packet at once; a busy one publishes at most once per ``linger`` per hint.
* ``ca`` — (``mqtts`` only) a CA bundle to verify the broker with; default: the system's.

The password is never logged: :attr:`MqttLink.url` shows it as ``***``.

**Topic layout (version 2).** Packets travel in batches: one MQTT message (QoS as above, not
retained) per room hint and flush, on the topic::

    <prefix>/v2/<hint>          e.g. relay/v2/3f

where ``<hint>`` is the packets' room hint (byte 1 of the clear header, see
:mod:`relay.core.wire`) as two lowercase hex digits. A link carrying every room subscribes to
``<prefix>/v2/+``. The payload (all integers big-endian)::

    byte 0       batch format (2)
    bytes 1-4    origin: the publishing link's 32-bit id for this hint epoch
    then one or more records:
      byte 0     hops: bridges that republished the packet after its first publisher
      bytes 1-2  length L (1..4096)
      L bytes    the sealed relay packet, unchanged (its byte 1 is the topic's hint)

**Origins rotate with the room hint.** The origin on the wire is HMAC-SHA256(the link's
secret key, the hint epoch) cut to 32 bits (:func:`rotating_origin`): the broker and anyone
recording it cannot tell that the batches of two hours came from one link (or bridge),
while the link still recognises its own (this epoch's, the one before and the one after).
A bridge's links share one key (from its gateway id and a secret of the process), so they
recognise each other's batches as the bridge's own. The gateway id itself never leaves
the process.

The broker learns nothing but the room hint, packet sizes and timing. Batching is what lets
one bridge carry hundreds of voice streams: the per-message cost of MQTT (decoding, acks,
properties) is paid per batch, not per packet. Version 1 (one bare packet per message) is
gone; a future incompatible layout gets ``v3``, and both can share one broker.

**Bridges and hops.** A :class:`~relay.runtime.bridge.Bridge` calls
:meth:`MqttLink.carry_envelopes` with its gateway id: the link then hands the bridge each
packet as a :class:`~relay.bridge.envelope.Envelope` (hops and origin from the batch) and
takes envelopes to publish, so the hop limit holds across brokers and broker bridges.

**Own messages, any broker.** The link speaks MQTT 5 and subscribes with *no local*, so the
broker never hands a link its own publications back. Against an MQTT 3.1.1 broker (the
embedded ``relay broker``, amqtt) the link falls back to 3.1.1 by itself and drops batches
carrying its own origin instead (counted as ``own_echo``): the same behaviour on mosquitto,
EMQX, VerneMQ, HiveMQ or a cluster of them.

**Faults.** The first ``send``/``recv``/``connect`` raises LinkError when the broker cannot be
reached. After that a lost broker is retried with exponential backoff until ``close()``.
``send`` queues (bounded by ``queue``): while connected a full queue makes ``send`` wait;
while disconnected the oldest queued datagram is dropped to make room, counted
(``stats.dropped``, ``tx_dropped``) and logged. What was queued while the broker was away is
published as soon as the link is back. Datagrams published within ``RESUME_WINDOW`` seconds
of a reconnect are counted as ``sent_after_reconnect``: a peer that has not resubscribed by
then never gets them, and no end can tell (a broker that restarted forgot every
subscription). Holding the queue back for the peers was tried and measured worse: voice
queued during an outage is already late, and every extra wait turns more of it into frames
the listener's jitter buffer has to conceal. Received
datagrams nobody reads are dropped oldest first and counted (``rx_dropped``); malformed
messages are counted (``bad_payload``) and logged. What the broker itself loses (messages it
acknowledged and then forgot in a restart, or QoS 0 messages it shed) is invisible here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from relay.bridge.envelope import ENVELOPE_HEADER_LEN, ENVELOPE_VERSION
from relay.core.crypto import HINT_EPOCH_SECONDS, hint_epoch
from relay.core.wire import MAX_PACKET_LEN
from relay.errors import LinkError, PacketError, RelayError, UsageError
from relay.links.base import Datagram
from relay.links.stream import ReconnectingLink
from relay.links.url import redact

log = logging.getLogger(__name__)

TOPIC_VERSION = "v2"
BATCH_FORMAT = 2
DEFAULT_PREFIX = "relay"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_QUEUE = 1024
DEFAULT_QOS = 1
# Subscriptions are QoS 0. Sessions end with the connection (clean start, no expiry), so a
# QoS 1 delivery not yet acknowledged when a connection drops is lost anyway; QoS 1 on
# this leg would buy nothing but a PUBACK (a syscall) per message, a quarter of a busy
# bridge's CPU (measured with bench/bridge.py).
SUBSCRIBE_QOS = 0
DEFAULT_LINGER = 0.020  # seconds
MAX_LINGER_MS = 200
MAX_RX_QUEUE = 4096
MAX_BATCH_BYTES = 16 * 1024  # one MQTT message; a flush larger than this is split
MAX_FLUSH = 1024  # datagrams taken off the queue per flush
MAX_FLUSHES = 8  # flushes awaiting PUBACK at once (QoS 1)
MAX_INFLIGHT = 256  # QoS 1 messages paho keeps unacknowledged at once
READ_CHUNK = 16384  # bytes read from the broker's socket at once (see _BufferedSocket)
RESUME_WINDOW = 5.0  # publishes this soon after a reconnect are counted as at risk
_RC_BAD_PROTOCOL = (1, 132)  # CONNACK: 3.1.1 "unacceptable protocol", 5 "unsupported version"
# CONNACK: 3.1.1 "bad user name or password", "not authorised"; 5 the same two
_RC_REFUSED_LOGIN = (4, 5, 134, 135)
_KEYS = ("room", "prefix", "client", "queue", "qos", "linger", "ca")

_BATCH_HEAD = struct.Struct(">BI")
_RECORD_HEAD = struct.Struct(">BH")
_ENV_HEAD = struct.Struct(">BBI")  # relay.bridge.envelope: version, hops, gateway


def topic_for(prefix: str, hint: int) -> str:
    """The topic datagrams with room hint ``hint`` are published on."""
    return f"{prefix}/{TOPIC_VERSION}/{hint:02x}"


def parse_hints(text: str) -> frozenset[int]:
    """``"3f,a0"`` -> {0x3f, 0xa0}; UsageError for anything but 2-hex-digit hints."""
    hints = set()
    for part in text.split(","):
        part = part.strip()
        if len(part) != 2:
            raise UsageError(f"room hint {part!r} must be 2 hex digits (e.g. room=3f,a0)")
        try:
            hints.add(int(part, 16))
        except ValueError:
            raise UsageError(f"room hint {part!r} is not hex (e.g. room=3f,a0)") from None
    return frozenset(hints)


ORIGIN_LABEL = b"relay/mqtt-origin/v1"
_PROCESS_KEY = secrets.token_bytes(32)  # never leaves the process: gateway ids stay inside


def rotating_origin(key: bytes, epoch: int) -> int:
    """The 32-bit origin a link with ``key`` stamps on its batches during hint ``epoch``:
    without the key, origins of different epochs cannot be linked."""
    mac = hmac.new(key, ORIGIN_LABEL + epoch.to_bytes(8, "big", signed=True), hashlib.sha256)
    return int.from_bytes(mac.digest()[:4], "big")


def gateway_origin_key(gateway_id: int) -> bytes:
    """The origin key of a bridge's links: one per gateway id in this process."""
    return hmac.new(_PROCESS_KEY, gateway_id.to_bytes(4, "big"), hashlib.sha256).digest()


def encode_batches(
    origin: int, records: Sequence[tuple[int, bytes]], limit: int = MAX_BATCH_BYTES
) -> list[bytes]:
    """Batch payloads (format 2) for ``(hops, packet)`` records of one room hint, in order.

    A payload grows until the next record would pass ``limit`` bytes (one record always fits).
    """
    out: list[bytes] = []
    parts = [_BATCH_HEAD.pack(BATCH_FORMAT, origin)]
    size = _BATCH_HEAD.size
    for hops, packet in records:
        n = _RECORD_HEAD.size + len(packet)
        if size + n > limit and len(parts) > 1:
            out.append(b"".join(parts))
            parts = [parts[0]]
            size = _BATCH_HEAD.size
        parts.append(_RECORD_HEAD.pack(hops, len(packet)))
        parts.append(packet)
        size += n
    if len(parts) > 1:
        out.append(b"".join(parts))
    return out


def decode_batch(payload: bytes) -> tuple[int, Iterator[tuple[int, bytes]]]:
    """``(origin, records)`` of one batch payload; the records iterator yields
    ``(hops, packet)`` and raises PacketError at the first malformed record."""
    if len(payload) < _BATCH_HEAD.size + _RECORD_HEAD.size:
        raise PacketError("mqtt_batch", f"batch of {len(payload)} bytes carries no packet")
    fmt, origin = _BATCH_HEAD.unpack_from(payload)
    if fmt != BATCH_FORMAT:
        raise PacketError("mqtt_batch", f"batch format {fmt} not supported")
    return origin, _records(payload)


def _records(payload: bytes) -> Iterator[tuple[int, bytes]]:
    off, end = _BATCH_HEAD.size, len(payload)
    while off < end:
        if off + _RECORD_HEAD.size > end:
            raise PacketError("mqtt_batch", "batch ends inside a record header")
        hops, n = _RECORD_HEAD.unpack_from(payload, off)
        off += _RECORD_HEAD.size
        if not 2 <= n <= MAX_PACKET_LEN or off + n > end:
            raise PacketError("mqtt_batch", f"record of {n} bytes does not fit the batch")
        yield hops, payload[off : off + n]
        off += n


class MqttLink(ReconnectingLink):
    """Datagrams through an MQTT broker (see the module docstring)."""

    kind = "mqtt"
    peer = "broker"
    settle_jitter = True
    connect_timeout = 5.0
    _log = log

    def __init__(
        self,
        url: str,
        *,
        host: str,
        port: int,
        tls: bool = False,
        ca: str | None = None,
        username: str | None = None,
        password: str | None = None,
        rooms: Iterable[int] | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        queue: int = DEFAULT_QUEUE,
        qos: int = DEFAULT_QOS,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        super().__init__(url, MAX_PACKET_LEN, MAX_RX_QUEUE)  # url: already redacted by open_url
        if qos not in (0, 1):
            raise UsageError(f"qos must be 0 or 1, got {qos!r}")
        self.host = host
        self.port = port
        self.tls = tls
        self.ca = ca
        self.username = username
        self._password = password
        self.rooms: frozenset[int] | None = None if rooms is None else frozenset(rooms)
        self.prefix = prefix
        self.client_id = client_id or f"relay-{secrets.token_hex(4)}"
        self.queue = queue
        self.qos = qos
        self.linger = linger
        self._origin_key = secrets.token_bytes(32)  # origins rotate: see rotating_origin
        self._origins: dict[int, int] = {}
        self.clock: Callable[[], float] = time.time  # the wall clock, as the room hint's
        self.enveloped = False  # a bridge's link: datagrams are relay.bridge.envelope bytes
        self.mqtt5 = True  # False once a broker refused MQTT 5 (3.1.1 fallback)
        self._client: object | None = None  # the aiomqtt.Client of the current session
        self._last_flush = float("-inf")
        self._resumed_at: float | None = None
        self._rx_warned = 0

    def carry_envelopes(self, gateway_id: int) -> None:
        """Make this a bridge's link: publish as ``gateway_id``, and exchange
        :class:`~relay.bridge.envelope.Envelope` bytes (hops and origin) instead of bare
        packets, so a hop limit holds across brokers."""
        if not 0 <= gateway_id < 1 << 32:
            raise UsageError(f"gateway id {gateway_id} out of range 0..{(1 << 32) - 1}")
        self._origin_key = gateway_origin_key(gateway_id)
        self._origins.clear()
        self.enveloped = True

    def origin_at(self, now: float) -> int:
        """The origin this link stamps on what it publishes at wall-clock time ``now``."""
        epoch = hint_epoch(now)
        origin = self._origins.get(epoch)
        if origin is None:
            if len(self._origins) > 8:
                self._origins.clear()
            origin = self._origins[epoch] = rotating_origin(self._origin_key, epoch)
        return origin

    @property
    def origin(self) -> int:
        """The origin stamped now."""
        return self.origin_at(self.clock())

    def is_own(self, origin: int, now: float) -> bool:
        """Whether a batch's origin is ours: this hint epoch, the one before or after (a
        batch published at a boundary, clocks a little apart)."""
        return any(origin == self.origin_at(now + d * HINT_EPOCH_SECONDS) for d in (-1, 0, 1))

    # -- topics

    def topics(self) -> list[str]:
        """The topics this link subscribes to."""
        if self.rooms is None:
            return [f"{self.prefix}/{TOPIC_VERSION}/+"]
        return [topic_for(self.prefix, h) for h in sorted(self.rooms)]

    def _hint_of(self, topic: str) -> int | None:
        head = f"{self.prefix}/{TOPIC_VERSION}/"
        if not topic.startswith(head):
            return None
        tail = topic[len(head) :]
        if len(tail) != 2:
            return None
        try:
            return int(tail, 16)
        except ValueError:
            return None

    def _subscribe_options(self) -> object:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        return SubscribeOptions(qos=SUBSCRIBE_QOS, noLocal=self.mqtt5)

    async def _subscribe(self, client: object, topic: str) -> None:
        if self.mqtt5:
            await client.subscribe(topic, options=self._subscribe_options())  # type: ignore[attr-defined]
        else:
            await client.subscribe(topic, qos=SUBSCRIBE_QOS)  # type: ignore[attr-defined]

    async def set_rooms(self, rooms: Iterable[int] | None) -> None:
        """Carry these room hints from now on (None: every room); resubscribes if connected."""
        new = None if rooms is None else frozenset(rooms)
        for h in new or ():
            if not 0 <= h <= 255:
                raise UsageError(f"room hint must be 0..255, got {h!r}")
        old_topics = set(self.topics())
        self.rooms = new
        new_topics = set(self.topics())
        client = self._client
        if client is None or not self.connected:
            return  # the next session subscribes to the new set
        with contextlib.suppress(Exception):  # a failure here means a reconnect resubscribes
            for topic in sorted(new_topics - old_topics):
                await self._subscribe(client, topic)
            gone = sorted(old_topics - new_topics)
            if gone:
                await client.unsubscribe(gone)  # type: ignore[attr-defined]

    # -- ReconnectingLink hooks

    def _tx_limit(self) -> int:
        return self.queue

    def _open_errors(self) -> tuple[type[BaseException], ...]:
        import aiomqtt

        return (aiomqtt.MqttError, OSError)

    _stream_errors = _open_errors  # the same once connected

    def _check_size(self, data: bytes) -> None:
        if self.enveloped:
            if len(data) <= ENVELOPE_HEADER_LEN + 1 or data[0] != ENVELOPE_VERSION:
                self.stats.refused += 1
                raise UsageError(f"a bridge's MQTT link takes envelopes, got {len(data)} bytes")
            super()._check_size(data[ENVELOPE_HEADER_LEN:])
            return
        super()._check_size(data)
        if len(data) < 2:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes has no room hint (byte 1); MQTT topics need it"
            )

    async def _open(self) -> object:
        from aiomqtt.exceptions import MqttConnectError

        client = self._make_client()
        try:
            await client.__aenter__()  # type: ignore[attr-defined]
        except MqttConnectError as exc:
            rc = getattr(exc.rc, "value", exc.rc)
            if not self.mqtt5 or rc not in _RC_BAD_PROTOCOL:
                raise
            self.mqtt5 = False  # an MQTT 3.1.1 broker: own echoes are dropped by origin
            self._log.info("%s: the broker speaks MQTT 3.1.1 only; using it", self.url)
            client = self._make_client()
            await client.__aenter__()  # type: ignore[attr-defined]
        _buffer_reads(client)
        return client

    async def _disconnect(self, conn: object) -> None:
        self._client = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.__aexit__(None, None, None), 1.0)  # type: ignore[attr-defined]

    def _make_client(self) -> object:
        import aiomqtt
        from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY

        link = self

        class _Direct(asyncio.Queue):  # type: ignore[type-arg]
            """aiomqtt's incoming queue, short-circuited: each message is unpacked into
            the link's inbox at once (no second queue, nothing discarded unseen)."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                link._on_message(item.topic.value, item.payload)

        tls_context = None
        if self.tls:
            tls_context = ssl.create_default_context(cafile=self.ca)
        extra: dict[str, object] = {}
        if self.mqtt5:
            extra["clean_start"] = MQTT_CLEAN_START_FIRST_ONLY
        else:
            extra["clean_session"] = True
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self.mqtt5 else aiomqtt.ProtocolVersion.V311,
            timeout=self.connect_timeout,
            keepalive=15,
            tls_context=tls_context,
            queue_type=_Direct,
            max_inflight_messages=MAX_INFLIGHT,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),  # no Nagle delay
            **extra,  # type: ignore[arg-type]
        )
        # aiomqtt warns ("There are N pending publish calls.") past 10 publishes awaiting
        # their PUBACK; the write loop keeps up to MAX_FLUSHES flushes of one message per
        # room hint in flight by design, so only more than that is worth a warning.
        client.pending_calls_threshold = MAX_FLUSHES * 256
        return client

    def _unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot reach the MQTT broker at {self.host}:{self.port} ({exc}); is it running? "
            f"(e.g. `mosquitto -p {self.port}` or `relay broker --port {self.port}`)"
        )

    def _first_failure(self, exc: BaseException) -> RelayError:
        """A refused login is the user's to fix (exit 2), not an unreachable broker."""
        rc = getattr(getattr(exc, "rc", None), "value", getattr(exc, "rc", None))
        if rc in _RC_REFUSED_LOGIN:
            who = f"user {self.username!r}" if self.username else "anonymous clients"
            return UsageError(
                f"the MQTT broker at {self.host}:{self.port} refused the login of {who} "
                f"({'not authorised' if rc in (5, 135) else 'bad user name or password'}): "
                "check USER:PASSWORD@ in the URL"
            )
        return super()._first_failure(exc)

    # -- the connection

    async def _prepare(self, conn: object, first: asyncio.Future[None]) -> str | None:
        """Subscribe on a fresh connection; a failure ends the session."""
        import aiomqtt

        try:
            for topic in self.topics():
                await self._subscribe(conn, topic)
        except aiomqtt.MqttError as exc:
            if not first.done():
                first.set_exception(LinkError(self._unreachable(exc)))
            return f"subscribe failed: {exc}"
        self._client = conn
        assert self._loop is not None
        self._resumed_at = self._loop.time() if first.done() else None
        return None

    async def _read_loop(self, client: object) -> None:
        # Messages go straight to _on_message (see _Direct); this only waits for the end.
        async for _ in client.messages:  # type: ignore[attr-defined]
            pass

    async def _write_loop(self, client: object) -> None:
        """Publish the queue in flushes, up to ``MAX_FLUSHES`` awaiting PUBACK at once.

        Datagrams stay at the head of the queue until their flush is acknowledged (and
        earlier flushes too), so what a dying connection took is published again."""
        assert self._loop is not None
        loop = self._loop
        inflight: deque[tuple[list[bytes], asyncio.Future[object]]] = deque()
        failed: asyncio.Future[None] = loop.create_future()
        published = 0  # datagrams at the head of the queue already published

        def acked(_: object) -> None:
            nonlocal published
            while inflight and inflight[0][1].done():
                batch, fut = inflight[0]
                if fut.cancelled() or fut.exception() is not None:
                    if not failed.done():
                        exc = None if fut.cancelled() else fut.exception()
                        failed.set_exception(exc or LinkError("publish cancelled"))
                    return
                inflight.popleft()
                for d in batch:
                    if self._txq and self._txq[0] is d:
                        self._txq.popleft()
                    self.stats.sent += 1
                    self.stats.bytes_sent += len(d) - (ENVELOPE_HEADER_LEN if self.enveloped else 0)
                published -= len(batch)
                resumed = self._resumed_at
                if resumed is not None and loop.time() - resumed < RESUME_WINDOW:
                    self.stats.bump("sent_after_reconnect", len(batch))
            self._writing = bool(inflight)
            self._sent()

        try:
            while True:
                while len(self._txq) <= published or len(inflight) >= MAX_FLUSHES:
                    if failed.done():
                        failed.result()  # raises: the session ends, the queue is kept
                    self._tx_wake.clear()
                    waker = loop.create_task(self._tx_wake.wait())
                    await asyncio.wait(
                        [waker, failed, *(f for _, f in inflight)],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    waker.cancel()
                wait = self._last_flush + self.linger - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # collect what arrives meanwhile into one batch
                self._last_flush = loop.time()
                end = min(len(self._txq), published + MAX_FLUSH)
                batch = [self._txq[i] for i in range(published, end)]
                fut = asyncio.gather(
                    *(
                        client.publish(topic, payload, qos=self.qos)  # type: ignore[attr-defined]
                        for topic, payload in self._payloads(batch)
                    )
                )
                inflight.append((batch, fut))
                published += len(batch)
                self._writing = True
                fut.add_done_callback(acked)
        finally:
            for _, fut in inflight:
                fut.cancel()
                fut.add_done_callback(_retrieved)  # a failure the session ended on, or after it
            failed.add_done_callback(_retrieved)
            self._writing = False

    def _payloads(self, batch: list[bytes]) -> list[tuple[str, bytes]]:
        """One or more batch payloads per room hint, packets in queue order."""
        origin = self.origin
        by_hint: dict[int, list[tuple[int, bytes]]] = {}
        if self.enveloped:
            for d in batch:
                packet = d[ENVELOPE_HEADER_LEN:]
                by_hint.setdefault(packet[1], []).append((d[1], packet))
        else:
            for d in batch:
                by_hint.setdefault(d[1], []).append((0, d))
        return [
            (topic_for(self.prefix, hint), payload)
            for hint, records in by_hint.items()
            for payload in encode_batches(origin, records)
        ]

    def _on_message(self, topic: str, payload: object) -> None:
        hint = self._hint_of(topic)
        if hint is None or (self.rooms is not None and hint not in self.rooms):
            self.stats.bump("other_topic")
            return
        if not isinstance(payload, bytes | bytearray):
            self.stats.bump("bad_payload")
            return
        payload = bytes(payload)
        assert self._loop is not None
        now = self._loop.time()
        try:
            origin, records = decode_batch(payload)
            if self.is_own(origin, self.clock()):
                self.stats.bump("own_echo")  # an MQTT 3.1.1 broker, which has no "no local"
                return
            for hops, packet in records:
                if packet[1] != hint:
                    self.stats.bump("hint_mismatch")
                    continue
                if self.enveloped:
                    packet = _ENV_HEAD.pack(ENVELOPE_VERSION, hops, origin) + packet
                self.stats.received += 1
                if self._inbox.put(Datagram(packet, now)):
                    self._rx_dropped()
        except PacketError as exc:
            self.stats.bump("bad_payload")
            log.warning("%s: dropped a malformed message on %s: %s", self.url, topic, exc)

    def _rx_dropped(self) -> None:
        self.stats.bump("rx_dropped")
        n = self.stats.extra["rx_dropped"]
        if n >= self._rx_warned * 2:  # 1, 2, 4, 8...: visible, but never a log storm
            self._rx_warned = n
            log.warning(
                "%s: received datagrams are not read fast enough; dropped the oldest "
                "(%d dropped so far)",
                self.url,
                n,
            )


def _retrieved(fut: asyncio.Future[object]) -> None:
    """Mark a finished future's outcome as seen: the session that awaited it has ended, and
    its failure was already counted, so asyncio need not report it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


class _BufferedSocket:
    """paho's socket, read in large chunks.

    paho asks for 1 byte at a time for each message's fixed header, then its body (three or
    more ``recv`` calls a message), and reads one message per readable event. This reads up
    to ``READ_CHUNK`` bytes a call and serves paho's small reads from that buffer;
    :meth:`pending` (which aiomqtt's reader checks, as for TLS) makes the reader go on until
    the buffer is empty, so the messages that arrived are handled in one readable event
    instead of one per event-loop turn (measured with bench/bridge.py: a bridge reading one
    message a turn fell behind mosquitto at 1000 streams and queued seconds in the socket).
    One chunk is read per readable event: a message cut at the chunk's end waits for the
    next event (as if the socket had no more yet), so a flood cannot hold the event loop
    (or overrun the link's inbox) in one callback.
    """

    __slots__ = ("_buf", "_filled", "_pos", "_sock")

    def __init__(self, sock: object) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._filled = False  # a chunk was read in this readable event (see pending)

    def recv(self, bufsize: int) -> bytes:
        pos = self._pos
        if pos < len(self._buf):
            end = pos + bufsize
            self._pos = end
            return self._buf[pos:end]
        if self._filled:  # this event had its chunk: let the loop turn
            self._filled = False
            raise BlockingIOError
        try:
            data = self._sock.recv(max(bufsize, READ_CHUNK))  # type: ignore[attr-defined]
        except BlockingIOError:
            self._filled = False
            raise
        if len(data) <= bufsize:
            self._buf, self._pos = b"", 0
            return data
        self._filled = True
        self._buf, self._pos = data, bufsize
        return data[:bufsize]

    def pending(self) -> int:
        buffered = len(self._buf) - self._pos
        if buffered > 0:
            return buffered
        self._filled = False  # the reader stops here: its next event may read a chunk
        inner = getattr(self._sock, "pending", None)  # TLS: decrypted bytes not yet read
        return inner() if inner is not None else 0

    def __getattr__(self, name: str) -> object:  # send, fileno, close, setblocking...
        return getattr(self._sock, name)


def _buffer_reads(client: object) -> None:
    """Give the paho client under an aiomqtt ``client`` a :class:`_BufferedSocket`."""
    paho = getattr(client, "_client", None)
    sock = getattr(paho, "_sock", None)
    if sock is not None and not isinstance(sock, _BufferedSocket):
        paho._sock = _BufferedSocket(sock)  # type: ignore[union-attr]


def _int_option(opts: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    if key not in opts:
        return default
    try:
        value = int(opts[key])
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise UsageError(f"{key} must be an integer in {lo}..{hi}, got {opts[key]!r}")
    return value


def open_url(url: str) -> MqttLink:
    """``mqtt://[user[:pass]@]host[:port][?room=..&prefix=..&client=..&queue=..&qos=..]``."""
    shown = url
    try:
        parts = urlsplit(url)
        shown = redact(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad MQTT URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"not an MQTT URL: {shown!r} (use mqtt:// or mqtts://)")
    host = parts.hostname
    if not host:
        raise UsageError(f"MQTT URL {shown!r} has no broker host (e.g. mqtt://127.0.0.1:1883)")
    if parts.path not in ("", "/"):
        raise UsageError(f"MQTT URL {shown!r}: unexpected path {parts.path!r}")
    opts: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in _KEYS:
            raise UsageError(f"unknown mqtt:// option {key!r} (known: {', '.join(_KEYS)})")
        opts[key] = value
    rooms = parse_hints(opts["room"]) if "room" in opts else None
    prefix = opts.get("prefix", DEFAULT_PREFIX)
    if (
        not prefix
        or any(c in prefix for c in "+#\0")
        or prefix.startswith("/")
        or prefix.endswith("/")
        or "//" in prefix
    ):
        raise UsageError(
            f"MQTT topic prefix {prefix!r} must be non-empty with no + # or empty levels"
        )
    client_id = opts.get("client") or None
    if client_id is not None and len(client_id.encode()) > 65535:
        raise UsageError("MQTT client id is too long")
    queue = _int_option(opts, "queue", DEFAULT_QUEUE, 1, 1 << 20)
    qos = _int_option(opts, "qos", DEFAULT_QOS, 0, 1)
    linger_ms = _int_option(opts, "linger", round(DEFAULT_LINGER * 1000), 0, MAX_LINGER_MS)
    ca = opts.get("ca") or None
    if ca is not None and scheme != "mqtts":
        raise UsageError("ca= needs TLS: use mqtts://")
    if ca is not None:  # a missing or unreadable CA file is the user's to fix, said now
        try:
            ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"ca={ca}: cannot use it as a CA bundle ({why})") from None
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttLink(
        shown,
        host=host,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        tls=scheme == "mqtts",
        ca=ca,
        username=username,
        password=password,
        rooms=rooms,
        prefix=prefix,
        client_id=client_id,
        queue=queue,
        qos=qos,
        linger=linger_ms / 1000,
    )
