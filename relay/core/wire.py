"""The wire format: what every relay packet looks like on the air (sans-I/O, pure bytes).

A packet is a 7-byte clear header, an AES-CCM ciphertext and an 8-byte tag::

    byte 0      version:2 | type:3 | sub:3     (sub = codec mode index for voice, 0 otherwise)
    byte 1      room hint                      (rotates hourly; lets bridges route, says no name)
    bytes 2-3   sender short id                (a per-room pseudonym, not the identity)
    bytes 4-6   send counter (24 bits)         (the AEAD nonce; never reused, see store/)
    [bytes 7-14 sender session]                (control and clip packets only, see below)
    ...         ciphertext
    last 8      authentication tag             (header and session are associated data)

The sender's key is derived from the room key, its identity *and its session*: 8 random
bytes it draws at every start (:mod:`relay.core.crypto`), so a restored or copied counter
file can repeat a counter only under another key. Control and clip packets carry the
session in the clear, masked per room key and member so that it links nothing across key
rotations (8 bytes: they are not voice); voice packets do not -- receivers learn
the floor holder's session from its signed hand raise, the moderator's grant or a beacon.

A voice packet's plaintext is one byte of frame position (the low 8 bits of the index of its
first frame in the over) followed by whole Codec2 frames and a 2-byte live trailer (a flag
and the speaker's 15-bit live MAC; when the flag is set an 8-byte chain link precedes it, on
about one packet in four: :mod:`relay.core.live`), so the voice overhead is
7 + 1 + 2 + 8 = 18 bytes. A voice-with-FEC packet (type 4, sub = the primary mode) carries the same
position byte, N primary frames, then N lower-rate copies of the N frames before the first
primary, in the mode :data:`FEC_PAIRS` pairs with the primary (sizes make N unambiguous). It is
sealed and checked exactly like voice; the first packet of an over is plain voice (nothing
precedes it), so plain voice keeps its 18 bytes. A control packet's plaintext is a kind byte
and a payload. A clip packet's plaintext belongs to the voice-message layer
(:mod:`relay.clip`); its type is in the clear so that relays can send it after live voice and
control without reading it.

Parsing never raises anything but :class:`PacketError` for bytes that came from outside;
building with impossible values raises :class:`UsageError` (that is the caller's bug).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.errors import PacketError, UsageError
from relay.voice.modes import CodecMode, mode_by_index, mode_by_name

VERSION = 1
HEADER_LEN = 7
TAG_LEN = 8
VOICE_PREFIX_LEN = 1
LIVE_TRAILER_LEN = 2  # flag + live MAC (relay.core.live.TRAILER_LEN)
LIVE_LINK_LEN = 8  # a revealed chain link, on one voice packet an interval
# 18 bytes, tag 64 bits; a packet that reveals a link carries 8 more (fit MTUs with the max).
VOICE_PACKET_OVERHEAD = HEADER_LEN + VOICE_PREFIX_LEN + LIVE_TRAILER_LEN + TAG_LEN
VOICE_PACKET_MAX_OVERHEAD = VOICE_PACKET_OVERHEAD + LIVE_LINK_LEN
CONTROL_PREFIX_LEN = 1
SESSION_LEN = 8  # a sender's random session value (bound into its key), see crypto.py
CONTROL_PACKET_OVERHEAD = HEADER_LEN + SESSION_LEN + CONTROL_PREFIX_LEN + TAG_LEN  # 24 bytes
CLIP_PACKET_OVERHEAD = HEADER_LEN + SESSION_LEN + TAG_LEN  # 23 bytes around a clip payload
MIN_PACKET_LEN = HEADER_LEN + 1 + TAG_LEN  # 16: also above direwolf's 15-byte floor
# Far above any radio MTU, far below what a 13-byte CCM nonce can carry (65535 bytes).
MAX_PACKET_LEN = 4096
COUNTER_BITS = 24
COUNTER_LIMIT = 1 << COUNTER_BITS  # counters are 0 .. COUNTER_LIMIT - 1
POSITION_MODULUS = 256


class PacketType(enum.IntEnum):
    VOICE = 0
    CONTROL = 1
    HELLO = 2  # a member introducing itself: identity sealed under the room's announce key
    CLIP = 3  # a piece of, or acknowledgement for, a voice message (bulk: relays send it last)
    VOICE_FEC = 4  # voice frames + lower-rate copies of the previous packet's frames (FEC)
    NOTICE = 5  # a relay's signed, clear notice about an over it did not forward (core.notice)
    HAM = 6  # amateur-band mode: signed, never encrypted, with the callsign (core.ham)


VOICE_TYPES = frozenset((PacketType.VOICE, PacketType.VOICE_FEC))
# Packets that carry the sender's session in the clear: everything sealed that is not voice.
SESSION_TYPES = frozenset((PacketType.CONTROL, PacketType.CLIP))
# Primary mode -> the mode of its redundant copies. Same frame duration (positions line up).
# Measured (bench/quality.py, 1600, 5 frames/packet, 10 % random loss, 8 samples x 3 seeds):
# 700C copies give STOI 0.817 / PESQ 2.50 at 377 B/s on air, 1200 copies 0.800 / 2.36 at
# 424 B/s: 700C is both better and cheaper.
FEC_PAIRS: dict[str, str] = {
    "1600": "700C",
    "1400": "700C",
    "1300": "700C",
    "1200": "700C",
}


class ControlKind(enum.IntEnum):
    """Control packet kinds (the first plaintext byte of control and hello packets)."""

    OVER_END = 1  # frame count of the over that just ended [+ the speaker's signed digests]
    HAND = 2  # raise or lower a hand (signed)
    MOD = 3  # a moderator's action: grant, revoke, mute, unmute, remove, appoint (signed)
    BEACON = 4  # the moderator's signed snapshot of the room, for late joiners
    REKEY = 5  # a new room key, sealed to each remaining member (signed)
    LIVE_BASE = 6  # the floor holder's live intervals under a key changed mid-over (signed)


HELLO_NONCE_LEN = 12


@dataclass(frozen=True, slots=True)
class Header:
    """The clear, authenticated part of a packet."""

    ptype: int
    sub: int
    hint: int
    sender: int
    counter: int
    version: int = VERSION

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("version", self.version, 4),
            ("ptype", self.ptype, 8),
            ("sub", self.sub, 8),
            ("hint", self.hint, 256),
            ("sender", self.sender, 1 << 16),
            ("counter", self.counter, COUNTER_LIMIT),
        ):
            if not 0 <= value < limit:
                raise UsageError(f"header field {name}={value} out of range 0..{limit - 1}")

    def pack(self) -> bytes:
        return bytes(
            (
                (self.version << 6) | (self.ptype << 3) | self.sub,
                self.hint,
                self.sender >> 8,
                self.sender & 0xFF,
                self.counter >> 16,
                (self.counter >> 8) & 0xFF,
                self.counter & 0xFF,
            )
        )

    @classmethod
    def parse(cls, packet: bytes) -> Header:
        """Parse the header of a whole packet, checking only what the header can tell."""
        if not isinstance(packet, bytes | bytearray | memoryview):
            raise PacketError("malformed", f"packet must be bytes, not {type(packet).__name__}")
        if len(packet) < MIN_PACKET_LEN:
            raise PacketError(
                "malformed", f"packet of {len(packet)} bytes is shorter than {MIN_PACKET_LEN}"
            )
        if len(packet) > MAX_PACKET_LEN:
            raise PacketError(
                "malformed", f"packet of {len(packet)} bytes is longer than {MAX_PACKET_LEN}"
            )
        b0 = packet[0]
        version = b0 >> 6
        if version != VERSION:
            raise PacketError("version", f"packet version {version} is not supported")
        ptype = (b0 >> 3) & 0x07
        if ptype not in PacketType._value2member_map_:
            raise PacketError("malformed", f"unknown packet type {ptype}")
        return cls(
            ptype=ptype,
            sub=b0 & 0x07,
            hint=packet[1],
            sender=(packet[2] << 8) | packet[3],
            counter=(packet[4] << 16) | (packet[5] << 8) | packet[6],
            version=version,
        )


@dataclass(frozen=True, slots=True)
class VoiceBody:
    """Plaintext of a voice packet: where its first frame sits, and the frames."""

    position: int  # low 8 bits of the first frame's index in the over
    frames: tuple[bytes, ...]

    def pack(self, mode: CodecMode) -> bytes:
        if not 0 <= self.position < POSITION_MODULUS:
            raise UsageError(f"voice position {self.position} out of range 0..255")
        if not self.frames:
            raise UsageError("a voice packet needs at least one frame")
        for frame in self.frames:
            if len(frame) != mode.bytes_per_frame:
                raise UsageError(
                    f"codec {mode.name} frames are {mode.bytes_per_frame} bytes, got {len(frame)}"
                )
        return bytes((self.position,)) + b"".join(self.frames)

    @classmethod
    def parse(cls, plaintext: bytes, mode: CodecMode) -> VoiceBody:
        size = mode.bytes_per_frame
        body = len(plaintext) - VOICE_PREFIX_LEN
        if body <= 0 or body % size:
            raise PacketError(
                "malformed",
                f"voice body of {max(body, 0)} bytes is not a whole number of "
                f"{mode.name} frames ({size} bytes each)",
            )
        frames = tuple(bytes(plaintext[i : i + size]) for i in range(1, len(plaintext), size))
        return cls(position=plaintext[0], frames=frames)


@dataclass(frozen=True, slots=True)
class VoiceFecBody:
    """Plaintext of a voice packet with FEC: frames, and copies of the frames before them."""

    position: int  # low 8 bits of the first primary frame's index in the over
    frames: tuple[bytes, ...]
    redundant: tuple[bytes, ...]  # len(frames) copies of positions position-N .. position-1

    def pack(self, mode: CodecMode) -> bytes:
        red = fec_mode(mode)
        if len(self.redundant) != len(self.frames):
            raise UsageError("an FEC packet carries as many redundant frames as primary ones")
        for frame in self.redundant:
            if len(frame) != red.bytes_per_frame:
                raise UsageError(
                    f"codec {red.name} frames are {red.bytes_per_frame} bytes, got {len(frame)}"
                )
        return VoiceBody(self.position, self.frames).pack(mode) + b"".join(self.redundant)

    @classmethod
    def parse(cls, plaintext: bytes, mode: CodecMode) -> VoiceFecBody:
        red = fec_mode_or_error(mode)
        size, rsize = mode.bytes_per_frame, red.bytes_per_frame
        body = len(plaintext) - VOICE_PREFIX_LEN
        if body <= 0 or body % (size + rsize):
            raise PacketError(
                "malformed",
                f"FEC voice body of {max(body, 0)} bytes is not a whole number of "
                f"{mode.name}+{red.name} frame pairs ({size}+{rsize} bytes)",
            )
        n = body // (size + rsize)
        split_at = VOICE_PREFIX_LEN + n * size
        frames = tuple(bytes(plaintext[i : i + size]) for i in range(1, split_at, size))
        redundant = tuple(
            bytes(plaintext[i : i + rsize]) for i in range(split_at, len(plaintext), rsize)
        )
        return cls(position=plaintext[0], frames=frames, redundant=redundant)


def fec_mode(mode: CodecMode) -> CodecMode:
    """The mode of ``mode``'s redundant copies; UsageError if the mode has no FEC pairing."""
    name = FEC_PAIRS.get(mode.name)
    if name is None:
        raise UsageError(f"codec {mode.name} has no FEC pairing (have: {', '.join(FEC_PAIRS)})")
    return mode_by_name(name)


