"""Voice messages on a link: the asyncio driver around :mod:`relay.clip`.

A :class:`ClipNode` rides along a room member: it sees the member's room events (wire
:meth:`ClipNode.on_event` into the member's or node's event hook), feeds CLIP payloads to a
:class:`~relay.clip.receiver.ClipReceiver`, persists every step in the home's ``clips.db``
(:class:`~relay.store.clips.ClipStore`) before acting on it, sends acks in their slots, and
delivers our own messages with :class:`~relay.clip.sender.ClipSender`, paced by the link's
airtime and the duty-cycle budget (:class:`~relay.radio.duty.AirtimeWindow`).

Members must know each other to open each other's packets, so a sender introduces itself
(a signed HELLO, which also names the session its packets are sealed under) before every
offer it sends as a probe and after every ``INTRO_EVERY`` clip packets (receivers refuse
unsigned packets far ahead of a member's last signed one), and a receiver introduces itself
before its first ack and whenever the sender probes again (a restarted sender has
forgotten who we are). Introductions are not persisted by the room, so this is what makes
a ``kill -9`` on either side harmless.

Protocol time is the event loop's clock (virtual in tests); the room clock (wall time) only
stamps packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from relay.clip.message import (
    PACKET_OVERHEAD,
    build_offer,
    choose_mode,
    frames_of,
    max_piece_size,
)
from relay.clip.receiver import (
    DEFAULT_MAX_BYTES,
    AckHeard,
    ClipReceiver,
    MessageComplete,
    MessageReset,
    OfferReceived,
    PieceReceived,
    Refused,
)
from relay.clip.sender import ClipSender
from relay.clip.wire import ACK_HEADER_LEN, MAX_BITMAP, POLL, Kind, Offer, kind_of
from relay.core.identity import Identity, PublicIdentity
from relay.core.room import Clip, Room, RoomEvent
from relay.errors import LinkError, PacketError, UsageError
from relay.links.base import Link
from relay.radio.duty import AirtimeWindow
from relay.store.clips import ClipStore, InboxClip, OutgoingClip
from relay.voice.codec import Decoder, Encoder
from relay.voice.modes import CodecMode, mode_by_index

if TYPE_CHECKING:
    from relay.runtime.member import Member
    from relay.store.home import Home

CLIPS_DB = "clips.db"
ACK_BYTES = PACKET_OVERHEAD + ACK_HEADER_LEN + MAX_BITMAP
HELLO_BYTES = 170  # a sealed, signed introduction (169 B today: with session and time)
GUARD = 0.1  # seconds after a poll before the first ack slot
SLOTS = 8
REINTRODUCE = 300.0  # seconds: a receiver says who it is again at least this often
DEFAULT_TIMEOUT = 3600.0


def clip_store(home: Home) -> ClipStore:
    """The home's voice-message store (created 0600 on first use), its speech sealed under
    the home's data key (unlocking the home if need be)."""
    home.ensure()
    return ClipStore(home.path / CLIPS_DB, sealer=home.unlock().sealer(b"clips"))


def room_public_of(room: Room) -> Callable[[bytes], PublicIdentity | None]:
    """Who a sender is, as far as the room knows: enrolled, moderator or introduced."""

    def lookup(ident: bytes) -> PublicIdentity | None:
        return (
            room.roster.get(ident)
            or room.moderators.get(ident)
            or getattr(room, "introduced", {}).get(ident)
        )

    return lookup


@dataclass(frozen=True, slots=True)
class ClipProgress:
    """Where one outgoing message stands (for progress bars and --json)."""

    msg_id: str
    pieces: int
    acked: int  # pieces every receiver that answered holds
    receivers: int
    complete: int
    airtime_s: float  # airtime this node spent on the message so far
    elapsed_s: float
    remaining_s: float  # estimate: airtime still needed, stretched by the duty cycle
    done: bool


