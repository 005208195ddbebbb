"""AX.25 UI frames: the envelope amateur-band operation wants around each datagram.

On amateur bands a transmission must carry the station's callsign, so with a callsign set a
KISS link wraps each datagram in an AX.25 unnumbered-information frame (control 0x03, PID 0xF0
"no layer 3") from that callsign. The TNC adds the flags and the FCS. Encryption is still
on: the callsign identifies the station, not the speech (check your licence's rules).

Each address is six callsign characters shifted left one bit, space padded, then an SSID
byte ``C R R S S S S H``; the last address has its low bit set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.errors import FramingError, UsageError

CONTROL_UI = 0x03
PID_NONE = 0xF0
MAX_DIGIPEATERS = 8
HEADER_LEN = 16  # destination + source + control + PID, no digipeaters

_CALL = re.compile(r"^([A-Z0-9]{1,6})(?:-(\d{1,2}))?$")


@dataclass(frozen=True, slots=True)
class Address:
    """A callsign and SSID, e.g. ``N0CALL-1``."""

    call: str
    ssid: int = 0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z0-9]{1,6}", self.call or ""):
            raise UsageError(
                f"callsign {self.call!r} must be 1-6 letters or digits (upper case), e.g. N0CALL"
            )
        if isinstance(self.ssid, bool) or not isinstance(self.ssid, int):
            raise UsageError(f"SSID must be an integer 0-15, got {self.ssid!r}")
        if not 0 <= self.ssid <= 15:
            raise UsageError(f"SSID must be 0-15, got {self.ssid}")

    @classmethod
    def parse(cls, text: str) -> Address:
        """``N0CALL`` or ``N0CALL-7`` (case-insensitive)."""
        match = _CALL.match(str(text).strip().upper())
        if match is None:
            raise UsageError(
                f"{text!r} is not a callsign: use 1-6 letters or digits and an optional "
                f"-SSID 0-15, e.g. N0CALL-1"
            )
        return cls(match[1], int(match[2] or 0))

    def __str__(self) -> str:
        return self.call if self.ssid == 0 else f"{self.call}-{self.ssid}"

    def encode(self, *, last: bool, high_bit: bool = False) -> bytes:
        """Seven bytes on air; ``high_bit`` is the C bit (or H for a digipeater)."""
        chars = bytes(ord(c) << 1 for c in self.call.ljust(6))
        ssid = 0x60 | (self.ssid << 1) | (0x80 if high_bit else 0) | (1 if last else 0)
        return chars + bytes((ssid,))

    @classmethod
    def decode(cls, raw: bytes) -> Address:
        """An address from its seven bytes; FramingError if it is not a callsign."""
        if len(raw) != 7:
            raise FramingError(f"AX.25 address of {len(raw)} bytes, not 7")
        if any(b & 1 for b in raw[:6]):
            raise FramingError("AX.25 address ends early (extension bit set inside a callsign)")
        text = bytes(b >> 1 for b in raw[:6]).decode("ascii").rstrip(" ")
        try:
            return cls(text, (raw[6] >> 1) & 0x0F)
        except UsageError:
            raise FramingError(f"AX.25 address {text!r} is not a callsign") from None


@dataclass(frozen=True, slots=True)
class UIFrame:
    """A UI frame as it came off the air."""

    destination: Address
    source: Address
    info: bytes
    path: tuple[Address, ...] = ()


def encode_ui(
    destination: Address, source: Address, info: bytes, path: tuple[Address, ...] = ()
) -> bytes:
    """A UI command frame (no flags, no FCS: the TNC adds those)."""
    if not isinstance(info, bytes | bytearray | memoryview):
        raise UsageError(f"AX.25 info must be bytes, got {type(info).__name__}")
    if len(path) > MAX_DIGIPEATERS:
        raise UsageError(f"AX.25 allows at most {MAX_DIGIPEATERS} digipeaters, got {len(path)}")
    out = bytearray(destination.encode(last=False, high_bit=True))
    out += source.encode(last=not path)
    for i, hop in enumerate(path):
        out += hop.encode(last=i == len(path) - 1)
    out += bytes((CONTROL_UI, PID_NONE))
    out += bytes(info)
    return bytes(out)


def decode_ui(frame: bytes) -> UIFrame:
    """The UI frame in ``frame``; FramingError for anything else (count it and move on)."""
    frame = bytes(frame)
    addresses: list[Address] = []
    offset = 0
    while True:
        if len(addresses) == 2 + MAX_DIGIPEATERS:
            raise FramingError("AX.25 address field is longer than 10 addresses")
        if len(frame) < offset + 7:
            raise FramingError(f"AX.25 frame of {len(frame)} bytes ends inside its addresses")
        addresses.append(Address.decode(frame[offset : offset + 7]))
        last = frame[offset + 6] & 1
        offset += 7
        if last:
            break
    if len(addresses) < 2:
        raise FramingError("AX.25 frame has no source address")
    if len(frame) < offset + 2:
        raise FramingError("AX.25 frame ends before its control and PID bytes")
    control, pid = frame[offset], frame[offset + 1]
    if control & ~0x10 != CONTROL_UI:  # the P/F bit may be set
        raise FramingError(f"not an AX.25 UI frame (control 0x{control:02X})")
    if pid != PID_NONE:
        raise FramingError(f"AX.25 UI frame with PID 0x{pid:02X}, not 0xF0")
    return UIFrame(addresses[0], addresses[1], frame[offset + 2 :], tuple(addresses[2:]))
