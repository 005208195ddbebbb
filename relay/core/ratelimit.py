"""Token buckets and a bounded table of them (sans-I/O: ``now`` is passed in).

What an attacker buys with a flood is our memory and our CPU. A bucket says "no" in a few
hundred nanoseconds, before the expensive work (an Ed25519 verification, a trial
decryption, a 141-byte notice on air); :class:`Buckets` keeps one bucket per key (a room
hint, a sender) in a table that never grows past ``limit`` entries, forgetting the least
recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from relay.errors import UsageError


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = float("-inf")) -> None:
        if rate < 0 or burst <= 0:
            raise UsageError("a token bucket needs rate >= 0 and burst > 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            if self.stamp != float("-inf"):
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; False (nothing spent) if not."""
        self._refill(now)
        if self.tokens + 1e-12 < cost:
            return False
        self.tokens -= cost
        return True

    def level(self, now: float) -> float:
        self._refill(now)
        return self.tokens


class Buckets:
    """One :class:`TokenBucket` per key, at most ``limit`` keys (least recently used go).

    A forgotten key comes back with a full bucket, so ``limit`` must exceed the number of
    keys an attacker can make us track at once for the bound to mean anything per key; the
    callers pair it with a shared bucket that bounds the total."""

    def __init__(self, rate: float, burst: float, limit: int) -> None:
        if limit < 1:
            raise UsageError("a bucket table needs a limit >= 1")
        self.rate, self.burst, self.limit = rate, burst, limit
        self._table: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        bucket = self._table.get(key)
        if bucket is None:
            bucket = self._table[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._table) > self.limit:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(key)
        return bucket.take(now, cost)

    def level(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` has now (a full bucket if it has none yet); changes nothing."""
        bucket = self._table.get(key)
        return self.burst if bucket is None else bucket.level(now)

    def __len__(self) -> int:
        return len(self._table)