@dataclass
class ClipResult:
    msg_id: str
    mode: str
    frames: int
    codec_bytes: int
    pieces: int
    delivered: bool
    receivers: int
    complete: int
    packets_sent: int
    airtime_s: float
    elapsed_s: float
    rounds: int
    resumed: bool

    def to_dict(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class ClipNodeStats:
    packets_sent: int = 0
    airtime_s: float = 0.0
    hellos_sent: int = 0
    acks_sent: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class ClipNode:
    """Sends and receives voice messages for one member of one room on one link."""

    def __init__(
        self,
        room: Room,
        link: Link,
        store: ClipStore,
        *,
        public_of: Callable[[bytes], PublicIdentity | None] | None = None,
        clock: Callable[[], float] = time.time,
        duty_cycle: float = 1.0,
        window: float = 3600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        slots: int = SLOTS,
        seed: int | None = None,
        on_complete: Callable[[InboxClip], None] | None = None,
    ) -> None:
        if not 0.0 < duty_cycle <= 1.0:
            raise UsageError(f"duty cycle must be in (0, 1], got {duty_cycle!r}")
        self.room = room
        self.link = link
        self.store = store
        self.clock = clock
        self.duty_cycle = duty_cycle
        self.budget = duty_cycle * window
        self.max_bytes = max_bytes
        self.on_complete = on_complete
        self.stats = ClipNodeStats()
        self.slot = link.airtime(ACK_BYTES) + link.airtime(HELLO_BYTES) + 0.02
        self.public_of = public_of or room_public_of(room)
        self.receiver = ClipReceiver(
            room.room_id,
            self.public_of,
            slot=self.slot,
            guard=GUARD,
            slots=slots,
            max_bytes=max_bytes,
            rng=random.Random(seed),
        )
        self.ack_wait = 2 * GUARD + (slots + 1) * self.slot
        self._air = AirtimeWindow(window)
        self._senders: dict[bytes, ClipSender] = {}
        self._tx_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._introduced_at = -math.inf
        self._intro_wanted = True
        self._probes_in_a_row = 0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._detach: Callable[[], None] | None = None
        self._restore()

    def _restore(self) -> None:
        room_id = self.room.room_id
        for clip in self.store.inbox(room_id):
            self.receiver.restore_complete(clip.sender, clip.offer)
        for sender, msg_id, offer, pieces in self.store.partials(room_id):
            self.receiver.restore(sender, msg_id, offer, pieces)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Answer polls in the background (acks), until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._ack_loop(), name="relay-clip-acks")

    async def close(self) -> None:
        """Stop answering polls and stop seeing the member's events (if :func:`attach`-ed)."""
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError):
                await self._task
            self._task = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def raise_if_failed(self) -> None:
        """Raise what stopped the node in the background (a full disk), once."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ------------------------------------------------------------------ hearing
    def on_event(self, event: RoomEvent) -> None:
        """The room's events (only :class:`Clip` matters here); safe to call for all."""
        if not isinstance(event, Clip):
            return
        now = self._now()
        try:
            kind = kind_of(event.payload)
            if kind == Kind.OFFER and event.payload[0] & POLL:
                # Two probes in a row with no piece between: the sender does not hear our
                # acks, perhaps because it restarted (or our introduction was lost) and it
                # does not know who we are.
                self._probes_in_a_row += 1
                if self._probes_in_a_row >= 2:
                    self._intro_wanted = True
            elif kind == Kind.PIECE:
                self._probes_in_a_row = 0
        except PacketError:
            pass
        try:
            for item in self.receiver.receive(event.sender, event.payload, now):
                self._persist(item, now)
        except UsageError as exc:  # a full disk: stop and say so
            self._error = exc
        self._wake.set()

    def _persist(self, item: object, now: float) -> None:
        room_id = self.room.room_id
        if isinstance(item, OfferReceived):
            self.store.save_offer(room_id, item.sender, item.offer)
        elif isinstance(item, PieceReceived):
            self.store.save_piece(room_id, item.sender, item.msg_id, item.index, item.data)
        elif isinstance(item, MessageComplete):
            public = self.public_of(item.sender)
            name = public.fingerprint if public is not None else item.sender[:6].hex()
            fresh = self.store.complete(room_id, item.sender, item.offer, item.data, name)
            if fresh and self.on_complete is not None:
                clip = InboxClip(
                    item.offer.msg_id.hex(),
                    room_id,
                    item.sender,
                    item.offer,
                    item.data,
                    time.time(),
                    name,
                )
                self.on_complete(clip)
        elif isinstance(item, MessageReset):
            self.store.drop_partial(room_id, item.sender, item.msg_id)
        elif isinstance(item, AckHeard):
            sender = self._senders.get(item.ack.msg_id)
            if sender is not None and sender.on_ack(item.receiver, item.ack, now):
                self.store.save_acks(room_id, item.ack.msg_id, sender.acks())
        elif isinstance(item, Refused):
            self.stats.refused[item.reason] = self.stats.refused.get(item.reason, 0) + 1

    # ------------------------------------------------------------------ transmitting
    async def _transmit(self, packet: bytes) -> None:
        """One packet on air, inside the duty-cycle budget; returns once it has left."""
        airtime = self.link.airtime(len(packet))
        async with self._tx_lock:
            while True:
                now = self._now()
                at = self._air.fits_at(now, airtime, self.budget)
                if at <= now:
                    break
                if math.isinf(at):
                    raise UsageError("one packet needs more airtime than the whole duty budget")
                await asyncio.sleep(at - now)
            await self.link.send(packet)
            await self.link.drain()
            self._air.add(self._now(), airtime)
            self.stats.packets_sent += 1
            self.stats.airtime_s += airtime

    async def _introduce(self) -> None:
        await self._transmit(self.room.introduce(self.clock()))
        self.stats.hellos_sent += 1
        self._introduced_at = self._now()
        self._intro_wanted = False

    async def _ack_loop(self) -> None:
        due = -math.inf
        while True:
            self.raise_if_failed()
            now = max(self._now(), due)  # a timer may fire a hair early (see deliver)
            for payload in self.receiver.acks_due(now):
                try:
                    if (
                        self._intro_wanted
                        or now - self._introduced_at > REINTRODUCE
                        or self.room.needs_introduction
                    ):
                        await self._introduce()
                    await self._transmit(self.room.clip(payload, self.clock()))
                    self.stats.acks_sent += 1
                except UsageError:
                    continue  # muted: we do not transmit at all
            wake = self.receiver.wakeup()
            timeout = None if wake is None else max(0.0, wake - self._now())
            self._wake.clear()
            if timeout is None or timeout > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    if wake is not None:
                        due = wake

    # ------------------------------------------------------------------ sending
    def prepare(
        self, frames: list[bytes], mode: CodecMode, *, identity: Identity
    ) -> tuple[OutgoingClip, bool]:
        """Store a new message (or find the same unfinished one): (clip, resumed)."""
        offer, data = build_offer(
            identity,
            self.room.room_id,
            mode,
            frames,
            max_piece_size(self.link.mtu),
            time.time(),
            max_bytes=self.max_bytes,
        )
        same = self.store.find_outgoing(self.room.room_id, data)
        if same is not None:
            return same, True
        return self.store.add_outgoing(self.room.room_id, offer, data), False

    async def deliver(
        self,
        clip: OutgoingClip,
        *,
        expect: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        progress: Callable[[ClipProgress], None] | None = None,
        resumed: bool = False,
    ) -> ClipResult:
        """Send one stored message until ``expect`` receivers hold it (or ``timeout``)."""
        self.start()
        offer = clip.offer
        sender = ClipSender(
            offer, clip.data, ack_wait=self.ack_wait, expect=expect, restored=clip.acks
        )
        self._senders[offer.msg_id] = sender
        loop = asyncio.get_running_loop()
        start = loop.time()
        airtime0, packets0 = self.stats.airtime_s, self.stats.packets_sent
        piece_air = self.link.airtime(PACKET_OVERHEAD + 7 + offer.piece_size)

        def report() -> None:
            if progress is None:
                return
            p = sender.progress()
            remaining = (p.pieces - p.acked) * piece_air / self.duty_cycle
            progress(
                ClipProgress(
                    offer.msg_id.hex(),
                    p.pieces,
                    p.acked,
                    p.receivers,
                    p.complete,
                    self.stats.airtime_s - airtime0,
                    loop.time() - start,
                    0.0 if sender.done else remaining + self.ack_wait,
                    sender.done,
                )
            )

        due = -math.inf  # a deadline we slept until (see below)
        try:
            while not sender.done and loop.time() - start < timeout:
                self.raise_if_failed()
                now = max(loop.time(), due)
                payload = sender.next_payload(now)
                if payload is not None:
                    if payload[0] == Kind.OFFER | POLL and sender.introduce_now:
                        await self._introduce()  # a probe: a restarted peer may not know us
                    elif self.room.needs_introduction:
                        await self._introduce()  # receivers bound unsigned runs (UNSIGNED_AHEAD)
                    await self._transmit(self.room.clip(payload, self.clock()))
                    sender.transmitted(loop.time())
                    report()
                    continue
                wake = sender.wakeup(now)
                if wake is None:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(
                        self._wake.wait(), max(0.0, min(wake, start + timeout) - now)
                    )
                except TimeoutError:
                    # The loop fires timers up to its clock resolution early, so the clock
                    # may still read a hair before the deadline: asking the sender with
                    # that reading would only put us back to sleep for ever shorter waits.
                    due = min(wake, start + timeout)
                report()
        finally:
            del self._senders[offer.msg_id]
        if sender.done:
            self.store.mark_sent(self.room.room_id, offer.msg_id)
        report()
        p = sender.progress()
        mode = mode_by_index(offer.mode)
        return ClipResult(
            msg_id=offer.msg_id.hex(),
            mode=mode.name if mode else str(offer.mode),
            frames=offer.frames,
            codec_bytes=offer.total,
            pieces=offer.pieces,
            delivered=sender.done,
            receivers=p.receivers,
            complete=p.complete,
            packets_sent=self.stats.packets_sent - packets0,
            airtime_s=self.stats.airtime_s - airtime0,
            elapsed_s=loop.time() - start,
            rounds=p.rounds,
            resumed=resumed,
        )


