"""Airtime discipline for traffic a bridge puts onto a radio (sans-I/O).

The internet can offer far more than a radio may carry under its duty cycle. The pacer holds
what is offered for one outbound radio link and releases it one transmission at a time:

* control and HELLO packets (clear type != VOICE) go first: moderation must get through;
* voice is grouped into overs per (room hint, sender short id), the only grouping the clear
  header allows; an over starts with the first voice packet after a silence of ``gap``;
* a new over is admitted only if the remaining budget can carry a reserve for it, otherwise
  it is refused whole (every packet of it, until the next gap), counted and reported once so
  the runtime can tell the room why. An admitted over is never dropped for budget: its
  packets wait instead, because half an over is worse than none.

Only as a last resort, when an admitted over's backlog exceeds ``max_backlog`` packets, is
it cut (counted and reported): memory stays bounded even if the admission estimate was wrong.

**Untrusted traffic** (``offer(..., trusted=False)``: what arrived from MQTT, where anyone who
can publish to the broker can inject; a bridge is not a room member and verifies nothing but
the clear header) pays per room hint, from token buckets of airtime that refill at a share
of the radio's budget rate (``duty_cycle`` airtime seconds per second):

* every packet of a hint, from a bucket refilling at ``hint_share`` (default 0.4: a live
  over needs 0.18-0.41 of the channel on the presets live voice fits), holding at most
  ``hint_burst`` seconds of airtime (default: 10 packets of 233 B);
* control, hello and notices (which go first) from a smaller bucket of their own per
  hint, ``control_share`` (0.05, about twice what a room's beacons, grants and seals use);
* a new over is admitted only if its hint's bucket holds its reserve; an admitted over whose
  hint's bucket runs dry is cut (its hint is flooding), other packets beyond it are dropped,
  counted as ``hint_dropped``. At most ``max_overs_per_hint`` overs are tracked per hint.

So a flood of junk for one hint takes at most 45 % of the radio (a burst aside): it cannot
starve the radio, another room's over, or the island's own traffic. It can still crowd out
its own hint's real traffic (the bridge cannot tell which is real), and floods on several
hints at once add up (to the duty-cycle budget; voice is served fair between hints, so each
flooded hint delays another room's over only by its share): a bridge that carries only its
rooms' hints (``?room=``) is not exposed to the others. Both are said in THREATS.md.

Voice-message packets (clear type CLIP: pieces and acknowledgements) are bulk traffic,
stored and forwarded: they wait behind control and behind live voice (never between two
packets of an over that is still going, which would delay it by a whole piece's airtime),
go out only from budget no admitted over holds, and are never refused for budget: they
wait. Only a bulk queue past ``max_bulk`` packets drops (counted as ``bulk_dropped``). They
do not count against the admission of new overs: live voice comes first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.core.ratelimit import Buckets
from relay.core.wire import VOICE_TYPES, Header, PacketType
from relay.errors import PacketError, UsageError
from relay.radio.duty import AirtimeWindow

OverKey = tuple[int, int]  # (room hint, sender short id)

DEFAULT_GAP = 1.5
DEFAULT_RESERVE_PACKETS = 10
DEFAULT_HINT_SHARE = 0.4
DEFAULT_CONTROL_SHARE = 0.05
HINT_BURST_PACKETS = 10  # default hint_burst: this many full packets of airtime
CONTROL_BURST_PACKETS = 8  # default control burst: a grant, beacons, a rekey's fragments
MAX_OVERS_PER_HINT = 256  # overs tracked per hint (a room has one floor holder)
FULL_PACKET = 233  # bytes: the bursts above are counted in packets of a Meshtastic MTU
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PacerDecision:
    """What the pacer did with one offered packet.

    ``notify`` is True once per refused or cut over: the runtime should tell the room why.
    """

    queued: bool
    reason: (
        str  # control | voice | bulk | over_refused | over_cut | too_big | control_overflow
        # | bulk_overflow | malformed | hint_budget
    )
    key: OverKey | None = None
    notify: bool = False


@dataclass(slots=True)
class PacerStats:
    """Counters of one pacer."""

    offered: int = 0
    sent: int = 0
    airtime_s: float = 0.0
    control_sent: int = 0
    voice_sent: int = 0
    overs_admitted: int = 0
    overs_refused: int = 0
    overs_cut: int = 0
    voice_dropped: int = 0  # packets of refused or cut overs
    control_dropped: int = 0
    bulk_sent: int = 0
    bulk_dropped: int = 0
    too_big: int = 0
    malformed: int = 0
    hint_dropped: int = 0  # untrusted packets beyond their hint's airtime budget


@dataclass(slots=True)
class _Over:
    key: OverKey
    last_seen: float
    admitted: bool
    reserve: float  # airtime seconds held for it at admission
    spent: float = 0.0  # airtime queued or sent for it so far
    queued: int = 0
    cut: bool = False


@dataclass(slots=True)
class _Item:
    packet: bytes
    airtime: float
    over: _Over | None


class _FairQueue:
    """Voice waiting for the radio: one FIFO per room hint, served in start-time fair order
    (each backlogged hint gets an equal share of the airtime while they contend), so a
    flooded hint delays its own packets, not another room's over. Quacks like the deque it
    replaced: ``append``, ``popleft``, ``[0]``, ``len`` and truth."""

    __slots__ = ("_len", "_queues", "_tags", "_vt")

    def __init__(self) -> None:
        self._queues: dict[int, deque[_Item]] = {}
        self._tags: dict[int, float] = {}  # per hint: virtual time its next packet starts at
        self._vt = 0.0
        self._len = 0

    def append(self, item: _Item) -> None:
        hint = item.over.key[0] if item.over is not None else -1
        queue = self._queues.get(hint)
        if queue is None:
            queue = self._queues[hint] = deque()
            self._tags[hint] = max(self._tags.get(hint, 0.0), self._vt)
        queue.append(item)
        self._len += 1

    def _head(self) -> int:
        if len(self._queues) == 1:
            return next(iter(self._queues))
        return min(self._queues, key=self._tags.__getitem__)

    def __getitem__(self, index: int) -> _Item:
        if index != 0 or not self._len:
            raise IndexError(index)
        return self._queues[self._head()][0]

    def popleft(self) -> _Item:
        hint = self._head()
        queue = self._queues[hint]
        item = queue.popleft()
        self._len -= 1
        self._vt = self._tags[hint]
        self._tags[hint] += max(item.airtime, 1e-3)  # wired links: plain round robin
        if not queue:
            del self._queues[hint]
            if len(self._tags) > 256:  # at most 256 hints: a stale tag is just forgotten
                self._tags = {h: t for h, t in self._tags.items() if h in self._queues}
        return item

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0


class Pacer:
    """Paces one outbound radio link to its airtime and duty-cycle budget.

    ``airtime(nbytes)`` is the link's own airtime function; the budget is ``duty_cycle *
    window`` seconds of airtime in any sliding ``window``. ``over_reserve`` is the airtime a
    new over must find free to be admitted (default: ``reserve_packets`` times the airtime of
    its first packet).
    """

    def __init__(
        self,
        airtime: Callable[[int], float],
        duty_cycle: float = 1.0,
        window: float = 3600.0,
        *,
        gap: float = DEFAULT_GAP,
        over_reserve: float | None = None,
        reserve_packets: int = DEFAULT_RESERVE_PACKETS,
        max_backlog: int = 1024,
        max_control: int = 256,
        max_bulk: int = 4096,
        hint_share: float = DEFAULT_HINT_SHARE,
        control_share: float = DEFAULT_CONTROL_SHARE,
        hint_burst: float | None = None,
        max_overs_per_hint: int = MAX_OVERS_PER_HINT,
    ) -> None:
        if not 0.0 < duty_cycle <= 1.0:
            raise UsageError(f"duty_cycle must be in (0, 1], got {duty_cycle!r}")
        if not window > 0:
            raise UsageError(f"window must be > 0 seconds, got {window!r}")
        if not gap > 0:
            raise UsageError(f"over gap must be > 0 seconds, got {gap!r}")
        if over_reserve is not None and over_reserve < 0:
            raise UsageError(f"over_reserve must be >= 0 seconds, got {over_reserve!r}")
        if reserve_packets < 1 or max_backlog < 1 or max_control < 1 or max_bulk < 1:
            raise UsageError("reserve_packets, max_backlog, max_control and max_bulk must be >= 1")
        for name, share in (
            ("hint_share", hint_share),
            ("control_share", control_share),
        ):
            if not 0.0 < share <= 1.0:
                raise UsageError(f"{name} must be in (0, 1], got {share!r}")
        if max_overs_per_hint < 1:
            raise UsageError("max_overs_per_hint must be >= 1")
        self.airtime = airtime
        self.budget = duty_cycle * window
        self.window = float(window)
        self.gap = float(gap)
        self.over_reserve = over_reserve
        self.reserve_packets = reserve_packets
        self.max_backlog = max_backlog
        self.max_control = max_control
        self.max_bulk = max_bulk
        self.stats = PacerStats()
        self._control: deque[_Item] = deque()
        self._voice = _FairQueue()
        self._bulk: deque[_Item] = deque()
        self._overs: dict[OverKey, _Over] = {}
        self._air = AirtimeWindow(window)
        self._next_forget = float("-inf")
        self._busy_until = float("-inf")
        self._queued_airtime = 0.0
        self._reserved = 0.0  # sum of the reserves of the admitted overs in _overs
        # Untrusted traffic's airtime, per room hint (256 at most).
        full = max(float(airtime(FULL_PACKET)), 1e-6)  # a wired link: airtime 0, costs 0
        burst = hint_burst if hint_burst is not None else HINT_BURST_PACKETS * full
        self._hint_air = Buckets(hint_share * duty_cycle, burst, 256)
        self._hint_control = Buckets(control_share * duty_cycle, CONTROL_BURST_PACKETS * full, 256)
        self.max_overs_per_hint = max_overs_per_hint
        self._overs_per_hint: dict[int, int] = {}

    # -- budget

    def used(self, now: float) -> float:
        """Airtime counted against the budget in the window ending at ``now``."""
        return self._air.used(now)

    def _available(self, now: float) -> float:
        """Budget left after what was sent, what is queued, and what admitted overs hold."""
        held = sum(
            max(0.0, o.reserve - o.spent)
            for o in self._overs.values()
            if o.admitted and not o.cut and now - o.last_seen <= self.gap
        )
        return self.budget - self.used(now) - self._queued_airtime - held

    def _fits_at(self, now: float, airtime: float) -> float:
        """Earliest time >= now at which ``airtime`` more fits the sliding window."""
        return self._air.fits_at(now, airtime, self.budget)

    # -- offering

    def offer(
        self,
        packet: bytes,
        now: float,
        header: Header | None = None,
        *,
        trusted: bool = True,
    ) -> list[PacerDecision]:
        """Take one packet bound for the radio; say whether it was queued, and why not.

        ``header``: the packet's parsed clear header, if the caller has it already.
        ``trusted=False``: it came from where anyone can inject (MQTT): it pays from its
        hint's airtime buckets (see the module docstring)."""
        self.stats.offered += 1
        self._forget_ended(now)
        if header is None:
            try:
                header = Header.parse(packet)
            except PacketError:
                self.stats.malformed += 1
                return [PacerDecision(False, "malformed")]
        airtime = float(self.airtime(len(packet)))
        if header.ptype in VOICE_TYPES:
            key = (header.hint, header.sender)
            return [self._offer_voice(bytes(packet), airtime, key, now, trusted)]
        if not trusted and airtime > 0 and not self._pay(header.hint, airtime, now, header.ptype):
            return [PacerDecision(False, "hint_budget")]
        if header.ptype == PacketType.CLIP:
            return [self._offer_bulk(bytes(packet), airtime)]
        return [self._offer_control(bytes(packet), airtime)]  # control, hello, relay notices

    def _pay(self, hint: int, airtime: float, now: float, ptype: int | None = None) -> bool:
        """Charge an untrusted packet to its hint's bucket: control (which goes first) to
        its own small one, voice and bulk to the larger one; False if it is short."""
        control = ptype is not None and ptype != PacketType.CLIP
        bucket = self._hint_control if control else self._hint_air
        if not bucket.take(hint, now, airtime):
            self.stats.hint_dropped += 1
            return False
        return True

    def _offer_control(self, packet: bytes, airtime: float) -> PacerDecision:
        if airtime > self.budget + _EPS:
            self.stats.too_big += 1
            self.stats.control_dropped += 1
            return PacerDecision(False, "too_big")
        if len(self._control) >= self.max_control:
            self.stats.control_dropped += 1
            return PacerDecision(False, "control_overflow")
        self._control.append(_Item(packet, airtime, None))
        self._queued_airtime += airtime
        return PacerDecision(True, "control")

    def _offer_bulk(self, packet: bytes, airtime: float) -> PacerDecision:
        if airtime > self.budget + _EPS:
            self.stats.too_big += 1
            self.stats.bulk_dropped += 1
            return PacerDecision(False, "too_big")
        if len(self._bulk) >= self.max_bulk:
            self.stats.bulk_dropped += 1
            return PacerDecision(False, "bulk_overflow")
        self._bulk.append(_Item(packet, airtime, None))
        return PacerDecision(True, "bulk")

    def _over_live(self, now: float) -> float | None:
        """When the last admitted over still going falls silent for ``gap`` (None: none is)."""
        ends = [
            o.last_seen + self.gap
            for o in self._overs.values()
            if o.admitted and not o.cut and now - o.last_seen <= self.gap
        ]
        return max(ends) if ends else None

    def _bulk_ready_at(self, now: float) -> float:
        """Earliest time the head of the bulk queue may go (after live voice, within the
        budget that sent, queued and held traffic leaves)."""
        item = self._bulk[0]
        live = self._over_live(now)
        if live is not None:
            return live + _EPS
        ahead = self._queued_airtime  # control waiting (no over is live, so none is held)
        return self._fits_at(now, item.airtime + ahead)

    def _offer_voice(
        self, packet: bytes, airtime: float, key: OverKey, now: float, trusted: bool = True
    ) -> PacerDecision:
        over = self._overs.get(key)
        if over is None or now - over.last_seen > self.gap:
            if over is None and self._overs_per_hint.get(key[0], 0) >= self.max_overs_per_hint:
                self.stats.voice_dropped += 1
                self.stats.hint_dropped += 1  # not tracked: a hint with this many is a flood
                return PacerDecision(False, "hint_budget", key)
            over = self._start_over(key, airtime, now, trusted)
            if not over.admitted:
                self.stats.voice_dropped += 1
                return PacerDecision(False, "over_refused", key, notify=True)
        over.last_seen = now
        if not over.admitted:
            self.stats.voice_dropped += 1
            return PacerDecision(False, "over_refused", key)
        if over.cut:
            self.stats.voice_dropped += 1
            return PacerDecision(False, "over_cut", key)
        starved = not trusted and airtime > 0 and not self._pay(key[0], airtime, now)
        if starved or airtime > self.budget + _EPS or len(self._voice) >= self.max_backlog:
            over.cut = True
            self.stats.overs_cut += 1
            self.stats.voice_dropped += 1
            return PacerDecision(False, "over_cut", key, notify=True)
        self._voice.append(_Item(packet, airtime, over))
        over.spent += airtime
        over.queued += 1
        self._queued_airtime += airtime
        return PacerDecision(True, "voice", key)

    def _start_over(self, key: OverKey, airtime: float, now: float, trusted: bool = True) -> _Over:
        reserve = self.over_reserve
        if reserve is None:
            reserve = self.reserve_packets * airtime
        reserve = max(reserve, airtime)
        admitted = airtime <= self.budget + _EPS and self._admits(reserve, now)
        if admitted and not trusted:  # its hint must be able to pay for the reserve
            admitted = self._hint_air.level(key[0], now) + _EPS >= reserve
        over = _Over(key=key, last_seen=now, admitted=admitted, reserve=reserve)
        old = self._overs.get(key)
        if old is not None and old.admitted:
            self._reserved -= old.reserve
        if old is None:
            self._overs_per_hint[key[0]] = self._overs_per_hint.get(key[0], 0) + 1
        self._overs[key] = over
        if admitted:
            self._reserved += reserve
            self.stats.overs_admitted += 1
        else:
            self.stats.overs_refused += 1
        return over

    def _admits(self, reserve: float, now: float) -> bool:
        """Whether ``reserve`` fits what :meth:`_available` leaves. Admitted overs hold at
        most their whole reserves, so when the budget carries those too the answer is yes
        without the scan over every over (which, per new over, made starting hundreds of
        streams quadratic)."""
        free = self.budget - self.used(now) - self._queued_airtime
        if free - self._reserved >= reserve - _EPS:
            return True
        return self._available(now) >= reserve - _EPS

    def _forget_ended(self, now: float) -> None:
        """Drop the state of overs that ended (silent for ``gap``) and have nothing queued.

        Scans at most once per ``gap / 2`` of time, not per packet: with hundreds of streams
        a per-packet scan dominated the bridge's CPU."""
        if now < self._next_forget:
            return
        self._next_forget = now + self.gap / 2
        ended = [
            k for k, o in self._overs.items() if now - o.last_seen > self.gap and o.queued == 0
        ]
        for k in ended:
            over = self._overs.pop(k)
            if over.admitted:
                self._reserved -= over.reserve
            left = self._overs_per_hint[k[0]] - 1
            if left:
                self._overs_per_hint[k[0]] = left
            else:
                del self._overs_per_hint[k[0]]
        if not self._overs:
            self._reserved = 0.0  # no float drift survives an empty table

    # -- releasing

    def due(self, now: float) -> list[bytes]:
        """Packets to transmit now, in order; the caller sends them back to back."""
        out: list[bytes] = []
        while self._busy_until <= now + _EPS:
            queue = self._control or self._voice
            if not queue:
                if self._bulk and self._bulk_ready_at(now) <= now + _EPS:
                    item = self._bulk.popleft()
                    self._transmit(item, now)
                    self.stats.bulk_sent += 1
                    out.append(item.packet)
                    continue
                break
            item = queue[0]
            if self._fits_at(now, item.airtime) > now + _EPS:
                break
            queue.popleft()
            self._queued_airtime -= item.airtime
            start = max(now, self._busy_until)
            self._busy_until = start + item.airtime
            if item.airtime:  # a wired link (airtime 0) would only grow the window's log
                self._air.add(self._busy_until, item.airtime)
            self.stats.sent += 1
            self.stats.airtime_s += item.airtime
            if item.over is None:
                self.stats.control_sent += 1
            else:
                item.over.queued -= 1
                self.stats.voice_sent += 1
            out.append(item.packet)
        if not self._control and not self._voice:
            self._queued_airtime = 0.0  # no float drift while idle
        self._forget_ended(now)
        return out

    def _transmit(self, item: _Item, now: float) -> None:
        start = max(now, self._busy_until)
        self._busy_until = start + item.airtime
        if item.airtime:
            self._air.add(self._busy_until, item.airtime)
        self.stats.sent += 1
        self.stats.airtime_s += item.airtime

    def next_wakeup(self, now: float) -> float | None:
        """When ``due`` may next release something (None: nothing is queued)."""
        queue = self._control or self._voice
        if not queue:
            if self._bulk:
                return max(now, self._busy_until, self._bulk_ready_at(now))
            return None
        return max(now, self._busy_until, self._fits_at(now, queue[0].airtime))

    def backlog(self) -> int:
        """Packets queued and not yet released."""
        return len(self._control) + len(self._voice) + len(self._bulk)
