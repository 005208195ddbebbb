"""Bodies of the room's control messages: pure build and strict parse.

Every parse raises only :class:`PacketError` ("malformed") for bytes that came from outside.
Signatures are not handled here (see signing.py); these are the bytes that get signed.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass

from relay.core.live import ANCHOR_LEN, NO_ANCHOR, Anchor
from relay.errors import PacketError, UsageError

ID_LEN = 32  # an identity (Ed25519 public key)
NO_COUNTER = 0xFFFFFF  # "no counter range" in a beacon
PREFIX_LEN = 8  # identity prefix in beacons
# Per-segment digest of an over. 4 bytes suffice: a forger must commit to its frames before
# the speaker says the real ones, so it gets one blind 2^-32 guess per segment, no search.
DIGEST_LEN = 4
MAX_SEGMENTS = 255
EPHEMERAL_LEN = 32
SEALED_LEN = 32 + 16  # a 32-byte key sealed to one member (relay.core.sealed), 16-byte tag
TREE_WRAPPED_LEN = 40  # a 32-byte path secret under AES key wrap (RFC 3394)
TREE_WRAP_LEN = 2 + TREE_WRAPPED_LEN  # node + wrapped secret
REKEY_HEAD_LEN = 2 + 3 + 4 + 1  # epoch, step, index, count, depth, n; m
MAX_TREE_DEPTH = 12
SESSION_LEN = 8  # a sender session (relay.core.wire.SESSION_LEN)
# A beacon's fixed part: epoch, floor flag, holder, remaining, grant seq, issued at, first
# counter, the holder's session and its live anchor.
BEACON_FIXED_LEN = 2 + 1 + ID_LEN + 2 + 3 + 4 + 3 + SESSION_LEN + ANCHOR_LEN


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
# A grant names the speaker's first counter and session [and the live anchor of its hand].
_EXTRA_LENGTHS = {
    ModAction.GRANT: (0, 3 + SESSION_LEN, 3 + SESSION_LEN + ANCHOR_LEN),
    ModAction.APPOINT: (32,),
}


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


def parse_hand(body: bytes) -> tuple[bool, Anchor | None]:
    """(raised, the live anchor of the over it asks for). A raise may carry no anchor (its
    over then has no live checks); a lowered hand never does."""
    _need(body, 1, "hand message")
    if body[0] not in (0, 1):
        raise PacketError("malformed", "hand message is neither raise (1) nor lower (0)")
    if len(body) == 1:
        return body[0] == 1, None
    if body[0] != 1 or len(body) != 1 + ANCHOR_LEN:
        raise PacketError("malformed", f"hand message of {len(body)} bytes")
    return True, Anchor.parse(body[1:])


def pack_hand(raised: bool, anchor: Anchor | None = None) -> bytes:
    if not raised:
        return b"\x00"
    return b"\x01" + (anchor.pack() if anchor is not None else b"")


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
    anchor: bytes = NO_ANCHOR  # the live anchor of its over (relay.core.live)

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
        if len(self.anchor) != ANCHOR_LEN:
            raise UsageError(f"a live anchor is {ANCHOR_LEN} bytes")
        out += self.anchor
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
        session = bytes(body[15 + ID_LEN : 15 + ID_LEN + SESSION_LEN])
        anchor = bytes(body[15 + ID_LEN + SESSION_LEN : fixed])
        Anchor.parse(anchor)  # malformed anchors are refused here, not where they are used
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
            anchor,
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
    """Part of a key rotation, signed by the moderator and sealed under the old room key.

    ``wraps`` are key-tree wraps (relay.core.keytree): a path secret wrapped under one node's
    key, named by the node, never by a member. ``sealed`` are the new key sealed to members
    who hold no leaf (enrolled before the tree, or appointed on the air), all with one
    ephemeral key and no recipient tag: each such member tries them all (one X25519).

    Layout: epoch (2) | ratchet step (3) | index (1) | count (1) | depth (1) | n (1) |
    n x (node 2 + wrapped 40) | m (1) | [ephemeral 32 | m x 48 when m > 0]
    """

    epoch: int
    step: int
    index: int
    count: int
    depth: int
    wraps: tuple[tuple[int, bytes], ...] = ()
    ephemeral: bytes = b""
    sealed: tuple[bytes, ...] = ()

    def pack(self) -> bytes:
        if not 0 <= self.epoch < 1 << 16 or not 0 <= self.step < 1 << 24:
            raise UsageError("rekey epoch or step out of range")
        if not 0 <= self.index < self.count <= 255 or not 0 <= self.depth <= MAX_TREE_DEPTH:
            raise UsageError("rekey fragment index or depth out of range")
        if len(self.wraps) > 255 or len(self.sealed) > 255:
            raise UsageError("too many wraps for one rekey fragment")
        out = bytearray(self.epoch.to_bytes(2, "big") + self.step.to_bytes(3, "big"))
        out += bytes((self.index, self.count, self.depth, len(self.wraps)))
        for node, wrapped in self.wraps:
            if not 0 <= node < 1 << 16 or len(wrapped) != TREE_WRAPPED_LEN:
                raise UsageError("malformed key-tree wrap")
            out += node.to_bytes(2, "big") + wrapped
        out.append(len(self.sealed))
        if self.sealed:
            if len(self.ephemeral) != EPHEMERAL_LEN:
                raise UsageError("sealed wraps need the ephemeral key")
            out += self.ephemeral
            for sealed in self.sealed:
                if len(sealed) != SEALED_LEN:
                    raise UsageError("malformed sealed key")
                out += sealed
        return bytes(out)

    @classmethod
    def parse(cls, body: bytes) -> RekeyFragment:
        head = 2 + 3 + 4
        _need(body, head + 1, "rekey fragment")
        epoch = int.from_bytes(body[:2], "big")
        step = int.from_bytes(body[2:5], "big")
        index, total, depth, n = body[5], body[6], body[7], body[8]
        if total < 1 or index >= total:
            raise PacketError("malformed", "rekey fragment index out of range")
        if depth > MAX_TREE_DEPTH:
            raise PacketError("malformed", "rekey names an impossible tree depth")
        pos = head
        _need(body, pos + n * TREE_WRAP_LEN + 1, "rekey wraps")
        wraps = tuple(
            (
                int.from_bytes(body[pos + i * TREE_WRAP_LEN : pos + i * TREE_WRAP_LEN + 2], "big"),
                bytes(body[pos + i * TREE_WRAP_LEN + 2 : pos + (i + 1) * TREE_WRAP_LEN]),
            )
            for i in range(n)
        )
        pos += n * TREE_WRAP_LEN
        m = body[pos]
        pos += 1
        ephemeral = b""
        if m:
            _need(body, pos + EPHEMERAL_LEN, "rekey ephemeral key")
            ephemeral = bytes(body[pos : pos + EPHEMERAL_LEN])
            pos += EPHEMERAL_LEN
        _exact(body[pos:], m * SEALED_LEN, "rekey sealed keys")
        sealed = tuple(
            bytes(body[pos + i * SEALED_LEN : pos + (i + 1) * SEALED_LEN]) for i in range(m)
        )
        return cls(epoch, step, index, total, depth, wraps, ephemeral, sealed)
