"""KISS, the byte protocol between a host and a packet-radio TNC, without any I/O.

A frame on the wire is ``FEND type data FEND``; ``FEND`` and ``FESC`` inside are escaped as
``FESC TFEND`` and ``FESC TFESC``. The type byte holds the TNC port in its high nibble and the
command in its low nibble (0 carries data; 1-6 set TNC parameters); ``0xFF`` is RETURN.

The :class:`Decoder` takes bytes in any chunks, as a serial port or socket delivers them, and
hands back whole :class:`Frame` objects. A TNC's line is not trusted: bytes outside frames,
broken escapes, unknown commands and oversize frames are skipped, counted and logged, never
raised. Only the caller's own mistakes (feeding text, a port outside 0-15) raise UsageError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from relay.errors import UsageError

log = logging.getLogger(__name__)

FEND = 0xC0
FESC = 0xDB
TFEND = 0xDC
TFESC = 0xDD

MAX_PORT = 15
# direwolf accepts AX.25 frames up to 2123 bytes; allow the type byte and some slack.
DEFAULT_MAX_FRAME = 2200


class Command(IntEnum):
    """The KISS type-byte commands (low nibble), plus RETURN which is the whole byte."""

    DATA = 0x00
    TXDELAY = 0x01  # key-up delay, in 10 ms units
    P = 0x02  # p-persistence, 0-255 stands for (P+1)/256
    SLOTTIME = 0x03  # in 10 ms units
    TXTAIL = 0x04  # in 10 ms units (obsolete on most TNCs, honoured by direwolf)
    FULLDUPLEX = 0x05  # 0 half duplex, non-zero full duplex
    SETHARDWARE = 0x06  # TNC-specific bytes
    RETURN = 0xFF  # leave KISS mode


_ONE_BYTE = frozenset(
    {Command.TXDELAY, Command.P, Command.SLOTTIME, Command.TXTAIL, Command.FULLDUPLEX}
)
_BY_NIBBLE = {c.value: c for c in Command if c is not Command.RETURN}


@dataclass(frozen=True, slots=True)
class Frame:
    """One KISS frame: a TNC port, a command and its bytes (the packet, for DATA)."""

    command: Command
    payload: bytes = b""
    port: int = 0


def escape(data: bytes) -> bytes:
    """``data`` with every FEND and FESC escaped: the result never contains FEND."""
    return bytes(data).replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise UsageError(f"KISS port must be an integer 0-{MAX_PORT}, got {port!r}")
    return port


def _as_bytes(what: str, data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError(f"{what} must be bytes, got {type(data).__name__}")
    return bytes(data)


def encode(frame: Frame) -> bytes:
    """The wire bytes of ``frame`` (with both FENDs)."""
    payload = _as_bytes("KISS payload", frame.payload)
    if not isinstance(frame.command, Command):
        raise UsageError(f"not a KISS command: {frame.command!r}")
    if frame.command is Command.RETURN:
        if payload:
            raise UsageError("the KISS RETURN command carries no bytes")
        return bytes((FEND, 0xFF, FEND))
    port = _check_port(frame.port)
    if frame.command in _ONE_BYTE and len(payload) != 1:
        raise UsageError(f"KISS {frame.command.name} takes exactly one byte, got {len(payload)}")
    type_byte = (port << 4) | frame.command.value
    return bytes((FEND,)) + escape(bytes((type_byte,)) + payload) + bytes((FEND,))


def data_frame(packet: bytes, port: int = 0) -> bytes:
    """Wire bytes that ask the TNC to transmit ``packet`` on ``port``."""
    return encode(Frame(Command.DATA, _as_bytes("packet", packet), port))


def command_frame(command: Command, value: int | bytes = b"", port: int = 0) -> bytes:
    """Wire bytes of a parameter command; one-byte commands take an int 0-255."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 255:
            raise UsageError(f"KISS {Command(command).name} value must be 0-255, got {value}")
        value = bytes((value,))
    return encode(Frame(Command(command), _as_bytes("command value", value), port))


Counter = Callable[[str, int], None]


