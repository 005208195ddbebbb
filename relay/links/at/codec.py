"""Sans-I/O codecs for UART LoRa modules: AT reply lines and the framing of transparent ones.

Everything a module says arrives here as bytes and leaves as events, without I/O, so the
driver, the emulator and property tests share one parser. Bad input never raises: it becomes
a :class:`Junk` event with a stable ``reason`` the driver counts and logs.

Framed encoding (EBYTE E22/E220 transparent mode, which carries bytes and checks nothing)::

    C5 3A | length (1..255) | payload | CRC-16/CCITT-FALSE over length+payload, big endian
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from relay.errors import FramingError, UsageError
from relay.links.at.profile import FRAME_OVERHEAD, ATProfile

SYNC = b"\xc5\x3a"
DEFAULT_MAX_LINE = 1024
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """A datagram the module received over the air."""

    data: bytes
    rssi: float | None = None
    snr: float | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """A reply or event line that is not a received datagram (OK, +ERR=4, TX DONE...)."""

    text: str


@dataclass(frozen=True, slots=True)
class Junk:
    """Bytes that made no sense. ``reason``: garbage, truncated, overlong, bad_payload,
    bad_checksum, bad_length. ``size`` is how many bytes were thrown away."""

    reason: str
    detail: str
    size: int = 0


Event = Packet | Line | Junk


# --- payload encodings ---------------------------------------------------------------------


def encode_payload(encoding: str, data: bytes) -> str:
    """A datagram as the text an ASCII-only firmware accepts."""
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    if encoding == "hex":
        return data.hex().upper()
    raise UsageError(f"{encoding!r} is not a text payload encoding")


def decode_payload(encoding: str, text: str) -> bytes:
    """The inverse of :func:`encode_payload`; FramingError on anything malformed."""
    try:
        if encoding == "base64":
            return base64.b64decode(text.encode("ascii"), validate=True)
        if encoding == "hex":
            if len(text) % 2:
                raise FramingError(f"odd number of hex digits ({len(text)})")
            return bytes.fromhex(text)
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise FramingError(f"payload is not valid {encoding}: {exc}") from None
    raise UsageError(f"{encoding!r} is not a text payload encoding")


# --- AT lines ------------------------------------------------------------------------------


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class LineParser:
    """Split a module's output into lines and classify each one.

    Received datagrams become :class:`Packet`, chatter the profile ignores disappears, other
    printable lines become :class:`Line` for the driver to match against what it is waiting
    for, and everything else is :class:`Junk`.
    """

    profile: ATProfile
    max_line: int = DEFAULT_MAX_LINE
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _meta: dict[str, str] = field(default_factory=dict, repr=False)
    _skipping: bool = field(default=False, repr=False)  # inside an overlong line

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    detail = f"line longer than {self.max_line} bytes"
                    out.append(Junk("overlong", detail, len(self._buf)))
                    self._buf.clear()
                    self._skipping = True
                break
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping:  # the tail of an overlong line: already reported
                self._skipping = False
                continue
            event = self.classify(raw)
            if event is not None:
                out.append(event)
        return out

    def reset(self) -> list[Event]:
        """Forget a partial line (the port closed); report it as truncated if any."""
        left = len(self._buf)
        self._buf.clear()
        self._meta.clear()
        self._skipping = False
        if left:
            return [Junk("truncated", "partial line when the port closed", left)]
        return []

    def classify(self, raw: bytes) -> Event | None:
        """One line (without its newline) as an event; None for blank or ignored lines."""
        text_b = raw.strip(b"\r\n\t \x00")
        if not text_b:
            return None
        try:
            text = text_b.decode("ascii")
        except UnicodeDecodeError:
            return Junk("garbage", f"non-ASCII bytes: {_show(text_b)}", len(raw))
        if not _PRINTABLE.match(text):
            return Junk("garbage", f"control characters: {_show(text_b)}", len(raw))
        p = self.profile
        if len(text) > self.max_line:
            return Junk("overlong", f"line of {len(text)} characters", len(raw))
        if p.rx is not None:
            m = p.rx.match(text)
            if m is not None:
                return self._packet(m, text)
            if p.rx_prefix and text.startswith(p.rx_prefix):
                return Junk("truncated", f"incomplete receive line: {_show(text_b)}", len(raw))
        if p.rx_meta is not None:
            m = p.rx_meta.match(text)
            if m is not None:
                self._meta = {k: v for k, v in m.groupdict().items() if v is not None}
                return None
        if any(r.match(text) for r in p.ignore):
            return Line(text) if self._wanted(text) else None
        return Line(text)

    def _wanted(self, text: str) -> bool:
        """Ignored chatter the driver may still be waiting for (e.g. TX DONE)."""
        p = self.profile
        return p.tx_done is not None and p.tx_done.match(text) is not None

    def _packet(self, m: re.Match[str], text: str) -> Event:
        own = {k: v for k, v in m.groupdict().items() if v is not None}
        meta, self._meta = self._meta, {}
        payload = own.get("payload", "")
        # A length in the rx line counts payload characters (REYAX); one from rx_meta counts
        # the datagram's bytes (Wio-E5). Either way a mismatch means a cut or mangled line.
        if "length" in own and int(own["length"]) != len(payload):
            return Junk("truncated", f"declared {own['length']} characters, got {len(payload)}",
                        len(text))  # fmt: skip
        try:
            data = decode_payload(self.profile.encoding, payload)
        except FramingError as exc:
            return Junk("bad_payload", str(exc), len(text))
        if "length" in meta and int(meta["length"]) != len(data):
            return Junk("truncated", f"declared {meta['length']} bytes, got {len(data)}",
                        len(text))  # fmt: skip
        if not data or len(data) > self.profile.mtu:
            return Junk("bad_payload", f"{len(data)}-byte payload outside 1..MTU", len(text))
        groups = {**meta, **own}
        return Packet(data, _number(groups.get("rssi")), _number(groups.get("snr")))


def _show(raw: bytes, limit: int = 40) -> str:
    """A short printable rendering of bad bytes for a log line."""
    text = raw[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)
    return repr(text + ("..." if len(raw) > limit else ""))


# --- framed (transparent) modules ----------------------------------------------------------


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): catches what the module does not."""
    return binascii.crc_hqx(data, 0xFFFF)


