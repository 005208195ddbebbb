"""Adaptive codec mode: step down when the room loses packets or airtime runs short.

Sans-I/O: the caller feeds loss reports and airtime readings with ``now`` and asks which mode
to speak the next over in. Loss reports come only from members who transmit anyway — a
speaker's over seal, the moderator's beacon (:class:`relay.core.room.LossReport`) — never from
listeners, whose radios stay silent so they cannot be located.

The ladder keeps 40 ms frames (1600 → 1300 → 1200 → 700C: 8, 7, 6, 4 bytes a frame), so frame
positions, packet sizes and FEC pairings stay meaningful across a step. A step needs
``hold`` seconds since the last one (one noisy over must not make the codec flap); it goes
down when the worst recent report is at least ``down_loss`` or the airtime budget is short,
and back up when every recent report is under ``up_loss`` and the budget has room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.errors import UsageError
from relay.voice.modes import CodecMode, mode_by_name

LADDER = ("1600", "1300", "1200", "700C")
DOWN_LOSS = 15  # percent: a member that transmits lost this much -> step down
UP_LOSS = 5  # percent: every recent report below this -> step up
WINDOW = 60.0  # seconds a report counts
HOLD = 20.0  # seconds between steps


@dataclass
class ModePolicy:
    """Which codec mode to speak in next, from loss reports and the airtime budget."""

    top: str = "1600"  # the room's mode: never step above it
    ladder: tuple[str, ...] = LADDER
    down_loss: int = DOWN_LOSS
    up_loss: int = UP_LOSS
    window: float = WINDOW
    hold: float = HOLD
    _reports: dict[bytes, tuple[int, float]] = field(default_factory=dict)
    _short_until: float = float("-inf")
    _index: int = 0
    _start: int = 0
    _changed: float = float("-inf")

    def __post_init__(self) -> None:
        names = [mode_by_name(n).name for n in self.ladder]
        top = mode_by_name(self.top).name
        if top not in names:
            raise UsageError(f"mode {top} is not on the adaptive ladder ({', '.join(names)})")
        if not 0 <= self.up_loss < self.down_loss <= 100:
            raise UsageError("need 0 <= up_loss < down_loss <= 100 (percent)")
        self.ladder = tuple(names)
        self._start = self._index = names.index(top)

    def set_top(self, name: str) -> None:
        """Make ``name`` (the room's mode) the top of the ladder; restarts from it."""
        top = mode_by_name(name).name
        if top not in self.ladder:
            raise UsageError(f"mode {top} is not on the adaptive ladder ({', '.join(self.ladder)})")
        self.top = top
        self._start = self._index = self.ladder.index(top)

    def report(self, reporter: bytes, loss: int, now: float) -> None:
        """A loss report (percent) from a member who transmits anyway; the latest per member
        counts."""
        if not 0 <= loss <= 100:
            raise UsageError(f"loss is a percentage, got {loss}")
        self._reports[reporter] = (loss, now)

    def airtime(self, needed: float, available: float, now: float) -> None:
        """Airtime reading: the next over in the current mode needs ``needed`` seconds of air
        per second where ``available`` are free (duty cycle, relay hops). Short counts for
        one ``window``."""
        if needed > available:
            self._short_until = now + self.window

    def worst_loss(self, now: float) -> int | None:
        """The worst loss any member reported within the window (None: no recent report)."""
        recent = [loss for loss, t in self._reports.values() if now - t <= self.window]
        return max(recent, default=None)

    def mode(self, now: float) -> CodecMode:
        """The mode to speak the next over in (may step once per ``hold``)."""
        if now - self._changed >= self.hold:
            worst = self.worst_loss(now)
            short = now < self._short_until
            heavy = worst is not None and worst >= self.down_loss
            if (heavy or short) and self._index < len(self.ladder) - 1:
                self._index += 1
                self._changed = now
            elif (
                not short and (worst is None or worst < self.up_loss) and self._index > self._start
            ):
                self._index -= 1
                self._changed = now
        return mode_by_name(self.ladder[self._index])
