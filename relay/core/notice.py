"""Relay notices: a bridge telling a room, signed and in the clear, why an over did not cross it.

A bridge is usually not a room member: it cannot read or seal room packets. Yet a speaker on
the internet side whose over was refused by a radio island's airtime budget should learn that
it did not go out, instead of talking into the void. So the bridge sends a small notice that
needs no room key::

    byte 0      version:2 | type:3 (NOTICE) | sub:3 (the reason)
    byte 1      room hint of the refused over
    bytes 2-3   the speaker's short id          (both already in the clear on the over's packets)
    bytes 4-6   counter of the over's first packet the bridge saw
    bytes 7-8   packets of the over not forwarded (so far)
    bytes 9-12  issued at (UNIX seconds)
    13-76       the bridge's public identity (Ed25519 and X25519 keys: its fingerprint)
    77-140      Ed25519 signature over a domain label and bytes 0-76

It reveals nothing an eavesdropper did not already see (the over's hint and short id, and
that it stopped at this bridge). Anyone can sign a notice, so it is information, not
authority: a member shows it with the bridge's fingerprint and never acts on it (the floor,
keys and the over's own verification are untouched). 141 bytes, sent towards the speaker,
where airtime is cheap, once per refused over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.core.identity import KEY_LEN, SIGNATURE_LEN, Identity, PublicIdentity
from relay.core.wire import PacketType
from relay.errors import PacketError, UsageError

NOTICE_TYPE = PacketType.NOTICE
VERSION = 1
DOMAIN = b"relay/v1 relay notice"
BODY_LEN = 13
NOTICE_LEN = BODY_LEN + 2 * KEY_LEN + SIGNATURE_LEN  # 141
STALE_NOTICE = 600.0  # seconds: an older notice (a recording played back) is not shown


class NoticeReason(enum.IntEnum):
    AIRTIME = 1  # the radio's airtime or duty-cycle budget had no room for the over
    CUT = 2  # the over outgrew the budget it was admitted with and was cut short
    TOO_BIG = 3  # a packet larger than the radio's MTU


REASON_TEXT = {
    NoticeReason.AIRTIME: "the radio's airtime budget had no room for it",
    NoticeReason.CUT: "it outgrew the radio's airtime budget and was cut short",
    NoticeReason.TOO_BIG: "its packets are larger than the radio can carry",
}


@dataclass(frozen=True, slots=True)
class RelayNotice:
    reason: NoticeReason
    hint: int
    speaker: int  # short id
    first_counter: int
    packets: int
    issued_at: int
    relay: PublicIdentity  # the bridge that refused it

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("hint", self.hint, 256),
            ("speaker", self.speaker, 1 << 16),
            ("first_counter", self.first_counter, 1 << 24),
            ("packets", self.packets, 1 << 16),
            ("issued_at", self.issued_at, 1 << 32),
        ):
            if not 0 <= value < limit:
                raise UsageError(f"notice field {name}={value} out of range 0..{limit - 1}")
        if not isinstance(self.relay, PublicIdentity):
            raise UsageError("a notice names the relay by its public identity")

    @property
    def text(self) -> str:
        """What a member is shown."""
        return (
            f"relay {self.relay.fingerprint} is not forwarding the over by {self.speaker:04x} "
            f"onto its radio: {REASON_TEXT[self.reason]}"
        )

    def _body(self) -> bytes:
        return (
            bytes(
                (
                    (VERSION << 6) | (NOTICE_TYPE << 3) | int(self.reason),
                    self.hint,
                    self.speaker >> 8,
                    self.speaker & 0xFF,
                )
            )
            + self.first_counter.to_bytes(3, "big")
            + self.packets.to_bytes(2, "big")
            + self.issued_at.to_bytes(4, "big")
        )


def build_notice(signer: Identity, notice: RelayNotice) -> bytes:
    """The signed notice packet; ``notice.relay`` must be the signer."""
    if notice.relay != signer.public:
        raise UsageError("a relay signs only notices in its own name")
    relay = notice.relay
    signed = notice._body() + relay.signing_key + relay.agreement_key
    return signed + signer.sign(DOMAIN + signed)


def is_notice(packet: bytes) -> bool:
    """Whether byte 0 names a notice (cheap: for routing before parsing)."""
    return len(packet) > 0 and (packet[0] >> 3) & 0x07 == NOTICE_TYPE and packet[0] >> 6 == VERSION


def parse_notice(packet: bytes, now: float | None = None) -> RelayNotice:
    """A verified notice, or PacketError (malformed, forged or stale)."""
    if len(packet) != NOTICE_LEN:
        raise PacketError("malformed", f"a relay notice is {NOTICE_LEN} bytes, not {len(packet)}")
    if not is_notice(packet):
        raise PacketError("malformed", "not a relay notice")
    try:
        reason = NoticeReason(packet[0] & 0x07)
    except ValueError:
        raise PacketError("malformed", f"unknown notice reason {packet[0] & 0x07}") from None
    signed, signature = bytes(packet[:-SIGNATURE_LEN]), bytes(packet[-SIGNATURE_LEN:])
    relay = PublicIdentity(signed[BODY_LEN : BODY_LEN + KEY_LEN], signed[BODY_LEN + KEY_LEN :])
    if not relay.verify(signature, DOMAIN + signed):
        raise PacketError("forged", "relay notice signature does not verify")
    notice = RelayNotice(
        reason,
        hint=signed[1],
        speaker=int.from_bytes(signed[2:4], "big"),
        first_counter=int.from_bytes(signed[4:7], "big"),
        packets=int.from_bytes(signed[7:9], "big"),
        issued_at=int.from_bytes(signed[9:13], "big"),
        relay=relay,
    )
    if now is not None and abs(now - notice.issued_at) > STALE_NOTICE:
        raise PacketError("stale", "relay notice issued too long ago (or in the future)")
    return notice
