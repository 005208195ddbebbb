"""What exactly a member signs: one function, so sender and receiver can never disagree.

A signature covers a domain label, the room key's id (binding it to one room and key epoch),
the signer's identity, the packet's clear header (type, hint, short id and counter: a signed
body cannot be re-wrapped into another packet) and the body.
"""

from __future__ import annotations

from relay.core.identity import SIGNATURE_LEN

DOMAIN = b"relay/v1 signed"


def signed_message(key_id: str, signer: bytes, associated: bytes, kind: int, body: bytes) -> bytes:
    return b"".join(
        (
            DOMAIN,
            bytes.fromhex(key_id),
            len(signer).to_bytes(1, "big"),
            signer,
            associated,
            bytes((kind,)),
            body,
        )
    )


def split_signature(payload: bytes) -> tuple[bytes, bytes] | None:
    """(body, signature) of a signed payload, or None if it is too short to carry one."""
    if len(payload) < SIGNATURE_LEN:
        return None
    return payload[:-SIGNATURE_LEN], payload[-SIGNATURE_LEN:]
