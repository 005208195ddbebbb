"""A simulated LoRa channel: airtime, half duplex, collisions, loss and duty cycle.

One :class:`Ether` is one shared radio channel with one :class:`RadioProfile`; any number of
:class:`SimLink` nodes attach to it. The rules are the ones that make real LoRa voice hard:

* a node sends one datagram at a time, for exactly ``profile.airtime(len)`` seconds, from a
  bounded transmit queue (``send`` waits for room: back-pressure);
* half duplex: a node hears nothing that overlaps a moment it was transmitting;
* two transmissions that overlap in time destroy each other at every receiver;
* loss is drawn per receiver per datagram from the ether's seeded RNG (reproducible runs);
* an optional sliding-window duty-cycle budget per node either delays or refuses sending;
* range: two nodes can be put out of each other's reach (``apart=NAME,...`` on a node's URL,
  :meth:`Ether.separate`), so a store-and-forward repeater between them is the only path.

Delivery happens at the end of a transmission via ``loop.call_at``, so the channel runs in
real time and, under :class:`relay.runtime.clock.VirtualTimeLoop`, hours in milliseconds.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import math
import random
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from relay.errors import DutyCycleExceeded, LinkError, UsageError
from relay.links.base import Datagram, Inbox, Link, LinkStats
from relay.radio.duty import AirtimeWindow
from relay.radio.profiles import RadioProfile, custom, duty_cycle_for, preset

DEFAULT_PRESET = "SHORT_FAST"
DEFAULT_WINDOW = 3600.0
DUTY_POLICIES = ("queue", "refuse")
_EPS = 1e-9  # tolerance for float time comparisons (touching is not overlapping)


# --- loss models ---------------------------------------------------------------------------


class LossModel(abc.ABC):
    """Decides, one datagram at a time, whether a receiver loses it."""

    @abc.abstractmethod
    def lost(self, rng: random.Random) -> bool:
        """Draw the fate of the next datagram at one receiver."""

    @property
    @abc.abstractmethod
    def mean_loss(self) -> float:
        """Long-run fraction of datagrams lost."""

    def fresh(self) -> LossModel:
        """An independent copy for one more receiver (stateful models keep state apart)."""
        return copy.copy(self)


@dataclass
class NoLoss(LossModel):
    def lost(self, rng: random.Random) -> bool:
        rng.random()  # keep the RNG stream the same shape whatever the model
        return False

    @property
    def mean_loss(self) -> float:
        return 0.0


@dataclass
class RandomLoss(LossModel):
    """Independent loss with probability ``p`` per datagram."""

    p: float

    def __post_init__(self) -> None:
        _check_fraction("loss", self.p, allow_one=True)

    def lost(self, rng: random.Random) -> bool:
        return rng.random() < self.p

    @property
    def mean_loss(self) -> float:
        return self.p


@dataclass
class GilbertElliott(LossModel):
    """Two-state burst loss: fades come and go, so losses cluster as they do on radio."""

    p_good_to_bad: float
    p_bad_to_good: float
    loss_good: float = 0.0
    loss_bad: float = 1.0
    bad: bool | None = field(default=None, compare=False)  # None: draw from steady state

    def __post_init__(self) -> None:
        for name in ("p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"):
            _check_fraction(name, getattr(self, name), allow_one=True)
        if self.p_good_to_bad + self.p_bad_to_good <= 0:
            raise UsageError("Gilbert-Elliott needs a non-zero transition probability")

    @classmethod
    def from_mean(cls, loss: float, burst: float) -> GilbertElliott:
        """Loss-free good state, all-lost bad state, with this mean loss and burst length."""
        _check_fraction("loss", loss, allow_one=False)
        _check_burst(burst)
        p_bg = 1.0 / burst
        p_gb = loss * p_bg / (1.0 - loss)
        if p_gb > 1.0:
            raise UsageError(f"loss {loss} with bursts of {burst} is impossible; use longer bursts")
        return cls(p_good_to_bad=p_gb, p_bad_to_good=p_bg)

    @property
    def _p_bad(self) -> float:
        return self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)

    @property
    def mean_loss(self) -> float:
        pb = self._p_bad
        return pb * self.loss_bad + (1 - pb) * self.loss_good

    def lost(self, rng: random.Random) -> bool:
        if self.bad is None:
            self.bad = rng.random() < self._p_bad
        lost = rng.random() < (self.loss_bad if self.bad else self.loss_good)
        flip = self.p_bad_to_good if self.bad else self.p_good_to_bad
        if rng.random() < flip:
            self.bad = not self.bad
        return lost


def _check_fraction(name: str, value: object, *, allow_one: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0)  # type: ignore[operator]
    if not ok:
        upper = "1]" if allow_one else "1)"
        raise UsageError(f"{name} must be a probability in [0, {upper}, got {value!r}")


def _check_burst(burst: object) -> None:
    ok = isinstance(burst, int | float) and not isinstance(burst, bool) and burst >= 1
    if not ok or not math.isfinite(burst):  # type: ignore[arg-type]
        raise UsageError(f"burst (mean loss-run length in packets) must be >= 1, got {burst!r}")


def loss_model(loss: float = 0.0, burst: float | None = None) -> LossModel:
    """The loss model for a mean loss and, optionally, a mean burst length (in packets)."""
    _check_fraction("loss", loss, allow_one=burst is None)
    if burst is not None:
        _check_burst(burst)
    if loss == 0:
        return NoLoss()
    if burst is None:
        return RandomLoss(loss)
    return GilbertElliott.from_mean(loss, burst)


# --- the channel ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    sender: SimLink
    data: bytes
    start: float
    end: float
    collided: bool = False


@dataclass(slots=True)
class EtherStats:
    """What the whole channel did."""

    transmissions: int = 0
    collisions: int = 0  # transmissions destroyed by overlapping another
    delivered: int = 0
    lost: int = 0
    half_duplex_missed: int = 0
    airtime_s: float = 0.0  # sum of all transmissions' airtime
    busy_s: float = 0.0  # time at least one node was transmitting


class Ether:
    """One shared simulated LoRa channel."""

    def __init__(
        self,
        profile: RadioProfile | None = None,
        *,
        loss: float | LossModel = 0.0,
        burst: float | None = None,
        seed: int | None = 0,
        duty_cycle: float | None = None,
        duty_window: float = DEFAULT_WINDOW,
        duty_policy: str = "queue",
        queue_size: int = 16,
        name: str = "default",
        lbt: bool = False,
    ) -> None:
        self.profile = profile if profile is not None else preset(DEFAULT_PRESET)
        self.loss = loss if isinstance(loss, LossModel) else loss_model(loss, burst)
        self.seed = seed
        self.rng = random.Random(seed)
        dc = self.profile.duty_cycle if duty_cycle is None else duty_cycle
        _check_fraction("duty_cycle", dc, allow_one=True)
        if dc <= 0:
            raise UsageError("duty_cycle must be > 0")
        self.duty_cycle = float(dc)
        if not duty_window > 0:
            raise UsageError(f"duty_window must be > 0 seconds, got {duty_window!r}")
        self.duty_window = float(duty_window)
        if duty_policy not in DUTY_POLICIES:
            raise UsageError(f"duty_policy must be one of {', '.join(DUTY_POLICIES)}")
        self.duty_policy = duty_policy
        if not isinstance(queue_size, int) or queue_size < 1:
            raise UsageError(f"queue size must be an integer >= 1, got {queue_size!r}")
        self.queue_size = queue_size
        self.name = name
        # Listen before talk: a node that hears the channel busy waits for it to clear, then
        # a random number of CAD slots (as LoRa firmware does). Its own RNG, so turning it
        # on does not change which packets the loss model drops.
        self.lbt = bool(lbt)
        self._backoff_rng = random.Random(None if seed is None else seed + 1)
        self.stats = EtherStats()
        self._nodes: dict[str, SimLink] = {}
        self._members: list[SimLink] = []  # every node ever attached, for totals
        self._loss_state: dict[str, LossModel] = {}
        self._apart: set[frozenset[str]] = set()  # pairs of nodes out of each other's range
        self._recent: list[_Tx] = []
        self._horizon = 0.0  # longest airtime seen: how far back overlaps can reach
        self._busy_until = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0: float | None = None
        self._counter = 0

    # -- membership

    @property
    def nodes(self) -> dict[str, SimLink]:
        return dict(self._nodes)

    @property
    def duty_limited(self) -> bool:
        return self.duty_cycle < 1.0

    @property
    def duty_budget(self) -> float:
        """Seconds of airtime a node may use per sliding window."""
        return self.duty_cycle * self.duty_window

    def attach(self, name: str | None = None, *, queue_size: int | None = None) -> SimLink:
        """A new node on this channel."""
        if name is None:
            while True:
                self._counter += 1
                name = f"node{self._counter}"
                if name not in self._nodes:
                    break
        if name in self._nodes:
            raise UsageError(f"a node named {name!r} is already on sim://{self.name}")
        link = SimLink(self, name, queue_size or self.queue_size)
        self._nodes[name] = link
        self._members.append(link)
        self._loss_state[name] = self.loss.fresh()
        return link

    def separate(self, a: str, b: str) -> None:
        """Put nodes ``a`` and ``b`` (names, attached or not yet) out of each other's range.

        Simplified physics: they neither hear nor sense each other, but a transmission of one
        still collides with anything overlapping it elsewhere on the channel."""
        if a == b:
            raise UsageError(f"a node cannot be out of its own range ({a!r})")
        self._apart.add(frozenset((a, b)))

    def _detach(self, link: SimLink) -> None:
        if self._nodes.get(link.name) is link:
            del self._nodes[link.name]
            self._loss_state.pop(link.name, None)
        if not self._nodes and _ETHERS.get(self.name) is self:
            del _ETHERS[self.name]

    # -- time

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop; an ether whose old loop has gone starts a fresh timeline."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        if self._loop is None:
            self._loop, self._t0 = loop, loop.time()
            return loop
        if self._loop.is_running():
            raise LinkError(f"sim://{self.name} is already in use by another event loop")
        self._loop, self._t0 = loop, loop.time()
        self._recent.clear()
        self._horizon = 0.0
        self._busy_until = -math.inf
        for node in self._nodes.values():
            node._reset_timeline()
        return loop

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def stats_total(self, key: str) -> float:
        """A channel-wide counter: an :class:`EtherStats` field (``collisions`` counts
        destroyed transmissions), else the sum of that counter over every node ever attached."""
        if key in EtherStats.__dataclass_fields__:
            return getattr(self.stats, key)
        total: float = 0
        for node in self._members:
            value = getattr(node.stats, key, None)
            if not isinstance(value, int | float):
                value = node.stats.extra.get(key, 0)
            total += value
        return total

    def occupancy(self, period: float | None = None) -> float:
        """Fraction of ``period`` (default: since first use) the channel was busy."""
        if period is None:
            period = self.now() - (self._t0 if self._t0 is not None else 0.0)
        return self.stats.busy_s / period if period > 0 else 0.0

    # -- the physics

    def _transmit(self, sender: SimLink, data: bytes, now: float) -> _Tx:
        loop = self._bind()
        airtime = self.profile.airtime(len(data))
        tx = _Tx(sender, data, now, now + airtime)
        self._horizon = max(self._horizon, airtime)
        self._recent = [t for t in self._recent if t.end > now - self._horizon - 1.0]
        for other in self._recent:
            if other.sender is not sender and other.end > now + _EPS:
                for t in (other, tx):
                    if not t.collided:
                        t.collided = True
                        self.stats.collisions += 1
        self._recent.append(tx)
        self.stats.transmissions += 1
        self.stats.airtime_s += airtime
        self.stats.busy_s += max(0.0, tx.end - max(now, self._busy_until))
        self._busy_until = max(self._busy_until, tx.end)
        loop.call_at(tx.end, self._end, tx)
        return tx

    def clear_at(self, node: SimLink, now: float) -> float:
        """When ``node`` will hear the channel free: now, or after a random backoff."""
        busy = max(
            (t.end for t in self._recent if t.sender is not node and t.end > now + _EPS),
            default=None,
        )
        if busy is None:
            return now
        slot = 8 * self.profile.lora.symbol_time
        return busy + slot * (1 + self._backoff_rng.randrange(8))

    def _transmitting(self, node: SimLink, start: float, end: float) -> bool:
        return any(
            t.sender is node and t.start < end - _EPS and t.end > start + _EPS for t in self._recent
        )

    def _end(self, tx: _Tx) -> None:
        now = self.now()
        for name, node in list(self._nodes.items()):
            if node is tx.sender:
                continue
            lost = self._loss_state[name].lost(self.rng)  # always drawn: same RNG stream
            if node.attached_at is not None and node.attached_at > tx.start + _EPS:
                continue
            if frozenset((tx.sender.name, name)) in self._apart:
                continue
            if self._transmitting(node, tx.start, tx.end):
                node.stats.bump("half_duplex_missed")
                node.stats.dropped += 1
                self.stats.half_duplex_missed += 1
            elif tx.collided:
                node.stats.bump("collisions")
                node.stats.dropped += 1
            elif lost:
                node.stats.bump("lost")
                node.stats.dropped += 1
                self.stats.lost += 1
            else:
                self.stats.delivered += 1
                node._arrive(Datagram(tx.data, now))
        tx.sender._tx_done(tx)


class SimLink(Link):
    """One node on an :class:`Ether`."""

    def __init__(self, ether: Ether, name: str, queue_size: int) -> None:
        self.ether = ether
        self.name = name
        self.url = f"sim://{ether.name}?node={name}"
        self.mtu = ether.profile.mtu
        self.stats = LinkStats()
        self.closed = False
        self.attached_at: float | None = None
        self._queue_size = queue_size
        self._pending: deque[bytes] = deque()
        self._on_air: _Tx | None = None
        self._wake: asyncio.TimerHandle | None = None
        self._room: list[asyncio.Future[None]] = []
        self._idle: list[asyncio.Future[None]] = []
        self._inbox = Inbox()
        self._duty = AirtimeWindow(ether.duty_window)
        # Attached before the loop runs: None, and it hears everything from the start.
        with contextlib.suppress(RuntimeError):
            self.attached_at = asyncio.get_running_loop().time()

    def __repr__(self) -> str:
        return f"<SimLink {self.name} on sim://{self.ether.name}>"

    def airtime(self, nbytes: int) -> float:
        return self.ether.profile.airtime(nbytes)

    @property
    def busy(self) -> bool:
        """Whether something is queued or on air."""
        return bool(self._pending) or self._on_air is not None

    # -- duty cycle

    def duty_used(self, now: float | None = None) -> float:
        """Airtime (seconds) counted against the budget in the window ending at ``now``."""
        return self._duty.used(self.ether.now() if now is None else now)

    def _duty_ready_at(self, now: float, airtime: float) -> float:
        ready = self._duty.fits_at(now, airtime, self.ether.duty_budget)
        return now if ready == float("inf") else ready  # a datagram over the whole budget
        # is refused before it is queued (_check_duty), so inf cannot reach here

    def _check_duty(self, data: bytes) -> None:
        ether = self.ether
        if not ether.duty_limited:
            return
        airtime = self.airtime(len(data))
        if airtime > ether.duty_budget:
            self.stats.refused += 1
            raise DutyCycleExceeded(
                f"one datagram takes {airtime:.3f} s of air, more than the whole duty-cycle "
                f"budget of {ether.duty_budget:.3f} s per {ether.duty_window:g} s"
            )
        if ether.duty_policy == "refuse":
            queued = sum(self.airtime(len(d)) for d in self._pending)
            if self.duty_used(ether.now()) + queued + airtime > ether.duty_budget + 1e-9:
                self.stats.refused += 1
                raise DutyCycleExceeded(
                    f"sending now would exceed the {ether.duty_cycle:.1%} duty cycle "
                    f"({ether.duty_budget:.1f} s of air per {ether.duty_window:g} s)"
                )

    # -- sending

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        self._refuse_if_closed()
        self._check_size(data, self.ether.profile.name)
        loop = self.ether._bind()
        while len(self._pending) >= self._queue_size:
            fut: asyncio.Future[None] = loop.create_future()
            self._room.append(fut)
            try:
                await fut
            finally:
                if fut in self._room:
                    self._room.remove(fut)
            if self.closed:
                self.stats.refused += 1
                raise LinkError(f"{self.url} is closed")
        self._check_duty(data)
        self._pending.append(data)
        self._pump()

    async def drain(self) -> None:
        """Wait until the transmit queue is empty and the radio is idle."""
        if self.closed or not self.busy:
            return
        fut: asyncio.Future[None] = self.ether._bind().create_future()
        self._idle.append(fut)
        await fut

    def _pump(self) -> None:
        if self.closed or self._on_air is not None or not self._pending:
            return
        now = self.ether.now()
        data = self._pending[0]
        if self.ether.lbt:
            clear = self.ether.clear_at(self, now)
            if clear > now + 1e-9:
                if self._wake is None:
                    self.stats.bump("lbt_waits")
                    self._wake = self.ether._bind().call_at(clear, self._wakeup)
                return
        if self.ether.duty_limited:
            ready = self._duty_ready_at(now, self.airtime(len(data)))
            if ready > now + 1e-6:
                if self._wake is None:
                    self.stats.bump("duty_waits")
                    self._wake = self.ether._bind().call_at(ready, self._wakeup)
                return
        self._pending.popleft()
        tx = self.ether._transmit(self, data, now)
        self._on_air = tx
        self._duty.add(tx.end, tx.end - tx.start)
        self.stats.sent += 1
        self.stats.bytes_sent += len(data)
        self.stats.airtime_s += tx.end - tx.start
        _wake_all(self._room, None)

    def _wakeup(self) -> None:
        self._wake = None
        self._pump()

    def _tx_done(self, tx: _Tx) -> None:
        if self._on_air is tx:
            self._on_air = None
        self._pump()
        if not self.busy:
            _wake_all(self._idle, None)

    def _reset_timeline(self) -> None:
        """The ether moved to a new event loop: forget times and futures of the old one."""
        self._on_air = None
        self._wake = None
        self._duty.clear()
        self._room.clear()
        self._idle.clear()
        self._inbox.forget_waiters()
        self.attached_at = None

    # -- receiving

    def _arrive(self, dgram: Datagram) -> None:
        self.stats.received += 1
        self._inbox.put(dgram)

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        if self._inbox:
            return self._inbox.get_nowait()
        return await self._inbox.get(self.ether._bind())

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pending:
            self.stats.bump("discarded_on_close", len(self._pending))
            self._pending.clear()
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._inbox.clear()
        self.ether._detach(self)
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        _wake_all(self._room, None)
        _wake_all(self._idle, None)


def _wake_all(futures: list[asyncio.Future[None]], value: None) -> None:
    waiting = list(futures)
    futures.clear()
    for fut in waiting:
        if not fut.done():
            fut.set_result(value)


# --- URLs ----------------------------------------------------------------------------------

_ETHERS: dict[str, Ether] = {}
_KEYS = (
    "preset",
    "sf",
    "bw",
    "cr",
    "loss",
    "burst",
    "seed",
    "duty_cycle",
    "region",
    "duty_policy",
    "duty_window",
    "queue",
    "node",
    "apart",
    "lbt",
)


def ethers() -> dict[str, Ether]:
    """The named channels open in this process."""
    return dict(_ETHERS)


def clear_registry() -> None:
    """Forget every named channel (tests; links already open keep working)."""
    _ETHERS.clear()


def _num(key: str, value: str, kind: type = float) -> float:
    try:
        out = kind(value)
    except ValueError:
        raise UsageError(f"sim:// {key}={value!r} is not a valid number") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise UsageError(f"sim:// {key}={value!r} must be finite")
    return out


def _fraction(key: str, value: str) -> float:
    text = value.strip()
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 0.01
    return _num(key, text) * scale


def _bandwidth(value: str) -> float:
    text = value.strip().lower()
    for suffix, scale in (("khz", 1e3), ("k", 1e3), ("hz", 1.0)):
        if text.endswith(suffix):
            return _num("bw", text[: -len(suffix)]) * scale
    bw = _num("bw", text)
    return bw * 1e3 if bw <= 1000 else bw  # "125" means kHz: no LoRa bandwidth is < 7.8 kHz


def _coding_rate(value: str) -> int:
    text = value.strip()
    if text.startswith("4/"):
        text = text[2:]
    return int(_num("cr", text, int))


def parse_url(url: str) -> tuple[str, dict[str, object], dict[str, object]]:
    """Split a sim:// URL into (ether name, ether options, node options); validates all."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise UsageError(f"not a sim:// URL: {url!r}")
    if parts.path not in ("", "/"):
        raise UsageError(f"sim:// URLs take a channel name and options only, got {url!r}")
    name = parts.netloc or "default"
    raw: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.strip().lower()
        if key not in _KEYS:
            raise UsageError(f"unknown sim:// option {key!r} (known: {', '.join(_KEYS)})")
        if key in raw:
            raise UsageError(f"sim:// option {key!r} given twice")
        if value.strip():
            raw[key] = value.strip()

    node: dict[str, object] = {}
    if "node" in raw:
        node["name"] = raw.pop("node")
    if "apart" in raw:
        if "name" not in node:
            raise UsageError("sim:// apart= needs node= (whose range it limits)")
        others = [n.strip() for n in raw.pop("apart").split(",") if n.strip()]
        if not others or node["name"] in others:
            raise UsageError("sim:// apart= lists other nodes' names, e.g. apart=alice,bob")
        node["apart"] = tuple(others)
    if "queue" in raw:
        node["queue_size"] = int(_num("queue", raw.pop("queue"), int))
        if node["queue_size"] < 1:  # type: ignore[operator]
            raise UsageError("sim:// queue must be >= 1")

    opts: dict[str, object] = {}
    lora_keys = [k for k in ("sf", "bw", "cr") if k in raw]
    if lora_keys and "preset" in raw:
        raise UsageError("sim:// takes either preset= or sf=/bw=/cr=, not both")
    if lora_keys:
        if "sf" not in raw:
            raise UsageError("sim:// custom radio settings need sf= (e.g. sf=7&bw=125k&cr=5)")
        opts["profile"] = custom(
            int(_num("sf", raw["sf"], int)),
            _bandwidth(raw["bw"]) if "bw" in raw else None,
            _coding_rate(raw["cr"]) if "cr" in raw else None,
        )
    elif "preset" in raw:
        opts["profile"] = preset(raw["preset"])
    loss = _fraction("loss", raw["loss"]) if "loss" in raw else 0.0
    burst = _num("burst", raw["burst"]) if "burst" in raw else None
    if "loss" in raw or "burst" in raw:
        opts["loss"] = loss_model(loss, burst)
    if "seed" in raw:
        opts["seed"] = int(_num("seed", raw["seed"], int))
    if "duty_cycle" in raw and "region" in raw:
        raise UsageError("sim:// takes either duty_cycle= or region=, not both")
    if "duty_cycle" in raw:
        dc = _fraction("duty_cycle", raw["duty_cycle"])
        if not 0 < dc <= 1:
            raise UsageError(f"sim:// duty_cycle must be in (0, 1] (e.g. 0.01 or 1%), got {dc}")
        opts["duty_cycle"] = dc
    if "region" in raw:
        opts["duty_cycle"] = duty_cycle_for(raw["region"])
    if "duty_policy" in raw:
        policy = raw["duty_policy"].lower()
        if policy not in DUTY_POLICIES:
            raise UsageError(
                f"sim:// duty_policy must be {' or '.join(DUTY_POLICIES)}, got {policy!r}"
            )
        opts["duty_policy"] = policy
    if "duty_window" in raw:
        opts["duty_window"] = _num("duty_window", raw["duty_window"])
    if "lbt" in raw:
        flag = raw["lbt"].lower()
        if flag not in ("0", "1", "on", "off", "true", "false", "yes", "no"):
            raise UsageError(f"sim:// lbt is on or off, got {flag!r}")
        opts["lbt"] = flag in ("1", "on", "true", "yes")
    return name, opts, node


