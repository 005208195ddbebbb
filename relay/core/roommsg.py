"""Bodies of the room's control messages: pure build and strict parse.

Every parse raises only :class:`PacketError` ("malformed") for bytes that came from outside.
Signatures are not handled here (see signing.py); these are the bytes that get signed.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass

from relay.errors import PacketError, UsageError

ID_LEN = 32  # an identity (Ed25519 public key)
NO_COUNTER = 0xFFFFFF  # "no counter range" in a beacon
PREFIX_LEN = 8  # identity prefix in beacons
# Per-segment digest of an over. 4 bytes suffice: a forger must commit to its frames before
# the speaker says the real ones, so it gets one blind 2^-32 guess per segment, no search.
DIGEST_LEN = 4
MAX_SEGMENTS = 255
WRAP_TAG_LEN = 4
WRAP_LEN = WRAP_TAG_LEN + 32 + 16  # recipient tag + sealed 32-byte key + 16-byte tag
EPHEMERAL_LEN = 32
SESSION_LEN = 8  # a sender session (relay.core.wire.SESSION_LEN)
# A beacon's fixed part: epoch, floor flag, holder, remaining, grant seq, issued at, first
# counter, the holder's session.
BEACON_FIXED_LEN = 2 + 1 + ID_LEN + 2 + 3 + 4 + 3 + SESSION_LEN


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise PacketError("malformed", f"{what} is truncated ({len(data)} of {n} bytes)")


def _exact(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise PacketError("malformed", f"{what} must be {n} bytes, got {len(data)}")


def _pack_loss(loss: int | None) -> bytes:
    if loss is None:
        return b""
    if not 0 <= loss <= 100:
        raise UsageError(f"a loss report is a percentage 0..100, got {loss}")
    return bytes((loss,))


def _parse_loss(data: bytes) -> int:
    if data[0] > 100:
        raise PacketError("malformed", f"loss report {data[0]} is not a percentage")
    return data[0]


class ModAction(enum.IntEnum):
    GRANT = 1  # arg: seconds of floor
    REVOKE = 2
    MUTE = 3
    UNMUTE = 4
    REMOVE = 5
    APPOINT = 6  # extra: the new moderator's X25519 key


# GRANT names the first packet counter the speaker will use and the session it speaks under
# (from its signed hand raise), so receivers open its voice under that session and accept it
# only from that counter on; APPOINT carries the new moderator's key.
_EXTRA_LENGTHS = {ModAction.GRANT: (0, 3 + SESSION_LEN), ModAction.APPOINT: (32,)}


@dataclass(frozen=True, slots=True)
class ModMessage:
    """A moderator's action on a member."""

    action: int
    target: bytes
    arg: int = 0  # GRANT: floor seconds
    issued_at: int = 0  # room time (UNIX seconds) the moderator issued it
    extra: bytes = b""  # APPOINT: the new moderator's X25519 key; GRANT: first counter + session

    def pack(self) -> bytes:
        if self.action not in ModAction._value2member_map_:
            raise UsageError(f"unknown moderator action {self.action}")
        if len(self.target) != ID_LEN:
            raise UsageError("a moderation target is a 32-byte identity")
        if not 0 <= self.arg < 1 << 16 or not 0 <= self.issued_at < 1 << 32:
            raise UsageError("moderation argument out of range")
        if len(self.extra) not in _EXTRA_LENGTHS.get(self.action, (0,)):
            raise UsageError(f"moderator action {self.action} cannot carry {len(self.extra)} B")
        return (
            bytes((self.action,))
            + self.target
            + self.arg.to_bytes(2, "big")
            + self.issued_at.to_bytes(4, "big")
            + self.extra
        )

    @classmethod
    def parse(cls, body: bytes) -> ModMessage:
        _need(body, 1 + ID_LEN + 6, "moderation message")
        action = body[0]
        if action not in ModAction._value2member_map_:
            raise PacketError("malformed", f"unknown moderator action {action}")
        extra = body[1 + ID_LEN + 6 :]
        if len(extra) not in _EXTRA_LENGTHS.get(action, (0,)):
            raise PacketError("malformed", f"moderation extra of {len(extra)} bytes")
        return cls(
            action,
            body[1 : 1 + ID_LEN],
            int.from_bytes(body[1 + ID_LEN : 3 + ID_LEN], "big"),
            int.from_bytes(body[3 + ID_LEN : 7 + ID_LEN], "big"),
            bytes(extra),
        )


