"""The bridge envelope: a sealed packet with its hop count and the gateway that published it.

The relay wire format has no hop count (every byte of it is authenticated by the room key,
which a bridge does not hold), so bridges keep their own. Between an MQTT link and the
bridge core a packet travels as these bytes::

    byte 0      envelope version (1)
    byte 1      hops: how many bridges republished it after the one that first published it
    bytes 2-5   gateway id of the bridge that published this copy (big-endian)
    ...         the sealed relay packet, untouched

On the broker the same two facts ride in the v2 batch payload (:mod:`relay.links.mqtt`):
the batch's origin is the gateway id, each record carries its hops. So the hop limit holds
across brokers, broker bridges and clusters, and internet-only members still read the
packets (they publish with hop 0). A bridge drops envelopes carrying its own gateway id (a
broker echoing its own publish) and envelopes whose hops reached its hop limit. Parsing
raises only :class:`PacketError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.wire import MAX_PACKET_LEN
from relay.errors import PacketError, UsageError

ENVELOPE_VERSION = 1
ENVELOPE_HEADER_LEN = 6
MAX_HOPS = 255
GATEWAY_LIMIT = 1 << 32


@dataclass(frozen=True, slots=True)
class Envelope:
    """One enveloped packet as carried on MQTT."""

    hops: int
    gateway: int
    packet: bytes

    def pack(self) -> bytes:
        """The envelope's bytes; UsageError for values that cannot be encoded."""
        if not 0 <= self.hops <= MAX_HOPS:
            raise UsageError(f"envelope hops {self.hops} out of range 0..{MAX_HOPS}")
        if not 0 <= self.gateway < GATEWAY_LIMIT:
            raise UsageError(f"gateway id {self.gateway} out of range 0..{GATEWAY_LIMIT - 1}")
        if not 1 <= len(self.packet) <= MAX_PACKET_LEN:
            raise UsageError(f"packet of {len(self.packet)} bytes cannot be enveloped")
        head = bytes((ENVELOPE_VERSION, self.hops)) + self.gateway.to_bytes(4, "big")
        return head + bytes(self.packet)

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Parse bytes that came from the broker; PacketError if they are not an envelope."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise PacketError("envelope", f"envelope must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) <= ENVELOPE_HEADER_LEN:
            raise PacketError("envelope", f"envelope of {len(data)} bytes carries no packet")
        if len(data) > ENVELOPE_HEADER_LEN + MAX_PACKET_LEN:
            raise PacketError("envelope", f"envelope of {len(data)} bytes is too long")
        if data[0] != ENVELOPE_VERSION:
            raise PacketError("envelope_version", f"envelope version {data[0]} not supported")
        return cls(
            hops=data[1],
            gateway=int.from_bytes(data[2:6], "big"),
            packet=data[ENVELOPE_HEADER_LEN:],
        )
