"""Room keys and the packet AEAD. Small on purpose: read it twice before changing it.

* The room key is 32 random bytes, or scrypt(passphrase, per-room salt).
* Every sender gets its own AES-256-CCM key, HKDF(room key, sender identity, sender session).
  Two members whose 16-bit short ids collide therefore never share a key, so a collision
  costs at most a second trial decryption and never a reused nonce.
* The session is 8 random bytes a sender draws at every start (:func:`new_session`). The
  counter store keeps counters growing within one start and across clean restarts, but a
  file restored from a backup, copied, rolled back with a snapshot, or run on two devices
  at once can hand out a counter again; under a fresh session that counter is used under a
  fresh key, so no (key, nonce) pair repeats. Two starts share a key only if they draw the
  same 64-bit session: with 2^16 starts of one identity under one room key, about 2^-33.
* The nonce is the sender's 24-bit counter (unique per sender key, persisted ahead of use by
  the counter store); the clear header is the associated data, so no header bit can change.
* Tags are 8 bytes: CCM (unlike GCM) keeps its full forgery bound when the tag is truncated,
  which is why 802.15.4, Bluetooth LE and Meshtastic's PKI use it the same way.

Nothing here logs, and no exception message carries key bytes or plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from relay.core.wire import COUNTER_LIMIT, MAX_PACKET_LEN, SESSION_LEN, TAG_LEN
from relay.errors import PacketError, UsageError

KEY_LEN = 32
SALT_LEN = 16
NONCE_LEN = 13
HINT_EPOCH_SECONDS = 3600
MAX_IDENTITY_LEN = 64
# scrypt cost: 2**15 x 8 x 1 needs 32 MiB and about 0.1 s: affordable on a phone, costly to guess.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
_HKDF_SALT = b"relay/v1"
_NONCE_PREFIX = b"relay/v1\x00\x00"  # 10 bytes; nonce = prefix + 3-byte counter


def new_session() -> bytes:
    """A sender's session value: fresh randomness for every start (module docstring)."""
    return os.urandom(SESSION_LEN)


def random_room_key() -> bytes:
    return os.urandom(KEY_LEN)


def new_salt() -> bytes:
    return os.urandom(SALT_LEN)


def room_key_from_passphrase(passphrase: str, salt: bytes) -> bytes:
    """Derive a room key from a passphrase members can say aloud, with the room's salt."""
    if not isinstance(passphrase, str) or not passphrase:
        raise UsageError("the passphrase must not be empty")
    if len(salt) < SALT_LEN:
        raise UsageError(f"the room salt must be at least {SALT_LEN} bytes")
    kdf = Scrypt(salt=bytes(salt), length=KEY_LEN, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def _hkdf(room_key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(
        room_key
    )


def _check_identity(identity: bytes) -> bytes:
    if not isinstance(identity, bytes) or not 1 <= len(identity) <= MAX_IDENTITY_LEN:
        raise UsageError(f"a sender identity is 1..{MAX_IDENTITY_LEN} bytes")
    return identity


def nonce(counter: int) -> bytes:
    if not 0 <= counter < COUNTER_LIMIT:
        raise UsageError("send counter out of range")
    return _NONCE_PREFIX + counter.to_bytes(3, "big")


def hint_epoch(now: float) -> int:
    return int(now // HINT_EPOCH_SECONDS)


@dataclass(eq=False)
class SenderCipher:
    """The AEAD of one sender in one room."""

    identity: bytes
    short_id: int
    _aead: AESCCM = field(repr=False)
    session: bytes = b""

    def seal(self, associated: bytes, counter: int, plaintext: bytes) -> bytes:
        if len(associated) + len(plaintext) + TAG_LEN > MAX_PACKET_LEN:
            raise UsageError(f"a packet may not exceed {MAX_PACKET_LEN} bytes")
        return self._aead.encrypt(nonce(counter), plaintext, associated)

    def open(self, associated: bytes, counter: int, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce(counter), sealed, associated)
        except (InvalidTag, ValueError):
            raise PacketError("auth", "authentication failed (wrong key or altered)") from None


class RoomKeys:
    """Everything derived from one room key. Holds the key; never prints it."""

    __slots__ = ("_hint_key", "_hints", "_id_key", "_mask_key", "_room_key", "announce", "key_id")

    def __init__(self, room_key: bytes) -> None:
        if not isinstance(room_key, bytes) or len(room_key) != KEY_LEN:
            raise UsageError(f"a room key is {KEY_LEN} bytes")
        self._room_key = room_key
        self._hint_key = _hkdf(room_key, b"room-hint", 32)
        self._id_key = _hkdf(room_key, b"sender-id", 32)
        self._mask_key = _hkdf(room_key, b"session-mask", 32)
        # A public name for this key (for file names and logs): reveals nothing about it.
        self.key_id = _hkdf(room_key, b"key-id", 8).hex()
        self._hints: tuple[int, int, frozenset[int]] = (0, -1, frozenset())
        # Shared by all members for introductions (HELLO packets), always with random nonces.
        self.announce = AESCCM(_hkdf(room_key, b"announce", KEY_LEN), tag_length=TAG_LEN)

    def __repr__(self) -> str:
        return f"RoomKeys(key_id={self.key_id})"

    def short_id(self, identity: bytes) -> int:
        """The sender's 16-bit pseudonym in this room (unlinkable to it without the key)."""
        digest = hmac.new(self._id_key, _check_identity(identity), hashlib.sha256).digest()
        return int.from_bytes(digest[:2], "big")

    def session_mask(self, identity: bytes) -> bytes:
        """XORed onto a sender's session where it travels in the clear (control and clip
        packets). A session outlives a key rotation (crypto.py's module docstring), so the
        bare value would link a member's packets across room keys; masked, the clear bytes
        of one member under two keys, or of two members under one key, say nothing to
        anyone without the key. (The session is random and not secret: the mask only keeps
        rotations unlinkable.)"""
        msg = b"mask" + _check_identity(identity)
        return hmac.new(self._mask_key, msg, hashlib.sha256).digest()[:SESSION_LEN]

    def sender(self, identity: bytes, session: bytes) -> SenderCipher:
        """The AEAD of one start (``session``) of one sender: see the module docstring."""
        _check_identity(identity)
        if not isinstance(session, bytes) or len(session) != SESSION_LEN:
            raise UsageError(f"a sender session is {SESSION_LEN} bytes")
        info = b"sender-key/s" + bytes((len(identity),)) + identity + session
        key = _hkdf(self._room_key, info, KEY_LEN)
        aead = AESCCM(key, tag_length=TAG_LEN)
        return SenderCipher(identity, self.short_id(identity), aead, session)

    def hint(self, epoch: int) -> int:
        """The room hint for an epoch (one hour): a byte that rotates and names nothing."""
        msg = epoch.to_bytes(8, "big", signed=True)
        return hmac.new(self._hint_key, msg, hashlib.sha256).digest()[0]

    def hints_near(self, now: float, tolerance: int) -> frozenset[int]:
        """Hints of the epochs within ``tolerance`` of now (cached: this runs per packet)."""
        epoch = hint_epoch(now)
        cached_epoch, cached_tolerance, hints = self._hints
        if (cached_epoch, cached_tolerance) != (epoch, tolerance):
            hints = frozenset(self.hint(e) for e in range(epoch - tolerance, epoch + tolerance + 1))
            self._hints = (epoch, tolerance, hints)
        return hints