def fec_mode_or_error(mode: CodecMode) -> CodecMode:
    """Like :func:`fec_mode`, but a peer naming an unpaired mode is a PacketError."""
    try:
        return fec_mode(mode)
    except UsageError:
        raise PacketError("malformed", f"no FEC pairing for codec {mode.name}") from None


@dataclass(frozen=True, slots=True)
class ControlBody:
    """Plaintext of a control packet."""

    kind: int
    payload: bytes = b""

    def pack(self) -> bytes:
        if not 0 <= self.kind < 256:
            raise UsageError(f"control kind {self.kind} out of range 0..255")
        return bytes((self.kind,)) + bytes(self.payload)

    @classmethod
    def parse(cls, plaintext: bytes) -> ControlBody:
        if len(plaintext) < CONTROL_PREFIX_LEN:
            raise PacketError("malformed", "control packet has no kind byte")
        return cls(kind=plaintext[0], payload=bytes(plaintext[1:]))


def voice_mode(header: Header) -> CodecMode:
    """The codec mode a voice header names, or PacketError for an unassigned index."""
    mode = mode_by_index(header.sub)
    if mode is None:
        raise PacketError("malformed", f"unknown codec mode index {header.sub}")
    return mode


def split(packet: bytes) -> tuple[Header, bytes, bytes]:
    """Split a packet into (header, associated data, ciphertext+tag).

    The associated data is the header, and for control and clip packets the sender's
    session after it (:func:`session_of` reads it back)."""
    header = Header.parse(packet)
    if header.ptype not in VOICE_TYPES and header.sub != 0:
        raise PacketError("malformed", f"non-voice packet with nonzero sub field {header.sub}")
    if header.ptype in VOICE_TYPES:
        mode = voice_mode(header)
        if header.ptype == PacketType.VOICE_FEC:
            fec_mode_or_error(mode)
    data = bytes(packet)
    clear = HEADER_LEN + (SESSION_LEN if header.ptype in SESSION_TYPES else 0)
    if len(data) < clear + 1 + TAG_LEN:
        raise PacketError("malformed", f"packet of {len(data)} bytes is too short for its type")
    return header, data[:clear], data[clear:]


