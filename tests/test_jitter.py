"""Playout buffer timing, loss, lateness and duplicates; concealment of missing frames."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

import relay
from relay.errors import UsageError
from relay.voice import Concealer, Decoder, Encoder, JitterBuffer, PlayoutSlot, mode_by_name

FS = 0.04  # 1600 mode: 40 ms frames
SAMPLES = Path(relay.__file__).parent / "samples"


def frames(start: int, count: int) -> list[bytes]:
    """Distinct fake frames so a test can tell which position a slot carries."""
    return [p.to_bytes(4, "big") * 2 for p in range(start, start + count)]


def buffer(initial: float = 0.1, maximum: float = 0.5) -> JitterBuffer:
    return JitterBuffer(FS, initial, maximum)


def positions(slots: list[PlayoutSlot]) -> list[int]:
    return [s.position for s in slots]


# --- the playout clock ---------------------------------------------------------------------


def test_slots_come_out_when_due_and_in_order():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    assert jb.pop_due(0.05) == []
    first = jb.pop_due(0.1)
    assert first == [PlayoutSlot(0, frames(0, 1)[0], pytest.approx(0.1))]
    rest = jb.pop_due(0.1 + 4 * FS + 1e-9)
    assert positions(rest) == [1, 2, 3, 4]
    assert [s.play_time for s in rest] == pytest.approx([0.1 + p * FS for p in (1, 2, 3, 4)])
    assert [s.frame for s in rest] == frames(1, 4)
    assert jb.stats.frames_played == 5 and jb.stats.frames_missing == 0


def test_reordered_packets_play_in_order():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    jb.push(10, frames(10, 5), now=0.20)
    jb.push(5, frames(5, 5), now=0.21)  # overtaken, but before frame 5 is due (0.30)
    slots = jb.pop_due(10.0)
    assert positions(slots) == list(range(15))
    assert [s.frame for s in slots] == frames(0, 15)
    assert jb.stats.frames_late == 0


def test_lost_packet_becomes_missing_slots():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    jb.push(10, frames(10, 5), now=0.4)
    slots = jb.pop_due(10.0)
    assert positions(slots) == list(range(15))
    assert [s.position for s in slots if s.missing] == [5, 6, 7, 8, 9]
    stats = jb.stats
    assert (stats.frames_played, stats.frames_missing) == (10, 5)


def test_nothing_is_invented_past_the_last_frame_received():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    assert positions(jb.pop_due(100.0)) == [0, 1, 2, 3, 4]
    assert jb.pop_due(200.0) == []
    assert jb.stats.frames_missing == 0


def test_late_frame_after_its_slot_is_dropped_and_delay_grows():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    jb.push(10, frames(10, 5), now=0.2)
    early = jb.pop_due(0.45)  # slots 0..8 due; 5..8 have not arrived
    assert positions(early) == list(range(9))
    assert [s.position for s in early if s.missing] == [5, 6, 7, 8]

    jb.push(5, frames(5, 5), now=0.5)  # frame 5 was due at 0.30: 0.20 late
    assert jb.stats.frames_late == 4  # 5..8 already went out as missing
    assert jb.delay == pytest.approx(0.3)  # just enough that frame 5 would have made it
    later = jb.pop_due(10.0)
    assert positions(later) == list(range(9, 15))
    assert later[0].frame == frames(9, 1)[0]  # 9 fits the grown delay and plays
    assert later[0].play_time == pytest.approx(9 * FS + 0.3)
    times = [s.play_time for s in early + later]
    assert times == sorted(times)


def test_late_frame_whose_slot_is_still_open_stretches_instead_of_dropping():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    jb.pop_due(0.3)
    jb.push(5, frames(5, 5), now=0.35)  # frame 5 was due at 0.30 but its slot never went out
    assert jb.stats.frames_late == 0
    assert jb.delay == pytest.approx(0.15)
    slots = jb.pop_due(0.35 + 1e-9)
    assert slots[0].position == 5 and not slots[0].missing
    assert slots[0].play_time == pytest.approx(0.35)


def test_delay_never_exceeds_max():
    jb = buffer(initial=0.1, maximum=0.25)
    jb.push(0, frames(0, 1), now=0.0)
    jb.pop_due(1.0)
    jb.push(1, frames(1, 1), now=5.0)  # hopelessly late
    assert jb.delay == 0.25
    assert jb.stats.frames_late == 1
    assert jb.flush(5.0) == []


def test_duplicates_are_ignored():
    jb = buffer()
    jb.push(0, frames(0, 5), now=0.0)
    jb.push(0, frames(0, 5), now=0.01)  # still buffered
    jb.push(3, frames(3, 2), now=0.02)
    assert jb.stats.duplicates == 7
    assert jb.pending == 5
    assert positions(jb.pop_due(1.0)) == [0, 1, 2, 3, 4]
    jb.push(2, frames(2, 2), now=1.5)  # already played
    stats = jb.stats
    assert (stats.duplicates, stats.frames_late, stats.frames_played) == (9, 0, 5)
    assert stats.frames_received == 5
    assert jb.delay == pytest.approx(0.1)


def test_flush_returns_the_rest_in_order():
    jb = buffer()
    assert jb.flush(0.0) == []
    jb.push(0, frames(0, 3), now=0.0)
    jb.push(5, frames(5, 2), now=0.01)
    assert positions(jb.pop_due(0.1)) == [0]
    rest = jb.flush(0.1)
    assert positions(rest) == [1, 2, 3, 4, 5, 6]
    assert [s.missing for s in rest] == [False, False, True, True, False, False]
    assert [s.play_time for s in rest] == pytest.approx([0.1 + p * FS for p in range(1, 7)])
    assert jb.flush(0.2) == []


def test_reordered_start_of_stream_is_played_from_the_real_start():
    jb = buffer()
    jb.push(5, frames(5, 5), now=0.0)  # overtook the stream's first packet
    jb.push(0, frames(0, 5), now=0.05)
    slots = jb.pop_due(10.0)
    assert positions(slots) == list(range(10))
    assert not any(s.missing for s in slots)
    assert slots[0].play_time == pytest.approx(0.05)


def test_bad_arguments():
    for args in [(0, 0.1, 0.5), (0.04, -0.1, 0.5), (0.04, 0.6, 0.5)]:
        with pytest.raises(UsageError):
            JitterBuffer(*args)
    with pytest.raises(UsageError):
        buffer().push(-1, frames(0, 1), now=0.0)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(0, 40), st.integers(1, 5), st.floats(0, 0.3)),
            st.tuples(st.just("pop"), st.floats(0, 0.3)),
        ),
        max_size=40,
    )
)
def test_any_arrival_pattern_keeps_the_invariants(events):
    jb = buffer(initial=0.08, maximum=0.4)
    now, pushed, out = 0.0, 0, []
    for event in events:
        now += event[-1]
        if event[0] == "push":
            _, pos, count, _ = event
            jb.push(pos, frames(pos, count), now)
            pushed += count
        else:
            due = jb.pop_due(now)
            assert all(s.play_time <= now for s in due)
            out += due
    out += jb.flush(now)
    pos = positions(out)
    assert all(b == a + 1 for a, b in pairwise(pos))  # consecutive, no gaps or repeats
    assert all(s.frame == frames(s.position, 1)[0] for s in out if not s.missing)
    times = [s.play_time for s in out]
    assert times == sorted(times)
    stats = jb.stats
    assert pushed == stats.frames_received + stats.frames_late + stats.duplicates
    assert stats.frames_received == stats.frames_played  # everything accepted is played
    assert stats.frames_played + stats.frames_missing == len(out)
    assert 0.08 <= stats.delay <= 0.4


# --- concealment ---------------------------------------------------------------------------


class FlatDecoder:
    """A stand-in decoder whose output is a constant, so gains can be read off exactly."""

    samples_per_frame = 320

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, frame: bytes) -> np.ndarray:
        self.calls += 1
        return np.full(self.samples_per_frame, 10000, dtype=np.int16)


def test_silence_before_the_first_good_frame():
    c = Concealer(FlatDecoder())
    out = c.render_frame(None)
    assert out.dtype == np.int16 and out.shape == (320,) and not out.any()


def test_missing_frames_fade_to_silence():
    dec = FlatDecoder()
    c = Concealer(dec)
    c.render_frame(b"good")
    gaps = [c.render_frame(None) for _ in range(6)]
    starts = [g[0] / 10000 for g in gaps]
    ends = [g[-1] / 10000 for g in gaps]
    assert starts[:4] == pytest.approx([1.0, 0.7, 0.5, 0.25], abs=1e-3)
    assert ends[:4] == pytest.approx([0.7, 0.5, 0.25, 0.0], abs=0.01)
    assert not gaps[4].any() and not gaps[5].any()
    assert all(np.all(np.diff(g.astype(int)) <= 0) for g in gaps)  # smooth, never louder
    assert dec.calls == 1 + 4  # silence costs no decoding
    assert c.frames_concealed == 4


def test_a_good_frame_ends_the_fade():
    c = Concealer(FlatDecoder())
    c.render_frame(b"good")
    for _ in range(3):
        c.render_frame(None)
    assert np.all(c.render_frame(b"good") == 10000)
    assert c.render_frame(None)[0] == 10000  # a new gap starts at full gain again


@pytest.mark.parametrize("name", ["1600", "3200", "700C"])
def test_concealed_stream_has_one_frame_of_pcm_per_slot(name):
    mode = mode_by_name(name)
    speech, _ = sf.read(SAMPLES / "morig.wav", dtype="int16")
    bits = Encoder(mode).encode(speech[: 20 * mode.samples_per_frame])
    jb = JitterBuffer(mode.frame_seconds, 0.2, 1.0)
    for start in range(0, 20, 4):
        if start != 8:  # lose one packet
            jb.push(start, bits[start : start + 4], now=start * mode.frame_seconds)
    slots = jb.flush(10.0)
    c = Concealer(Decoder(mode))
    pcm = [c.render(s) for s in slots]
    assert len(pcm) == 20
    assert all(p.dtype == np.int16 and p.shape == (mode.samples_per_frame,) for p in pcm)
    assert [s.missing for s in slots].count(True) == 4
    whole = Concealer(Decoder(mode)).render_all(slots)
    assert whole.shape == (20 * mode.samples_per_frame,)
    assert Concealer(Decoder(mode)).render_all([]).shape == (0,)
