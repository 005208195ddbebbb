"""Talking and listening on a link: the async glue between a link, a session and the codec.

The protocol core seals and opens; the voice layer encodes, buffers and conceals; this module
only moves bytes between them at the right moments. It reads the time from the running event
loop, so the same code runs in virtual time (simulations, tests) and in real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from relay.core import ControlKind, ControlMessage, Receiver, Sender, VoiceFrames
from relay.errors import LinkError, UsageError
from relay.links.base import Datagram, Link
from relay.voice.codec import Decoder
from relay.voice.conceal import DEFAULT_METHOD, METHODS, Concealer
from relay.voice.jitter import JitterBuffer, PlayoutSlot
from relay.voice.modes import CodecMode

RoomClock = Callable[[], float]
# Verified-only playout: verified frames come in batches up to a live interval (plus a DTX
# keep-alive) apart, so an over is not ended for want of voice as early.
VERIFIED_IDLE_TIMEOUT = 6.0


@dataclass
class TalkResult:
    """What a talker did: enough to report on, nothing secret."""

    capture_start: float  # loop time at which the first sample was spoken
    packets_sent: int = 0
    frames_sent: int = 0
    codec_bytes: int = 0
    datagram_bytes: int = 0
    datagram_sizes: list[int] = field(default_factory=list)

    def count(self, packet: bytes, frames: int = 0, bytes_per_frame: int = 0) -> None:
        """One packet sent (``frames`` voice frames in it; 0 for a seal)."""
        self.packets_sent += 1
        self.frames_sent += frames
        self.codec_bytes += frames * bytes_per_frame
        self.datagram_bytes += len(packet)
        self.datagram_sizes.append(len(packet))


VoiceSealer = Callable[..., bytes]  # (mode, position, frames, now[, redundant]) -> packet


def batches(
    frames: Sequence[bytes],
    frames_per_packet: int,
    redundant: Sequence[bytes] | None = None,
    positions: Sequence[int] | None = None,
) -> Iterator[tuple[int, Sequence[bytes], Sequence[bytes] | None]]:
    """Split an over into packets: ``(first position, frames, redundant copies or None)``.

    ``positions`` (DTX: increasing, with jumps where silence was skipped) gives each frame's
    place in the over; a packet never spans a jump. With ``redundant`` (the same frames
    encoded in the FEC mode, one for one) a packet carries copies of the frames just before
    it (as many as it has frames) when those were sent: losing one packet then costs quality,
    not silence. The first packet of an over, or of a talk spurt, goes as plain voice.
    """
    if frames_per_packet < 1:
        raise UsageError("frames per packet must be at least 1")
    if redundant is not None and len(redundant) != len(frames):
        raise UsageError("redundant frames must match the primary frames one for one")
    pos = list(range(len(frames))) if positions is None else list(positions)
    if len(pos) != len(frames) or any(b <= a for a, b in pairwise(pos)) or (pos and pos[0] < 0):
        raise UsageError("positions must be increasing, non-negative, one per frame")
    i = 0
    while i < len(frames):
        n = 1
        while n < frames_per_packet and i + n < len(frames) and pos[i + n] == pos[i] + n:
            n += 1
        red = None
        if redundant is not None and i >= n and pos[i - n] == pos[i] - n:
            red = redundant[i - n : i]
        yield pos[i], frames[i : i + n], red
        i += n


async def talk(
    link: Link,
    sender: Sender,
    mode: CodecMode,
    frames: Sequence[bytes],
    frames_per_packet: int,
    room_clock: RoomClock,
    *,
    redundant: Sequence[bytes] | None = None,
    positions: Sequence[int] | None = None,
) -> TalkResult:
    """Send one over on a plain session (no room), ending with an unsigned end marker.

    ``redundant`` adds FEC copies and ``positions`` marks DTX skips (see :func:`speak`).
    """
    total = positions[-1] + 1 if positions else len(frames)
    return await speak(
        link,
        sender.voice,
        lambda now: [sender.over_end(total, now)],
        mode,
        frames,
        frames_per_packet,
        room_clock,
        redundant,
        positions,
    )


async def speak(
    link: Link,
    seal: VoiceSealer,
    end: Callable[[float], list[bytes]],
    mode: CodecMode,
    frames: Sequence[bytes],
    frames_per_packet: int,
    room_clock: RoomClock,
    redundant: Sequence[bytes] | None = None,
    positions: Sequence[int] | None = None,
    extra: Callable[[], list[bytes]] | None = None,
) -> TalkResult:
    """Send one over as it is spoken: a packet leaves when its last frame has been captured.

    ``seal(mode, position, frames, now[, redundant])`` makes each voice packet and
    ``end(now)`` the end-of-over packets, so a plain session and a room share the pacing.
    ``redundant``: the over in the FEC mode (see :func:`batches`), or None for no FEC.
    ``positions``: DTX, the over positions of ``frames`` (skipped silence is not sent).
    ``extra()``: rooms, packets to send right after a voice packet (a live rebase).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = TalkResult(capture_start=start)
    for first, batch, red in batches(frames, frames_per_packet, redundant, positions):
        captured = start + (first + len(batch)) * mode.frame_seconds
        delay = captured - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if red is None:
            packet = seal(mode, first, batch, room_clock())
        else:
            packet = seal(mode, first, batch, room_clock(), red)
        await link.send(packet)
        result.count(packet, len(batch), mode.bytes_per_frame)
        for packet in extra() if extra is not None else ():
            await link.send(packet)
            result.count(packet)
    for packet in end(room_clock()):
        await link.send(packet)
        result.count(packet)
    return result


