"""The sans-I/O protocol core: packet format, crypto, replay protection, sessions."""

from relay.core.crypto import RoomKeys, new_salt, random_room_key, room_key_from_passphrase
from relay.core.events import ClipData, ControlMessage, Event, Rejected, VoiceFrames
from relay.core.session import CounterSource, Receiver, Sender
from relay.core.wire import VOICE_PACKET_OVERHEAD, ControlKind, PacketType

__all__ = [
    "VOICE_PACKET_OVERHEAD",
    "ClipData",
    "ControlKind",
    "ControlMessage",
    "CounterSource",
    "Event",
    "PacketType",
    "Receiver",
    "Rejected",
    "RoomKeys",
    "Sender",
    "VoiceFrames",
    "new_salt",
    "random_room_key",
    "room_key_from_passphrase",
]
