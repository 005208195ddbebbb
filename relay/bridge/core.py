"""The bridge core: which link each arriving sealed packet goes out on (sans-I/O).

A bridge is not a room member: it sees sealed packets and their clear headers only. The
core takes ``(link, bytes, time)`` and answers with the sends to make. It guarantees:

* dedup across paths: a packet (by hash of its sealed bytes) is forwarded at most once
  within the dedup window, however many links or gateways it arrives from;
* no echo: a packet never goes back out of the link it came from, never twice onto a link --
  except on a link registered to ``repeat`` (a store-and-forward repeater on one channel),
  where each packet goes back out exactly once (dedup stops the echoes of the echo);
* loop prevention on MQTT: the :class:`~relay.bridge.envelope.Envelope` carries a hop count
  and the publishing gateway id; our own publishes and exhausted hops are dropped, counted;
* airtime discipline: packets bound for a radio link with a :class:`Pacer` are queued there
  and released by :meth:`BridgeCore.due`; what the pacer refuses comes back as notices.

Store and forward on one channel costs a second transmission of everything repeated: the
planner's "+relay" column (``relay plan``) is that channel occupancy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from relay.bridge.dedup import DedupCache
from relay.bridge.envelope import MAX_HOPS, Envelope
from relay.bridge.pacer import Pacer, PacerDecision
from relay.core.ham import is_ham
from relay.core.wire import Header
from relay.errors import PacketError, UsageError

DEFAULT_HOP_LIMIT = 4


class LinkKind(enum.Enum):
    RADIO = "radio"  # carries bare sealed packets
    MQTT = "mqtt"  # carries enveloped packets


@dataclass(frozen=True, slots=True)
class Send:
    """Hand ``data`` to link ``link`` (already enveloped for MQTT links)."""

    link: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Notice:
    """A pacer decision worth telling someone about (a refused or cut over, a drop)."""

    link: str
    decision: PacerDecision
    source: str = ""  # the link the packet came from (where a speaker can be told)
    counter: int = 0  # the packet's send counter


@dataclass(slots=True)
class Outcome:
    """What the core decided about one arriving datagram."""

    sends: list[Send] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    dropped: str | None = None  # why nothing was forwarded (a counter key), if so


@dataclass(slots=True)
class BridgeStats:
    """Counters of one bridge core."""

    received: dict[str, int] = field(default_factory=dict)
    forwarded: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def bump(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


@dataclass(slots=True)
class _Link:
    name: str
    kind: LinkKind
    pacer: Pacer | None
    repeat: bool = False
    ham: bool = False  # an amateur band: only signed ham packets go on it


class BridgeCore:
    """Forwarding decisions for one bridge process (one gateway id)."""

    def __init__(
        self,
        gateway_id: int,
        *,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        dedup: DedupCache | None = None,
    ) -> None:
        if not 0 <= gateway_id < 1 << 32:
            raise UsageError(f"gateway id {gateway_id} out of range 0..{(1 << 32) - 1}")
        if not 1 <= hop_limit <= MAX_HOPS:
            raise UsageError(f"hop limit must be in 1..{MAX_HOPS}, got {hop_limit}")
        self.gateway_id = gateway_id
        self.hop_limit = hop_limit
        self.dedup = dedup if dedup is not None else DedupCache()
        self.stats = BridgeStats()
        self._links: dict[str, _Link] = {}

    def add_link(
        self,
        name: str,
        kind: LinkKind,
        pacer: Pacer | None = None,
        *,
        repeat: bool = False,
        ham: bool = False,
    ) -> None:
        """Register a link; a radio link with a pacer gets paced output; ``repeat`` sends what
        it hears back onto it (store and forward on one channel); ``ham``: it is on an
        amateur band, where encryption is forbidden, so only signed ham packets
        (relay.core.ham) go onto it and encrypted packets heard on it are not carried on."""
        if name in self._links:
            raise UsageError(f"link {name!r} is already registered")
        if pacer is not None and kind is not LinkKind.RADIO:
            raise UsageError("only radio links are paced")
        if repeat and kind is not LinkKind.RADIO:
            raise UsageError("only radio links repeat onto themselves")
        if ham and kind is not LinkKind.RADIO:
            raise UsageError("only radio links are on amateur bands")
        self._links[name] = _Link(name, kind, pacer, repeat, ham)

    def _drop(self, out: Outcome, reason: str) -> Outcome:
        out.dropped = reason
        self.stats.bump(self.stats.dropped, reason)
        return out

    def receive(self, link: str, data: bytes, now: float) -> Outcome:
        """Decide what to do with ``data`` that arrived on ``link`` at ``now``."""
        source = self._links.get(link)
        if source is None:
            raise UsageError(f"unknown link {link!r}")
        self.stats.bump(self.stats.received, link)
        out = Outcome()
        hops = -1  # as if published by nobody: the next publish is hop 0
        packet = bytes(data)
        if source.kind is LinkKind.MQTT:
            try:
                env = Envelope.parse(packet)
            except PacketError:
                return self._drop(out, "malformed_envelope")
            if env.gateway == self.gateway_id:
                return self._drop(out, "own_echo")
            if env.hops >= self.hop_limit:
                return self._drop(out, "hop_limit")
            hops, packet = env.hops, env.packet
        try:
            header = Header.parse(packet)
        except PacketError:
            return self._drop(out, "malformed_packet")
        ham = is_ham(packet)
        if source.ham and not ham:  # never mixed: not ours to carry off an amateur band
            return self._drop(out, "encrypted_on_ham_link")
        if not self.dedup.check_and_add(packet, now):
            return self._drop(out, "duplicate")
        for target in self._links.values():  # each link once; the source only if it repeats
            if target.name == source.name and not target.repeat:
                continue
            if target.ham and not ham:  # encryption is forbidden there: refused, counted
                self.stats.bump(self.stats.dropped, "encrypted_to_ham_link")
                continue
            if target.kind is LinkKind.MQTT:
                if hops + 1 >= self.hop_limit:
                    self.stats.bump(self.stats.dropped, "hop_limit_out")
                    continue
                env = Envelope(hops=hops + 1, gateway=self.gateway_id, packet=packet)
                out.sends.append(Send(target.name, env.pack()))
            elif target.pacer is None:
                out.sends.append(Send(target.name, packet))
            else:
                # What came from MQTT is unverifiable and may come from anyone who can
                # publish to the broker: it pays from its hint's airtime budget.
                trusted = source.kind is not LinkKind.MQTT
                for decision in target.pacer.offer(packet, now, header, trusted=trusted):
                    if not decision.queued:
                        out.notices.append(
                            Notice(target.name, decision, source.name, header.counter)
                        )
                continue
            self.stats.bump(self.stats.forwarded, target.name)
        return out

    def originate(self, link: str, packet: bytes, now: float) -> list[Send]:
        """Send a packet of the bridge's own (a relay notice) on ``link``: enveloped for MQTT,
        paced (as control) for a paced radio; its echo will be a duplicate."""
        target = self._links.get(link)
        if target is None:
            raise UsageError(f"unknown link {link!r}")
        self.dedup.check_and_add(packet, now)
        if target.pacer is not None:
            target.pacer.offer(packet, now)  # released (and counted) by due()
            return []
        self.stats.bump(self.stats.forwarded, link)
        if target.kind is LinkKind.MQTT:
            packet = Envelope(hops=0, gateway=self.gateway_id, packet=packet).pack()
        return [Send(link, packet)]

    def due(self, now: float) -> list[Send]:
        """Paced radio transmissions to make now."""
        sends: list[Send] = []
        for link in self._links.values():
            if link.pacer is not None:
                for packet in link.pacer.due(now):
                    self.dedup.touch(packet, now)  # its echo may come back long after arrival
                    self.stats.bump(self.stats.forwarded, link.name)
                    sends.append(Send(link.name, packet))
        return sends

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`due` may next have something (None: no pacer holds anything)."""
        times = [
            t
            for link in self._links.values()
            if link.pacer is not None and (t := link.pacer.next_wakeup(now)) is not None
        ]
        return min(times) if times else None
