"""The voice path end to end, in-process: speech in, sealed packets over the sim, speech out."""

import asyncio
import json
import time

import numpy as np
import pytest

from relay.core import Receiver, RoomKeys, Sender, random_room_key
from relay.demo.voice import DemoSettings, bundled_sample, run_demo
from relay.errors import UsageError
from relay.links.sim.channel import Ether
from relay.radio.profiles import preset
from relay.runtime.clock import run
from relay.runtime.voice import Listener, talk
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import mode_by_name

SHORT = bundled_sample("forig.wav")  # 1.6 s


def settings(**kw):
    base = {"profile": preset("SHORT_FAST"), "mode": mode_by_name("1600")}
    base.update(kw)
    return DemoSettings(**base)


def _envelope(pcm, frame=160):
    n = len(pcm) // frame
    return np.sqrt((pcm[: n * frame].astype(float).reshape(n, frame) ** 2).mean(axis=1))


def test_lossless_demo_delivers_every_frame_and_sounds_like_the_input(tmp_path):
    report = run_demo(settings(), bundled_sample(), tmp_path / "o.wav")
    assert report["packets_lost"] == 0 and report["frames_concealed"] == 0
    assert report["packets_received"] == report["packets_sent"]
    assert report["over_complete"]
    assert report["latency_ms"]["p50"] < 300  # the DESIGN goal on SHORT_FAST
    sent, heard = read_audio(bundled_sample()), read_audio(tmp_path / "o.wav")
    assert len(heard) == len(sent)
    # Codec2 rebuilds phase: compare loudness envelopes, allowing for the codec delay.
    a, b = _envelope(sent), _envelope(heard)
    best = max(np.corrcoef(a[: len(a) - s], b[s:])[0, 1] for s in range(4))
    assert best > 0.85
    json.dumps(report)  # serialisable


def test_same_seed_same_result_other_seed_other_losses(tmp_path):
    r1 = run_demo(settings(loss=0.2, seed=4), SHORT, tmp_path / "a.wav")
    r2 = run_demo(settings(loss=0.2, seed=4), SHORT, tmp_path / "b.wav")
    r3 = run_demo(settings(loss=0.2, seed=5), SHORT, tmp_path / "c.wav")
    keys = ("packets_lost", "frames_concealed", "airtime_seconds", "latency_ms")
    assert [r1[k] for k in keys] == [r2[k] for k in keys]
    assert (
        r1["packets_lost"] != r3["packets_lost"] or r1["frames_concealed"] != r3["frames_concealed"]
    )


def test_burst_loss_and_all_lost(tmp_path):
    r = run_demo(settings(loss=0.2, burst=4, seed=2), bundled_sample(), tmp_path / "a.wav")
    assert r["packets_lost"] > 0 and r["frames_concealed"] > 0
    r = run_demo(settings(loss=1.0), SHORT, tmp_path / "b.wav")
    assert r["packets_received"] == 0 and r["frames_concealed"] == r["frames_sent"]
    assert len(read_audio(tmp_path / "b.wav")) > 0  # silence of the right length


def test_long_fast_does_not_fit_and_says_so(tmp_path):
    r = run_demo(settings(profile=preset("LONG_FAST")), SHORT, tmp_path / "a.wav")
    assert r["fits_live"] is False
    assert r["channel_occupancy"] > 1.0  # more airtime than speech time
    assert r["latency_ms"]["max"] > 1000


def test_every_mode_runs(tmp_path):
    for name in ("3200", "2400", "1600", "1400", "1300", "1200", "700C"):
        r = run_demo(settings(mode=mode_by_name(name)), SHORT, tmp_path / f"{name}.wav")
        assert r["packets_lost"] == 0 and r["frames_concealed"] == 0, name


def test_duty_cycle_queues_transmissions(tmp_path):
    limited = preset("SHORT_FAST").with_duty_cycle(0.01)
    r = run_demo(settings(profile=limited), SHORT, tmp_path / "a.wav")
    assert r["fits_live"] is False
    assert r["latency_ms"]["max"] > 1000  # the budget made the speaker wait


def test_realtime_mode_takes_real_time(tmp_path):
    t = time.monotonic()
    r = run_demo(settings(realtime=True), SHORT, tmp_path / "a.wav")
    elapsed = time.monotonic() - t
    assert elapsed >= 1.6  # the speech is spoken in real time
    assert r["frames_concealed"] == 0


def test_frames_over_the_mtu_are_refused():
    with pytest.raises(UsageError, match="MTU"):
        settings(frames_per_packet=100)


SESSION = bytes(range(8))  # the speaker's session, told to the plain receiver