def frame(data: bytes, mtu: int) -> bytes:
    """One datagram in the driver's own framing for a transparent module."""
    if not 1 <= len(data) <= min(mtu, 255):
        raise UsageError(f"framed datagram must be 1..{mtu} bytes, got {len(data)}")
    body = bytes((len(data),)) + data
    return SYNC + body + crc16(body).to_bytes(2, "big")


@dataclass
class FrameDecoder:
    """Recover framed datagrams from a byte stream with loss, noise and cut packets.

    On any inconsistency it drops one byte and hunts for the next sync, so a bad frame costs
    that frame only. ``stale()`` lets the driver give up on a frame whose tail never came.
    """

    mtu: int
    _buf: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        out: list[Event] = []
        junk = 0
        while True:
            at = self._buf.find(SYNC)
            if at < 0:
                keep = 1 if self._buf[-1:] == SYNC[:1] else 0
                junk += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
                break
            junk += at
            del self._buf[:at]
            if len(self._buf) < 3:
                break
            size = self._buf[2]
            if not 1 <= size <= self.mtu:
                out.append(Junk("bad_length", f"frame length {size} outside 1..{self.mtu}", 1))
                del self._buf[:1]
                continue
            total = size + FRAME_OVERHEAD
            if len(self._buf) < total:
                break
            body = bytes(self._buf[2 : 3 + size])
            crc = int.from_bytes(self._buf[3 + size : total], "big")
            if crc16(body) != crc:
                out.append(Junk("bad_checksum", f"CRC mismatch on a {size}-byte frame", 1))
                del self._buf[:1]
                continue
            del self._buf[:total]
            out.append(Packet(body[1:]))
        if junk:
            out.insert(0, Junk("garbage", f"{junk} bytes outside any frame", junk))
        return out

    def stale(self) -> list[Event]:
        """Give up on a frame whose rest never came (lost on air, cut by the port, or a sync
        pattern inside noise): drop its first byte and rescan what is buffered behind it."""
        if not self._buf:
            return []
        out: list[Event] = [Junk("truncated", f"frame cut after {len(self._buf)} bytes", 1)]
        rest = bytes(self._buf[1:])
        self._buf.clear()
        return out + self.feed(rest)

    def reset(self) -> list[Event]:
        """The port closed: whatever is buffered will never be completed."""
        out: list[Event] = []
        while self._buf:
            out += self.stale()
        return out
