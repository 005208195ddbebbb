"""Invites: everything a member needs to join a room, signed by the moderator who made it.

Sans-I/O: bytes and text in, :class:`Invite` out. An invite is a string people paste or scan,
so it comes from outside and is parsed as hostile: every malformed input is a UsageError with a
clear message, and nothing is believed before the signature verifies.

Binary layout, version 1 (integers big-endian)::

    1     version = 1
    1     flags: bit 0 = the room key is sealed for one member; bit 1 = a delay budget
          follows the codec mode; bit 2 = the sealed part also carries the member's
          key-tree path; other bits must be 0
    8     room id (random)
    1+n   room name: length n (1..64), UTF-8
    1+p   radio preset: length p (1..32), ASCII canonical name, e.g. SHORT_FAST
    1     Codec2 mode: its wire index (the packet header's 3-bit mode)
    (2+1  with flag bit 1: the room's delay budget, max mouth-to-ear ms, and relay hops)
    2     key epoch
    4     issued at, seconds since 1970 (unsigned)
    1     moderator count m (1..8)
    64*m  moderators: Ed25519 public key (32) + X25519 public key (32)
    1     inviter: index of the moderator who signed
    32    clear: the room key
      or  sealed: recipient's Ed25519 key (32) + ephemeral X25519 key (32)
          + the room key sealed to the recipient's X25519 key (32 + 16 tag); with bit 2 the
          sealed plaintext is the room key + the member's path (relay.core.keytree:
          depth, leaf, one 32-byte key per level), whose ratchet step is the issue time's
    64    Ed25519 signature by moderators[inviter] over SIGN_DOMAIN + everything above

An invite made ``--for`` a member is version 2, sealed whole, so that nothing in it (room
name, preset, moderators' keys, recipient, issue time) shows to whoever sees the text::

    1     version = 2
    32    ephemeral X25519 key
    n+16  sealed to the recipient's X25519 key (relay.core.sealed, AES-256-CCM): the inner
          invite, i.e. the version 1 layout above with flags bit 2 ("for one member": the
          key part is the recipient's Ed25519 key (32) + the room key (32)), its signature,
          and zero padding to a multiple of 64 bytes ending in one byte that says how long
          the padding is (the name's length shows only to 64 bytes; the number of
          moderators, 64 bytes each, does show)

Only what opening needs stays outside: the version and the ephemeral key. The recipient
finds out the invite is theirs by opening it; the signature inside covers the recipient's
key, so a member cannot re-seal their invite to someone else. Version 1 sealed invites (the
key alone sealed, everything else in clear) are still read, no longer made.

Text form: ``relay1:`` + base64url without padding. 117 bytes + name + preset + 64 per
moderator: for one moderator, a room "market" on SHORT_FAST is 270 characters in the clear
(QR version 10-L) and 414 sealed whole (version 2; 14-L).

A valid signature proves only that *some* key listed as moderator made the invite: anyone can
make a room. Members compare the moderator fingerprint out loud, and a room already joined
only accepts invites signed by a moderator it already knows (see relay.store.rooms).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field

from relay.core.identity import Identity, PublicIdentity
from relay.core.keytree import MemberPath, ratchet_step
from relay.core.sealed import open_sealed, seal_for
from relay.errors import PeerError, UsageError
from relay.plan import Budget
from relay.radio.profiles import preset as lookup_preset
from relay.voice.modes import mode_by_index, mode_by_name

VERSION = 1
VERSION_SEALED = 2
TEXT_PREFIX = "relay1:"
SIGN_DOMAIN = b"relay/invite/v1\x00"
SEAL_CONTEXT = b"relay/invite/v1"
SEAL_CONTEXT_V2 = b"relay/invite/v2 sealed whole"
FLAG_SEALED = 0x01  # version 1: the room key alone sealed
FLAG_BUDGET = 0x02
FLAG_PATH = 0x04
FLAG_FOR = 0x08  # inside a version 2 invite: recipient's key + room key (+ path)
PAD_TO = 64
ROOM_ID_LEN = 8
KEY_LEN = 32
SIG_LEN = 64
PUBLIC_LEN = 64
MAX_NAME_BYTES = 64
MAX_PRESET_BYTES = 32
MAX_MODERATORS = 8
MAX_EPOCH = 0xFFFF
MAX_ISSUED_AT = 0xFFFFFFFF
_SEALED_KEY_LEN = 32 + 32 + KEY_LEN + 16
_MIN_LEN = 2 + ROOM_ID_LEN + 2 + 2 + 1 + 2 + 4 + 1 + PUBLIC_LEN + 1 + KEY_LEN + SIG_LEN
_MAX_TEXT = 4096
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_WHITESPACE = re.compile(r"\s+")


def check_room_name(name: str) -> str:
    """A room name people can read: 1..64 UTF-8 bytes, no control or invisible characters.

    Names arrive in invites from strangers and are printed in terminals, so escape sequences
    and bidirectional overrides (which make one name look like another) are refused.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise UsageError("a room name must be non-empty without leading or trailing spaces")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in name):
        raise UsageError("a room name must not contain control or invisible characters")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UsageError(f"a room name is at most {MAX_NAME_BYTES} bytes of UTF-8")
    return name


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What defines a room for its members. Preset and mode are stored by canonical name."""

    room_id: bytes
    name: str
    preset: str
    mode: str
    epoch: int
    key: bytes = field(repr=False)
    moderators: tuple[PublicIdentity, ...]
    budget: Budget | None = None  # the room's delay budget; None: the planner's default

    def __post_init__(self) -> None:
        if not isinstance(self.room_id, bytes) or len(self.room_id) != ROOM_ID_LEN:
            raise UsageError(f"a room id is {ROOM_ID_LEN} bytes")
        check_room_name(self.name)
        object.__setattr__(self, "preset", lookup_preset(self.preset).name)
        object.__setattr__(self, "mode", mode_by_name(self.mode).name)
        if not isinstance(self.epoch, int) or not 0 <= self.epoch <= MAX_EPOCH:
            raise UsageError(f"a key epoch is 0..{MAX_EPOCH}")
        if not isinstance(self.key, bytes) or len(self.key) != KEY_LEN:
            raise UsageError(f"a room key is {KEY_LEN} bytes")
        mods = tuple(self.moderators)
        object.__setattr__(self, "moderators", mods)
        if not 1 <= len(mods) <= MAX_MODERATORS:
            raise UsageError(f"a room has 1..{MAX_MODERATORS} moderators")
        if len({m.signing_key for m in mods}) != len(mods):
            raise UsageError("a moderator is listed twice")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise UsageError("a room's delay budget is a Budget")

    @property
    def id_hex(self) -> str:
        return self.room_id.hex()

    def moderator_index(self, signing_key: bytes) -> int | None:
        for i, m in enumerate(self.moderators):
            if m.signing_key == signing_key:
                return i
        return None


@dataclass(frozen=True, slots=True)
class Invite:
    """A decoded, verified invite. ``recipient`` is set when it was sealed (for us)."""

    room: RoomInfo
    issued_at: int
    inviter: int
    recipient: PublicIdentity | None = None
    path: MemberPath | None = field(default=None, repr=False)  # our key-tree leaf and keys

    @property
    def signer(self) -> PublicIdentity:
        """The moderator who made (and signed) this invite."""
        return self.room.moderators[self.inviter]


def _seal_context(room_id: bytes, epoch: int, recipient: bytes, inviter: bytes) -> bytes:
    return SEAL_CONTEXT + room_id + epoch.to_bytes(2, "big") + recipient + inviter


def encode_invite(
    info: RoomInfo,
    inviter: Identity,
    recipient: PublicIdentity | None,
    issued_at: int,
    path: MemberPath | None = None,
) -> str:
    """The invite text for ``info``, signed by ``inviter`` (who must be a moderator).

    With ``recipient`` the room key is sealed so only that member can open it; without, anyone
    who reads the text holds the room key. ``path`` (sealed invites only): the recipient's
    key-tree keys, at the ratchet step of ``issued_at`` like ``info.key``.
    """
    if path is not None and recipient is None:
        raise UsageError("key-tree keys travel only in an invite sealed --for the member")
    index = info.moderator_index(inviter.public.signing_key)
    if index is None:
        raise UsageError("only a moderator of the room can make an invite for it")
    if not isinstance(issued_at, int) or not 0 <= issued_at <= MAX_ISSUED_AT:
        raise UsageError("issued_at must be seconds since 1970 that fit in 32 bits")
    name = info.name.encode("utf-8")
    preset_name = info.preset.encode("ascii")
    flags = (FLAG_SEALED if recipient is not None else 0) | (FLAG_BUDGET if info.budget else 0)
    flags |= FLAG_PATH if path else 0
    budget = b""
    if info.budget is not None:
        budget = info.budget.max_delay_ms.to_bytes(2, "big") + bytes([info.budget.relay_hops])
    parts = [
        bytes([VERSION, flags]),
        info.room_id,
        bytes([len(name)]),
        name,
        bytes([len(preset_name)]),
        preset_name,
        bytes([mode_by_name(info.mode).wire_index]),
        budget,
        info.epoch.to_bytes(2, "big"),
        issued_at.to_bytes(4, "big"),
        bytes([len(info.moderators)]),
        *(m.signing_key + m.agreement_key for m in info.moderators),
        bytes([index]),
    ]
    if recipient is None:
        parts.append(info.key)
    else:
        parts[0] = bytes([VERSION, FLAG_FOR | (flags & (FLAG_BUDGET | FLAG_PATH))])
        parts += [recipient.signing_key, info.key + (path.pack() if path is not None else b"")]
    body = b"".join(parts)
    blob = body + inviter.sign(SIGN_DOMAIN + body)
    if recipient is not None:
        pad = -(len(blob) + 1) % PAD_TO  # then one byte: how much padding
        blob += bytes(pad) + bytes([pad])
        ephemeral, sealed = seal_for(recipient.agreement_key, blob, context=SEAL_CONTEXT_V2)
        blob = bytes([VERSION_SEALED]) + ephemeral + sealed
    return TEXT_PREFIX + base64.urlsafe_b64encode(blob).decode("ascii").rstrip("=")


class _Reader:
    """A cursor over untrusted bytes: running off the end is a UsageError, never IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise UsageError(f"invite is cut short (in the {what}); copy all of it")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def prefixed(self, what: str, lo: int, hi: int) -> bytes:
        n = self.byte(what)
        if not lo <= n <= hi:
            raise UsageError(f"invite has a {what} of impossible length {n}")
        return self.take(n, what)