@dataclass
class Over:
    """One received over (a turn of speech), as played out."""

    sender: bytes
    mode: CodecMode
    pcm: list[np.ndarray] = field(default_factory=list)
    play_times: dict[int, float] = field(default_factory=dict)  # position -> loop time
    frames_missing: int = 0  # slots without their primary frame (lost, late or skipped)
    frames_late: int = 0
    frames_redundant: int = 0  # of the missing, played from an FEC copy
    frames_comfort: int = 0  # of the missing, skipped by the talker (DTX): comfort noise
    complete: bool = False  # the sender's end-of-over arrived
    verdict: str | None = None  # rooms: verified | partial | forged | unsigned

    @property
    def frames_concealed(self) -> int:
        """Frames whose primary was lost (FEC copies included); DTX pauses are not loss."""
        return self.frames_missing - self.frames_comfort

    @property
    def first_position(self) -> int:
        """Frames before this one were lost before the listener heard anything of the over."""
        return min(self.play_times, default=0)

    def audio(self) -> np.ndarray:
        """The over as played, with silence where its opening frames were lost."""
        head = np.zeros(self.first_position * self.mode.samples_per_frame, dtype=np.int16)
        return np.concatenate([head, *self.pcm])


class _Stream:
    """Playout state for the over one sender is speaking."""

    def __init__(
        self, event: VoiceFrames, initial_delay: float, max_delay: float, conceal: str
    ) -> None:
        mode = event.mode
        self.over = Over(event.sender, mode)
        self.buffer = JitterBuffer(mode.frame_seconds, initial_delay, max_delay)
        self.concealer = Concealer(Decoder(mode), conceal)
        self.last_arrival = event.time
        # Lower-rate copies of frames (FEC), played only where the primary is missing: a
        # primary that arrives in time replaces its copy, as the buffer is asked first.
        self.fallback: dict[int, tuple[CodecMode, bytes]] = {}
        # DTX: positions the talker skipped (silence), played as comfort noise.
        self.skipped: set[int] = set()
        self._last_counter: int | None = None
        self._last_end = -1

    def push(self, event: VoiceFrames, arrival: float) -> None:
        self._note_skips(event)
        self.buffer.push(event.position, event.frames, arrival)
        if event.redundant and event.redundant_mode is not None:
            start = event.position - len(event.redundant)
            floor = self.buffer.next_position
            for pos, frame in enumerate(event.redundant, start):
                if pos >= floor:
                    self.fallback.setdefault(pos, (event.redundant_mode, frame))

    def _note_skips(self, event: VoiceFrames) -> None:
        """Mark frames the talker skipped (DTX) as silence, not loss.

        Counters are consecutive per sender, so the number of packets lost between two
        arrivals is known; a position jump larger than those packets could have carried was
        skipped on purpose. (Unsure cases, loss and a pause together, count as pause: comfort
        noise is a better guess than speech glided across a pause.)
        """
        counter, end = event.counter, event.position + len(event.frames) - 1
        last = self._last_counter
        if last is not None and counter > last and event.position > self._last_end + 1:
            gap = event.position - self._last_end - 1
            lost_packets = counter - last - 1
            if gap > lost_packets * len(event.frames):
                self.skipped.update(range(self._last_end + 1, event.position))
        if last is None or counter > last:
            self._last_counter = counter
            self._last_end = max(self._last_end, end)

    def play(self, slots: Sequence[PlayoutSlot]) -> None:
        slots = list(slots)
        ahead: tuple[int, bytes] | None = None
        for i, slot in enumerate(slots):
            copy = self.fallback.pop(slot.position, None)
            if slot.frame is None and slot.position in self.skipped:
                self.skipped.discard(slot.position)
                pcm = self.concealer.render_comfort()
            elif slot.frame is None and copy is not None:
                pcm = self.concealer.render_redundant(*copy, slot.position)
            else:
                if slot.frame is None and (ahead is None or ahead[0] <= slot.position):
                    ahead = next(
                        ((s.position, s.frame) for s in slots[i + 1 :] if s.frame is not None),
                        None,
                    ) or self.buffer.peek_after(slot.position)
                pcm = self.concealer.render(slot, ahead)
            self.over.pcm.append(pcm)
            self.over.play_times[slot.position] = slot.play_time

    def finish(self, total_frames: int | None, complete: bool, *, flush: bool = True) -> Over:
        if flush:
            self.play(self.buffer.flush(0.0))
        if total_frames is not None:
            # Frames lost at the very end: the jitter buffer never saw them, the count says so.
            played_to = self.over.first_position + len(self.over.pcm)
            for pos in range(played_to, total_frames):
                copy = self.fallback.pop(pos, None)
                if copy is not None:
                    self.over.pcm.append(self.concealer.render_redundant(*copy, pos))
                else:
                    self.over.pcm.append(self.concealer.render_frame(None, pos))
                self.buffer.frames_missing += 1
        self.over.frames_missing = self.buffer.frames_missing + self.over.first_position
        self.over.frames_late = self.buffer.frames_late
        self.over.frames_redundant = self.concealer.frames_redundant
        self.over.frames_comfort = self.concealer.frames_comfort
        self.over.complete = complete
        return self.over


