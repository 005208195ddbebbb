"""A Link over an MQTT broker: how bridges and internet-only members meet.

URL::

    mqtt://[USER[:PASS]@]HOST[:PORT][?room=HINTS&prefix=relay&client=ID&queue=N]
    mqtts://[USER[:PASS]@]HOST[:PORT][?ca=/path/to/ca.pem&...]   (TLS; default port 8883)

* ``room`` — comma-separated room hints, each as 2 hex digits (``room=3f,a0``); the link
  subscribes only to those rooms' topics. Without it the link carries every room.
  :meth:`MqttLink.set_rooms` changes the set while running (hints rotate hourly).
* ``prefix`` — the first topic level(s), default ``relay``.
* ``client`` — the MQTT client id, default ``relay-`` and 8 random hex digits.
* ``queue`` — datagrams kept while the broker is unreachable (default 1024).
* ``ca`` — (``mqtts`` only) a CA bundle to verify the broker with; default: the system's.

The password is never logged: :attr:`MqttLink.url` shows it as ``***``.

**Topic layout (version 1).** Each datagram is one MQTT message, QoS 1, not retained, whose
payload is the datagram itself (an already sealed relay packet; the broker learns nothing but
the room hint) on the topic::

    <prefix>/v1/<hint>          e.g. relay/v1/3f

where ``<hint>`` is the packet's room hint (byte 1 of the clear header, see
:mod:`relay.core.wire`) as two lowercase hex digits. A link carrying every room subscribes to
``<prefix>/v1/+``. A future incompatible layout gets ``v2``; both can share one broker.

**Own messages.** The link speaks MQTT 5 and subscribes with *no local*, so the broker never
hands a link its own publications back (another link on the same broker does get them).

**Faults.** The first ``send``/``recv``/``connect`` raises LinkError when the broker cannot be
reached. After that a lost broker is retried with exponential backoff until ``close()``.
``send`` queues (bounded by ``queue``): while connected a full queue makes ``send`` wait;
while disconnected the oldest queued datagram is dropped to make room, counted
(``stats.dropped``, ``tx_dropped``) and logged. A datagram leaves the queue only once the
broker acknowledged it (PUBACK), so one in flight when the broker died is published again
after reconnecting (a possible duplicate, which the room layer's replay window absorbs).
What the broker itself loses (messages it acknowledged and then forgot in a restart, or
published while a subscriber was reconnecting) is invisible to either end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from relay.core.wire import MAX_PACKET_LEN
from relay.errors import LinkError, UsageError
from relay.links.base import Datagram
from relay.links.stream import ReconnectingLink

log = logging.getLogger(__name__)

TOPIC_VERSION = "v1"
DEFAULT_PREFIX = "relay"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_QUEUE = 1024
MAX_RX_QUEUE = 1024
MAX_INFLIGHT = 32  # publishes awaiting PUBACK at once
_KEYS = ("room", "prefix", "client", "queue", "ca")


def topic_for(prefix: str, hint: int) -> str:
    """The topic a datagram with room hint ``hint`` is published on."""
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
    ) -> None:
        super().__init__(url, MAX_PACKET_LEN, MAX_RX_QUEUE)  # url: already redacted by open_url
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
        self._client: object | None = None  # the aiomqtt.Client of the current session

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
        from paho.mqtt.subscribeoptions import SubscribeOptions

        with contextlib.suppress(Exception):  # a failure here means a reconnect resubscribes
            for topic in sorted(new_topics - old_topics):
                await client.subscribe(  # type: ignore[attr-defined]
                    topic, options=SubscribeOptions(qos=1, noLocal=True)
                )
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
        super()._check_size(data)
        if len(data) < 2:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes has no room hint (byte 1); MQTT topics need it"
            )

    async def _open(self) -> object:
        client = self._make_client()
        await client.__aenter__()  # type: ignore[attr-defined]
        return client

    async def _disconnect(self, conn: object) -> None:
        self._client = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.__aexit__(None, None, None), 1.0)  # type: ignore[attr-defined]

    def _make_client(self) -> object:
        import aiomqtt
        from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY

        tls_context = None
        if self.tls:
            tls_context = ssl.create_default_context(cafile=self.ca)
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=self.connect_timeout,
            keepalive=15,
            clean_start=MQTT_CLEAN_START_FIRST_ONLY,
            tls_context=tls_context,
            max_queued_incoming_messages=MAX_RX_QUEUE,
        )

    def _unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot reach the MQTT broker at {self.host}:{self.port} ({exc}); is it running? "
            f"(e.g. `mosquitto -p {self.port}` or `relay broker`)"
        )

    # -- the connection

    async def _prepare(self, conn: object, first: asyncio.Future[None]) -> str | None:
        """Subscribe on a fresh connection; a failure ends the session."""
        import aiomqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        try:
            for topic in self.topics():
                await conn.subscribe(  # type: ignore[attr-defined]
                    topic, options=SubscribeOptions(qos=1, noLocal=True)
                )
        except aiomqtt.MqttError as exc:
            if not first.done():
                first.set_exception(LinkError(self._unreachable(exc)))
            return f"subscribe failed: {exc}"
        self._client = conn
        return None

    async def _read_loop(self, client: object) -> None:
        async for message in client.messages:  # type: ignore[attr-defined]
            self._on_message(str(message.topic), message.payload)

    async def _write_loop(self, client: object) -> None:
        while True:
            await self._next_to_send()
            batch = [self._txq[i] for i in range(min(len(self._txq), MAX_INFLIGHT))]
            self._writing = True
            try:
                await asyncio.gather(
                    *(
                        client.publish(topic_for(self.prefix, d[1]), d, qos=1)  # type: ignore[attr-defined]
                        for d in batch
                    )
                )
            finally:
                self._writing = False
            # Only now: a batch whose publish failed stays queued for the retry.
            for d in batch:
                if self._txq and self._txq[0] is d:
                    self._txq.popleft()
                self.stats.sent += 1
                self.stats.bytes_sent += len(d)
            self._sent()

    def _on_message(self, topic: str, payload: object) -> None:
        hint = self._hint_of(topic)
        if hint is None or (self.rooms is not None and hint not in self.rooms):
            self.stats.bump("other_topic")
            return
        if not isinstance(payload, bytes | bytearray) or not 2 <= len(payload) <= self.mtu:
            self.stats.bump("bad_payload")
            log.warning("%s: dropped a malformed message on %s", self.url, topic)
            return
        if payload[1] != hint:
            self.stats.bump("hint_mismatch")
            return
        assert self._loop is not None
        self.stats.received += 1
        if self._inbox.put(Datagram(bytes(payload), self._loop.time())):
            self.stats.bump("rx_overflow")
            log.warning("%s: nobody is reading; dropped the oldest received datagram", self.url)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what logs and ``link.url`` show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_url(url: str) -> MqttLink:
    """``mqtt://[user[:pass]@]host[:port][?room=..&prefix=..&client=..&queue=..]``."""
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
    queue = DEFAULT_QUEUE
    if "queue" in opts:
        try:
            queue = int(opts["queue"])
        except ValueError:
            queue = 0
        if queue < 1:
            raise UsageError(f"queue must be an integer >= 1, got {opts['queue']!r}")
    ca = opts.get("ca") or None
    if ca is not None and scheme != "mqtts":
        raise UsageError("ca= needs TLS: use mqtts://")
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
    )
