"""How often a bridge may send relay notices (sans-I/O).

Each refused over costs a 141-byte signed notice, and anyone who can publish to the broker
can make overs to refuse (any hint, any short id): unlimited, notices would be an amplifier.
A notice goes out only if all three buckets allow it: one per (room hint, speaker) every
:data:`PER_SPEAKER_INTERVAL` seconds, :data:`PER_HINT_BURST` then one per
:data:`PER_HINT_INTERVAL` per hint, and :data:`TOTAL_BURST` then :data:`TOTAL_RATE` a second
in all. The rest are counted, never sent.
"""

from __future__ import annotations

from relay.core.ratelimit import Buckets, TokenBucket

PER_SPEAKER_INTERVAL = 30.0
PER_HINT_INTERVAL = 10.0
PER_HINT_BURST = 3.0
TOTAL_RATE = 0.5
TOTAL_BURST = 5.0
SPEAKERS_TRACKED = 1024


class NoticeLimiter:
    """Says whether a notice about (hint, speaker) may go out at ``now``."""

    def __init__(self) -> None:
        self._speakers = Buckets(1.0 / PER_SPEAKER_INTERVAL, 1.0, SPEAKERS_TRACKED)
        self._hints = Buckets(1.0 / PER_HINT_INTERVAL, PER_HINT_BURST, 256)
        self._total = TokenBucket(TOTAL_RATE, TOTAL_BURST)
        self.sent = 0
        self.suppressed = 0

    def allow(self, hint: int, speaker: int, now: float) -> bool:
        ok = (
            self._speakers.level((hint, speaker), now) >= 1.0
            and self._hints.level(hint, now) >= 1.0
            and self._total.level(now) >= 1.0
        )
        if not ok:
            self.suppressed += 1
            return False
        self._speakers.take((hint, speaker), now)
        self._hints.take(hint, now)
        self._total.take(now)
        self.sent += 1
        return True

    @staticmethod
    def most(seconds: float, hints: int, speakers: int) -> int:
        """The most notices ``seconds`` can see about ``hints`` hints and ``speakers``
        (hint, speaker) pairs: the bound the tests and THREATS.md state."""
        per_speaker = speakers * (1 + seconds / PER_SPEAKER_INTERVAL)
        per_hint = hints * (PER_HINT_BURST + seconds / PER_HINT_INTERVAL)
        total = TOTAL_BURST + seconds * TOTAL_RATE
        return int(min(per_speaker, per_hint, total))
