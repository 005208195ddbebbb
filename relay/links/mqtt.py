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
import random
import secrets
import ssl
from collections import deque
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from relay.core.wire import MAX_PACKET_LEN
from relay.errors import LinkError, UsageError
from relay.links.base import Datagram, Inbox, Link, LinkStats

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


class MqttLink(Link):
    """Datagrams through an MQTT broker (see the module docstring)."""

    backoff_min = 0.2  # seconds before the first reconnect attempt
    backoff_max = 5.0
    connect_timeout = 5.0

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
        self.url = url  # already redacted by open_url
        self.mtu = MAX_PACKET_LEN
        self.stats = LinkStats()
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
        self.closed = False
        self.connected = False
        self._client: object | None = None  # the aiomqtt.Client of the current session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._txq: deque[bytes] = deque()
        self._tx_wake = asyncio.Event()
        self._writing = False
        self._room: list[asyncio.Future[None]] = []
        self._idle: list[asyncio.Future[None]] = []
        self._inbox = Inbox(MAX_RX_QUEUE)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<{type(self).__name__} {self.url} {state}>"

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

    # -- queue views

    def queued(self) -> int:
        """Datagrams accepted by ``send`` and not yet acknowledged by the broker."""
        return len(self._txq)

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)

    # -- the Link interface

    async def connect(self) -> None:
        """Connect now (``send``/``recv`` do it on first use); LinkError if it fails."""
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise LinkError(f"{self.url} is in use by another event loop")
        self._loop = loop
        if self._task is None or self._task.done():
            self._first = loop.create_future()
            self._task = loop.create_task(self._run(self._first), name=f"mqtt {self.url}")
        assert self._first is not None
        await asyncio.shield(self._first)

    async def ready(self) -> None:
        """What ``relay link check`` awaits before probing: the broker is connected."""
        await self.connect()

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        if self.closed:
            self.stats.refused += 1
            raise LinkError(f"{self.url} is closed")
        if len(data) > self.mtu:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes exceeds the link MTU of {self.mtu} bytes "
                f"({self.url})"
            )
        if len(data) < 2:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes has no room hint (byte 1); MQTT topics need it"
            )
        await self.connect()
        while len(self._txq) >= self.queue:
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
        """Wait until the broker acknowledged every queued datagram.

        While the broker is unreachable this waits for it to come back (wrap it in a timeout)."""
        if self.closed or self._loop is None:
            return
        while (self._txq or self._writing) and not self.closed:
            await self._wait(self._idle)

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
        self.connected = False
        self._inbox.clear()
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        _wake(self._room)
        _wake(self._idle)

    # -- helpers

    def _drop_oldest(self) -> None:
        self._txq.popleft()
        self.stats.dropped += 1
        self.stats.bump("tx_dropped")
        log.warning(
            "%s: broker unreachable and %d datagrams already queued; dropped the oldest "
            "(%d dropped so far)",
            self.url,
            self.queue,
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

    async def _run(self, first: asyncio.Future[None]) -> None:
        """Connect, serve, and reconnect with backoff until closed."""
        import aiomqtt

        delay = self.backoff_min
        down_since: float | None = None
        assert self._loop is not None
        while not self.closed:
            client = self._make_client()
            try:
                await client.__aenter__()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # MqttError, OSError, ssl errors: never hang
                if not isinstance(exc, aiomqtt.MqttError | OSError):
                    log.error("%s: unexpected error connecting", self.url, exc_info=exc)
                if not first.done():
                    first.set_exception(LinkError(self._unreachable(exc)))
                    return
                self.stats.bump("reconnect_failures")
                log.info("%s: reconnect failed (%s); next try in %.1f s", self.url, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            try:
                reason = await self._session(client, first, down_since)
            finally:
                self.connected = False
                self._client = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 1.0)  # type: ignore[attr-defined]
            delay = self.backoff_min
            if self.closed:
                return
            down_since = self._loop.time()
            self.stats.bump("disconnects")
            log.warning(
                "%s: lost the broker (%s); reconnecting, %d datagrams queued",
                self.url,
                reason,
                len(self._txq),
            )
            await asyncio.sleep(self.backoff_min * random.uniform(0.8, 1.2))

    async def _session(
        self, client: object, first: asyncio.Future[None], down_since: float | None
    ) -> str:
        """Subscribe, then serve one connection; return why it ended."""
        import aiomqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        assert self._loop is not None
        try:
            for topic in self.topics():
                await client.subscribe(  # type: ignore[attr-defined]
                    topic, options=SubscribeOptions(qos=1, noLocal=True)
                )
        except aiomqtt.MqttError as exc:
            if not first.done():
                first.set_exception(LinkError(self._unreachable(exc)))
            return f"subscribe failed: {exc}"
        self._client = client
        self.connected = True
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
        tasks = [
            asyncio.create_task(self._read_loop(client), name=f"mqtt read {self.url}"),
            asyncio.create_task(self._write_loop(client), name=f"mqtt write {self.url}"),
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
            if isinstance(exc, aiomqtt.MqttError | OSError):
                return str(exc) or type(exc).__name__
            if exc is not None:
                log.error("%s: unexpected error; reconnecting", self.url, exc_info=exc)
                return f"unexpected {type(exc).__name__}: {exc}"
        return "connection ended"

    async def _read_loop(self, client: object) -> None:
        async for message in client.messages:  # type: ignore[attr-defined]
            self._on_message(str(message.topic), message.payload)

    async def _write_loop(self, client: object) -> None:
        while True:
            while not self._txq:
                self._tx_wake.clear()
                await self._tx_wake.wait()
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
            _wake(self._room)
            if not self._txq:
                _wake(self._idle)

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


def _wake(futures: list[asyncio.Future[None]]) -> None:
    waiting = list(futures)
    futures.clear()
    for fut in waiting:
        if not fut.done():
            fut.set_result(None)


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