def parse_hand(body: bytes) -> bool:
    _exact(body, 1, "hand message")
    if body[0] not in (0, 1):
        raise PacketError("malformed", "hand message is neither raise (1) nor lower (0)")
    return body[0] == 1


def pack_hand(raised: bool) -> bytes:
    return b"\x01" if raised else b"\x00"


@dataclass(frozen=True, slots=True)
class Beacon:
    """The moderator's snapshot of the room: what a late joiner needs to catch up."""

    epoch: int
    holder: bytes | None  # full identity of the floor holder
    remaining: int  # seconds of floor left
    grant_seq: int  # counter of the grant the holder speaks under
    hands: tuple[bytes, ...] = ()  # identity prefixes, in queue order
    muted: tuple[bytes, ...] = ()  # identity prefixes
    issued_at: int = 0  # room time (UNIX seconds): a recorded beacon goes stale
    first_counter: int = NO_COUNTER  # first voice counter the grant admits (NO_COUNTER: none)
    loss: int | None = None  # optional trailing byte: the moderator's packet loss, percent
    session: bytes = bytes(SESSION_LEN)  # the session the floor holder speaks under

    def pack(self) -> bytes:
        if len(self.hands) > 255 or len(self.muted) > 255:
            raise UsageError("too many hands or muted members for one beacon")
        holder = self.holder if self.holder is not None else bytes(ID_LEN)
        if len(holder) != ID_LEN:
            raise UsageError("the floor holder is a 32-byte identity")
        out = bytearray(self.epoch.to_bytes(2, "big"))
        out += bytes((1 if self.holder is not None else 0,)) + holder
        out += min(self.remaining, 0xFFFF).to_bytes(2, "big") + self.grant_seq.to_bytes(3, "big")
        out += self.issued_at.to_bytes(4, "big") + self.first_counter.to_bytes(3, "big")
        if len(self.session) != SESSION_LEN:
            raise UsageError(f"a sender session is {SESSION_LEN} bytes")
        out += self.session
        for group in (self.hands, self.muted):
            out.append(len(group))
            for prefix in group:
                out += prefix[:PREFIX_LEN].ljust(PREFIX_LEN, b"\x00")
        return bytes(out) + _pack_loss(self.loss)

    @classmethod
    def parse(cls, body: bytes) -> Beacon:
        fixed = BEACON_FIXED_LEN
        _need(body, fixed + 1, "beacon")
        epoch = int.from_bytes(body[:2], "big")
        flag = body[2]
        if flag not in (0, 1):
            raise PacketError("malformed", "beacon floor flag is not 0 or 1")
        holder = bytes(body[3 : 3 + ID_LEN]) if flag else None
        remaining = int.from_bytes(body[3 + ID_LEN : 5 + ID_LEN], "big")
        grant_seq = int.from_bytes(body[5 + ID_LEN : 8 + ID_LEN], "big")
        issued_at = int.from_bytes(body[8 + ID_LEN : 12 + ID_LEN], "big")
        first_counter = int.from_bytes(body[12 + ID_LEN : 15 + ID_LEN], "big")
        session = bytes(body[15 + ID_LEN : fixed])
        pos = fixed
        groups: list[tuple[bytes, ...]] = []
        for what in ("hands", "muted"):
            _need(body, pos + 1, f"beacon {what} count")
            count = body[pos]
            pos += 1
            _need(body, pos + count * PREFIX_LEN, f"beacon {what}")
            groups.append(
                tuple(
                    bytes(body[pos + i * PREFIX_LEN : pos + (i + 1) * PREFIX_LEN])
                    for i in range(count)
                )
            )
            pos += count * PREFIX_LEN
        loss = _parse_loss(body[pos:]) if len(body) == pos + 1 else None
        if pos + (loss is not None) != len(body):
            raise PacketError("malformed", "beacon has trailing bytes")
        return cls(
            epoch,
            holder,
            remaining,
            grant_seq,
            groups[0],
            groups[1],
            issued_at,
            first_counter,
            loss,
            session,
        )


