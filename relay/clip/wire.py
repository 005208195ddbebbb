"""Voice-message (clip) payloads: what rides inside a sealed CLIP packet.

Every payload starts with one kind byte; all integers are big-endian::

    OFFER  kind=1|flags | msg id (4) | mode (1) | frames (3) | total bytes (4) | piece size (2)
           | created (4, unix s) | signature (64)                                 = 83 B
    PIECE  kind=2|flags | msg id (4) | index (2) | data (1..piece size)          = 7 B + data
    ACK    kind=3|flags | msg id (4) | base (2) | bitmap (0..32)                 = 7..39 B

A PIECE or OFFER with the POLL flag asks receivers to acknowledge now (the end of a burst,
or an offer sent alone as a probe); without it, more is coming and receivers keep quiet
(an ack sent in the middle of a burst would collide with it). An ACK says: every piece
below ``base`` arrived, and bit ``i`` (MSB first) of the bitmap says whether piece
``base + i`` arrived; pieces past the bitmap did not. Flags say whether the receiver holds
the offer and whether it has the whole, verified message. One ACK describes up to 256
pieces past ``base``: that is the sender's selective-repeat window.

The sender's Ed25519 signature covers a domain label, the room id, the sender's identity,
the offer's fields and SHA-256 of the whole codec stream: receivers can check it only once
every piece is in, and nothing is playable before it verifies. The digest is not sent (the
receiver computes it), which keeps the offer inside one small packet.

Parsers raise only :class:`PacketError`; building impossible values raises
:class:`UsageError` (the caller's bug).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from relay.core.identity import SIGNATURE_LEN
from relay.errors import PacketError, UsageError

DOMAIN = b"relay/v1 clip"
MSG_ID_LEN = 4
OFFER_LEN = 1 + MSG_ID_LEN + 1 + 3 + 4 + 2 + 4 + SIGNATURE_LEN
PIECE_HEADER_LEN = 1 + MSG_ID_LEN + 2
ACK_HEADER_LEN = 1 + MSG_ID_LEN + 2
MAX_BITMAP = 32
WINDOW = MAX_BITMAP * 8  # pieces one ACK can describe past its base
MAX_PIECES = 0xFFFF
MAX_FRAMES = (1 << 24) - 1
MAX_TOTAL = 0xFFFFFFFF


class Kind(enum.IntEnum):
    OFFER = 1
    PIECE = 2
    ACK = 3


KIND_MASK = 0x0F
POLL = 0x10  # PIECE: acknowledge now
HAVE_OFFER = 0x10  # ACK: the receiver holds the offer
COMPLETE = 0x20  # ACK: the receiver has the whole message and its signature verified
_PIECE_FLAGS = POLL
_ACK_FLAGS = HAVE_OFFER | COMPLETE


def digest(data: bytes) -> bytes:
    """SHA-256 of a message's codec stream (what the signature covers)."""
    return hashlib.sha256(data).digest()


def kind_of(payload: bytes) -> Kind:
    if not payload:
        raise PacketError("clip_malformed", "empty clip payload")
    try:
        return Kind(payload[0] & KIND_MASK)
    except ValueError:
        raise PacketError("clip_malformed", f"unknown clip kind {payload[0] & KIND_MASK}") from None


def _check(name: str, value: int, limit: int, low: int = 0) -> None:
    if not isinstance(value, int) or not low <= value <= limit:
        raise UsageError(f"clip {name} must be in {low}..{limit}, got {value!r}")


def _check_id(msg_id: bytes) -> None:
    if not isinstance(msg_id, bytes) or len(msg_id) != MSG_ID_LEN:
        raise UsageError(f"a clip message id is {MSG_ID_LEN} bytes")


