"""Dedup across paths: remember which sealed packets were already forwarded.

The same sealed packet can reach a bridge over radio and over MQTT (and via other gateways).
A bridge cannot read it, but identical bytes are the same packet: the sender's counter is
the AEAD nonce, so two distinct packets never share header and ciphertext. The key is a
short hash of the whole packet; memory is bounded by entry count and by age.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from relay.errors import UsageError

DIGEST_LEN = 16  # 128 bits: accidental collisions are not a concern at any realistic rate


def packet_key(packet: bytes) -> bytes:
    """The dedup key of a packet (a hash, so the cache does not hold packets)."""
    return hashlib.blake2b(packet, digest_size=DIGEST_LEN).digest()


class DedupCache:
    """A bounded, time-expiring set of packet keys.

    An entry lives ``max_age`` seconds from first sight (a repeat does not refresh it, so a
    loop that keeps re-injecting a packet cannot keep it alive forever). When more than
    ``max_entries`` are held the oldest is evicted and counted, because an evicted key is a
    packet that could be forwarded twice.
    """

    def __init__(self, max_entries: int = 65536, max_age: float = 60.0) -> None:
        if max_entries < 1:
            raise UsageError(f"dedup max_entries must be >= 1, got {max_entries}")
        if not max_age > 0:
            raise UsageError(f"dedup max_age must be > 0 seconds, got {max_age!r}")
        self.max_entries = max_entries
        self.max_age = float(max_age)
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # key -> first seen, oldest first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def expire(self, now: float) -> None:
        """Forget entries older than ``max_age``."""
        horizon = now - self.max_age
        while self._seen:
            key, first = next(iter(self._seen.items()))
            if first > horizon:
                break
            del self._seen[key]

    def check_and_add(self, packet: bytes, now: float) -> bool:
        """True if ``packet`` is new (and remember it); False if it is a duplicate."""
        self.expire(now)
        key = packet_key(packet)
        if key in self._seen:
            return False
        self._seen[key] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
        return True

    def touch(self, packet: bytes, now: float) -> None:
        """Remember ``packet`` as seen at ``now``: call it when we transmit a packet late.

        A paced radio may hold a packet far longer than ``max_age``; when it finally goes out,
        another bridge on the same channel may hand it straight back over MQTT, so the entry
        must be fresh from the moment of transmission, not of arrival.
        """
        self.expire(now)
        key = packet_key(packet)
        self._seen.pop(key, None)
        self._seen[key] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