@dataclass
class Decoder:
    """Stream bytes in, frames out; garbage is skipped and counted (see the module doc).

    KISS lets one FEND close a frame and open the next, so junk *between* frames reads as a
    frame: it is dropped as a broken or unknown frame, or, if it happens to parse, handed
    on (links drop data frames too short to have been on air).

    ``count(key, n)`` is called for every counted event, so a link can add the decoder's
    counters to its own stats; ``counts`` keeps the totals either way. Keys:
    ``frames``, ``garbage_bytes`` (outside frames), ``bad_escape``, ``unknown_command`` (or a
    parameter command of the wrong length),
    ``oversize``, ``truncated`` (a frame cut by :meth:`reset`).
    """

    max_frame: int = DEFAULT_MAX_FRAME
    count: Counter | None = None
    name: str = "KISS"
    counts: dict[str, int] = field(default_factory=dict)
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _in_frame: bool = field(default=False, repr=False)
    _escaped: bool = field(default=False, repr=False)
    _skipping: str | None = field(default=None, repr=False)  # why the current frame is junk
    _garbage: int = field(default=0, repr=False)  # length of the current run outside frames

    def __post_init__(self) -> None:
        if isinstance(self.max_frame, bool) or not isinstance(self.max_frame, int):
            raise UsageError(f"max_frame must be an integer, got {self.max_frame!r}")
        if self.max_frame < 1:
            raise UsageError(f"max_frame must be >= 1, got {self.max_frame}")

    def _bump(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
        if self.count is not None:
            self.count(key, n)

    def feed(self, chunk: bytes) -> list[Frame]:
        """Every frame completed by ``chunk``, in order."""
        chunk = _as_bytes("KISS input", chunk)
        out: list[Frame] = []
        for byte in chunk:
            if byte == FEND:
                self._end_garbage()
                if self._in_frame:
                    frame = self._finish()
                    if frame is not None:
                        out.append(frame)
                self._in_frame = True
                continue
            if not self._in_frame:
                self._garbage += 1
                continue
            if self._skipping is not None:
                continue
            if self._escaped:
                self._escaped = False
                if byte == TFEND:
                    byte = FEND
                elif byte == TFESC:
                    byte = FESC
                else:
                    self._skip("bad_escape", f"FESC followed by 0x{byte:02X}")
                    continue
            elif byte == FESC:
                self._escaped = True
                continue
            if len(self._buf) >= self.max_frame:
                self._skip("oversize", f"frame longer than {self.max_frame} bytes")
                continue
            self._buf.append(byte)
        return out

    def flush_garbage(self) -> None:
        """Count and log a pending run of bytes outside frames now (not at the next FEND)."""
        self._end_garbage()

    def reset(self) -> None:
        """Forget a partial frame (the stream broke, e.g. on reconnect)."""
        self._end_garbage()
        if self._in_frame and (self._buf or self._skipping):
            self._bump("truncated")
            log.warning("%s: a frame was cut off by the end of the stream; dropped", self.name)
        self._clear()
        self._in_frame = False

    def _clear(self) -> None:
        self._buf.clear()
        self._escaped = False
        self._skipping = None

    def _end_garbage(self) -> None:
        if self._garbage:
            self._bump("garbage_bytes", self._garbage)
            log.warning("%s: skipped %d bytes outside frames", self.name, self._garbage)
            self._garbage = 0

    def _skip(self, key: str, why: str) -> None:
        self._skipping = why
        self._bump(key)
        log.warning("%s: dropped a frame: %s", self.name, why)

    def _finish(self) -> Frame | None:
        body = bytes(self._buf)
        broken = self._skipping is not None or self._escaped
        if self._escaped and self._skipping is None:
            self._bump("bad_escape")
            log.warning("%s: dropped a frame ending in a dangling FESC", self.name)
        self._clear()
        if broken or not body:  # FEND FEND is idle fill, not an error
            return None
        type_byte = body[0]
        if type_byte == Command.RETURN:
            if len(body) == 1:
                self._bump("frames")
                return Frame(Command.RETURN)
            command = None
        else:
            command = _BY_NIBBLE.get(type_byte & 0x0F)
        if command is None or (command in _ONE_BYTE and len(body) != 2):
            self._bump("unknown_command")
            log.warning(
                "%s: dropped a frame with unknown type byte 0x%02X (%d bytes)",
                self.name,
                type_byte,
                len(body),
            )
            return None
        self._bump("frames")
        return Frame(command, body[1:], type_byte >> 4)