@dataclass(frozen=True, slots=True)
class Offer:
    """A message's manifest: what it is and how it is cut, signed by its sender."""

    msg_id: bytes
    mode: int  # Codec2 wire index (relay.voice.modes)
    frames: int
    total: int  # bytes of codec stream
    piece_size: int
    created: int  # unix seconds, for the inbox
    signature: bytes = b"\0" * SIGNATURE_LEN
    poll: bool = field(default=True, compare=False)  # alone (a probe): answer it

    def __post_init__(self) -> None:
        _check_id(self.msg_id)
        _check("mode", self.mode, 7)
        _check("frame count", self.frames, MAX_FRAMES, 1)
        _check("size", self.total, MAX_TOTAL, 1)
        _check("piece size", self.piece_size, 0xFFFF, 1)
        _check("time", self.created, 0xFFFFFFFF)
        if len(self.signature) != SIGNATURE_LEN:
            raise UsageError("a clip signature is 64 bytes")
        if self.pieces > MAX_PIECES:
            raise UsageError(f"a clip is at most {MAX_PIECES} pieces, this one {self.pieces}")

    @property
    def pieces(self) -> int:
        return -(-self.total // self.piece_size)

    def piece_len(self, index: int) -> int:
        """Bytes in piece ``index`` (the last one may be short)."""
        if index < self.pieces - 1:
            return self.piece_size
        return self.total - self.piece_size * (self.pieces - 1)

    def fields(self) -> bytes:
        return (
            self.msg_id
            + bytes((self.mode,))
            + self.frames.to_bytes(3, "big")
            + self.total.to_bytes(4, "big")
            + self.piece_size.to_bytes(2, "big")
            + self.created.to_bytes(4, "big")
        )

    def signed_message(self, room_id: bytes, signer: bytes, data_digest: bytes) -> bytes:
        """What the sender signs: domain, room, signer, the offer's fields, the digest."""
        return b"".join(
            (DOMAIN, len(room_id).to_bytes(1, "big"), room_id, signer, self.fields(), data_digest)
        )

    def pack(self) -> bytes:
        flags = POLL if self.poll else 0
        return bytes((Kind.OFFER | flags,)) + self.fields() + self.signature

    @classmethod
    def parse(cls, payload: bytes) -> Offer:
        if len(payload) != OFFER_LEN or payload[0] & ~POLL != Kind.OFFER:
            raise PacketError("clip_malformed", f"clip offer of {len(payload)} bytes")
        p = payload
        try:
            return cls(
                msg_id=bytes(p[1:5]),
                mode=p[5],
                frames=int.from_bytes(p[6:9], "big"),
                total=int.from_bytes(p[9:13], "big"),
                piece_size=int.from_bytes(p[13:15], "big"),
                created=int.from_bytes(p[15:19], "big"),
                signature=bytes(p[19:]),
                poll=bool(p[0] & POLL),
            )
        except UsageError as exc:
            raise PacketError("clip_malformed", f"bad clip offer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Piece:
    msg_id: bytes
    index: int
    data: bytes
    poll: bool = False

    def __post_init__(self) -> None:
        _check_id(self.msg_id)
        _check("piece index", self.index, MAX_PIECES - 1)
        if not self.data:
            raise UsageError("a clip piece carries at least one byte")

    def pack(self) -> bytes:
        flags = POLL if self.poll else 0
        return (
            bytes((Kind.PIECE | flags,)) + self.msg_id + self.index.to_bytes(2, "big") + self.data
        )

    @classmethod
    def parse(cls, payload: bytes) -> Piece:
        if len(payload) <= PIECE_HEADER_LEN or payload[0] & KIND_MASK != Kind.PIECE:
            raise PacketError("clip_malformed", f"clip piece of {len(payload)} bytes")
        if payload[0] & ~(KIND_MASK | _PIECE_FLAGS) & 0xFF:
            raise PacketError("clip_malformed", "clip piece with unknown flags")
        index = int.from_bytes(payload[5:7], "big")
        if index >= MAX_PIECES:
            raise PacketError("clip_malformed", f"clip piece index {index}")
        return cls(bytes(payload[1:5]), index, bytes(payload[7:]), bool(payload[0] & POLL))


@dataclass(frozen=True, slots=True)
class Ack:
    """Which pieces one receiver holds: all below ``base`` and the set bits after it."""

    msg_id: bytes
    base: int
    bitmap: bytes = b""
    have_offer: bool = False
    complete: bool = False

    def __post_init__(self) -> None:
        _check_id(self.msg_id)
        _check("ack base", self.base, MAX_PIECES)
        if len(self.bitmap) > MAX_BITMAP:
            raise UsageError(f"a clip ack bitmap is at most {MAX_BITMAP} bytes")

    @classmethod
    def of(
        cls, msg_id: bytes, have: set[int] | frozenset[int], *, have_offer: bool, complete: bool
    ) -> Ack:
        """The ack describing ``have`` (the indices held): base, then as few bitmap bytes as
        the highest held index needs (capped at the window)."""
        base = 0
        while base in have:
            base += 1
        above = [i - base for i in have if base < i < base + WINDOW]
        nbytes = (max(above) // 8 + 1) if above else 0
        bits = bytearray(nbytes)
        for off in above:
            bits[off // 8] |= 0x80 >> (off % 8)
        return cls(msg_id, base, bytes(bits), have_offer, complete)

    def held(self, pieces: int) -> set[int]:
        """The indices this ack says are held, for a message of ``pieces`` pieces."""
        have = set(range(min(self.base, pieces)))
        for off in range(len(self.bitmap) * 8):
            if self.bitmap[off // 8] & (0x80 >> (off % 8)) and self.base + off < pieces:
                have.add(self.base + off)
        return have

    def pack(self) -> bytes:
        flags = (HAVE_OFFER if self.have_offer else 0) | (COMPLETE if self.complete else 0)
        return bytes((Kind.ACK | flags,)) + self.msg_id + self.base.to_bytes(2, "big") + self.bitmap

    @classmethod
    def parse(cls, payload: bytes) -> Ack:
        if not ACK_HEADER_LEN <= len(payload) <= ACK_HEADER_LEN + MAX_BITMAP:
            raise PacketError("clip_malformed", f"clip ack of {len(payload)} bytes")
        if payload[0] & KIND_MASK != Kind.ACK or payload[0] & ~(KIND_MASK | _ACK_FLAGS) & 0xFF:
            raise PacketError("clip_malformed", "clip ack with a bad kind or flags")
        base = int.from_bytes(payload[5:7], "big")
        return cls(
            bytes(payload[1:5]),
            base,
            bytes(payload[7:]),
            bool(payload[0] & HAVE_OFFER),
            bool(payload[0] & COMPLETE),
        )


ClipPayload = Offer | Piece | Ack


def parse(payload: bytes) -> ClipPayload:
    """Any clip payload; PacketError for anything else."""
    kind = kind_of(payload)
    if kind == Kind.OFFER:
        return Offer.parse(payload)
    if kind == Kind.PIECE:
        return Piece.parse(payload)
    return Ack.parse(payload)
