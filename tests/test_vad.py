"""DTX: the VAD's decisions, packets that skip silence, and listeners that keep timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import relay
from relay.core import Receiver, RoomKeys, Sender
from relay.core.room import OverEnded
from relay.errors import UsageError
from relay.runtime.voice import Playout, batches
from relay.store.counters import MemoryCounters
from relay.voice.audio import read_audio
from relay.voice.modes import mode_by_name
from relay.voice.over import encode_over
from relay.voice.vad import MAX_SKIP_FRAMES, raw_speech_frames, speech_frames

M1600 = mode_by_name("1600")
SAMPLE = Path(relay.__file__).parent / "samples" / "hts1.wav"


def _with_pause(seconds: float = 2.5) -> tuple[np.ndarray, int, int]:
    speech = read_audio(SAMPLE)
    pause = np.random.default_rng(1).normal(0, 20, int(seconds * 8000)).astype(np.int16)
    return np.concatenate([speech, pause, speech]), len(speech), len(pause)


def test_silence_is_skipped_and_speech_is_kept():
    audio, n_speech, n_pause = _with_pause()
    keep = speech_frames(audio, M1600)
    first_pause = n_speech // 320 + 5  # after the hangover
    pause = keep[first_pause : (n_speech + n_pause) // 320 - 2]
    assert pause.mean() < 0.1  # skipped, but for keep-alives
    assert keep[: n_speech // 320].mean() > 0.7
    assert keep[0]  # an over starts with a frame


def test_hangover_keeps_word_endings():
    audio, n_speech, _ = _with_pause()
    raw = raw_speech_frames(audio, M1600)
    last_speech = int(np.flatnonzero(raw[: n_speech // 320 + 3])[-1])
    keep = speech_frames(audio, M1600, hangover=0.16)
    assert keep[last_speech : last_speech + 5].all()  # 4 frames (160 ms) after the last word
    none = speech_frames(audio, M1600, hangover=0.0, preroll=0.0, min_gap=0.0)
    assert none.sum() < keep.sum()


def test_long_silence_sends_keep_alives():
    silence = np.zeros(8000 * 10, dtype=np.int16)
    keep = speech_frames(silence, M1600, max_skip=2.0)
    gaps = np.diff(np.flatnonzero(keep))
    assert keep[0] and gaps.max() - 1 <= min(50, MAX_SKIP_FRAMES)
    assert keep.mean() < 0.05


def test_bad_inputs_are_refused():
    with pytest.raises(UsageError):
        raw_speech_frames(np.zeros(800, np.int16), M1600, aggressiveness=4)


def test_batches_never_span_a_skip():
    positions = [0, 1, 2, 10, 11, 12, 13, 14, 15, 30]
    frames = [bytes([p]) * 8 for p in positions]
    red = [bytes([p]) * 4 for p in positions]
    out = list(batches(frames, 5, red, positions))
    assert [(p, len(f)) for p, f, _ in out] == [(0, 3), (10, 5), (15, 1), (30, 1)]
    assert [r is not None for _, _, r in out] == [False, False, True, False]
    with pytest.raises(UsageError):
        list(batches(frames, 5, None, [0, 2, 1, 3, 4, 5, 6, 7, 8, 9]))


def _dtx_over(audio):
    over = encode_over(audio, M1600, dtx=True)
    keys = RoomKeys(bytes(range(32)))
    ident = b"dtx-speaker"

    sender, receiver = Sender(keys, ident, MemoryCounters()), Receiver(keys)
    receiver.add_sender(ident, sender.session)
    packets = []
    for first, batch, _ in batches(over.frames, 5, None, over.positions):
        t = (first + len(batch)) * 0.04 + 0.1
        packets.append((t, sender.voice(M1600, first, batch, 1e9 + t)))
    return over, packets, receiver, ident


def test_listener_keeps_timing_and_plays_comfort_noise_in_pauses():
    audio, n_speech, n_pause = _with_pause()
    over, packets, receiver, ident = _dtx_over(audio)
    assert over.dtx and len(over.frames) < 0.9 * over.total
    playout = Playout()
    for t, packet in packets:
        playout.voice(receiver.receive(packet, 1e9 + t), t)
    playout.end(ident, over.total)
    heard = playout.overs[-1]
    assert len(heard.audio()) == over.total * 320  # positions kept: same length as spoken
    assert heard.frames_comfort > 0.8 * (over.total - len(over.frames) - 10)
    mid = heard.audio()[n_speech + 8000 : n_speech + n_pause - 4000]
    assert 0 < np.sqrt(np.mean(mid.astype(float) ** 2)) < 150  # quiet, not dead


def test_a_lost_packet_next_to_a_pause_is_still_concealed_not_comfort():
    audio, _, _ = _with_pause()
    over, packets, receiver, ident = _dtx_over(audio)
    playout = Playout()
    for i, (t, packet) in enumerate(packets):
        if i != 3:  # a packet in the middle of speech
            playout.voice(receiver.receive(packet, 1e9 + t), t)
    playout.end(ident, over.total)
    heard = playout.overs[-1]
    skipped = over.total - len(over.frames)
    assert heard.frames_comfort <= skipped
    assert heard.frames_missing - heard.frames_comfort >= 5  # the lost packet's frames


def test_dtx_overs_verify_in_rooms_and_faked_skips_are_forged():
    from test_room import MODE, Net, _grant, _of

    net = Net(speakers=1, listeners=2)
    speaker = net.speakers[0]
    _grant(net, speaker)
    positions = [0, 1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23, 24, 40, 41]
    events = {room: [] for room in net.rooms.values()}
    for first, batch, _ in batches([bytes([p]) * 8 for p in positions], 4, None, positions):
        packet = speaker.voice(MODE, first, list(batch), net.now)
        for room, ev in net.send(packet, speaker).items():
            events[room] += ev
        net.now += 0.16
    for packet in speaker.end_over(net.now):
        for room, ev in net.send(packet, speaker).items():
            events[room] += ev
    for li in net.listeners:
        (ended,) = _of(events[li], OverEnded)
        assert ended.frames == 42 and ended.verdict == "verified"
    # a member holding the room key fakes a skip: the seal says otherwise
    net2 = Net(speakers=1, listeners=1)
    speaker2 = net2.speakers[0]
    _grant(net2, speaker2)
    listener = net2.listeners[0]
    out = []
    for first in range(0, 12, 4):
        said = [bytes([first + j]) * 8 for j in range(4)]
        if first == 4:
            # a member holding the room key takes the next counter and claims a skip of 4..7
            # (with the very frames the speaker says at 8..11, so nothing else conflicts)
            fake = [bytes([8 + j]) * 8 for j in range(4)]
            out += listener.receive(speaker2.sender.voice(MODE, 8, fake, net2.now), net2.now)
            speaker2.voice(MODE, first, said, net2.now)  # the real packet is lost
            continue
        out += listener.receive(speaker2.voice(MODE, first, said, net2.now), net2.now)
    for packet in speaker2.end_over(net2.now):
        out += listener.receive(packet, net2.now)
    (ended,) = _of(out, OverEnded)
    assert ended.verdict == "forged"


def test_an_over_ending_in_a_pause_keeps_the_pause_and_counts_no_loss():
    """The over ends in silence: its last frame is still sent (a keep-alive), so the seal
    counts the whole over, listeners play the pause to its end as comfort noise, and no
    frame of it is counted as concealed (before: the pause was cut, or counted as loss)."""
    from test_room import MODE, Net, _grant

    speech = read_audio(SAMPLE)
    pause = np.random.default_rng(2).normal(0, 20, int(1.9 * 8000)).astype(np.int16)
    over = encode_over(np.concatenate([speech, pause]), M1600, dtx=True)
    assert over.dtx and over.positions[-1] == over.total - 1
    assert over.positions[-2] < over.total - 10  # a pause before the closing frame
    # The plain path: played to the end, the pause is comfort noise, nothing concealed.
    _, packets, receiver, ident = _dtx_over(np.concatenate([speech, pause]))
    playout = Playout()
    for t, packet in packets:
        playout.voice(receiver.receive(packet, 1e9 + t), t)
    playout.end(ident, over.total)
    heard = playout.overs[-1]
    assert len(heard.audio()) == over.total * M1600.samples_per_frame
    assert heard.frames_concealed == 0 and heard.frames_comfort == over.total - len(over.frames)
    # The room path: the seal covers every position, the trailing pause included.
    assert MODE is M1600
    net = Net(speakers=1, listeners=1)
    speaker = net.speakers[0]
    _grant(net, speaker)
    ended = []
    for first, batch, _ in batches(over.frames, 5, None, over.positions):
        net.send(speaker.voice(MODE, first, list(batch), net.now), speaker)
        net.now += 0.2
    for packet in speaker.end_over(net.now):
        for events in net.send(packet, speaker).values():
            ended += [e for e in events if isinstance(e, OverEnded)]
    assert ended and all(e.frames == over.total and e.verdict == "verified" for e in ended)
