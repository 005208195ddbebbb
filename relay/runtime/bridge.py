"""A repeater or bridge process: the async driver around the sans-I/O :class:`BridgeCore`.

:class:`Bridge` owns a set of named links. For each link a receive task feeds every datagram
to ``core.receive(name, data, loop.time())`` and queues the resulting sends; a sender task
per link hands them to the link in order (a slow link never blocks the others); a timer task
releases what the radio pacers hold (``core.due``) at ``core.next_wakeup``. Notices (whole
overs refused or cut for airtime) are logged and counted; a bridge given an ``identity``
also tells the speaker's side with a signed relay notice (:mod:`relay.core.notice`), sent
back on the link the over came from.

Radio links (every scheme but ``mqtt://``/``mqtts://``) get a :class:`Pacer` built from the
link's own ``airtime()`` and the bridge's duty cycle, so traffic from a faster side never
overruns a radio's budget.

**MQTT links carry envelopes.** An ``mqtt://`` link (anything with ``carry_envelopes``) is
told the bridge's gateway id and registered with the core as :attr:`LinkKind.MQTT`: each
packet crosses the broker with its hop count and the id of the bridge that published it
(inside the v2 batch payload, see :mod:`relay.links.mqtt`), so a loop of bridges through
one or several brokers stops at the hop limit, and the core drops its own echoes. Members
on ``mqtt://`` (talk/listen) see bare packets and publish with hop 0. A link given as
:attr:`LinkKind.MQTT` that cannot carry envelopes is forwarded to as a plain, unpaced link.

**Garbage collection.** The first bridge a process starts freezes the heap it finds
(:func:`freeze_startup_heap`), so the collector's full passes no longer stall the event loop
for tens of milliseconds walking modules and classes.

**Receive tasks heal.** A link whose ``recv`` raises (anything but being closed) gets its
receive task restarted with exponential backoff (``RECV_BACKOFF_MIN``..``RECV_BACKOFF_MAX``),
counted per link (``recv_restarts``) and logged; a closed link ends its task for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relay.bridge.core import DEFAULT_HOP_LIMIT, BridgeCore, LinkKind, Notice, Send
from relay.bridge.notices import NoticeLimiter
from relay.bridge.pacer import Pacer
from relay.core.crypto import HINT_EPOCH_SECONDS, RoomKeys, hint_epoch
from relay.core.identity import Identity
from relay.core.notice import NoticeReason, RelayNotice, build_notice
from relay.core.session import HINT_TOLERANCE
from relay.errors import LinkError, RelayError, UsageError
from relay.links.base import Link

log = logging.getLogger(__name__)

MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})
DEFAULT_OUT_QUEUE = 1024  # datagrams waiting for one link before the oldest is dropped
STOP_DRAIN_TIMEOUT = 2.0
RECV_BACKOFF_MIN = 0.1  # seconds before restarting a failed receive task
RECV_BACKOFF_MAX = 5.0

NoticeHook = Callable[[Notice], None]


def link_kind(url: str) -> LinkKind:
    """MQTT for ``mqtt://``/``mqtts://`` URLs, RADIO for everything else."""
    return LinkKind.MQTT if urlsplit(url).scheme.lower() in MQTT_SCHEMES else LinkKind.RADIO


@dataclass(slots=True)
class BridgeLink:
    """One link of a bridge: its name in stats and logs, the link, and its kind."""

    name: str
    link: Link
    kind: LinkKind
    repeat: bool = False  # store and forward: send what it hears back onto it, once
    ham: bool = False  # an amateur band: only signed ham packets go on it (BridgeCore)


@dataclass(slots=True)
class BridgeCounters:
    """What the driver itself counts (the core and pacers count the rest)."""

    notices: dict[str, int] = field(default_factory=dict)  # pacer decision reason -> count
    send_errors: dict[str, int] = field(default_factory=dict)  # link -> failed sends
    out_dropped: dict[str, int] = field(default_factory=dict)  # link -> outbound queue full
    recv_closed: list[str] = field(default_factory=list)  # links whose receive ended
    recv_restarts: dict[str, int] = field(default_factory=dict)  # link -> recv failures


