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


# --------------------------------------------------------------------- on a link
def test_a_ham_over_on_a_shared_channel_beside_encrypted_traffic():
    """A ham operator and an encrypted member share one simulated channel: the ham listener
    plays the operator's whole over, verified, and refuses (counts) the encrypted packets."""
    import asyncio

    from relay.links.url import open_link
    from relay.runtime.clock import run
    from relay.runtime.ham import ham_frames_per_packet, ham_listen, ham_over, ham_send

    frames = [bytes([i % 251]) * MODE.bytes_per_frame for i in range(60)]
    key = os.urandom(32)
    crypto = Sender(RoomKeys(key), Identity.generate().identity, MemoryCounters())

    async def main():
        url = "sim://hamnet?preset=SHORT_FAST&node="
        talk, member, ear = (open_link(url + n) for n in ("op", "member", "ear"))
        async with talk, member, ear:
            fpp = ham_frames_per_packet(MODE, "N0CALL", talk.mtu, 10)
            listening = asyncio.create_task(ham_listen(ear, HamReceiver("net"), 30.0))
            await ham_send(talk, ham_over(sender(), MODE, frames, fpp))
            for i in range(3):
                await member.send(crypto.voice(MODE, i, FRAMES, 0.0))
            return await listening, fpp

    heard, fpp = run(main())
    assert fpp == 10
    assert [f for _, f in sorted(heard.frames["N0CALL"])] == frames
    assert heard.overs_ended["N0CALL"] == 1 and heard.rejected["replay"] == 1  # 2nd end copy
    assert heard.rejected["encrypted"] == 3


def test_the_command_line_warns_that_it_identifies_the_operator(tmp_path):
    from click.testing import CliRunner

    from relay.cli.main import cli
    from relay.demo.voice import bundled_sample

    home = str(tmp_path / "op")
    env = {"RELAY_HOME": None, "RELAY_PASSPHRASE": "tests"}
    runner = CliRunner()
    assert runner.invoke(cli, ["id", "init", "--home", home], env=env).exit_code == 0
    args = ["ham", "talk", "net", "--callsign", "n0call", "--link", "sim://alone", "--input",
            str(bundled_sample("forig.wav")), "--home", home, "--json"]  # fmt: skip
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "NOTHING is encrypted" in result.stderr and "N0CALL" in result.stderr
    assert "identifies you" in result.stderr
    import json

    doc = json.loads(result.stdout)
    assert doc["encrypted"] is False and doc["overhead_bytes_per_voice_packet"] == 80
    bad = runner.invoke(cli, [*args[:3], "--callsign", "nope", *args[5:]], env=env)
    assert bad.exit_code == 2 and "not a callsign" in bad.stderr


def test_a_bridge_puts_only_ham_packets_on_an_amateur_band_link():
    """Cross-band: an encrypted island, an amateur-band link and MQTT. Encrypted packets
    never go onto the ham link (counted); ham packets go everywhere; encrypted packets heard
    on the ham band are not carried off it (counted)."""
    from relay.bridge.core import BridgeCore, LinkKind

    core = BridgeCore(1)
    core.add_link("lora", LinkKind.RADIO)
    core.add_link("2m", LinkKind.RADIO, ham=True)
    core.add_link("mqtt", LinkKind.MQTT)
    crypto = Sender(RoomKeys(os.urandom(32)), OP.identity, MemoryCounters())
    enc = core.receive("lora", crypto.voice(MODE, 0, FRAMES, 0.0), 0.0)
    assert [s.link for s in enc.sends] == ["mqtt"]
    assert core.stats.dropped["encrypted_to_ham_link"] == 1
    ham = core.receive("lora", sender().voice(MODE, 0, FRAMES), 0.0)
    assert sorted(s.link for s in ham.sends) == ["2m", "mqtt"]
    heard_on_2m = core.receive("2m", crypto.voice(MODE, 1, FRAMES, 0.0), 0.0)
    assert heard_on_2m.sends == [] and heard_on_2m.dropped == "encrypted_on_ham_link"
    with pytest.raises(UsageError, match="amateur"):
        core.add_link("mqtt2", LinkKind.MQTT, ham=True)


def test_repeat_with_a_ham_link_says_so():
    from click.testing import CliRunner

    from relay.cli.main import cli

    args = ["repeat", "--link", "sim://hl_a", "--ham-link", "sim://hl_b", "--duration", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--json"], env={"RELAY_HOME": None})
    assert result.exit_code == 0, result.output
    assert "--ham-link" in result.stderr and "callsign" in result.stderr


def test_a_flood_of_minted_stations_is_bounded():
    from relay.core.ham import MAX_STATIONS

    rx = HamReceiver("net")
    for i in range(MAX_STATIONS + 5):
        rx.receive(sender(f"N{i}CALL", Identity.generate()).intro(), 0.0)
    assert len(rx.stations) == MAX_STATIONS and rx.rejected["too_many_stations"] == 5