# ---------------------------------------------------------------------- member helpers
def attach(member: Member, store: ClipStore, **kw: object) -> ClipNode:
    """A :class:`ClipNode` riding on an open member: it sees the member's room events."""
    profile = member.profile
    node = ClipNode(
        member.room,
        member.link,
        store,
        public_of=member.public_of,
        clock=member.clock,
        duty_cycle=getattr(profile, "duty_cycle", 1.0),
        **kw,  # type: ignore[arg-type]
    )
    previous = member.on_event

    def both(event: RoomEvent) -> None:
        node.on_event(event)
        if previous is not None:
            previous(event)

    def detach() -> None:
        if member.on_event is both:
            member.on_event = previous

    member.on_event = both
    node._detach = detach
    node.start()
    return node


async def send_clip(
    member: Member,
    pcm: np.ndarray | None = None,
    *,
    frames: list[bytes] | None = None,
    mode: CodecMode | None = None,
    expect: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[ClipProgress], None] | None = None,
    store: ClipStore | None = None,
) -> ClipResult:
    """Send speech (8 kHz int16 ``pcm``, or ready ``frames`` in ``mode``) as a voice message
    to ``member``'s room: what `relay clip send` does, and what `relay talk` can fall back
    to when live voice does not fit the link. The planner picks the mode unless given."""
    own = store is None
    store = store or clip_store(member.home)
    try:
        if mode is None:
            mode = choose_mode(member.profile)
        if frames is None:
            if pcm is None:
                raise UsageError("send_clip needs speech (pcm) or codec frames")
            frames = Encoder(mode).encode(pcm)
        node = attach(member, store, max_bytes=max_bytes)
        try:
            clip, resumed = node.prepare(frames, mode, identity=member.identity)
            return await node.deliver(
                clip, expect=expect, timeout=timeout, progress=progress, resumed=resumed
            )
        finally:
            await node.close()
    finally:
        if own:
            store.close()


def decode_clip(clip: InboxClip) -> np.ndarray:
    """The speech of a complete inbox message (8 kHz int16)."""
    mode = mode_by_index(clip.offer.mode)
    if mode is None:
        raise UsageError(f"voice message {clip.id} uses an unknown codec mode")
    decoder = Decoder(mode)
    pcm = [decoder.decode(f) for f in frames_of(clip.offer, clip.data)]
    return np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.int16)


def offer_seconds(offer: Offer) -> float:
    """Seconds of speech a message holds (for inboxes and reports)."""
    mode = mode_by_index(offer.mode)
    return offer.frames * mode.frame_seconds if mode else 0.0