def _text_to_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise UsageError("an invite is text starting with relay1:")
    text = _WHITESPACE.sub("", text)  # tolerate line breaks from copy and paste
    if not text.startswith(TEXT_PREFIX):
        raise UsageError(f"not an invite: an invite starts with {TEXT_PREFIX}")
    body = text[len(TEXT_PREFIX) :]
    if len(body) > _MAX_TEXT:
        raise UsageError("not an invite: far too long")
    if not _B64URL.fullmatch(body):
        raise UsageError("invite is damaged: not base64url text (was it cut or retyped?)")
    if len(body) % 4 == 1:
        raise UsageError("invite is cut short or damaged; copy all of it")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("invite is damaged: not base64url text (was it cut or retyped?)") from None


def decode_invite(text: str, me: Identity | None) -> Invite:
    """Parse and verify an invite; open its room key if it was sealed for ``me``."""
    blob = _text_to_bytes(text)
    if not blob:
        raise UsageError("invite is empty")
    if blob[0] == VERSION_SEALED:
        return _decode_sealed_whole(blob, me)
    if blob[0] != VERSION:
        raise UsageError(
            f"invite version {blob[0]} is not supported (this relay reads versions "
            f"{VERSION} and {VERSION_SEALED}); is one of you running an older relay?"
        )
    return _decode_inner(blob, me, inner=False)