def session_of(associated: bytes) -> bytes:
    """The (masked) sender session a control or clip packet carries in the clear (b"" for
    other types); unmask with :meth:`relay.core.crypto.RoomKeys.session_mask`."""
    return bytes(associated[HEADER_LEN : HEADER_LEN + SESSION_LEN])


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def unwrap_position(
    low: int, expected: int, floor: int | None = None, ceiling: int | None = None
) -> int:
    """The absolute frame index ≡ ``low`` (mod 256) nearest to ``expected``; with ``floor``
    the nearest at or above it (a speaker's later packet starts after its last one), with
    ``ceiling`` the nearest at or below it (an earlier packet, arriving late, ends before)."""
    if floor is not None:
        first = floor + ((low - floor) % POSITION_MODULUS)
        steps = max(0, round((expected - first) / POSITION_MODULUS))
        return first + steps * POSITION_MODULUS
    if ceiling is not None:
        last = ceiling - ((ceiling - low) % POSITION_MODULUS)
        steps = max(0, round((last - expected) / POSITION_MODULUS))
        return last - steps * POSITION_MODULUS
    base = expected - ((expected - low) % POSITION_MODULUS)
    candidates = (base, base + POSITION_MODULUS)
    return min(candidates, key=lambda c: (abs(c - expected), c))