def remote_address(url: str) -> tuple[str, int] | None:
    """``(host, port)`` when a sim:// URL names an ether server (``sim://127.0.0.1:7300``),
    None when it names a channel in this process (``sim://NAME``: no port)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sim" or not parts.netloc:
        return None
    try:
        port = parts.port
    except ValueError:
        # A host with a port that is not a number is a typo for an ether, never a channel
        # name: opening an empty in-process channel instead would hear nothing, silently.
        raise UsageError(
            f"sim:// port must be a number 1..65535, got {parts.netloc!r} "
            "(a channel in this process is sim://NAME, without ':')"
        ) from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise UsageError(f"sim://{parts.netloc}: give the ether's port after ':'")
        return None
    if port == 0:
        raise UsageError(f"sim:// port must be 1..65535, got {parts.netloc!r}")
    return parts.hostname or "127.0.0.1", port


def open_url(url: str) -> Link:
    """Attach a node to the named channel of ``url``, creating the channel if it is new.

    ``sim://NAME?preset=SHORT_FAST&loss=0.1&burst=4&seed=1&duty_cycle=0.01&duty_policy=queue``
    (or ``sf=7&bw=125k&cr=5`` instead of a preset; ``region=EU_868`` instead of duty_cycle;
    ``node=alice`` names the node; ``apart=bob,carol`` puts it out of their range). A URL
    naming a channel that exists joins it; it may repeat the channel's options but not
    contradict them.

    ``sim://HOST:PORT`` (a port) names a channel in another process: :mod:`relay.links.sim.url`
    sends those to :mod:`relay.links.sim.client` instead.
    """
    name, opts, node = parse_url(url)
    ether = _ETHERS.get(name)
    if ether is None:
        ether = Ether(name=name, **opts)  # type: ignore[arg-type]
        _ETHERS[name] = ether
    elif any(getattr(ether, key) != value for key, value in opts.items()):
        raise UsageError(
            f"sim://{name} is already open with different options; "
            f"join it as sim://{name} or pick another channel name"
        )
    for other in node.get("apart", ()):  # type: ignore[attr-defined]
        ether.separate(node["name"], other)  # type: ignore[arg-type]
    return ether.attach(node.get("name"), queue_size=node.get("queue_size"))  # type: ignore[arg-type]
