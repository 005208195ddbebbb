"""The per-sender sliding replay window (the IPsec / DTLS bitmap).

Late and reordered packets get in once; duplicates and anything older than the window do
not. ``check`` is side-effect free and runs before decryption; ``accept`` runs only after the
tag verified, so forged packets can never move the window.
"""

from __future__ import annotations

WINDOW = 64


class ReplayWindow:
    __slots__ = ("_bits", "highest", "size")

    def __init__(self, size: int = WINDOW, highest: int = -1, bits: int | None = None) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self.size = size
        self.highest = highest  # -1: nothing seen yet
        # bit i set <=> counter (highest - i) was accepted. A window restored from a mark
        # alone (``bits`` None, highest >= 0) treats everything at or below ``highest`` as
        # seen; restored with its bits it is exactly the window that was saved.
        if highest < 0:
            self._bits = 0
        elif bits is None:
            self._bits = (1 << size) - 1
        else:
            self._bits = (bits & ((1 << size) - 1)) | 1

    @property
    def bits(self) -> int:
        """The bitmap (bit i: counter ``highest - i`` was accepted), for persisting."""
        return self._bits

    def check(self, counter: int) -> str | None:
        """None if ``counter`` may be accepted, else "replay" or "stale"."""
        if counter > self.highest:
            return None
        offset = self.highest - counter
        if offset >= self.size:
            return "stale"
        return "replay" if (self._bits >> offset) & 1 else None

    def accept(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            if shift >= self.size:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)