class Playout:
    """Plays each speaker's over through its own jitter buffer and concealer.

    ``initial_delay`` is the playout margin beyond the first packet's arrival; the buffer grows
    it when packets come late (up to ``max_delay``). An over ends when ``end`` is called (the
    speaker's end-of-over packet) or after ``idle_timeout`` seconds without voice.
    """

    def __init__(
        self,
        *,
        initial_delay: float = 0.04,
        max_delay: float = 2.0,
        idle_timeout: float = 3.0,
        conceal: str = DEFAULT_METHOD,
        verified_only: bool = False,
    ) -> None:
        if conceal not in METHODS:
            raise UsageError(f"unknown concealment {conceal!r} (known: {', '.join(METHODS)})")
        # Rooms: play only frames the speaker is known to have sent (its live keys, about an
        # interval after the words, or its seal), as they are verified: every word later,
        # nothing injected. The room node feeds such a playout verified packets instead of
        # received ones; the jitter buffer absorbs the batches of one interval.
        self.verified_only = verified_only
        if verified_only:
            idle_timeout = max(idle_timeout, VERIFIED_IDLE_TIMEOUT)
        self.conceal = conceal
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.idle_timeout = idle_timeout
        self.overs: list[Over] = []
        self._streams: dict[bytes, _Stream] = {}
        self._over_done = asyncio.Event()

    def voice(self, event: VoiceFrames, arrival: float) -> None:
        """Frames to play (arrival in loop time)."""
        stream = self._streams.get(event.sender)
        if stream is None or stream.over.mode is not event.mode:
            if stream is not None:
                self._close(event.sender, None, complete=False)
            stream = self._streams[event.sender] = _Stream(
                event, self.initial_delay, self.max_delay, self.conceal
            )
        stream.push(event, arrival)
        stream.last_arrival = arrival
        stream.play(stream.buffer.pop_due(arrival))

    def end(self, sender: bytes, total: int | None, verdict: str | None = None) -> None:
        """The speaker ended its over after ``total`` frames."""
        if sender in self._streams:
            self._close(sender, total, complete=True, verdict=verdict)

    def tick(self, now: float) -> None:
        """Play what is due and end overs whose speaker went quiet."""
        for sender, stream in list(self._streams.items()):
            stream.play(stream.buffer.pop_due(now))
            if now - stream.last_arrival > self.idle_timeout:
                self._close(sender, None, complete=False)

    def cut(self, sender: bytes) -> bool:
        """Stop playing ``sender`` at once: what is still buffered is never played (a
        moderator muted or removed them mid-over). True if an over was cut."""
        if sender not in self._streams:
            return False
        self._close(sender, None, complete=False, flush=False)
        return True

    def live_overs(self) -> list[Over]:
        """The overs being played right now (one per speaker still talking)."""
        return [stream.over for stream in self._streams.values()]

    def close_all(self) -> None:
        """End every over still being spoken (the listener stops): what was heard of it is
        kept, as an incomplete over with no verdict, instead of being lost."""
        for sender in list(self._streams):
            self._close(sender, None, complete=False)

    def _close(
        self,
        sender: bytes,
        total: int | None,
        *,
        complete: bool,
        verdict: str | None = None,
        flush: bool = True,
    ) -> None:
        stream = self._streams.pop(sender)
        over = stream.finish(total, complete, flush=flush)
        over.verdict = verdict
        self.overs.append(over)
        self._over_done.set()

    async def pump(
        self,
        link: Link,
        handle,
        tick_seconds: float = 0.02,
        *,
        seen: Callable[[Datagram], None] | None = None,
    ) -> None:
        """Feed every datagram to ``handle(data, arrival)`` and keep playing until the link
        closes or the task is cancelled; ``seen`` is shown each datagram first (signal
        reports)."""
        loop = asyncio.get_running_loop()

        async def ticker() -> None:
            while True:
                await asyncio.sleep(tick_seconds)
                self.tick(loop.time())

        ticking = asyncio.create_task(ticker())
        try:
            while True:
                try:
                    datagram = await link.recv()
                except LinkError:
                    return
                if seen is not None:
                    seen(datagram)
                handle(datagram.data, datagram.time)
        finally:
            ticking.cancel()

    async def wait_overs(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` overs have ended (True) or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.overs) < count:
            self._over_done.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._over_done.wait(), remaining)
            except TimeoutError:
                return len(self.overs) >= count
        return True


class Listener(Playout):
    """Plays what one room session receives (no floor control: the plain voice path)."""

    def __init__(self, receiver: Receiver, room_clock: RoomClock, **playout) -> None:
        super().__init__(**playout)
        self.receiver = receiver
        self.room_clock = room_clock
        self.datagrams = 0

    def handle(self, data: bytes, arrival: float) -> None:
        """Feed one datagram (arrival in loop time)."""
        self.datagrams += 1
        event = self.receiver.receive(data, self.room_clock())
        if isinstance(event, VoiceFrames):
            self.voice(event, arrival)
        elif (
            isinstance(event, ControlMessage)
            and event.kind == ControlKind.OVER_END
            and len(event.payload) == 4
        ):
            self.end(event.sender, int.from_bytes(event.payload, "big"))

    async def run(self, link: Link, tick_seconds: float = 0.02) -> None:
        """Receive and play until the link closes or the task is cancelled."""
        await self.pump(link, self.handle, tick_seconds)
