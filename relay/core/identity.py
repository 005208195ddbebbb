"""Personal identities: an Ed25519 key to sign with and an X25519 key to receive room keys.

The Ed25519 public key *is* the member's identity everywhere (per-sender packet keys, floor
grants, over signatures). The X25519 key lets a moderator send that member a room key (an
invite made ``--for`` them, or a new key after someone is removed) that nobody else can open.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from relay.errors import UsageError

PUBLIC_PREFIX = "relayid1:"
SIGNATURE_LEN = 64
KEY_LEN = 32


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What others know of a member: two public keys."""

    signing_key: bytes  # Ed25519, 32 bytes: the member's identity
    agreement_key: bytes  # X25519, 32 bytes: for receiving room keys

    def __post_init__(self) -> None:
        if len(self.signing_key) != KEY_LEN or len(self.agreement_key) != KEY_LEN:
            raise UsageError("a public identity is two 32-byte keys")

    @property
    def identity(self) -> bytes:
        """The bytes sessions use as the sender identity."""
        return self.signing_key

    @property
    def fingerprint(self) -> str:
        """A short string people can read to each other to compare identities."""
        digest = hashlib.sha256(b"relay/fingerprint" + self.signing_key + self.agreement_key)
        text = base64.b32encode(digest.digest()[:10]).decode().lower()
        return "-".join(text[i : i + 4] for i in range(0, 16, 4))

    def encode(self) -> str:
        """The shareable public id: ``relayid1:`` + base32 of both keys."""
        raw = self.signing_key + self.agreement_key
        return PUBLIC_PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()

    @classmethod
    def decode(cls, text: str) -> PublicIdentity:
        text = text.strip()
        if not text.lower().startswith(PUBLIC_PREFIX):
            raise UsageError(f"a public id starts with {PUBLIC_PREFIX} (see `relay id show`)")
        body = text[len(PUBLIC_PREFIX) :].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise UsageError("that public id is not valid base32 (was it cut short?)") from None
        if len(raw) != 2 * KEY_LEN:
            raise UsageError("that public id has the wrong length (was it cut short?)")
        return cls(raw[:KEY_LEN], raw[KEY_LEN:])

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def verify(signing_key: bytes, signature: bytes, message: bytes) -> bool:
    """Check an Ed25519 signature by a bare 32-byte public key; never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(signing_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def valid_agreement_key(key: bytes) -> bool:
    """False for keys no secret can be agreed with (wrong length, low order points)."""
    if len(key) != KEY_LEN:
        return False
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(key))
    except ValueError:
        return False
    return True


class Identity:
    """A member's private keys. Never printed, never logged."""

    __slots__ = ("_agreement", "_signing", "public")

    def __init__(self, signing: Ed25519PrivateKey, agreement: X25519PrivateKey) -> None:
        self._signing = signing
        self._agreement = agreement
        self.public = PublicIdentity(
            _raw_public(signing.public_key()), _raw_public(agreement.public_key())
        )

    def __repr__(self) -> str:
        return f"Identity({self.public.fingerprint})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        if len(raw) != 2 * KEY_LEN:
            raise UsageError("an identity file holds two 32-byte private keys")
        return cls(
            Ed25519PrivateKey.from_private_bytes(raw[:KEY_LEN]),
            X25519PrivateKey.from_private_bytes(raw[KEY_LEN:]),
        )

    def private_bytes(self) -> bytes:
        """Both private keys, for the identity file (written 0600 by the store)."""
        return _raw_private(self._signing) + _raw_private(self._agreement)

    @property
    def identity(self) -> bytes:
        return self.public.signing_key

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def agree(self, peer_agreement_key: bytes) -> bytes:
        """X25519 shared secret with a peer's public agreement key."""
        try:
            peer = X25519PublicKey.from_public_bytes(peer_agreement_key)
            return self._agreement.exchange(peer)
        except ValueError:
            raise UsageError("not a valid X25519 public key") from None