def test_listener_rejects_injected_and_replayed_packets_and_ends_over_without_end_marker():
    async def scenario():
        loop = asyncio.get_running_loop()
        ether = Ether(preset("SHORT_FAST"), seed=1)
        speaker, listener_link, attacker = ether.attach(), ether.attach(), ether.attach()
        keys = RoomKeys(random_room_key())
        receiver = Receiver(keys)
        receiver.add_sender(b"speaker", SESSION)
        listener = Listener(receiver, loop.time, idle_timeout=1.0)
        task = asyncio.create_task(listener.run(listener_link))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            store = CounterStore(f"{tmp}/c.db")
            sender = Sender(keys, b"speaker", store, session=SESSION)
            mode = mode_by_name("1600")
            frames = Encoder(mode).encode(read_audio(SHORT))
            first = sender.voice(mode, 0, frames[:4], loop.time())
            await speaker.send(first)
            await speaker.drain()
            await attacker.send(first)  # a recorded packet, replayed
            forged = bytearray(sender.voice(mode, 4, frames[4:8], loop.time()))
            forged[-1] ^= 0x55
            await attacker.send(bytes(forged))  # tampered in flight
            await attacker.send(b"\x00" * 40)  # garbage
            await attacker.drain()
            await asyncio.sleep(2.0)  # no end-of-over: the idle timeout ends it
            store.close()
        await listener_link.close()
        await task
        return listener, receiver

    listener, receiver = run(scenario())
    assert receiver.accepted == 1
    assert receiver.rejected["replay"] == 1
    assert sum(receiver.rejected.values()) == 3
    assert len(listener.overs) == 1
    over = listener.overs[0]
    assert not over.complete and len(over.play_times) == 4


def test_talk_sends_one_packet_per_batch_and_an_end_marker():
    async def scenario():
        ether = Ether(preset("SHORT_FAST"))
        a, b = ether.attach(), ether.attach()
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            store = CounterStore(f"{tmp}/c.db")
            sender = Sender(RoomKeys(bytes(32)), b"x", store)
            mode = mode_by_name("1600")
            result = await talk(a, sender, mode, [bytes(8)] * 10, 4, lambda: 0.0)
            await a.drain()
            store.close()
        received = [await b.recv() for _ in range(4)]
        return result, received

    result, received = run(scenario())
    assert result.packets_sent == 4  # 4 + 4 + 2 frames, then the end marker
    # 18 B a voice packet (2 of them the live trailer, unused outside rooms); end marker:
    # session, kind, 4-byte count
    assert result.datagram_sizes == [50, 50, 34, 28]
    assert [len(d.data) for d in received] == [50, 50, 34, 28]


def test_fec_and_dtx_in_the_demo(tmp_path):
    lossy = run_demo(settings(loss=0.15, seed=4), bundled_sample(), tmp_path / "f.wav")
    assert lossy["fec"] is True  # the planner's choice for a lossy link
    assert lossy["packets_lost"] > 0 and lossy["frames_from_fec"] > 0
    assert lossy["overhead_bytes_per_packet"] == 18  # the first packet is plain voice
    off = run_demo(settings(loss=0.15, seed=4, fec=False), bundled_sample(), tmp_path / "n.wav")
    assert off["fec"] is False and off["frames_from_fec"] == 0
    assert off["air_bytes"] < lossy["air_bytes"]
    dtx = run_demo(settings(dtx=True), bundled_sample(), tmp_path / "d.wav")
    assert dtx["dtx"] and dtx["frames_skipped"] > 0 and dtx["frames_concealed"] == 0
    assert len(read_audio(tmp_path / "d.wav")) == len(read_audio(bundled_sample()))
    with pytest.raises(UsageError, match="FEC pairing"):
        settings(mode=mode_by_name("3200"), fec=True)


def test_room_demo_with_fec_and_dtx():
    """`relay demo room --fec --dtx`: copies fill losses, pauses are skipped, all still safe."""
    from click.testing import CliRunner

    from relay.cli.main import cli

    def room(*args: str):
        return CliRunner().invoke(
            cli, ["demo", "room", "--speakers", "2", "--listeners", "3", *args]
        )

    result = room("--loss", "0.1", "--fec", "--dtx", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["fec"] and r["dtx"] and r["frames_from_fec"] > 0 and r["frames_skipped"] > 0
    assert r["overs_delivered"] == r["overs"] == 3 and r["removed_member_decrypts"] == 0
    assert r["floor_violations_dropped"] > 0 and r["forged_moderation_rejected"] > 0
    plain = json.loads(room("--no-fec", "--no-dtx", "--json").stdout)
    assert not plain["fec"] and plain["frames_skipped"] == plain["frames_from_fec"] == 0
    assert plain["overs_verified"] == 3
    refused = room("--mode", "3200", "--fec")
    assert refused.exit_code == 2 and "no FEC pairing" in refused.stderr


def test_room_demo_reports_the_airtime_of_each_key_rotation_and_of_beacons():
    """A removal from a room of 30 takes well under the 2 s budget meant for 100 (key tree)."""
    from relay.demo.room import RoomDemoSettings, run_room_demo
    from relay.radio.profiles import preset
    from relay.voice.modes import mode_by_name

    r = run_room_demo(
        RoomDemoSettings(preset("SHORT_FAST"), mode_by_name("1600"), speakers=2, listeners=30)
    )
    assert r["removed_member_decrypts"] == 0 and r["key_rotations_received"] == 29
    (rekey,) = r["rekey_airtime_seconds"]  # the removal and three copies of the rekey
    assert 0.5 < rekey < 2.0
    assert r["beacons"] > 0 and r["beacon_airtime_seconds"] > 0
