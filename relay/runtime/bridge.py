"""A repeater or bridge process: the async driver around the sans-I/O :class:`BridgeCore`.

:class:`Bridge` owns a set of named links. For each link a receive task feeds every datagram
to ``core.receive(name, data, loop.time())`` and queues the resulting sends; a sender task
per link hands them to the link in order (a slow link never blocks the others); a timer task
releases what the radio pacers hold (``core.due``) at ``core.next_wakeup``. Notices (whole
overs refused or cut for airtime) are logged and counted.

Radio links (every scheme but ``mqtt://``/``mqtts://``) get a :class:`Pacer` built from the
link's own ``airtime()`` and the bridge's duty cycle, so traffic from a faster side never
overruns a radio's budget.

**MQTT links carry bare sealed packets.** The v1 topic layout of :mod:`relay.links.mqtt`
puts the sealed packet itself in the payload (so internet-only members on ``mqtt://`` read
it, and the topic is the packet's room hint), so the bridge registers MQTT links with the
core as unpaced plain links, not as envelope-carrying :attr:`LinkKind.MQTT`. Loops through
the broker are stopped by MQTT 5 *no local* (a bridge never hears its own publishes) and by
the core's dedup (a packet is forwarded at most once per dedup window, from wherever it came).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relay.bridge.core import BridgeCore, LinkKind, Notice, Send
from relay.bridge.pacer import Pacer
from relay.errors import LinkError, RelayError, UsageError
from relay.links.base import Link

log = logging.getLogger(__name__)

MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})
DEFAULT_OUT_QUEUE = 1024  # datagrams waiting for one link before the oldest is dropped
STOP_DRAIN_TIMEOUT = 2.0

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


@dataclass(slots=True)
class BridgeCounters:
    """What the driver itself counts (the core and pacers count the rest)."""

    notices: dict[str, int] = field(default_factory=dict)  # pacer decision reason -> count
    send_errors: dict[str, int] = field(default_factory=dict)  # link -> failed sends
    out_dropped: dict[str, int] = field(default_factory=dict)  # link -> outbound queue full
    recv_closed: list[str] = field(default_factory=list)  # links whose receive ended


class Bridge:
    """Forwards sealed packets between ``links`` (see the module docstring).

    ``duty_cycle`` (0 < f <= 1) is the airtime budget of every radio link's pacer over a
    sliding ``window``; ``gateway_id`` defaults to a random 32-bit id.
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
    ) -> None:
        self.links: dict[str, BridgeLink] = {}
        for bl in links:
            if bl.name in self.links:
                raise UsageError(f"link name {bl.name!r} given twice")
            self.links[bl.name] = bl
        if len(self.links) < 2:
            raise UsageError("a bridge needs at least two links")
        if out_queue < 1:
            raise UsageError(f"out_queue must be >= 1, got {out_queue}")
        self.gateway_id = secrets.randbits(32) if gateway_id is None else gateway_id
        self.core = core if core is not None else BridgeCore(self.gateway_id)
        self.pacers: dict[str, Pacer] = {}
        for bl in self.links.values():
            if bl.kind is LinkKind.RADIO:
                pacer = Pacer(bl.link.airtime, duty_cycle, window)
                self.pacers[bl.name] = pacer
                self.core.add_link(bl.name, LinkKind.RADIO, pacer)
            else:  # bare packets on MQTT: see the module docstring
                self.core.add_link(bl.name, LinkKind.RADIO)
        self.counters = BridgeCounters()
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
        loop = asyncio.get_running_loop()
        while True:
            try:
                dgram = await bl.link.recv()
            except LinkError as exc:
                if self._running:
                    log.warning("bridge: %s stopped receiving: %s", bl.name, exc)
                    self.counters.recv_closed.append(bl.name)
                return
            out = self.core.receive(bl.name, dgram.data, loop.time())
            self._dispatch(out.sends)
            for notice in out.notices:
                self._notice(notice)
            if self._wake is not None:
                self._wake.set()  # a pacer may hold something new

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            now = loop.time()
            self._dispatch(self.core.due(now))
            wakeup = self.core.next_wakeup(loop.time())
            timeout = None if wakeup is None else max(0.0, wakeup - loop.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

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
        if d.notify:
            hint, sender = d.key if d.key is not None else (None, None)
            log.warning(
                "bridge: %s on %s (room hint %s, sender %s): over exceeds the airtime budget",
                d.reason.replace("_", " "),
                notice.link,
                "?" if hint is None else f"{hint:02x}",
                "?" if sender is None else f"{sender:04x}",
            )
        if self._on_notice is not None:
            self._on_notice(notice)

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
