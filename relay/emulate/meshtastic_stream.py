"""The Meshtastic serial/TCP stream framing, sans-I/O: ``0x94 0xC3 <len_hi> <len_lo> <protobuf>``.

A device must survive whatever arrives on its port: a client's wake-up bytes, firmware-less
noise, a frame cut short by an unplug. So the decoder never raises: bytes outside frames are
skipped and counted, a header announcing more than the firmware's 512-byte limit is skipped,
a frame whose body does not parse makes the decoder rescan from just after its magic, so
a real frame hidden behind a truncated one is still found. A frame still incomplete
``STALE`` seconds after it began (its length swallowed the frames behind it) is declared
truncated the same way: the I/O side calls :meth:`StreamDecoder.expire` on a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

START1 = 0x94
START2 = 0xC3
MAGIC = bytes((START1, START2))
HEADER_LEN = 4
MAX_FRAME = 512  # firmware MAX_TO_FROM_RADIO_SIZE
WAKE = START2  # clients send 32 of these before the first frame
STALE = 0.5  # seconds: 512 bytes take 44 ms at 115200 baud; nothing honest is this slow

T = TypeVar("T")


def frame(payload: bytes) -> bytes:
    """One protobuf, framed for the stream."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return MAGIC + len(payload).to_bytes(2, "big") + payload


@dataclass(slots=True)
class StreamCounters:
    """What a decoder skipped: the numbers a user reads to see how dirty the line is."""

    frames: int = 0
    wake_bytes: int = 0  # 0xC3 wake-up bytes between frames (expected, not an error)
    garbage_bytes: int = 0  # other bytes outside frames (firmware log text, noise)
    oversize: int = 0  # headers announcing more than MAX_FRAME bytes
    bad_frames: int = 0  # frames whose body did not parse
    truncated: int = 0  # frames cut off: the stream ended, or nothing came for STALE s


class StreamDecoder(Generic[T]):
    """Turns stream bytes into parsed messages; ``parse`` raises (or returns None) on junk."""

    def __init__(
        self, parse: Callable[[bytes], T | None], counters: StreamCounters | None = None
    ) -> None:
        self._parse = parse
        self._buf = bytearray()
        self.counters = counters if counters is not None else StreamCounters()
        self._since: float | None = None  # when the incomplete frame at the front began

    def feed(self, data: bytes, now: float = 0.0) -> list[T]:
        """Every complete message in ``data`` (plus what was buffered), in order."""
        had = len(self._buf) + len(data)
        self._buf += data
        out = self._scan()
        if len(self._buf) < had or not self._buf.startswith(MAGIC):
            self._since = None  # the front moved: any partial frame there is a new one
        if self._buf.startswith(MAGIC) and self._since is None:
            self._since = now
        return out

    def expire(self, now: float) -> list[T]:
        """Give up on a frame incomplete for ``STALE`` seconds; return what was behind it."""
        if self._since is None or now - self._since < STALE:
            return []
        return self._truncate(now)

    def close(self) -> list[T]:
        """The stream ended: a partial frame is truncated; frames buried in it still count."""
        out: list[T] = []
        while self._buf.startswith(MAGIC):
            out += self._truncate(0.0)
        self._skip(len(self._buf))
        self._since = None
        return out

    def _truncate(self, now: float) -> list[T]:
        self.counters.truncated += 1
        del self._buf[:2]
        self._since = None
        return self.feed(b"", now)

    def _scan(self) -> list[T]:
        out: list[T] = []
        buf, c = self._buf, self.counters
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                keep = 1 if buf and buf[-1] == START1 else 0
                self._skip(len(buf) - keep)
                return out
            self._skip(start)
            if len(buf) < HEADER_LEN:
                return out
            size = (buf[2] << 8) | buf[3]
            if size > MAX_FRAME:
                c.oversize += 1
                del buf[:2]
                continue
            if len(buf) < HEADER_LEN + size:
                return out
            body = bytes(buf[HEADER_LEN : HEADER_LEN + size])
            msg = self._try_parse(body)
            if msg is None:
                c.bad_frames += 1
                del buf[:2]  # rescan: a real frame may start inside this one
                continue
            del buf[: HEADER_LEN + size]
            c.frames += 1
            out.append(msg)

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return len(self._buf)

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        skipped = self._buf[:n]
        wake = skipped.count(WAKE)
        self.counters.wake_bytes += wake
        self.counters.garbage_bytes += n - wake
        del self._buf[:n]

    def _try_parse(self, body: bytes) -> T | None:
        try:
            return self._parse(body)
        except Exception:  # a parser's complaint about junk, whatever its type
            return None
