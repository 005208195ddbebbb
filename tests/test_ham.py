"""Amateur-band mode: signed, never encrypted, the callsign in every packet, never mixed."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import wire
from relay.core.crypto import RoomKeys
from relay.core.ham import (
    HamEnd,
    HamIntro,
    HamReceiver,
    HamRejected,
    HamSender,
    HamVoice,
    is_ham,
    voice_overhead,
)
from relay.core.identity import Identity
from relay.core.room import Room
from relay.core.session import Sender
from relay.errors import UsageError
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
OP = Identity.generate()
FRAMES = [bytes([i]) * MODE.bytes_per_frame for i in range(5)]


def sender(callsign: str = "n0call", who: Identity = OP) -> HamSender:
    return HamSender(who, callsign, "net", MemoryCounters())


def test_ham_packets_verify_and_carry_the_callsign_in_clear():
    tx, rx = sender(), HamReceiver("net")
    intro, voice, end = tx.intro(), tx.voice(MODE, 0, FRAMES), tx.end(5)
    for packet in (intro, voice, end):
        assert is_ham(packet) and b"N0CALL" in packet  # upper case, as sent on the air
    assert b"".join(FRAMES) in voice  # nothing is encrypted: anyone can listen
    assert len(voice) - len(b"".join(FRAMES)) == voice_overhead("N0CALL") == 80
    got = [rx.receive(p, 1.0) for p in (intro, voice, end)]
    assert got[0] == HamIntro("N0CALL", OP.identity, 1.0)
    assert isinstance(got[1], HamVoice) and got[1].frames == FRAMES
    assert (got[1].callsign, got[1].signing_key, got[1].mode) == ("N0CALL", OP.identity, MODE)
    assert got[2] == HamEnd("N0CALL", OP.identity, 5, 1.0)
    assert rx.stations == {"N0CALL": OP.identity} and not rx.rejected


def test_every_altered_byte_is_refused_and_nothing_moves():
    tx, rx = sender(), HamReceiver("net")
    rx.receive(tx.intro(), 0.0)
    voice = tx.voice(MODE, 0, FRAMES)
    for i in range(len(voice)):
        bad = bytearray(voice)
        bad[i] ^= 0x01
        assert isinstance(rx.receive(bytes(bad), 0.0), HamRejected), i
    assert isinstance(rx.receive(voice, 0.0), HamVoice)  # the window did not move
    replays = rx.rejected["replay"]
    assert isinstance(rx.receive(voice, 0.0), HamRejected)  # but a replay is refused
    assert rx.rejected["replay"] == replays + 1


def test_callsigns_are_bound_to_keys_on_first_use():
    rx = HamReceiver("net")
    rx.receive(sender().intro(), 0.0)
    thief = sender(who=Identity.generate())  # claims the same callsign with another key
    assert rx.receive(thief.intro(), 0.0).reason == "callsign_changed"
    assert rx.receive(thief.voice(MODE, 0, FRAMES), 0.0).reason in ("forged", "callsign_changed")
    other = sender("VK2ABC-7")  # the known key under another callsign
    assert rx.receive(other.intro(), 0.0).reason == "callsign_changed"
    stranger = sender("W1AW", Identity.generate())
    assert rx.receive(stranger.voice(MODE, 0, FRAMES), 0.0).reason == "unknown_sender"
    assert rx.stations == {"N0CALL": OP.identity}


def test_never_mixed_with_encrypted_traffic():
    """An encrypted room refuses ham packets (counted); a ham receiver refuses encrypted."""
    key, room_id = os.urandom(32), os.urandom(8)
    mod = Identity.generate()
    room = Room(room_id, key, 0, [mod.public], Identity.generate(), MemoryCounters())
    tx = sender()
    for packet in (tx.intro(), tx.voice(MODE, 0, FRAMES), tx.end(5)):
        (event,) = room.receive(packet, 1.0)
        assert event.reason == "ham_refused"
    assert room.stats["ham_refused"] == 3
    encrypted = Sender(RoomKeys(key), mod.identity, MemoryCounters()).voice(MODE, 0, FRAMES, 1.0)
    rx = HamReceiver("net")
    assert rx.receive(encrypted, 1.0).reason == "encrypted"
    assert rx.rejected["encrypted"] == 1 and rx.accepted == 0


def test_other_rooms_and_bad_callsigns():
    assert HamReceiver("other").receive(sender().intro(), 0.0).reason == "other_room"
    for bad in ("", "AB", "NOCALL", "N0 CALL", "N0CALL-123456", "ÄB1"):
        with pytest.raises(UsageError, match="callsign"):
            sender(bad)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_are_refused_and_counted(blob, as_ham):
    rx = HamReceiver("net")
    if as_ham and blob:
        blob = bytes([(wire.VERSION << 6) | (wire.PacketType.HAM << 3)]) + blob
    event = rx.receive(blob, 0.0)  # never raises: refused and counted
    assert isinstance(event, HamRejected) and sum(rx.rejected.values()) == 1
