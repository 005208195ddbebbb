"""Sealing a secret to one member's X25519 key (invites made --for them, new room keys).

Ephemeral-static X25519, HKDF-SHA256 bound to the context, both public keys and the ephemeral
key, then AES-256-CCM with a 16-byte tag. Each derived key seals exactly one message, so the
fixed nonce is never reused. One ephemeral key may serve many recipients (a rekey): every
recipient's key differs because the static key differs.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.core.identity import Identity
from relay.errors import PacketError, UsageError

EPHEMERAL_LEN = 32
SEAL_TAG_LEN = 16
_NONCE = bytes(13)


def _key(shared: bytes, context: bytes, ephemeral: bytes, recipient: bytes) -> AESCCM:
    if shared == bytes(32):
        raise PacketError("auth", "degenerate X25519 key")
    info = b"relay/v1 sealed" + len(context).to_bytes(2, "big") + context + ephemeral + recipient
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"relay/v1", info=info).derive(shared)
    return AESCCM(key, tag_length=SEAL_TAG_LEN)


def new_ephemeral() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def ephemeral_public(ephemeral: X25519PrivateKey) -> bytes:
    return ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal_for(
    recipient_agreement_key: bytes,
    plaintext: bytes,
    context: bytes,
    ephemeral: X25519PrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """(ephemeral public key, ciphertext + tag) that only the recipient can open."""
    ephemeral = ephemeral or new_ephemeral()
    eph_pub = ephemeral_public(ephemeral)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_agreement_key))
    except ValueError:
        raise UsageError("not a valid X25519 public key") from None
    aead = _key(shared, context, eph_pub, recipient_agreement_key)
    return eph_pub, aead.encrypt(_NONCE, plaintext, context)


def open_sealed(identity: Identity, ephemeral: bytes, sealed: bytes, context: bytes) -> bytes:
    """Open what :func:`seal_for` made for ``identity``; PacketError if it is not for us."""
    if len(ephemeral) != EPHEMERAL_LEN or len(sealed) < SEAL_TAG_LEN:
        raise PacketError("malformed", "sealed secret is truncated")
    try:
        shared = identity.agree(ephemeral)
    except UsageError:
        raise PacketError("malformed", "sealed secret has an invalid ephemeral key") from None
    aead = _key(shared, context, ephemeral, identity.public.agreement_key)
    try:
        return aead.decrypt(_NONCE, sealed, context)
    except (InvalidTag, ValueError):
        raise PacketError("auth", "sealed secret is not for this identity or was altered") from None