@dataclass(frozen=True, slots=True)
class OverSeal:
    """What a speaker signs at the end of an over: digests of its segments of frames."""

    frames: int
    grant_seq: int
    segment_frames: int
    digests: tuple[bytes, ...]
    # Optional trailing byte: the share of packets (percent) the speaker missed of the overs
    # it heard lately. Speakers transmit anyway, so reporting costs no listener its silence;
    # talkers use it to step their codec down (relay.voice.adapt). Seals without it parse.
    loss: int | None = None

    def pack(self) -> bytes:
        return (
            self.frames.to_bytes(4, "big")
            + self.grant_seq.to_bytes(3, "big")
            + self.segment_frames.to_bytes(2, "big")
            + bytes((len(self.digests),))
            + b"".join(self.digests)
            + _pack_loss(self.loss)
        )

    @classmethod
    def parse(cls, body: bytes) -> OverSeal:
        _need(body, 10, "over seal")
        frames = int.from_bytes(body[:4], "big")
        grant_seq = int.from_bytes(body[4:7], "big")
        seg = int.from_bytes(body[7:9], "big")
        count = body[9]
        end = 10 + count * DIGEST_LEN
        loss = _parse_loss(body[end:]) if len(body) == end + 1 else None
        _exact(
            body[10 : end if loss is not None else len(body)],
            count * DIGEST_LEN,
            "over seal digests",
        )
        if seg < 1 or count > MAX_SEGMENTS or count != math.ceil(frames / seg):
            raise PacketError("malformed", "over seal segments do not add up")
        digests = tuple(
            bytes(body[10 + i * DIGEST_LEN : 10 + (i + 1) * DIGEST_LEN]) for i in range(count)
        )
        return cls(frames, grant_seq, seg, digests, loss)


def segment_frames(total: int, frames_per_packet: int, max_segments: int) -> int:
    """Frames per segment: whole packets (a lost packet spoils only its own segment), as few
    per segment as ``max_segments`` digests allow."""
    fpp = max(1, frames_per_packet)
    packets = max(1, math.ceil(total / fpp))
    return fpp * math.ceil(packets / max(1, min(max_segments, MAX_SEGMENTS)))


def segment_digest(
    key_id: str, speaker: bytes, grant_seq: int, index: int, frames: list[bytes]
) -> bytes:
    """Digest of one segment of an over. ``frames`` are the codec frames by position; an empty
    entry is a position the speaker skipped (DTX silence). Segments without skips hash exactly
    as before DTX existed; segments with skips set the index's top bit and length-prefix every
    entry, so no arrangement of frames and skips can hash like another."""
    dtx = any(not f for f in frames)
    h = hashlib.sha256(b"relay/v1 segment")
    h.update(bytes.fromhex(key_id) + speaker + grant_seq.to_bytes(3, "big"))
    h.update((index | (0x8000 if dtx else 0)).to_bytes(2, "big"))
    for frame in frames:
        if dtx:
            h.update(len(frame).to_bytes(1, "big"))
        h.update(frame)
    return h.digest()[:DIGEST_LEN]


@dataclass(frozen=True, slots=True)
class RekeyFragment:
    """Part of a key rotation: the new key sealed to some of the remaining members."""

    epoch: int
    index: int
    count: int
    ephemeral: bytes
    wraps: tuple[tuple[bytes, bytes], ...]  # (recipient tag, sealed key)

    def pack(self) -> bytes:
        out = bytearray(self.epoch.to_bytes(2, "big"))
        out += bytes((self.index, self.count)) + self.ephemeral + bytes((len(self.wraps),))
        for tag, sealed in self.wraps:
            if len(tag) != WRAP_TAG_LEN or len(sealed) != WRAP_LEN - WRAP_TAG_LEN:
                raise UsageError("malformed key wrap")
            out += tag + sealed
        return bytes(out)

    @classmethod
    def parse(cls, body: bytes) -> RekeyFragment:
        head = 2 + 2 + EPHEMERAL_LEN + 1
        _need(body, head, "rekey fragment")
        count = body[head - 1]
        _exact(body[head:], count * WRAP_LEN, "rekey wraps")
        index, total = body[2], body[3]
        if total < 1 or index >= total:
            raise PacketError("malformed", "rekey fragment index out of range")
        wraps = tuple(
            (
                bytes(body[head + i * WRAP_LEN : head + i * WRAP_LEN + WRAP_TAG_LEN]),
                bytes(body[head + i * WRAP_LEN + WRAP_TAG_LEN : head + (i + 1) * WRAP_LEN]),
            )
            for i in range(count)
        )
        return cls(
            int.from_bytes(body[:2], "big"), index, total, bytes(body[4 : 4 + EPHEMERAL_LEN]), wraps
        )


def wrap_tag(signing_key: bytes) -> bytes:
    return hashlib.sha256(b"relay/v1 wrap" + signing_key).digest()[:WRAP_TAG_LEN]