def _decode_sealed_whole(blob: bytes, me: Identity | None) -> Invite:
    if me is None:
        raise UsageError(
            "this invite is sealed for one member; create your identity with `relay id init` "
            "and give the moderator your public id (relay id show)"
        )
    if len(blob) < 1 + 32 + 16 + _MIN_LEN:
        raise UsageError("invite is cut short; copy all of it")
    try:
        inner = open_sealed(me, blob[1:33], blob[33:], SEAL_CONTEXT_V2)
    except PeerError:
        raise UsageError(
            "this invite does not open with your identity: it was made for someone else (or "
            "an older identity of yours), or it is damaged; ask for one made --for your "
            "public id (relay id show)"
        ) from None
    pad = inner[-1] if inner else PAD_TO
    if len(inner) % PAD_TO or pad >= PAD_TO or any(inner[-1 - pad : -1]) or inner[0] != VERSION:
        raise UsageError("invite is not usable: its sealed content is malformed")
    return _decode_inner(inner[: -1 - pad], me, inner=True)


def _decode_inner(blob: bytes, me: Identity | None, *, inner: bool) -> Invite:
    """A version 1 layout: a whole invite, or the content of a version 2 one (``inner``:
    the key part is recipient + key (+ key-tree path), padding already removed)."""
    if len(blob) < _MIN_LEN:
        raise UsageError("invite is cut short; copy all of it")
    body, signature = blob[:-SIG_LEN], blob[-SIG_LEN:]
    r = _Reader(body)
    r.take(1, "version")
    flags = r.byte("flags")
    known = FLAG_BUDGET | FLAG_PATH | (FLAG_FOR if inner else FLAG_SEALED)
    if flags & ~known or (inner and not flags & FLAG_FOR):
        raise UsageError("invite uses features this relay does not know (unknown flags)")
    if flags & FLAG_PATH and not flags & (FLAG_SEALED | FLAG_FOR):
        raise UsageError("invite uses features this relay does not know (unknown flags)")
    room_id = r.take(ROOM_ID_LEN, "room id")
    raw_name = r.prefixed("room name", 1, MAX_NAME_BYTES)
    raw_preset = r.prefixed("radio preset", 1, MAX_PRESET_BYTES)
    mode_index = r.byte("codec mode")
    raw_budget = (r.uint(2, "delay budget"), r.byte("relay hops")) if flags & FLAG_BUDGET else None
    epoch = r.uint(2, "key epoch")
    issued_at = r.uint(4, "issue time")
    count = r.byte("moderator count")
    if not 1 <= count <= MAX_MODERATORS:
        raise UsageError(f"invite lists {count} moderators (a room has 1..{MAX_MODERATORS})")
    raw_mods = [r.take(PUBLIC_LEN, "moderator keys") for _ in range(count)]
    inviter = r.byte("inviter")
    if inviter >= count:
        raise UsageError("invite names an inviter who is not among its moderators")
    sealed = bool(flags & FLAG_SEALED)
    with_path = bool(flags & FLAG_PATH)
    size = _SEALED_KEY_LEN if sealed else 2 * KEY_LEN if inner else KEY_LEN
    if with_path:
        size = max(size, len(body) - r.pos)
    key_part = r.take(size, "room key")
    if r.pos != len(body):
        raise UsageError("invite has extra bytes at the end (damaged?)")

    moderators = tuple(PublicIdentity(m[:32], m[32:]) for m in raw_mods)
    if not moderators[inviter].verify(signature, SIGN_DOMAIN + body):
        raise UsageError("invite signature does not verify (tampered?)")

    # Signed by the key it names as inviter: now the content is worth interpreting.
    recipient: PublicIdentity | None = None
    path: MemberPath | None = None
    if sealed:
        key, recipient = _open_key(key_part, room_id, epoch, moderators[inviter], me, with_path)
    elif inner:
        assert me is not None
        if key_part[:32] != me.public.signing_key:
            raise UsageError(
                "this invite was made for someone else; ask the moderator for an invite made "
                "--for your public id (relay id show)"
            )
        key, recipient = key_part[32:], me.public
    else:
        key = key_part
    if with_path and (sealed or inner):
        key, rest = key[:KEY_LEN], key[KEY_LEN:]
        try:
            path = MemberPath.parse(rest, ratchet_step(issued_at))
        except PeerError:
            raise UsageError("invite carries damaged key-tree keys") from None
    mode = mode_by_index(mode_index)
    if mode is None:
        raise UsageError(f"invite names codec mode {mode_index}, which this relay does not know")
    try:
        name = raw_name.decode("utf-8")
        preset_name = raw_preset.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError("invite has a room name or preset that is not valid text") from None
    try:
        budget = Budget(*raw_budget) if raw_budget is not None else None
        info = RoomInfo(room_id, name, preset_name, mode.name, epoch, key, moderators, budget)
    except UsageError as exc:
        raise UsageError(f"invite is not usable: {exc}") from None
    return Invite(info, issued_at, inviter, recipient, path)


def _open_key(
    part: bytes,
    room_id: bytes,
    epoch: int,
    inviter: PublicIdentity,
    me: Identity | None,
    with_path: bool = False,
) -> tuple[bytes, PublicIdentity]:
    recipient_key, ephemeral, sealed = part[:32], part[32:64], part[64:]
    if me is None:
        raise UsageError(
            "this invite is sealed for one member; create your identity with `relay id init` "
            "and give the moderator your public id (relay id show)"
        )
    if recipient_key != me.public.signing_key:
        raise UsageError(
            "this invite was made for someone else; ask the moderator for an invite made "
            "--for your public id (relay id show)"
        )
    context = _seal_context(room_id, epoch, recipient_key, inviter.signing_key)
    try:
        key = open_sealed(me, ephemeral, sealed, context)
    except PeerError:
        raise UsageError(
            "the room key in this invite does not open with your identity (was it made for "
            "an older identity of yours?)"
        ) from None
    if len(key) != KEY_LEN and not (with_path and len(key) > KEY_LEN):
        raise UsageError("invite carries a room key of the wrong size")
    return key, me.public
