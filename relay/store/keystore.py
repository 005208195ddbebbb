"""Keys at rest: the identity file, locked by a passphrase, and the data key for room keys.

A seized device must not give up its keys to whoever images the disk. The identity file holds
the two private keys *and* a random 32-byte data key; with a passphrase it is sealed with
AES-256-GCM under a key stretched by Argon2id (RFC 9106's second recommended setting: 64 MiB,
3 passes, 4 lanes; about 0.2 s here). Room keys never touch the disk in clear: rooms.db keeps
each one sealed under the data key (AES-256-GCM, the room id and epoch as associated data), so
changing the passphrase rewraps 32 bytes and leaves rooms.db alone.

File layout (``identity.key``)::

    9    magic b"relay-id\\x02"
    1    protection: 0 = none (chosen with --no-passphrase), 1 = Argon2id passphrase
    -- protection 0 --
    96   Ed25519 private (32) + X25519 private (32) + data key (32), in clear
    -- protection 1 --
    4    Argon2id memory, KiB     1  passes     1  lanes     16  salt
    16   duress salt              32 duress check (random when no duress passphrase is set)
    12   nonce
    112  AES-256-GCM(96 bytes above) + 16-byte tag; everything before is associated data

The duress check is SHA-256 over a label and Argon2id(duress passphrase, duress salt): it is
always present (random bytes when unset), so the file does not say whether one is set.

The old format (64 raw bytes, no data key) still opens: its room keys are in clear in
rooms.db until ``relay id passphrase`` moves the home to this format.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from relay.core.identity import Identity
from relay.errors import UsageError

MAGIC = b"relay-id\x02"
LEGACY_LEN = 64
DATA_KEY_LEN = 32
PROTECT_NONE = 0
PROTECT_ARGON2ID = 1
ARGON_MEMORY_KIB = 64 * 1024
ARGON_PASSES = 3
ARGON_LANES = 4
SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
_SECRET_LEN = 64 + DATA_KEY_LEN
_PARAMS = struct.Struct(">IBB")
_DURESS_LABEL = b"relay/duress/v1"
ROOM_KEY_LEN = 32
SEALED_ROOM_KEY_LEN = NONCE_LEN + ROOM_KEY_LEN + TAG_LEN  # 60
WRONG_PASSPHRASE = "wrong passphrase"


class WrongPassphrase(UsageError):
    """The passphrase did not open the identity (the message is always the same)."""

    def __init__(self) -> None:
        super().__init__(WRONG_PASSPHRASE)


class DuressPassphrase(WrongPassphrase):
    """The duress passphrase was entered: the caller wipes, then reports a wrong passphrase."""


@dataclass(frozen=True, slots=True)
class KdfParams:
    memory_kib: int = ARGON_MEMORY_KIB
    passes: int = ARGON_PASSES
    lanes: int = ARGON_LANES

    def check(self) -> None:
        # A hostile file must not make us allocate gigabytes or spin for hours: at most
        # 256 MiB (4x the default) and 16 passes.
        if not (8 * self.lanes <= self.memory_kib <= 1 << 18 and 1 <= self.passes <= 16):
            raise UsageError("the identity file has impossible passphrase settings (damaged?)")
        if not 1 <= self.lanes <= 16:
            raise UsageError("the identity file has impossible passphrase settings (damaged?)")

    def stretch(self, passphrase: str, salt: bytes) -> bytes:
        return Argon2id(
            salt=salt,
            length=32,
            iterations=self.passes,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(passphrase.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Keys:
    """What unlocking a home gives: the identity and the key that seals room keys.

    ``data_key`` is None only for a home in the old format (room keys in clear in rooms.db).
    """

    identity: Identity
    data_key: bytes | None = field(repr=False)
    protected: bool  # a passphrase guards the identity file
    legacy: bool = False

    def seal_room_key(self, room_id: bytes, epoch: int, key: bytes) -> bytes:
        """The room key as rooms.db stores it: sealed under the data key (or in clear, old
        format only)."""
        if self.data_key is None:
            return key
        nonce = os.urandom(NONCE_LEN)
        return nonce + AESGCM(self.data_key).encrypt(nonce, key, _room_ad(room_id, epoch))

    def sealer(self, label: bytes) -> Sealer | None:
        """A :class:`Sealer` for one kind of blob; None for a home in the old format."""
        return None if self.data_key is None else Sealer(self.data_key, label)

    def open_room_key(self, room_id: bytes, epoch: int, stored: bytes) -> bytes:
        if len(stored) == ROOM_KEY_LEN:
            return stored  # old format, or a home being moved to the new one
        if len(stored) != SEALED_ROOM_KEY_LEN or self.data_key is None:
            raise UsageError("a room key in rooms.db does not match this identity (damaged?)")
        try:
            return AESGCM(self.data_key).decrypt(
                stored[:NONCE_LEN], stored[NONCE_LEN:], _room_ad(room_id, epoch)
            )
        except InvalidTag:
            raise UsageError(
                "a room key in rooms.db does not open with this identity's data key (was the "
                "identity replaced, or the file damaged?)"
            ) from None


class Sealer:
    """Seals blobs at rest (voice-message speech) under a key derived from the data key.

    Stored form: MAGIC + 12-byte nonce + AES-256-GCM ciphertext and tag; ``ad`` binds each
    blob to its place (room, message, piece), so blobs cannot be swapped between rows."""

    MAGIC = b"rlys"
    OVERHEAD = len(MAGIC) + NONCE_LEN + TAG_LEN

    def __init__(self, data_key: bytes, label: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        key = HKDF(hashes.SHA256(), 96, salt=b"relay/at-rest/v1", info=label).derive(data_key)
        self._aead = AESGCM(key[:32])
        self._siv = AESSIV(key[32:96])  # deterministic: for values that are looked up
        self._siv_key_for_names = hashlib.sha256(b"relay/names" + key[32:96]).digest()

    def name(self, value: str) -> str:
        """A stable pseudonym for a lookup key (HMAC-SHA256, hex): equal in, equal out."""
        return hmac.new(self._siv_key_for_names, value.encode(), hashlib.sha256).hexdigest()[:32]

    def seal_fixed(self, data: bytes, ad: bytes) -> bytes:
        """Deterministic sealing (AES-SIV): the same data gives the same blob, so it can be a
        primary key; it shows only whether two stored values are equal."""
        return self._siv.encrypt(bytes(data), [ad])

    def open_fixed(self, blob: bytes, ad: bytes) -> bytes:
        try:
            return self._siv.decrypt(bytes(blob), [ad])
        except InvalidTag:
            raise UsageError(
                "a stored value does not open with this identity's data key (was the identity "
                "replaced, or the file damaged?)"
            ) from None

    def __repr__(self) -> str:
        return "Sealer()"

    def seal(self, data: bytes, ad: bytes) -> bytes:
        if not data:
            return data  # an erased blob stays empty
        nonce = os.urandom(NONCE_LEN)
        return self.MAGIC + nonce + self._aead.encrypt(nonce, bytes(data), ad)

    def open(self, blob: bytes, ad: bytes) -> bytes:
        """The data; a blob stored before sealing existed is returned as it is."""
        blob = bytes(blob)
        if not blob.startswith(self.MAGIC) or len(blob) < self.OVERHEAD:
            return blob
        nonce = blob[len(self.MAGIC) : len(self.MAGIC) + NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, blob[len(self.MAGIC) + NONCE_LEN :], ad)
        except InvalidTag:
            raise UsageError(
                "a stored voice message does not open with this identity's data key (was the "
                "identity replaced, or the file damaged?)"
            ) from None


def _room_ad(room_id: bytes, epoch: int) -> bytes:
    return b"relay/room-key/v1" + room_id + epoch.to_bytes(4, "big")


def is_protected(blob: bytes) -> bool:
    """Whether an identity file needs a passphrase to open (without opening it)."""
    return blob.startswith(MAGIC) and len(blob) > len(MAGIC) and blob[len(MAGIC)] != PROTECT_NONE


def _duress_check(stretched: bytes) -> bytes:
    return hashlib.sha256(_DURESS_LABEL + stretched).digest()


def pack(
    identity: Identity,
    data_key: bytes,
    passphrase: str | None,
    params: KdfParams = KdfParams(),
    duress: bytes | None = None,
) -> bytes:
    """The identity file's bytes. ``duress`` is salt + check as :func:`duress_field` makes
    them (kept across passphrase changes); None draws random bytes (no duress passphrase)."""
    secret = identity.private_bytes() + data_key
    if passphrase is None:
        return MAGIC + bytes([PROTECT_NONE]) + secret
    check_new_passphrase(passphrase)
    salt = os.urandom(SALT_LEN)
    duress = duress if duress is not None else os.urandom(SALT_LEN + 32)
    nonce = os.urandom(NONCE_LEN)
    header = (
        MAGIC
        + bytes([PROTECT_ARGON2ID])
        + _PARAMS.pack(params.memory_kib, params.passes, params.lanes)
        + salt
        + duress
        + nonce
    )
    key = params.stretch(passphrase, salt)
    return header + AESGCM(key).encrypt(nonce, secret, header)


def duress_field(passphrase: str, params: KdfParams = KdfParams()) -> bytes:
    """Salt + check for a duress passphrase."""
    check_new_passphrase(passphrase)
    salt = os.urandom(SALT_LEN)
    return salt + _duress_check(params.stretch(passphrase, salt))


def check_new_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str) or not passphrase:
        raise UsageError(
            "a passphrase must not be empty (use --no-passphrase to store keys in clear)"
        )


@dataclass(frozen=True, slots=True)
class Parsed:
    protection: int
    params: KdfParams | None = None
    salt: bytes = b""
    duress: bytes = b""  # salt + check
    nonce: bytes = b""
    header: bytes = b""
    body: bytes = field(default=b"", repr=False)


_PROTECTED_LEN = len(MAGIC) + 1 + _PARAMS.size + SALT_LEN + SALT_LEN + 32 + NONCE_LEN


def parse(blob: bytes) -> Parsed:
    """Split an identity file (new format) into its fields; UsageError if it is not one."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise UsageError("not a relay identity file (wrong format or wrong size)")
    protection = blob[len(MAGIC)]
    if protection == PROTECT_NONE:
        if len(blob) != len(MAGIC) + 1 + _SECRET_LEN:
            raise UsageError("the identity file has the wrong size (damaged?)")
        return Parsed(PROTECT_NONE, body=blob[len(MAGIC) + 1 :])
    if protection != PROTECT_ARGON2ID or len(blob) != _PROTECTED_LEN + _SECRET_LEN + TAG_LEN:
        raise UsageError("the identity file has an unknown format or the wrong size (damaged?)")
    pos = len(MAGIC) + 1
    params = KdfParams(*_PARAMS.unpack_from(blob, pos))
    params.check()
    pos += _PARAMS.size
    salt = blob[pos : pos + SALT_LEN]
    pos += SALT_LEN
    duress = blob[pos : pos + SALT_LEN + 32]
    pos += SALT_LEN + 32
    nonce = blob[pos : pos + NONCE_LEN]
    pos += NONCE_LEN
    return Parsed(PROTECT_ARGON2ID, params, salt, duress, nonce, blob[:pos], blob[pos:])


def unpack(blob: bytes, passphrase: str | None) -> Keys:
    """Open an identity file. Wrong passphrase: :class:`WrongPassphrase`; the duress one:
    :class:`DuressPassphrase` (the caller wipes the home)."""
    if len(blob) == LEGACY_LEN and not blob.startswith(MAGIC):
        return Keys(Identity.from_private_bytes(blob), None, protected=False, legacy=True)
    p = parse(blob)
    if p.protection == PROTECT_NONE:
        return _keys(p.body, protected=False)
    if passphrase is None:
        raise UsageError("this identity is locked with a passphrase")
    assert p.params is not None
    key = p.params.stretch(passphrase, p.salt)
    try:
        secret = AESGCM(key).decrypt(p.nonce, p.body, p.header)
    except InvalidTag:
        duress_salt, check = p.duress[:SALT_LEN], p.duress[SALT_LEN:]
        if hmac.compare_digest(_duress_check(p.params.stretch(passphrase, duress_salt)), check):
            raise DuressPassphrase() from None
        raise WrongPassphrase() from None
    return _keys(secret, protected=True)


def _keys(secret: bytes, *, protected: bool) -> Keys:
    return Keys(Identity.from_private_bytes(secret[:64]), secret[64:], protected=protected)


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_LEN)
