"""Record every (key, nonce) pair relay's AEADs use, in this process or in a child process.

The recorder replaces ``relay.core.crypto.AESCCM`` with a wrapper that remembers its key and
reports each ``encrypt`` call: the sender keys (nonce = counter) and the shared announce key
of introductions (random nonces) alike. ``python tests/nonce_helpers.py HOME COUNT [PAUSE]``
is a sending member in a child process: it opens the home's real counter store, seals COUNT
packets of every kind, and prints one line per AEAD use (``key-hash nonce``); with PAUSE it
prints ``PAUSED`` after PAUSE packets and waits for a line on stdin (a snapshot is taken
then) before going on.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

ROOM_ID = bytes(range(8))
ROOM_KEY = bytes(range(100, 132))
NOW = 1_750_000_000.0


class Recording:
    """AESCCM, reporting each (key, nonce) it encrypts with to ``sink``."""

    sink: Callable[[str, bytes], None] = staticmethod(lambda key, nonce: None)

    def __init__(self, key: bytes, tag_length: int = 16) -> None:
        self._aead = AESCCM(key, tag_length=tag_length)
        self._key = hashlib.sha256(key).hexdigest()[:32]

    def encrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
        Recording.sink(self._key, bytes(nonce))
        return self._aead.encrypt(nonce, data, associated)

    def decrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
        return self._aead.decrypt(nonce, data, associated)


def install(sink: Callable[[str, bytes], None]) -> None:
    import relay.core.crypto as crypto

    Recording.sink = staticmethod(sink)
    crypto.AESCCM = Recording  # type: ignore[misc]


def member(home: Path):
    """The room of the member whose home is ``home``, sending with the home's counters."""
    from relay.core.identity import Identity
    from relay.core.room import Room
    from relay.store.counters import CounterStore
    from relay.store.home import Home

    counters = CounterStore(Home(home).counters_db)
    room = Room(ROOM_ID, ROOM_KEY, 0, [Identity.generate().public], Home(home).identity(), counters)
    return room, counters


def emit(room, count: int, now: float = NOW, start: int = 0) -> list[bytes]:
    """Seal ``count`` packets of every kind a member sends (voice, voice+FEC, clip, signed
    control, unsigned control, introduction) straight from its sender: the sealing paths."""
    from relay.voice.modes import mode_by_name

    m1600 = mode_by_name("1600")
    out = []
    s = room.sender
    for i in range(start, start + count):
        kind = i % 6
        if kind == 0:
            out.append(s.voice(m1600, 4 * i + 4, [bytes([i & 0xFF]) * 8] * 4, now))
        elif kind == 1:
            out.append(s.voice(m1600, 4 * i + 4, [b"\x01" * 8] * 4, now, [b"\x02" * 4] * 4))
        elif kind == 2:
            out.append(s.clip(b"\x40" + i.to_bytes(4, "big"), now))
        elif kind == 3:
            out.append(room.lower_hand(now))
        elif kind == 4:
            out.append(s.over_end(i, now))
        else:
            out.append(room.raise_hand(now))
    return out


def main(argv: list[str]) -> None:
    home, count = Path(argv[1]), int(argv[2])
    pause = int(argv[3]) if len(argv) > 3 else -1
    install(lambda key, nonce: print(key, nonce.hex(), flush=True))
    room, _counters = member(home)
    for i in range(count):
        if i == pause:
            print("PAUSED", flush=True)
            sys.stdin.readline()
        emit(room, 1, start=i)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv)