class Bridge:
    """Forwards sealed packets between ``links`` (see the module docstring).

    ``duty_cycle`` (0 < f <= 1) is the airtime budget of every radio link's pacer over a
    sliding ``window``; ``gateway_id`` defaults to a random 32-bit id (the core's, if a
    ``core`` is given); ``hop_limit`` bounds how many bridges republish a packet on MQTT.
    """

    def __init__(
        self,
        links: Iterable[BridgeLink],
        *,
        gateway_id: int | None = None,
        duty_cycle: float = 1.0,
        window: float = 3600.0,
        on_notice: NoticeHook | None = None,
        out_queue: int = DEFAULT_OUT_QUEUE,
        core: BridgeCore | None = None,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        identity: Identity | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity  # signs relay notices; None: refusals are only logged
        self.clock = clock  # UNIX time for the notices' issue time
        self.links: dict[str, BridgeLink] = {}
        for bl in links:
            if bl.name in self.links:
                raise UsageError(f"link name {bl.name!r} given twice")
            if bl.repeat and bl.kind is not LinkKind.RADIO:
                raise UsageError("only radio links repeat onto themselves")
            if bl.ham and bl.kind is not LinkKind.RADIO:
                raise UsageError("only radio links are on amateur bands")
            self.links[bl.name] = bl
        if len(self.links) < 2 and not any(bl.repeat for bl in self.links.values()):
            raise UsageError("a bridge needs at least two links (or one that repeats)")
        if out_queue < 1:
            raise UsageError(f"out_queue must be >= 1, got {out_queue}")
        if gateway_id is None:
            gateway_id = core.gateway_id if core is not None else secrets.randbits(32)
        self.gateway_id = gateway_id
        if core is None:
            core = BridgeCore(self.gateway_id, hop_limit=hop_limit)
        elif core.gateway_id != self.gateway_id:
            raise UsageError("the core's gateway id differs from the bridge's")
        self.core = core
        self.pacers: dict[str, Pacer] = {}
        for bl in self.links.values():
            if bl.kind is LinkKind.RADIO:
                pacer = Pacer(bl.link.airtime, duty_cycle, window)
                self.pacers[bl.name] = pacer
                self.core.add_link(bl.name, LinkKind.RADIO, pacer, repeat=bl.repeat, ham=bl.ham)
            elif hasattr(bl.link, "carry_envelopes"):  # see the module docstring
                bl.link.carry_envelopes(self.gateway_id)
                self.core.add_link(bl.name, LinkKind.MQTT)
            else:  # an MQTT-kind link without envelopes: plain and unpaced
                self.core.add_link(bl.name, LinkKind.RADIO)
        self.counters = BridgeCounters()
        self.notice_limit = NoticeLimiter()  # notices are 141 B each: never an amplifier
        self._on_notice = on_notice
        self._out_limit = out_queue
        self._out: dict[str, asyncio.Queue[bytes]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._running = False

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the receive, send and timer tasks."""
        if self._running:
            raise UsageError("the bridge is already running")
        loop = asyncio.get_running_loop()
        freeze_startup_heap()
        self._running = True
        self._started_at = loop.time()
        self._wake = asyncio.Event()
        for name, bl in self.links.items():
            self._out[name] = asyncio.Queue()
            self._tasks.append(loop.create_task(self._receive(bl), name=f"bridge rx {name}"))
            self._tasks.append(loop.create_task(self._sender(bl), name=f"bridge tx {name}"))
        self._tasks.append(loop.create_task(self._timer(), name="bridge timer"))

    async def stop(self, *, close_links: bool = True, drain: float = STOP_DRAIN_TIMEOUT) -> None:
        """Stop receiving, give queued sends up to ``drain`` seconds, then close the links."""
        if not self._running:
            return
        self._running = False
        loop = asyncio.get_running_loop()
        receivers = [t for t in self._tasks if t.get_name().startswith("bridge rx")]
        for task in receivers:
            task.cancel()
        deadline = loop.time() + drain
        while loop.time() < deadline and (
            any(not q.empty() for q in self._out.values())
            or any(p.backlog() for p in self.pacers.values())
        ):
            await asyncio.sleep(0.02)
        for bl in self.links.values():
            with contextlib.suppress(TimeoutError, RelayError):
                await asyncio.wait_for(bl.link.drain(), max(0.0, deadline - loop.time()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._stopped_at = loop.time()
        if close_links:
            for bl in self.links.values():
                with contextlib.suppress(RelayError):
                    await bl.link.close()

    async def run(self, stop: asyncio.Event | None = None, duration: float | None = None) -> None:
        """Run until ``stop`` is set or ``duration`` seconds passed (else until cancelled)."""
        await self.start()
        try:
            waiter = stop.wait() if stop is not None else asyncio.Event().wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, duration)
        finally:
            await asyncio.shield(self.stop())

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- tasks
    async def _receive(self, bl: BridgeLink) -> None:
        """Feed what ``bl`` receives to the core; restart after a failure (backoff)."""
        loop = asyncio.get_running_loop()
        delay = RECV_BACKOFF_MIN
        while True:
            try:
                dgram = await bl.link.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if getattr(bl.link, "closed", False) or not self._running:
                    if self._running:
                        log.warning("bridge: %s stopped receiving: %s", bl.name, exc)
                        self.counters.recv_closed.append(bl.name)
                    return
                bump(self.counters.recv_restarts, bl.name)
                log.warning(
                    "bridge: receiving on %s failed (%s: %s); restarting in %.1f s",
                    bl.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECV_BACKOFF_MAX)
                continue
            delay = RECV_BACKOFF_MIN
            out = self.core.receive(bl.name, dgram.data, loop.time())
            self._dispatch(out.sends)
            for notice in out.notices:
                self._notice(notice)
            if self._wake is not None:
                self._wake.set()  # a pacer may hold something new

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        while True:
            self._dispatch(self.core.due(loop.time()))
            wakeup = self.core.next_wakeup(loop.time())
            wake.clear()
            # A timer handle, not wait_for(): this runs once per received packet when busy.
            handle = None if wakeup is None else loop.call_at(wakeup, wake.set)
            try:
                await wake.wait()
            finally:
                if handle is not None:
                    handle.cancel()

    async def _sender(self, bl: BridgeLink) -> None:
        queue = self._out[bl.name]
        while True:
            data = await queue.get()
            try:
                await bl.link.send(data)
            except (LinkError, UsageError) as exc:
                bump(self.counters.send_errors, bl.name)
                log.warning("bridge: send on %s failed: %s", bl.name, exc)

    def _dispatch(self, sends: Iterable[Send]) -> None:
        for send in sends:
            queue = self._out.get(send.link)
            if queue is None:
                continue
            if queue.qsize() >= self._out_limit:
                queue.get_nowait()  # the oldest goes: fresh voice is worth more
                bump(self.counters.out_dropped, send.link)
            queue.put_nowait(send.data)

    def _notice(self, notice: Notice) -> None:
        d = notice.decision
        bump(self.counters.notices, d.reason)
        if d.notify and d.key is not None:
            # Refused overs can be made by anyone who publishes to the broker: logs and
            # notices about them are rate-limited per hint and speaker (counted beyond).
            now = asyncio.get_running_loop().time()
            if not self.notice_limit.allow(d.key[0], d.key[1], now):
                bump(self.counters.notices, "notice_suppressed")
                if self._on_notice is not None:
                    self._on_notice(notice)
                return
        if d.notify:
            hint, sender = d.key if d.key is not None else (None, None)
            log.warning(
                "bridge: %s on %s (room hint %s, sender %s): over exceeds the airtime budget",
                d.reason.replace("_", " "),
                notice.link,
                "?" if hint is None else f"{hint:02x}",
                "?" if sender is None else f"{sender:04x}",
            )
        if d.notify and self.identity is not None and d.key is not None and notice.source:
            self._tell_speaker(notice, d.key)
        if self._on_notice is not None:
            self._on_notice(notice)

    def _tell_speaker(self, notice: Notice, key: tuple[int, int]) -> None:
        """Send a signed relay notice back where the refused over came from."""
        assert self.identity is not None
        reason = NoticeReason.CUT if notice.decision.reason == "over_cut" else NoticeReason.AIRTIME
        relay_notice = RelayNotice(
            reason,
            hint=key[0],
            speaker=key[1],
            first_counter=notice.counter,
            packets=1,
            issued_at=int(self.clock()) & 0xFFFFFFFF,
            relay=self.identity.public,
        )
        packet = build_notice(self.identity, relay_notice)
        now = asyncio.get_running_loop().time()
        self._dispatch(self.core.originate(notice.source, packet, now))
        bump(self.counters.notices, "told_speaker")

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        """Counters for reports and ``--json`` (no packet contents)."""
        s = self.core.stats
        loop_time = self._stopped_at
        if loop_time is None:
            with contextlib.suppress(RuntimeError):
                loop_time = asyncio.get_running_loop().time()
        uptime = 0.0
        if self._started_at is not None and loop_time is not None:
            uptime = loop_time - self._started_at
        links = {}
        for name, bl in self.links.items():
            entry: dict[str, Any] = {
                "url": bl.link.url,
                "kind": bl.kind.value,
                "received": s.received.get(name, 0),
                "forwarded": s.forwarded.get(name, 0),
                "send_errors": self.counters.send_errors.get(name, 0),
                "out_dropped": self.counters.out_dropped.get(name, 0),
                "recv_restarts": self.counters.recv_restarts.get(name, 0),
            }
            ls = getattr(bl.link, "stats", None)
            if ls is not None:  # the driver's own counters: reconnects, drops, echoes...
                entry["link"] = {
                    "sent": ls.sent,
                    "received": ls.received,
                    "refused": ls.refused,
                    "dropped": ls.dropped,
                    **dict(sorted(ls.extra.items())),
                }
            pacer = self.pacers.get(name)
            if pacer is not None:
                p = pacer.stats
                entry["paced"] = {
                    "sent": p.sent,
                    "airtime_s": round(p.airtime_s, 3),
                    "overs_admitted": p.overs_admitted,
                    "overs_refused": p.overs_refused,
                    "overs_cut": p.overs_cut,
                    "voice_dropped": p.voice_dropped,
                    "control_dropped": p.control_dropped,
                    "bulk_sent": p.bulk_sent,
                    "bulk_dropped": p.bulk_dropped,
                    "hint_dropped": p.hint_dropped,
                    "backlog": pacer.backlog(),
                }
            links[name] = entry
        return {
            "gateway_id": self.gateway_id,
            "uptime_s": round(uptime, 3),
            "received": sum(s.received.values()),
            "forwarded": sum(s.forwarded.values()),
            "dropped": dict(sorted(s.dropped.items())),
            "notices": dict(sorted(self.counters.notices.items())),
            "overs_refused": sum(p.stats.overs_refused for p in self.pacers.values()),
            "overs_cut": sum(p.stats.overs_cut for p in self.pacers.values()),
            "links": links,
        }


_heap_frozen = False


def freeze_startup_heap() -> None:
    """Move everything alive now (modules, classes, the links) out of the cyclic garbage
    collector's reach, once per process.

    A full collection walks every tracked object: about 15 ms for a bridge's startup heap on
    a quiet 2-core machine, up to 50 ms on a busy one, a stall every voice packet arriving
    meanwhile waits out (measured with bench/bridge.py). Frozen objects are never collected
    (what is garbage at this point was collected just before), so later collections only
    walk what the bridge allocated since."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()


class RoomFilter:
    """The room hints a bridge carries: fixed hints, plus the hints of rooms named by their
    keys (``relay bridge --room market``), which rotate hourly.

    A named room's hints are those of the hint epochs within ``tolerance`` of now, the same
    set a member's receiver tries first, so a sender's clock a little off still gets through.
    Only the hint key derived from the room key is used: the bridge opens nothing.
    """

    def __init__(
        self,
        hints: Iterable[int] = (),
        keys: Iterable[RoomKeys] = (),
        tolerance: int = HINT_TOLERANCE,
        names: Iterable[str] = (),
    ) -> None:
        self.fixed = frozenset(hints)
        self.keys = list(keys)
        self.tolerance = tolerance
        self.names = list(names)  # of the rooms whose keys these are, for people

    def describe(self) -> str:
        """What is carried, for the start line (hints are public: they are on the air)."""
        parts = [f"room {name}" for name in self.names]
        parts += [f"hint {h:02x}" for h in sorted(self.fixed)]
        return ", ".join(parts)

    def hints(self, now: float) -> frozenset[int]:
        """The hints to carry at UNIX time ``now``."""
        rotating = (k.hints_near(now, self.tolerance) for k in self.keys)
        return self.fixed.union(*rotating)

    def next_change(self, now: float) -> float | None:
        """When the set changes next (the next hint epoch), or None if it never does."""
        if not self.keys:
            return None
        return (hint_epoch(now) + 1) * HINT_EPOCH_SECONDS


async def follow_rooms(
    links: Iterable[Link],
    rooms: RoomFilter,
    clock: Callable[[], float] = time.time,
) -> None:
    """Keep every link that filters by room (``set_rooms``) on ``rooms``' current hints,
    changing them as the hints rotate; runs until cancelled (returns at once if fixed)."""
    targets = [f for f in (getattr(link, "set_rooms", None) for link in links) if f is not None]
    current: frozenset[int] | None = None
    while True:
        now = clock()
        hints = rooms.hints(now)
        if hints != current:
            for set_rooms in targets:
                await set_rooms(hints)
            current = hints
        change = rooms.next_change(now)
        if change is None:
            return
        await asyncio.sleep(max(1.0, change - clock() + 1.0))


def bump(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


def stats_line(stats: dict[str, Any]) -> str:
    """One human line summarising :meth:`Bridge.stats`."""
    dropped = stats["dropped"]
    dup = dropped.get("duplicate", 0)
    other = sum(v for k, v in dropped.items() if k != "duplicate")
    per_link = ", ".join(
        f"{name} rx {e['received']} tx {e['forwarded']}" for name, e in stats["links"].items()
    )
    return (
        f"received {stats['received']}  forwarded {stats['forwarded']}  duplicates {dup}  "
        f"dropped {other}  overs refused {stats['overs_refused']}  cut {stats['overs_cut']}  "
        f"({per_link}; {stats['uptime_s']:.1f} s)"
    )
