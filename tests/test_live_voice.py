"""Live talk with FEC and DTX: a (fake) microphone into a real room over the simulated radio.

There is no sound card here, so sounddevice's InputStream is replaced by a stand-in that
"captures" real speech on the event loop's clock; everything after it is real: Codec2, the
streaming DTX gate and FEC encoder, the room's sealing, a moderator's grant, the simulated
LoRa channel (virtual time) and the listener's playout and seal check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relay.core.identity import Identity
from relay.core.room import Room, RoomEvent, Voice
from relay.core.wire import PacketType, split
from relay.demo.voice import bundled_sample, choose_frames_per_packet
from relay.links.sim.channel import Ether
from relay.radio.profiles import preset
from relay.runtime.clock import run
from relay.runtime.room import LivePackets, RoomNode
from relay.runtime.voice import batches
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.device import microphone
from relay.voice.modes import mode_by_name
from relay.voice.over import OverEncoder, encode_over
from relay.voice.vad import MAX_SKIP_FRAMES, DtxGate, raw_speech_frames, speech_frames

MODE = mode_by_name("1600")
PROFILE = preset("SHORT_FAST")
FPP = choose_frames_per_packet(PROFILE, MODE)[0]


def speech_with_pauses() -> np.ndarray:
    """A short conversation: words, a long pause (skipped), words, a breath (bridged), words."""
    rng = np.random.default_rng(1)

    def pause(seconds: float) -> np.ndarray:
        return rng.normal(0, 20, int(seconds * 8000)).astype(np.int16)

    said = [read_audio(bundled_sample(name)) for name in ("morig.wav", "forig.wav")]
    return np.concatenate([said[0], pause(2.5), said[1], pause(0.12), said[0][:8000]])


PCM = speech_with_pauses()


# ------------------------------------------------------------------------- the fake device


def fake_sounddevice(pcm: np.ndarray, output: Any = None) -> types.SimpleNamespace:
    """A sounddevice stand-in whose microphone says ``pcm`` (then silence) in loop time."""
    mics: list[Any] = []

    class FakeMicrophone:
        def __init__(self, *, samplerate, channels, dtype, blocksize, callback, device) -> None:
            assert (samplerate, channels, dtype) == (8000, 1, "int16")
            self.blocksize, self.callback = blocksize, callback
            self.position = 0  # samples captured so far
            self.handle: asyncio.TimerHandle | None = None
            mics.append(self)

        @property
        def done(self) -> bool:
            """The block just captured is past the end of ``pcm`` (silence)."""
            return self.position - self.blocksize >= len(pcm)

        def start(self) -> None:
            loop = asyncio.get_running_loop()

            def capture() -> None:
                block = np.zeros((self.blocksize, 1), np.int16)
                chunk = pcm[self.position : self.position + self.blocksize]
                block[: len(chunk), 0] = chunk
                self.position += self.blocksize
                self.callback(block, self.blocksize, None, None)
                self.handle = loop.call_later(self.blocksize / 8000, capture)

            self.handle = loop.call_later(self.blocksize / 8000, capture)

        def stop(self) -> None:
            assert self.handle is not None
            self.handle.cancel()

        def close(self) -> None:
            pass

    return types.SimpleNamespace(InputStream=FakeMicrophone, OutputStream=output, mics=mics)


# ------------------------------------------------------------------------- a room


class Listener(RoomNode):
    """A listener whose radio misses chosen voice datagrams (by arrival order); it notes the
    type of every voice datagram that reached it."""

    def __init__(self, *args: Any, lose: frozenset[int] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lose = lose
        self.voice_types: list[int] = []

    def handle(self, data: bytes, arrival: float) -> None:
        ptype = split(data)[0].ptype
        if ptype in (PacketType.VOICE, PacketType.VOICE_FEC):
            self.voice_types.append(ptype)
            if len(self.voice_types) - 1 in self.lose:
                return  # lost on the air
        super().handle(data, arrival)


def live_over(
    state: Path, pcm: np.ndarray, *, fec: bool, dtx: bool, lose: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """A moderator grants the floor; the speaker says ``pcm`` into the microphone, live;
    one listener hears it. Virtual time: a few seconds of wall clock at most."""

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        epoch = time.time() - loop.time()

        def clock() -> float:
            return epoch + loop.time()

        ether = Ether(PROFILE, seed=1, lbt=True)
        counters = CounterStore(state / f"counters-{fec}-{dtx}-{sorted(lose)}.db")
        room_id, key = os.urandom(8), os.urandom(32)
        mod_id, ana_id, ben_id = (Identity.generate() for _ in range(3))
        received: list[Voice] = []

        def room(ident: Identity, roster=()) -> Room:
            return Room(
                room_id, key, 0, [mod_id.public], ident, counters, roster=roster, mtu=PROFILE.mtu
            )

        def heard(event: RoomEvent) -> None:
            if isinstance(event, Voice):
                received.append(event)

        mod = RoomNode(room(mod_id, [ana_id.public, ben_id.public]), ether.attach(), clock)
        ana = RoomNode(room(ana_id), ether.attach(), clock, seed=1)
        ben = Listener(room(ben_id), ether.attach(), clock, lose=lose, on_event=heard)
        tasks = [asyncio.create_task(n.run()) for n in (mod, ana, ben)]
        stop = asyncio.Event()
        moderating = asyncio.create_task(mod.moderate(auto_grant=30, stop=stop))
        assert await ana.wait_for_floor(timeout=10)
        sd = fake_sounddevice(pcm)
        source = microphone(sd, MODE)
        async with contextlib.aclosing(source):
            said = await ana.speak_live(
                MODE, source, FPP, fec=fec, dtx=dtx, until=lambda: sd.mics[0].done
            )
        await ana.link.drain()
        assert await ben.playout.wait_overs(1, timeout=10)
        stop.set()
        await moderating
        for n in (mod, ana, ben):
            await n.link.close()
        await asyncio.gather(*tasks)
        counters.close()
        return {"said": said, "over": ben.playout.overs[0], "ended": ben.log.overs, "ben": ben,
                "received": [e.frames for e in received]}  # fmt: skip

    return run(scenario(), virtual=True)


def file_packets(pcm: np.ndarray, *, fec: bool, dtx: bool) -> list[tuple[int, list, list | None]]:
    """What the file path (``relay talk --input``) sends for the same audio."""
    over = encode_over(pcm, MODE, fec=fec, dtx=dtx)
    return [
        (first, list(frames), None if red is None else list(red))
        for first, frames, red in batches(over.frames, FPP, over.redundant, over.positions)
    ]


def as_sent(received: list) -> list[tuple[int, list, list | None]]:
    return [(v.position, list(v.frames), list(v.redundant) or None) for v in received]


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> dict[str, Any]:
    return live_over(tmp_path_factory.mktemp("plain"), PCM, fec=False, dtx=False)


# ------------------------------------------------------------------------- the tests


def test_live_over_without_fec_or_dtx_is_verified(continuous) -> None:
    over, said = continuous["over"], continuous["said"]
    total = -(-len(PCM) // MODE.samples_per_frame)
    assert over.verdict == "verified" and over.frames_missing == 0
    assert said.frames_sent == said.positions == total
    assert as_sent(continuous["received"]) == file_packets(PCM, fec=False, dtx=False)
    assert set(continuous["ben"].voice_types) == {PacketType.VOICE}
    # The live path reveals its live keys as it talks (one packet an interval), as the file
    # path does: every packet was verified, most of them live before the seal.
    received = continuous["received"]
    reveals = sum(1 for v in received if v.live_link is not None)
    assert reveals >= len(received) // 4 - 1
    assert continuous["ben"].log.verified_packets == len(continuous["received"])


def test_live_dtx_sends_fewer_packets_and_keeps_timing(tmp_path, continuous) -> None:
    out = live_over(tmp_path, PCM, fec=False, dtx=True)
    over, said, plain = out["over"], out["said"], continuous["said"]
    assert over.verdict == "verified"
    assert said.positions == plain.positions  # the same over, silence skipped
    assert said.packets_sent < 0.8 * plain.packets_sent
    # exactly what the file path sends for the same audio: the same gate, the same packets
    assert as_sent(out["received"]) == file_packets(PCM, fec=False, dtx=True)
    skipped = said.positions - said.frames_sent
    assert over.frames_comfort == skipped > 40  # the long pause, as comfort noise
    assert len(over.audio()) == len(continuous["over"].audio())  # timing kept
    assert over.frames_late == 0  # holding frames for the gate made nothing late


def test_live_fec_recovers_a_lost_packet(tmp_path) -> None:
    expected = file_packets(PCM, fec=True, dtx=True)
    # lose a full packet in speech whose successor carries its copies
    lost = next(
        i
        for i in range(1, len(expected) - 1)
        if len(expected[i][1]) == FPP and expected[i + 1][2] is not None
    )
    out = live_over(tmp_path, PCM, fec=True, dtx=True, lose=frozenset({lost}))
    over, types_ = out["over"], out["ben"].voice_types
    assert as_sent(out["received"]) == expected[:lost] + expected[lost + 1 :]
    # every packet with a sent packet just before it is VOICE_FEC; the over's first is plain
    assert types_[0] == PacketType.VOICE
    assert types_ == [
        PacketType.VOICE if red is None else PacketType.VOICE_FEC for _, _, red in expected
    ]
    assert over.frames_redundant == FPP  # the lost packet's frames, played from copies
    assert over.frames_missing - over.frames_comfort == FPP
    # the seal covers what was said, not the copies: heard with copies, so 'partial'
    (ended,) = out["ended"]
    assert ended.verdict == over.verdict == "partial"


def test_live_fec_without_loss_verifies(tmp_path) -> None:
    out = live_over(tmp_path, PCM[: 8000 * 2], fec=True, dtx=False)
    assert out["over"].verdict == "verified" and out["over"].frames_redundant == 0
    assert as_sent(out["received"]) == file_packets(PCM[: 8000 * 2], fec=True, dtx=False)


# ------------------------------------------------------------------------- streaming units


@pytest.mark.parametrize("chunk", [320, 1280, 137])
def test_streaming_gate_keeps_the_positions_of_the_file_path(chunk: int) -> None:
    whole = speech_frames(PCM, MODE)
    gate, live = DtxGate(MODE), []
    for i in range(0, len(PCM), chunk):
        live += gate.push(PCM[i : i + chunk])
        # a live talker waits at most pre-roll + the shortest skipped pause for a decision
        assert gate.decided >= (i + chunk) // MODE.samples_per_frame - 1 - 5
    live += gate.finish()
    assert live == whole.tolist()
    # and the rules hold: every word kept, the over opens with a frame, keep-alives
    raw = raw_speech_frames(PCM, MODE)
    assert whole[raw].all() and whole[0]
    assert np.diff(np.flatnonzero(whole)).max() - 1 <= MAX_SKIP_FRAMES
    assert 0.4 < whole.mean() < 0.9


def test_streaming_encoder_sends_what_encode_over_sends() -> None:
    over = encode_over(PCM, MODE, fec=True, dtx=True)
    encoder, sent = OverEncoder(MODE, fec=True, dtx=True), []
    for i in range(0, len(PCM), MODE.samples_per_frame):
        sent += encoder.push(PCM[i : i + MODE.samples_per_frame])
    sent += encoder.finish()
    assert [p for p, _, _ in sent] == over.positions and encoder.total == over.total
    assert [f for _, f, _ in sent] == over.frames and [c for _, _, c in sent] == over.redundant


@pytest.mark.parametrize("seed", range(6))
def test_live_packets_are_cut_as_batches_cuts_a_whole_over(seed: int) -> None:
    rng = random.Random(seed)
    fpp = rng.randint(1, 5)
    positions, p = [], 0
    while len(positions) < 60:
        p += 1 if rng.random() < 0.85 else rng.randint(2, 9)
        positions.append(p)
    frames = [bytes([q % 256]) * 8 for q in positions]
    copies = [bytes([q % 256]) * 4 for q in positions] if seed % 2 else None
    packets, got, i = LivePackets(fpp), [], 0
    while i < len(positions):  # frames arrive decided in uneven bunches, skips in between
        end = min(len(positions), i + rng.randint(0, 4))
        bunch = [(positions[j], frames[j], copies[j] if copies else None) for j in range(i, end)]
        i = end
        # positions decided so far: at least those delivered, at most up to the next one
        lo = positions[i - 1] + 1 if i else 0
        hi = positions[i] if i < len(positions) else positions[-1] + 1
        got += packets.push(bunch, rng.randint(lo, hi))
    got += packets.push([], positions[-1] + 1, final=True)
    want = list(batches(frames, fpp, copies, positions))
    assert [(a, list(b), c and list(c)) for a, b, c in got] == [
        (a, list(b), c and list(c)) for a, b, c in want
    ]


def test_recording_a_voice_message_from_the_microphone() -> None:
    """record(): a (frames, 1) int16 capture becomes flat speech; a device error is one line."""
    from relay.errors import UsageError
    from relay.voice.device import record

    captured = np.arange(16000, dtype=np.int16).reshape(-1, 1)
    sd = types.SimpleNamespace(rec=lambda n, **kw: captured[:n], wait=lambda: None)
    pcm = record(sd, 1.5)
    assert pcm.shape == (12000,) and pcm.dtype == np.int16 and pcm[-1] == 11999

    def broken(n, **kw):
        raise RuntimeError("Error querying device -1")

    with pytest.raises(UsageError, match="cannot record from the microphone"):
        record(types.SimpleNamespace(rec=broken, wait=lambda: None), 1.0)
