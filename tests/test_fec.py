"""FEC voice packets: wire format, authentication, rooms (gate and seals), playout fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_room import MODE, Net, _grant, _of

import relay
from relay.core import Receiver, RoomKeys, Sender, wire
from relay.core.events import Rejected, VoiceFrames
from relay.core.room import Dropped, OverEnded, Voice
from relay.errors import PacketError, UsageError
from relay.runtime.voice import Playout, batches
from relay.store.counters import MemoryCounters
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import MODES, mode_by_name

M1600, M700 = mode_by_name("1600"), mode_by_name("700C")
NOW = 1_750_000_000.0
IDENT = b"fec-speaker-identity"
PAIRED = [m for m in MODES if m.name in wire.FEC_PAIRS]


def _pair():
    keys = RoomKeys(bytes(range(32)))
    receiver = Receiver(keys)
    sender = Sender(keys, IDENT, MemoryCounters())
    receiver.add_sender(IDENT, sender.session)
    return sender, receiver


def _frames(mode, n, seed=0):
    return [bytes((seed + i + j) % 256 for j in range(mode.bytes_per_frame)) for i in range(n)]


# ------------------------------------------------------------------------------ wire
@given(
    mode=st.sampled_from(PAIRED),
    position=st.integers(0, 255),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_fec_body_round_trips(mode, position, n, data):
    red = wire.fec_mode(mode)
    frames = tuple(
        data.draw(st.binary(min_size=mode.bytes_per_frame, max_size=mode.bytes_per_frame))
        for _ in range(n)
    )
    copies = tuple(
        data.draw(st.binary(min_size=red.bytes_per_frame, max_size=red.bytes_per_frame))
        for _ in range(n)
    )
    body = wire.VoiceFecBody(position, frames, copies)
    packed = body.pack(mode)
    assert len(packed) == 1 + n * (mode.bytes_per_frame + red.bytes_per_frame)
    assert wire.VoiceFecBody.parse(packed, mode) == body


@settings(max_examples=300)
@given(mode=st.sampled_from(MODES), blob=st.binary(max_size=300))
def test_fec_body_parser_only_raises_packet_error(mode, blob):
    try:
        body = wire.VoiceFecBody.parse(blob, mode)
    except PacketError:
        return
    assert len(body.frames) == len(body.redundant) >= 1
    assert body.pack(mode) == blob


def test_fec_pairs_keep_frame_timing():
    for primary, red in wire.FEC_PAIRS.items():
        assert mode_by_name(primary).samples_per_frame == mode_by_name(red).samples_per_frame


def test_fec_packet_building_refuses_caller_mistakes():
    sender, _ = _pair()
    with pytest.raises(UsageError):  # nothing before position 0 to copy
        sender.voice(M1600, 0, _frames(M1600, 5), NOW, _frames(M700, 5))
    with pytest.raises(UsageError):  # count mismatch
        sender.voice(M1600, 5, _frames(M1600, 5), NOW, _frames(M700, 4))
    with pytest.raises(UsageError):  # wrong size for 700C
        sender.voice(M1600, 5, _frames(M1600, 5), NOW, _frames(M1600, 5))
    with pytest.raises(UsageError):  # 3200 has no pairing
        sender.voice(mode_by_name("3200"), 5, _frames(mode_by_name("3200"), 5), NOW, [b"x"] * 5)


# ------------------------------------------------------------------------------ session
def test_fec_round_trip_and_plain_voice_keeps_18_bytes():
    sender, receiver = _pair()
    plain = sender.voice(M1600, 0, _frames(M1600, 5), NOW)
    assert len(plain) == 18 + 40
    fec = sender.voice(M1600, 5, _frames(M1600, 5, 9), NOW, _frames(M700, 5, 3))
    assert len(fec) == 18 + 40 + 20
    assert wire.Header.parse(fec).ptype == wire.PacketType.VOICE_FEC
    receiver.receive(plain, NOW)
    event = receiver.receive(fec, NOW)
    assert isinstance(event, VoiceFrames)
    assert event.position == 5 and event.frames == tuple(_frames(M1600, 5, 9))
    assert event.redundant == tuple(_frames(M700, 5, 3)) and event.redundant_mode is M700


def test_tampered_truncated_replayed_and_forged_fec_packets_are_rejected():
    sender, receiver = _pair()
    packet = sender.voice(M1600, 5, _frames(M1600, 5), NOW, _frames(M700, 5))
    for i in range(len(packet)):
        for bit in range(8):
            bad = bytearray(packet)
            bad[i] ^= 1 << bit
            assert isinstance(receiver.receive(bytes(bad), NOW), Rejected), (i, bit)
    for n in range(len(packet)):
        assert isinstance(receiver.receive(packet[:n], NOW), Rejected)
    # another room key: forged
    other = Sender(RoomKeys(bytes(range(1, 33))), IDENT, MemoryCounters())
    forged = other.voice(M1600, 5, _frames(M1600, 5), NOW, _frames(M700, 5))
    assert isinstance(receiver.receive(forged, NOW), Rejected)
    assert receiver.accepted == 0
    assert isinstance(receiver.receive(packet, NOW), VoiceFrames)
    replay = receiver.receive(packet, NOW)
    assert isinstance(replay, Rejected) and replay.reason == "replay"


def test_fec_type_with_an_unpaired_mode_is_malformed():
    sender, receiver = _pair()
    packet = bytearray(sender.voice(M1600, 5, _frames(M1600, 5), NOW, _frames(M700, 5)))
    packet[0] = (packet[0] & ~0x07) | mode_by_name("3200").wire_index
    event = receiver.receive(bytes(packet), NOW)
    assert isinstance(event, Rejected) and event.reason == "malformed"


def test_batches_attach_copies_of_the_previous_frames():
    frames, red = _frames(M1600, 12), _frames(M700, 12, 50)
    out = list(batches(frames, 5, red))
    assert [(p, len(f)) for p, f, _ in out] == [(0, 5), (5, 5), (10, 2)]
    assert out[0][2] is None  # the first packet is plain voice
    assert list(out[1][2]) == red[0:5]
    assert list(out[2][2]) == red[8:10]  # as many copies as frames: those just before


# ------------------------------------------------------------------------------ rooms
def _fec_over(net, speaker, frames=20, fpp=4, lose=()):
    events = {room: [] for room in net.rooms.values()}
    prim = [bytes([i % 251]) * 8 for i in range(frames)]
    red = [bytes([i % 251]) * 4 for i in range(frames)]
    for i, (first, batch, copies) in enumerate(batches(prim, fpp, red)):
        packet = speaker.voice(MODE, first, list(batch), net.now, copies)
        for room, ev in net.send(packet, speaker, lose=lose if i == 1 else ()).items():
            events[room] += ev
        net.now += 0.16
    for packet in speaker.end_over(net.now):
        for room, ev in net.send(packet, speaker).items():
            events[room] += ev
    return events


def test_fec_overs_verify_and_copies_are_not_sealed():
    net = Net(speakers=2, listeners=3)
    speaker = net.speakers[0]
    _grant(net, speaker)
    events = _fec_over(net, speaker, lose=(net.listeners[0],))
    for li in net.listeners:
        voices = _of(events[li], Voice)
        assert any(v.frames.redundant for v in voices)
        (ended,) = _of(events[li], OverEnded)
        assert ended.frames == 20
        # copies are not sealed: a listener that played some cannot call the over verified
        assert ended.verdict == ("partial" if li is net.listeners[0] else "verified")


def test_fec_voice_is_gated_like_voice():
    net = Net(speakers=2, listeners=2)
    a, b = net.speakers
    _grant(net, b)  # b spoke before: listeners know the session its voice is sealed under
    _grant(net, a)
    rogue = b.sender.voice(MODE, 4, [b"\x55" * 8] * 4, net.now, [b"\x66" * 4] * 4)
    for li in net.listeners:
        (drop,) = _of(li.receive(rogue, net.now), Dropped)
        assert drop.reason == "floor_violation"


# ------------------------------------------------------------------------------ playout
SAMPLE = Path(relay.__file__).parent / "samples" / "hts1.wav"


def _play(packets, lost, conceal="interpolate"):
    sender_pkts, receiver = packets
    playout = Playout(conceal=conceal)
    for i, (t, packet) in enumerate(sender_pkts):
        if i in lost:
            continue
        event = receiver.receive(packet, NOW + t)
        assert isinstance(event, VoiceFrames)
        playout.voice(event, t)
    playout.end(IDENT, 50)
    return playout.overs[-1]


def _packets(fec: bool):
    pcm = read_audio(SAMPLE)[: 50 * 320]
    frames = Encoder(M1600).encode(pcm)
    red = Encoder(M700).encode(pcm) if fec else None
    sender, receiver = _pair()
    out = []
    for first, batch, copies in batches(frames, 5, red):
        t = (first + len(batch)) * 0.04 + 0.1
        out.append((t, sender.voice(M1600, first, batch, NOW + t, copies)))
    return out, receiver


def test_playout_plays_copies_where_primaries_were_lost():
    over = _play(_packets(fec=True), lost={3})
    assert over.frames_missing == 5 and over.frames_redundant == 5
    assert len(over.audio()) == 50 * 320
    plain = _play(_packets(fec=False), lost={3})
    assert plain.frames_missing == 5 and plain.frames_redundant == 0
    # the lost packet's stretch is speech from the copies, not a fade to silence
    stretch = slice(15 * 320 + 160, 20 * 320)
    rms = lambda x: float(np.sqrt(np.mean(x[stretch].astype(float) ** 2)))  # noqa: E731
    assert rms(over.audio()) > 0.3 * rms(_play(_packets(fec=True), lost=set()).audio())


def test_a_primary_in_time_wins_over_its_copy():
    over = _play(_packets(fec=True), lost=set())
    assert over.frames_missing == 0 and over.frames_redundant == 0
