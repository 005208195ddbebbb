"""A member in a room on a link: the async driver around the sans-I/O :class:`Room`.

Every user-facing action (raise a hand, wait for the floor, speak, moderate) is a coroutine
here, so the CLI, a future terminal UI and a web handler share one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from relay.core.room import (
    Dropped,
    FloorChanged,
    GrantAsked,
    HandRaised,
    KeyRotated,
    KeyState,
    LossReport,
    MemberChanged,
    OverEnded,
    RelayNoticed,
    Room,
    RoomEvent,
    SpeechFlagged,
    SpeechVerified,
    Voice,
)
from relay.core.roommsg import PREFIX_LEN
from relay.core.wire import VOICE_PACKET_MAX_OVERHEAD
from relay.links.base import Datagram, Link
from relay.radio.lora import MAX_PAYLOAD as LORA_MAX_PAYLOAD
from relay.runtime.voice import (
    Playout,
    RoomClock,
    TalkResult,
    batches,
    speak,
)
from relay.voice.adapt import ModePolicy
from relay.voice.modes import MODES, CodecMode
from relay.voice.over import EncodedOver, OverEncoder, SentFrame
from relay.voice.vad import MAX_SKIP

EventHook = Callable[[RoomEvent], None]
BUSY_BEACON_FACTOR = 6
# The grant's copies (beacons repeating it) leave this long after it, not back to back: one
# fade or collision burst must not take all three (a burst longer than the spread still can:
# then the holder's repeated hand raise, answered with a beacon, and the beacons a grant's
# lifetime always holds bring the floor back).
GRANT_REPEAT_AFTER = (0.4, 1.2)
GRANT_REPEATS = len(GRANT_REPEAT_AFTER)
# While the floor is held, beacons wait (a beacon between two voice packets delays the rest
# of the over) but never longer than this share of the grant: a grant nobody heard is not
# dead for its whole lifetime. BEACON_SHARE still bounds them (never closer than the interval).
GRANT_BEACON_FRACTION = 0.25
REGRANT_MIN_GAP = 1.0  # seconds between two answers to the holder's repeated hand raise
BEACON_SIZE = 100  # bytes of a beacon with a floor holder and a short hand queue
RAISE_FIRST = 1.0  # seconds before a hand that brought no grant goes up again, at least
RAISE_MAX = 8.0  # seconds between raises at most, once backed off


@dataclass
class NodeLog:
    """What a node saw, for reports and tests (no secrets)."""

    overs: list[OverEnded] = field(default_factory=list)
    voice_packets: int = 0
    voice_frames: int = 0  # frames that really arrived (playout also counts concealment)
    dropped: dict[str, int] = field(default_factory=dict)
    rotations: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # what relays said they did not forward
    flags: list[SpeechFlagged] = field(default_factory=list)  # words injected in a speaker's name
    verified_packets: int = 0  # voice packets the speaker's signature covered (live or seal)
    flag_times: list[float] = field(default_factory=list)  # loop time each flag was raised
    # A moderator's own transmissions, by purpose (airtime in seconds on its link):
    beacons: int = 0
    beacon_airtime: float = 0.0
    rekey_airtime: dict[int, float] = field(default_factory=dict)  # new epoch -> removal + rekeys
    datagrams: int = 0  # everything the link delivered, ours to open or not
    rssi: float | None = None  # the last signal report, where the radio gives one
    snr: float | None = None


@dataclass
class LiveTalk(TalkResult):
    """What a live talker did; ``positions``: how long the over was, DTX skips included."""

    positions: int = 0


Packet = tuple[int, Sequence[bytes], Sequence[bytes] | None]  # first position, frames, copies


class LivePackets:
    """Cuts a live over into packets as its frames are decided, exactly as :func:`batches`
    cuts a whole over: same sizes, same FEC copies, never across a DTX skip.

    It runs :func:`batches` itself on the last packet sent plus the frames held since: the
    first packet it cuts is the one already sent (so the next one's copies are right), the
    last one is held back until it is full or known to end (a skip, or the end of the over).
    """

    def __init__(self, frames_per_packet: int) -> None:
        self.frames_per_packet = frames_per_packet
        self._last: list[SentFrame] = []  # the last packet sent
        self._held: list[SentFrame] = []  # decided, not yet sent

    def push(
        self, frames: Sequence[SentFrame], decided: int, *, final: bool = False
    ) -> list[Packet]:
        """Packets ready to send, given ``frames`` just decided (see
        :meth:`OverEncoder.push`) and ``decided`` positions so far (sent or skipped);
        ``final``: the over ends here, send everything."""
        self._held += frames
        if not self._held:
            return []
        window = self._last + self._held
        copies = [c for _, _, c in window if c is not None]
        cut = list(
            batches(
                [f for _, f, _ in window],
                self.frames_per_packet,
                copies if len(copies) == len(window) else None,
                [p for p, _, _ in window],
            )
        )[1 if self._last else 0 :]
        first, batch, _ = cut[-1]
        ends = len(batch) == self.frames_per_packet or first + len(batch) < decided
        ready = cut if final or ends else cut[:-1]
        if ready:
            sent = sum(len(b) for _, b, _ in ready)
            self._last, self._held = self._held[sent - len(ready[-1][1]) : sent], self._held[sent:]
        return ready


def quiet_limit(link: Link) -> float:
    """The longest a live over on ``link`` can go without a packet: a DTX pause, then the
    capture of a full packet (the most speech a LoRa frame holds, in any Codec2 mode: voice
    comes from radios even where the link is MQTT with a larger MTU) and twice its airtime
    (one more packet may be ahead of it on the channel)."""
    size = min(link.mtu, LORA_MAX_PAYLOAD)
    room = max(0, size - VOICE_PACKET_MAX_OVERHEAD)
    capture = max((room // m.bytes_per_frame) * m.frame_seconds for m in MODES)
    return MAX_SKIP + capture + 2 * link.airtime(size)


class RoomNode:
    """Runs one :class:`Room` on one link: receives, plays, sends what the room produces."""

    def __init__(
        self,
        room: Room,
        link: Link,
        room_clock: RoomClock,
        *,
        playout: Playout | None = None,
        on_event: EventHook | None = None,
        on_key: Callable[[KeyState], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.room = room
        self.link = link
        self.clock = room_clock
        self.playout = playout or Playout()
        # An over goes quiet for a DTX pause (a keep-alive at least every MAX_SKIP s) plus
        # the capture and airtime of its next packet; only longer silence may end it
        # unsealed. On slow links that is more than the default (LONG_FAST: a 27-frame
        # packet after a pause arrived 6 s after the frame before it, splitting the over).
        self.playout.idle_timeout = max(self.playout.idle_timeout, quiet_limit(link))
        self.log = NodeLog()
        self._on_event = on_event
        self._on_key = on_key
        room.on_rotate = self._rotated  # our own removals rotate the key too
        # Loss reports from members who transmit anyway feed an adaptive-mode policy; a
        # talker that wants to adapt asks it for the mode of its next over.
        self.policy = ModePolicy()
        self._changed = asyncio.Event()
        self._grant_asked = False
        self._moderating = False  # a moderate loop runs: it spreads the copies of actions
        self._repeat_at: list[float] = []
        self._holder_heard = -1  # grant_seq of the last grant whose holder we heard speak
        self._rng = random.Random(seed)

    # ---------------------------------------------------------------- receiving
    def handle(self, data: bytes, arrival: float) -> None:
        for event in self.room.receive(data, self.clock()):
            if isinstance(event, Voice):
                if event.frames.sender == self.room.floor:
                    self._holder_heard = self.room.grant_seq  # the grant reached its holder
                self.log.voice_packets += 1
                self.log.voice_frames += len(event.frames.frames)
                if not self.playout.verified_only:
                    self.playout.voice(event.frames, arrival)
            elif isinstance(event, SpeechVerified):
                self.log.verified_packets += len(event.packets)
                if self.playout.verified_only:
                    for frames in event.packets:
                        self.playout.voice(frames, arrival)
            elif isinstance(event, SpeechFlagged):
                self.log.flags.append(event)
                self.log.flag_times.append(arrival)
            elif isinstance(event, OverEnded):
                self.log.overs.append(event)
                self.playout.end(event.speaker, event.frames, event.verdict)
            elif isinstance(event, Dropped):
                self.log.dropped[event.reason] = self.log.dropped.get(event.reason, 0) + 1
            elif isinstance(event, KeyRotated):
                self._key_rotated(event)
            elif isinstance(event, LossReport):
                self.policy.report(event.reporter, event.loss, event.time)
            elif isinstance(event, RelayNoticed):
                self.log.notices.append(event.notice.text)
            elif isinstance(event, GrantAsked):
                self._grant_asked = True
            if isinstance(event, MemberChanged | FloorChanged):
                self._cut_silenced()
            if isinstance(
                event,
                FloorChanged | HandRaised | GrantAsked | MemberChanged | KeyRotated | OverEnded,
            ):
                self._changed.set()
            if self._on_event is not None:
                self._on_event(event)

    def _cut_silenced(self) -> None:
        """Not one more word from a muted or removed member: what the jitter buffer still
        holds of them is dropped (a beacon names muted members by an 8-byte prefix)."""
        silenced = {m[:PREFIX_LEN] for m in (*self.room.muted, *self.room.removed)}
        for over in self.playout.live_overs():
            if over.sender[:PREFIX_LEN] in silenced:
                self.playout.cut(over.sender)

    def _key_rotated(self, event: KeyRotated) -> None:
        self.log.rotations.append(event.epoch)

    def _rotated(self, state: KeyState) -> None:
        if self._on_key is not None:
            self._on_key(state)

    async def remove(self, member: bytes) -> None:
        """Remove ``member``: the signed removal and the first copy of the rekey now; the
        later copies go out from :meth:`moderate` (or :meth:`send_due`) when due."""
        packets = self.room.remove(member, self.clock())
        self._count_rekey(self.room.epoch, packets)
        await self.send(*packets)

    async def send_due(self) -> None:
        """Send what the room has scheduled (later rekey copies, co-moderators' removals)."""
        for epoch, packet in self.room.due_by_epoch(self.clock()):
            self._count_rekey(epoch, [packet])
            await self.send(packet)

    def _count_rekey(self, epoch: int, packets: Sequence[bytes]) -> None:
        spent = sum(self.link.airtime(len(p)) for p in packets)
        self.log.rekey_airtime[epoch] = self.log.rekey_airtime.get(epoch, 0.0) + spent

    async def _beacon(self, *beacons: bytes) -> None:
        self.log.beacons += len(beacons)
        self.log.beacon_airtime += sum(self.link.airtime(len(b)) for b in beacons)
        await self.send(*beacons)

    def _seen(self, datagram: Datagram) -> None:
        self.log.datagrams += 1
        if datagram.rssi is not None:
            self.log.rssi = datagram.rssi
        if datagram.snr is not None:
            self.log.snr = datagram.snr

    async def run(self) -> None:
        """Receive until the link closes (run it as a task)."""
        await self.playout.pump(self.link, self.handle, seen=self._seen)

    async def send(self, *packets: bytes) -> None:
        for packet in packets:
            await self.link.send(packet)

    async def _changed_or(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # ---------------------------------------------------------------- speaking
    async def wait_for_floor(self, timeout: float, *, raise_every: float = RAISE_MAX) -> bool:
        """Raise a hand and wait for a grant; raise it again if no grant comes (it may be lost).

        Hands go up only while nobody holds the floor (the break between overs, as on any
        radio net): a hand raised over a speaker takes airtime from the speaker and delays
        its packets for every listener. A hand that brings no grant goes up again after
        twice the round trip (the hand, the grant and its repeats on the air; at least
        ``RAISE_FIRST`` s), then after twice as long each time, up to ``raise_every``;
        each wait is jittered by +-50 % so hands waiting for the same break spread out.
        When the floor comes free after we raised, the moderator's grant from its queue
        gets about that first wait before we raise again (so no stale hand queues us twice).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_raise = loop.time()
        gap: float | None = None  # the wait before the next raise (backs off)
        first_gap = 0.0  # the first one: twice the round trip
        busy = False
        while not self.room.holds_floor(self.clock()):
            now = loop.time()
            if now >= deadline:
                return False
            if busy and self.room.floor is None and first_gap:
                # The floor just came free: the moderator grants from its queue now, which
                # may already hold our hand. Give that grant a round trip before raising
                # again; a hand raised at once would reach the moderator after the grant
                # and queue us a second time (a grant nobody uses later).
                next_raise = max(next_raise, now + first_gap * (0.5 + self._rng.random()))
            busy = self.room.floor is not None
            if now >= next_raise and self.room.floor is None:
                hand = self.room.raise_hand(self.clock())
                await self.send(hand)
                if gap is None:
                    round_trip = self.link.airtime(len(hand)) + (
                        1 + GRANT_REPEATS
                    ) * self.link.airtime(BEACON_SIZE)
                    gap = first_gap = max(RAISE_FIRST, 2 * round_trip)
                next_raise = now + gap * (0.5 + self._rng.random())
                gap = min(2 * gap, max(raise_every, gap))
            wake = min(deadline, next_raise) if next_raise > now else deadline
            await self._changed_or(max(0.05, wake - now))
        # The grant is followed by beacons repeating it: start talking once they have left
        # the air (the "wait for the beep" of push-to-talk), or our first packets queue
        # behind them and every listener's jitter buffer stays that much later all over.
        await asyncio.sleep(GRANT_REPEAT_AFTER[-1] + self.link.airtime(BEACON_SIZE) + 0.05)
        return True

    async def speak(
        self,
        mode: CodecMode,
        frames: Sequence[bytes],
        frames_per_packet: int,
        *,
        redundant: Sequence[bytes] | None = None,
        positions: Sequence[int] | None = None,
    ) -> TalkResult:
        """Speak one over (we must hold the floor); ends with our signed seal.

        ``redundant``: FEC copies of ``frames`` (each packet carries those of the frames
        before it); ``positions``: DTX, the over positions of ``frames`` (silence skipped).
        """
        return await speak(
            self.link,
            self.room.voice,
            self.room.end_over,
            mode,
            frames,
            frames_per_packet,
            self.clock,
            redundant,
            positions,
            self.room.live_packets,
        )

    async def speak_over(self, over: EncodedOver, frames_per_packet: int) -> TalkResult:
        """Speak a prepared over (see :func:`relay.voice.over.encode_over`)."""
        return await self.speak(
            over.mode,
            over.frames,
            frames_per_packet,
            redundant=over.redundant,
            positions=over.positions if over.dtx else None,
        )

    async def speak_live(
        self,
        mode: CodecMode,
        audio: AsyncIterator[np.ndarray],
        frames_per_packet: int,
        *,
        fec: bool = False,
        dtx: bool = False,
        until: Callable[[], bool] = lambda: False,
    ) -> LiveTalk:
        """Speak audio as it is captured (a microphone), then seal the over.

        The audio goes through the :class:`OverEncoder` a file goes through (FEC copies,
        DTX) and is cut by :class:`LivePackets` as :meth:`speak_over` cuts a file's over, so
        listeners cannot tell them apart. Stops when the grant runs out or ``until()`` says
        so; audio captured by then is still sent while we hold the floor.
        """
        result = LiveTalk(capture_start=asyncio.get_running_loop().time())
        encoder = OverEncoder(mode, fec=fec, dtx=dtx)
        packets = LivePackets(frames_per_packet)
        async for pcm in audio:
            if until() or not self.room.holds_floor(self.clock()):
                break
            await self._send_live(mode, packets.push(encoder.push(pcm), encoder.total), result)
        tail = packets.push(encoder.finish(), encoder.total, final=True)
        await self._send_live(mode, tail, result)
        result.positions = encoder.total
        for packet in self.room.end_over(self.clock()):
            await self.link.send(packet)
            result.count(packet)
        return result

    async def _send_live(self, mode: CodecMode, packets: list[Packet], result: LiveTalk) -> None:
        """Seal and send voice packets while we hold the floor (receivers drop them after)."""
        for first, batch, copies in packets:
            if not self.room.holds_floor(self.clock()):
                return
            packet = self.room.voice(mode, first, batch, self.clock(), copies)
            await self.link.send(packet)
            result.count(packet, len(batch), mode.bytes_per_frame)
            for extra in self.room.live_packets():
                await self.link.send(extra)
                result.count(extra)

    # ---------------------------------------------------------------- moderating
    async def grant_floor(self, member: bytes, seconds: int) -> None:
        """Grant ``member`` the floor (the grant followed by beacons repeating it). A copy
        of a recent removal's rekey goes first (see :meth:`Room.grant`): a member that
        missed the new key cannot read the grant nor the over."""
        grant = self.room.grant(member, seconds, self.clock())
        await self.send_due()
        await self.announce(grant)

    async def announce(self, *actions: bytes) -> None:
        """Send moderation ``actions``, then beacons repeating the room's state: a listener
        that missed a grant would drop the whole over as a floor violation, one that missed a
        mute would play the muted member on (at 10 % loss, 3 copies miss 0.1 %; a speaker's
        packets may also collide with the first copy). While :meth:`moderate` runs, the
        copies leave :data:`GRANT_REPEAT_AFTER` after the actions, not back to back, so one
        fade does not take them all."""
        await self.send(*actions)
        if self._moderating:  # the moderate loop sends the copies, spread in time
            now = asyncio.get_running_loop().time()
            self._repeat_at = [now + after for after in GRANT_REPEAT_AFTER]
            self._changed.set()
        else:
            await self._beacon(*(self.room.beacon(self.clock()) for _ in range(GRANT_REPEATS)))

    async def moderate(
        self,
        *,
        auto_grant: int | None,
        stop: asyncio.Event,
        beacon_size: int = BEACON_SIZE,
    ) -> None:
        """Grant the floor to raised hands in order (``auto_grant`` seconds each) and send
        beacons at the rate the airtime budget allows, until ``stop`` is set.

        A grant's copies go out spread over :data:`GRANT_REPEAT_AFTER`; a raised hand from
        the member already holding the floor (it heard none of them) is answered with a
        beacon. Until the holder is heard speaking, beacons keep coming every
        :data:`GRANT_BEACON_FRACTION` of the grant (never closer than the budget's interval),
        so a grant nobody heard is not dead for its lifetime. Once it speaks they wait up to
        BUSY_BEACON_FACTOR intervals: a beacon between two voice packets would delay the
        speaker and stretch every listener's jitter buffer for the rest of the over.
        """
        interval = self.room.beacon_interval(self.link.airtime(beacon_size))
        self._moderating = True
        try:
            await self._moderate(auto_grant, stop, interval)
        finally:
            self._moderating = False

    async def _moderate(self, auto_grant: int | None, stop: asyncio.Event, interval: float) -> None:
        loop = asyncio.get_running_loop()
        last_beacon = loop.time()
        last_answer = float("-inf")
        grant_seq, busy_hold = self.room.grant_seq, interval

        async def beacon() -> None:
            nonlocal last_beacon
            await self._beacon(self.room.beacon(self.clock()))
            last_beacon = loop.time()

        while not stop.is_set():
            now = self.clock()
            if auto_grant and not self.room.holds_floor(now) and self.room.floor is None:
                member = self.room.next_hand()
                if member is not None:
                    await self.grant_floor(member, auto_grant)
                    last_beacon = loop.time()
                    continue
            if self.room.grant_seq != grant_seq:  # a new grant (ours or another moderator's)
                grant_seq = self.room.grant_seq
                length = max(0.0, self.room.floor_until - now)
                busy_hold = min(
                    BUSY_BEACON_FACTOR * interval, max(interval, GRANT_BEACON_FRACTION * length)
                )
            held = self.room.floor is not None
            if self._repeat_at and loop.time() >= self._repeat_at[0]:
                self._repeat_at.pop(0)  # a copy of the last grant or action (announce)
                await beacon()
                continue
            if self._grant_asked:
                self._grant_asked = False
                if held and loop.time() - last_answer >= REGRANT_MIN_GAP:
                    last_answer = loop.time()
                    await beacon()
                    continue
            if not held:
                hold = interval
            elif self._holder_heard == self.room.grant_seq:
                hold = BUSY_BEACON_FACTOR * interval  # it talks: do not cut into its over
            else:
                hold = busy_hold
            due = last_beacon + hold
            if loop.time() >= due:
                await beacon()
                continue
            await self.send_due()  # later rekey copies, co-moderators' removals
            wake = min(due, self._repeat_at[0]) if self._repeat_at else due
            wait = wake - loop.time()
            scheduled = self.room.next_due
            if scheduled is not None:
                wait = min(wait, scheduled - self.clock())
            await self._changed_or(min(0.5, wait) if wait > 0.01 else 0.01)
