"""Playout (jitter) buffer: turns irregular packet arrivals into a steady, ordered frame clock.

Sans-I/O: the caller passes ``now`` (seconds, any monotonic origin) and gets back frame slots.
The playout clock is anchored on the first packet: frame ``p`` is due at
``anchor + (p - first_position) * frame_seconds + delay``. When a frame arrives after its due
time the delay grows just enough that it would have been on time (capped at ``max_delay``), as
WebRTC's NetEQ does. The frame itself is still played if its slot has not been emitted yet and
the grown delay covers it (a stretch instead of a loss); otherwise it is dropped and counted late.
Already-emitted slots are never revisited or reordered.

Slots are only emitted up to the highest position received, so a stream that simply ends is not
padded with "missing" frames; holes between received frames come out as missing slots (``frame``
is None) for the concealer to fill. Positions are absolute frame indices within one stream (one
over): use a fresh buffer per stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from relay.errors import UsageError

_HISTORY = 512  # emitted positions remembered to tell duplicates from late frames


class PlayoutSlot(NamedTuple):
    """One frame period of output: the frame to play, or None where it is missing."""

    position: int
    frame: bytes | None
    play_time: float

    @property
    def missing(self) -> bool:
        return self.frame is None


@dataclass(frozen=True, slots=True)
class JitterStats:
    frames_received: int  # accepted into the buffer
    frames_played: int  # emitted with their frame
    frames_missing: int  # emitted as None (to be concealed)
    frames_late: int  # arrived after their slot was due; dropped
    duplicates: int  # already held or already played; dropped
    delay: float  # current playout delay in seconds


class JitterBuffer:
    """Reorders frames and schedules their playout; see the module docstring for the clock."""

    def __init__(self, frame_seconds: float, initial_delay: float, max_delay: float) -> None:
        if not frame_seconds > 0:
            raise UsageError(f"frame duration must be positive, got {frame_seconds}")
        if not 0 <= initial_delay <= max_delay:
            raise UsageError(
                f"need 0 <= initial delay ({initial_delay}) <= max delay ({max_delay})"
            )
        self.frame_seconds = float(frame_seconds)
        self.max_delay = float(max_delay)
        self.delay = float(initial_delay)
        self._anchor: float | None = None  # arrival time of the first packet
        self._first = 0  # position the anchor refers to
        self._next = 0  # next position to emit
        self._last = -1  # highest position received
        self._emitted_any = False
        self._pending: dict[int, bytes] = {}
        self._played: set[int] = set()
        self.frames_received = 0
        self.frames_played = 0
        self.frames_missing = 0
        self.frames_late = 0
        self.duplicates = 0

    def due_time(self, position: int) -> float:
        """When ``position`` is due for playout under the current delay."""
        if self._anchor is None:
            raise UsageError("no packet received yet: the playout clock has no anchor")
        return self._anchor + (position - self._first) * self.frame_seconds + self.delay

    def push(self, position: int, frames: Sequence[bytes], now: float) -> None:
        """Take a packet whose ``frames`` start at ``position``, arriving at ``now``."""
        if position < 0:
            raise UsageError(f"frame position must not be negative, got {position}")
        if self._anchor is None:
            self._anchor, self._first, self._next = now, position, position
        elif position < self._next and not self._emitted_any and self._fits(position, now):
            # Reordered start of stream: nothing emitted yet, so the stream can start earlier.
            self._next = position
        for pos, frame in enumerate(frames, position):
            if pos < self._next:  # its slot is gone (played, or emitted as missing)
                if pos in self._played:
                    self.duplicates += 1
                else:
                    self._fits(pos, now)  # grows the delay for the frames to come
                    self.frames_late += 1
            elif pos in self._pending:
                self.duplicates += 1
            elif not self._fits(pos, now):  # late even at max_delay
                self.frames_late += 1
            else:
                self._pending[pos] = frame
                self.frames_received += 1
                if pos > self._last:
                    self._last = pos

    def _fits(self, pos: int, now: float) -> bool:
        """Grow the delay (up to max_delay) so ``pos`` is due no earlier than ``now``.

        Returns whether ``pos`` is now on time. Growing by exactly the lateness is NetEQ's rule:
        the smallest delay that would have caught this frame.
        """
        assert self._anchor is not None
        needed = now - (self._anchor + (pos - self._first) * self.frame_seconds)
        if needed > self.delay:
            self.delay = min(self.max_delay, needed)
        return needed <= self.delay

    def pop_due(self, now: float) -> list[PlayoutSlot]:
        """Every slot due by ``now``, in position order (missing frames as None)."""
        return self._emit(now)

    def flush(self, now: float) -> list[PlayoutSlot]:
        """End of stream: every remaining slot up to the last frame received, due or not.

        ``now`` is accepted for symmetry; slots keep their scheduled play times.
        """
        return self._emit(None)

    def _emit(self, now: float | None) -> list[PlayoutSlot]:
        out: list[PlayoutSlot] = []
        if self._anchor is None:
            return out
        pending, played = self._pending, self._played
        anchor, first, fs, delay = self._anchor, self._first, self.frame_seconds, self.delay
        while self._next <= self._last:
            pos = self._next
            t = anchor + (pos - first) * fs + delay  # same arithmetic as due_time()
            if now is not None and t > now:
                break
            frame = pending.pop(pos, None)
            if frame is None:
                self.frames_missing += 1
            else:
                self.frames_played += 1
                played.add(pos)
            out.append(PlayoutSlot(pos, frame, t))
            self._next = pos + 1
        if out:
            self._emitted_any = True
            if len(played) > 2 * _HISTORY:
                floor = self._next - _HISTORY
                self._played = {p for p in played if p >= floor}
        return out

    def peek_after(self, position: int) -> tuple[int, bytes] | None:
        """The first frame held after ``position`` (concealment interpolates towards it)."""
        later = [p for p in self._pending if p > position]
        if not later:
            return None
        pos = min(later)
        return pos, self._pending[pos]

    @property
    def next_position(self) -> int:
        """The next slot to be emitted (frames before it can no longer be played)."""
        return self._next

    @property
    def pending(self) -> int:
        """Frames received and waiting for their slot."""
        return len(self._pending)

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            self.frames_received,
            self.frames_played,
            self.frames_missing,
            self.frames_late,
            self.duplicates,
            self.delay,
        )
