"""Live checks of an over: keys revealed one interval late, flags within 2 s, verified-only
playout.

Over the simulated channel in virtual time (relay.demo.live_attack: real Codec2, sealing,
live keys, airtime), sans-I/O with rooms passing packets in memory, and the chain itself
(relay.core.live).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import live
from relay.core import roommsg as msg
from relay.core.identity import Identity
from relay.core.keytree import ratchet_step, step_start
from relay.core.room import (
    MAX_PENDING,
    Dropped,
    OverEnded,
    Room,
    SpeechFlagged,
    SpeechVerified,
    Voice,
)
from relay.core.session import Sender
from relay.core.wire import ControlKind
from relay.demo.live_attack import LiveAttackSettings, run_live_attack
from relay.errors import PacketError, UsageError
from relay.radio.profiles import preset
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name
from relay.voice.vad import MAX_SKIP_FRAMES

MODE = mode_by_name("1600")
T0 = 1_750_000_000.0
FLAG_WITHIN = 2.0  # seconds of speech time (the goal)
MOST_BYTES = 6.0  # added per voice packet, on average (the goal)
BASE = live.Base(100)  # the grant's first counter, in the chain tests


# ------------------------------------------------------------------ the parsers


@given(
    st.integers(min_value=0, max_value=live.MAC_MASK),
    st.none() | st.binary(min_size=8, max_size=8),
    st.binary(max_size=40),
)
def test_the_trailer_round_trips(mac_value, link, body) -> None:
    trailer = live.pack_trailer(mac_value, link)
    assert len(trailer) == 2 + (8 if link is not None else 0)
    assert live.split_trailer(body + trailer) == (body, mac_value, link)


@given(st.binary(max_size=80))
def test_the_trailer_parser_takes_any_bytes(data) -> None:
    try:
        body, mac_value, link = live.split_trailer(data)
    except PacketError as exc:
        assert exc.reason == "malformed"
    else:
        assert body + live.pack_trailer(mac_value, link) == data


@given(st.binary(max_size=20))
def test_the_anchor_parser_takes_any_bytes(data) -> None:
    try:
        anchor = live.Anchor.parse(data)
    except PacketError as exc:
        assert exc.reason == "malformed"
    else:
        assert (anchor.pack() if anchor else live.NO_ANCHOR) == data


@given(st.binary(max_size=20))
def test_the_hand_parser_takes_any_bytes(data) -> None:
    try:
        raised, anchor = msg.parse_hand(data)
    except PacketError as exc:
        assert exc.reason == "malformed"
    else:
        assert msg.pack_hand(raised, anchor) == data or data[1:] == live.NO_ANCHOR


@given(st.binary(max_size=30))
def test_the_rebase_parser_takes_any_bytes(data) -> None:
    try:
        base = live.Base.parse(data)
    except PacketError as exc:
        assert exc.reason == "malformed"
    else:
        assert base.pack() == data


def test_impossible_values_are_refused() -> None:
    with pytest.raises(UsageError):
        live.pack_trailer(1 << 15, None)
    with pytest.raises(UsageError):
        live.pack_trailer(0, b"short")
    with pytest.raises(UsageError):
        live.Anchor(0, bytes(8)).pack()
    with pytest.raises(UsageError):
        live.Anchor(4, bytes(7)).pack()


def test_macs_tell_packets_apart() -> None:
    key = os.urandom(8)
    args = ("00" * 8, bytes(32), 7, MODE.wire_index, 4, [b"\x01" * 8] * 2)
    base = live.mac(key, live.voice_fields(*args))
    assert live.mac(key, live.voice_fields(*args)) == base
    others = [
        live.voice_fields("00" * 8, bytes(32), 8, *args[3:]),  # another counter
        live.voice_fields(*args[:4], 5, args[5]),  # another position
        live.voice_fields(*args[:5], [b"\x01" * 8, b"\x02" * 8]),  # another frame
        live.voice_fields(*args, 1, [b"\x03" * 4] * 2),  # FEC copies count
        live.voice_fields("00" * 8, bytes([1]) + bytes(31), *args[2:]),  # another speaker
    ]
    # 15-bit MACs collide now and then: four packets all colliding would be 2^-60.
    assert sum(live.mac(key, f) == base for f in others) <= 1
    assert live.mac(os.urandom(8), live.voice_fields(*args)) != base or True


# ------------------------------------------------------------------ the chain


def _chain(per: int = 4, length: int = 64) -> tuple[live.Chain, live.Checker[int]]:
    speaker, session = os.urandom(32), os.urandom(8)
    chain = live.Chain(speaker, session, per, length=length)
    return chain, live.Checker(speaker, session, chain.anchor, BASE)


def test_a_revealed_key_verifies_the_interval_before_and_nothing_else() -> None:
    chain, checker = _chain()
    got = []
    for counter in range(100, 113):
        fields = counter.to_bytes(3, "big")
        _, mac_value, link = live.split_trailer(chain.trailer(BASE, counter, fields))
        assert (link is not None) == (counter in (104, 108, 112))  # first of each interval
        got.append(checker.receive(counter, fields, mac_value, link, counter))
    assert [v.verified for v in got if v.verified] == [
        [100, 101, 102, 103],
        [104, 105, 106, 107],
        [108, 109, 110, 111],
    ]
    assert not any(v.forged or v.late for v in got)


def test_a_key_lost_on_the_way_is_recovered_from_the_next_one() -> None:
    chain, checker = _chain()
    verified = []
    for counter in range(100, 113):
        fields = bytes([counter])
        trailer = chain.trailer(BASE, counter, fields)
        if counter == 104:
            continue  # lost: the packet that revealed interval 0's key
        _, mac_value, link = live.split_trailer(trailer)
        verified += checker.receive(counter, fields, mac_value, link, counter).verified
    assert verified == [100, 101, 102, 103, 105, 106, 107, 108, 109, 110, 111]


def test_a_false_link_or_a_wrong_mac_is_forged() -> None:
    chain, checker = _chain()
    for counter in range(100, 104):
        _, mac_value, link = live.split_trailer(chain.trailer(BASE, counter, b"x"))
        checker.receive(counter, b"x", mac_value, link, counter)
    # a key holder's packet in interval 1 revealing a made-up key
    fake = checker.receive(104, b"y", 0, os.urandom(8), "fake link")
    assert fake.forged == ["fake link"] and not fake.verified
    # a blind MAC (no key out for interval 1 yet)
    _, real_mac, _ = live.split_trailer(chain.trailer(BASE, 105, b"z"))
    checker.receive(105, b"z", real_mac ^ 1, None, "blind")
    _, mac_value, link = live.split_trailer(chain.trailer(BASE, 108, b"w"))
    out = checker.receive(108, b"w", mac_value, link, 108)
    assert out.forged == ["blind"]


def test_a_valid_mac_made_after_the_key_was_out_proves_nothing() -> None:
    """The attack delayed disclosure is about: a key holder who has seen the key of interval
    0 makes a valid MAC for a packet of interval 0 the listener lost. It arrives after the
    listener heard interval 1: it is not verified (nor flagged: it proves nothing)."""
    chain, checker = _chain()
    links = {}
    for counter in range(100, 106):
        fields = bytes([counter])
        _, mac_value, link = live.split_trailer(chain.trailer(BASE, counter, fields))
        links[counter] = link
        if counter == 102:
            continue  # the listener lost it
        checker.receive(counter, fields, mac_value, link, counter)
    key = links[104]  # L_1: the key of interval 0, revealed at counter 104
    forged = live.mac(key, b"injected")
    out = checker.receive(102, b"injected", forged, None, "late forgery")
    assert out.late == 1 and not out.verified and not out.forged


def test_the_checker_keeps_bounded_state() -> None:
    _, checker = _chain(length=live.CHAIN_LEN)
    for counter in range(100, 100 + live.MAX_PENDING + 500):
        checker.receive(counter, b"", 0, None, counter)
    assert len(checker.pending_items()) == live.MAX_PENDING


# ------------------------------------------------------------------ over the simulated channel


@pytest.fixture(scope="module")
def attacked() -> dict:
    """SHORT_FAST, Codec2 1600 at the planner's 4 frames per packet, 12 s of speech; Eve
    injects a packet in the speaker's name early in two intervals."""
    return run_live_attack(LiveAttackSettings(preset("SHORT_FAST"), MODE))


def test_injected_frame_is_flagged_within_2_s_of_speech(attacked) -> None:
    assert attacked["injections"] == 2
    for name, li in attacked["listeners"].items():
        assert li["injections_received"] == 2, name
        assert all(t is not None and 0 < t <= FLAG_WITHIN for t in li["seconds_to_flag"]), name
        assert li["verdict"] == "forged"
    # Ben heard the speaker's packet under the same counter: flagged at once.
    assert max(attacked["listeners"]["ben"]["seconds_to_flag"]) < 0.5
    # Dan never heard the speaker's packets Eve replaced: the next revealed key told him.
    assert max(attacked["listeners"]["dan"]["seconds_to_flag"]) <= 1.2


def test_verified_only_plays_nothing_injected(attacked) -> None:
    ben, cat = attacked["listeners"]["ben"], attacked["listeners"]["cat"]
    assert ben["injected_frames_played"] == 8  # two packets of 4 frames, played at once
    assert cat["verified_only"] and cat["injected_frames_played"] == 0
    assert cat["frames_played_not_said"] == 0  # every frame it played, the speaker said
    # ... and it plays the rest: all but the two packets Eve's raced (their counters were hers)
    assert cat["played_share"] >= 0.95
    # the price: about an interval and a packet of delay
    delay = cat["latency_ms_p50"] - ben["latency_ms_p50"]
    assert 300 <= delay <= 1500, delay


@pytest.mark.parametrize("profile", ["SHORT_FAST", "SHORT_TURBO"])
def test_live_checks_cost_at_most_6_bytes_a_voice_packet(profile) -> None:
    """Trailers, revealed keys and the anchor in hands, grants and beacons, counted on the
    packets that went out (no packets of their own)."""
    r = run_live_attack(LiveAttackSettings(preset(profile), MODE, seconds=20, inject_after=()))
    assert r["key_reveals"] >= 20
    assert 2.0 < r["added_bytes_per_voice_packet"] <= MOST_BYTES, r


@pytest.mark.parametrize("profile", ["SHORT_FAST", "SHORT_TURBO"])
def test_a_counter_far_ahead_is_flagged_within_2_s_too(profile) -> None:
    """Eve takes a counter 30 packets ahead of the speaker, so no key would cover it for
    seconds; her words are placed (and played) now, and flagged within 2 s anyway."""
    r = run_live_attack(LiveAttackSettings(preset(profile), MODE, ahead=30))
    for name, li in r["listeners"].items():
        assert li["injections_received"] == 2, name
        assert all(t is not None and 0 < t <= FLAG_WITHIN for t in li["seconds_to_flag"]), name
        assert li["injected_frames_played"] == (
            0 if li["verified_only"] else 2 * r["frames_per_packet"]
        )


@pytest.mark.parametrize("profile", ["SHORT_FAST", "SHORT_TURBO"])
def test_without_injection_everything_is_verified_incrementally(profile) -> None:
    r = run_live_attack(
        LiveAttackSettings(preset(profile), MODE, seconds=10, inject_after=(), dtx=True, fec=True)
    )
    assert r["key_reveals"] >= 8
    for name, li in r["listeners"].items():
        assert li["flags"] == 0 and li["verdict"] == "verified", name
        assert li["verified_share"] == 1.0 and li["frames_played_not_said"] == 0
        # each packet verified within about an interval and a little airtime
        assert li["seconds_to_verify_max"] <= FLAG_WITHIN, name
    assert r["listeners"]["cat"]["played_share"] == 1.0


def test_loss_makes_nothing_forged_and_most_speech_verified() -> None:
    r = run_live_attack(
        LiveAttackSettings(
            preset("SHORT_FAST"), MODE, seconds=15, inject_after=(), loss=0.1, fec=True
        )
    )
    for name, li in r["listeners"].items():
        assert li["flags"] == 0 and li["verdict"] in ("verified", "partial", None), name
        assert li["verified_share"] >= 0.8 and li["frames_played_not_said"] == 0, name


# ------------------------------------------------------------------ sans-I/O


class Trio:
    """A moderator, a speaker (ana), a key holder (eve) and a listener (ben), in memory."""

    def __init__(self, now: float = T0, grant: int = 60, *, beacon_only: bool = False) -> None:
        self.mod_id, self.ana_id, self.eve_id, self.ben_id = (Identity.generate() for _ in range(4))
        members = [i.public for i in (self.ana_id, self.eve_id, self.ben_id)]
        self.rooms = {
            i.identity: Room(
                bytes(8),
                bytes(range(32)),
                0,
                [self.mod_id.public],
                i,
                MemoryCounters(),
                roster=members if i is self.mod_id else (),
            )
            for i in (self.mod_id, self.ana_id, self.eve_id, self.ben_id)
        }
        self.mod, self.ana, self.eve, self.ben = self.rooms.values()
        self.now = now
        self.position = 0
        self.send(self.ana.raise_hand(self.now))
        grant = self.mod.grant(self.ana_id.identity, grant, self.now)
        self.send(grant, to=[self.ana, self.eve] if beacon_only else [self.ana, self.ben, self.eve])
        if beacon_only:  # ben lost every copy of the grant: a beacon tells him
            self.send(self.mod.beacon(self.now), to=[self.ben])

    def send(self, packet: bytes, to=None) -> list:
        """Deliver ``packet``; returns what the listener, ben, made of it."""
        events = []
        for room in to or (self.mod, self.ben, self.eve):
            got = room.receive(packet, self.now)
            events += got if room is self.ben else []
        return events

    def speak(self, packets: int, *, lose=()) -> list:
        """``packets`` voice packets of 4 frames (0.16 s each)."""
        events = []
        for n in range(packets):
            frames = [bytes([self.position % 251]) * 8] * 4
            packet = self.ana.voice(MODE, self.position, frames, self.now)
            self.position += 4
            self.now += 0.16
            if n not in lose:
                events += self.send(packet)
            for extra in self.ana.live_packets():  # a rebase after a key change
                events += self.send(extra)
        return events

    def seal(self) -> list:
        return [e for p in self.ana.end_over(self.now) for e in self.send(p)]

    def forger(self, counter: int) -> Sender:
        """Eve as ana: the room key and ana's session (in the grant and beacons)."""
        forger = Sender(
            self.eve.keys, self.ana_id.identity, MemoryCounters(), session=self.ana.sender.session
        )
        forger._next, forger._limit = counter, counter + 1
        return forger

    def forged(self, counter: int, position: int, trailer: bytes = live.NO_TRAILER) -> bytes:
        return self.forger(counter).voice(
            MODE, position, [b"\x66" * 8] * 4, self.now, trailer=trailer
        )


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_the_next_interval_verifies_what_the_last_one_said() -> None:
    t = Trio()
    assert t.ben.floor_anchor == t.ana._chain.anchor  # from the moderator's grant
    events = t.speak(4)
    assert not _of(events, SpeechVerified)  # no key of ana's is out yet
    events = t.speak(1)  # the first packet of the next interval reveals the key
    (verified,) = _of(events, SpeechVerified)
    assert len(verified.packets) == 4 and verified.by == "live"
    events = t.speak(3) + t.seal()
    (tail,) = _of(events, SpeechVerified)
    assert tail.by == "seal" and len(tail.packets) == 4
    assert _of(events, OverEnded)[0].verdict == "verified"


def test_a_listener_that_missed_the_grant_checks_live_from_a_beacon() -> None:
    t = Trio(beacon_only=True)
    assert t.ben.floor_anchor == t.ana._chain.anchor
    events = t.speak(9)
    assert sum(len(e.packets) for e in _of(events, SpeechVerified)) == 8


def test_a_late_injection_under_a_lost_counter_is_flagged_on_arrival() -> None:
    t = Trio()
    counter = t.ana.sender.next_counter + 2
    t.speak(6, lose={2})  # ben lost the speaker's third packet; its key is out
    events = t.send(t.forged(counter, 8), to=[t.ben])
    (flag,) = _of(events, SpeechFlagged)
    assert flag.reason == "live" and flag.positions == (8, 9, 10, 11)
    assert _of(t.seal(), OverEnded)[0].verdict == "forged"


def test_a_forgery_made_with_a_revealed_key_is_not_verified_and_fails_the_seal() -> None:
    """Eve waits for the key of interval 0, then makes a valid MAC for the packet ben lost:
    too late to be verified (ben had heard interval 1), so a --verified-only listener does
    not play it; the seal shows the over forged."""
    t = Trio()
    first = t.ana.sender.next_counter
    t.speak(6, lose={2})
    key = t.ana._chain._links[1]  # what the packet at first + 4 revealed
    fields = live.voice_fields(
        t.eve.keys.key_id, t.ana_id.identity, first + 2, MODE.wire_index, 8, [b"\x66" * 8] * 4
    )
    trailer = live.pack_trailer(live.mac(key, fields), None)
    events = t.send(t.forged(first + 2, 8, trailer), to=[t.ben])
    assert _of(events, Voice) and not _of(events, SpeechVerified)
    assert not _of(events, SpeechFlagged)
    assert t.ben.stats["live_late"] == 1
    assert _of(t.seal(), OverEnded)[0].verdict == "forged"


def test_a_packet_revealing_a_false_key_is_flagged() -> None:
    t = Trio()
    t.speak(5)
    fake = t.forged(t.ana.sender.next_counter, t.position, live.pack_trailer(0, os.urandom(8)))
    (flag,) = _of(t.send(fake, to=[t.ben]), SpeechFlagged)
    assert flag.reason == "link"


def test_two_packets_under_one_counter_are_flagged_when_the_second_comes() -> None:
    t = Trio()
    t.speak(2)
    fake = t.forged(t.ana.sender.next_counter, t.position)
    assert _of(t.send(fake, to=[t.ben]), Voice)  # first: accepted and played
    (flag,) = _of(t.speak(1), SpeechFlagged)
    assert flag.reason == "counter" and flag.positions == (8, 9, 10, 11)


def test_an_injection_flood_keeps_bounded_state() -> None:
    t = Trio()
    t.speak(1)
    first = t.ana.sender.next_counter + 10
    for i in range(MAX_PENDING + 200):
        t.send(t.forged(first + i, 4 * (i % 200) + 8), to=[t.ben])
    listening = t.ben._listening[t.ana_id.identity]
    assert len(listening.live.pending_items()) <= MAX_PENDING
    assert len(listening.seen) <= MAX_PENDING


def test_a_key_rotation_mid_over_neither_crashes_the_speaker_nor_flags_it() -> None:
    t = Trio()
    t.speak(5)
    for packet in t.mod.remove(t.eve_id.identity, t.now):  # counters restart under the new key
        t.send(packet, to=[t.ana, t.ben])
    assert t.ana.epoch == t.ben.epoch == 1
    events = t.speak(14)
    assert not _of(events, SpeechFlagged)
    # The speaker's signed rebase carries its intervals on under the new key: all but the
    # packet before it and the last interval (the seal's) are verified live.
    assert sum(len(e.packets) for e in _of(events, SpeechVerified)) >= 14 - 1 - 4
    (ended,) = _of(t.seal(), OverEnded)  # the new key's receiver continued the positions
    assert ended.verdict == "verified"
    assert not t.ben.stats["flagged_speech"]


def test_a_rebase_from_another_over_moves_nothing() -> None:
    """A recorded rebase (signed by the speaker, from an earlier over: another anchor) is
    refused; the speaker's own rebase after the key change carries the checks on."""
    t = Trio()
    t.speak(5)
    for packet in t.mod.remove(t.eve_id.identity, t.now):
        t.send(packet, to=[t.ana, t.ben])
    stale = live.Base(t.ana.sender.next_counter, 0, os.urandom(8))
    recorded = t.ana.sender.control_signed(ControlKind.LIVE_BASE, stale.pack(), t.ana_id, t.now)
    (dropped,) = _of(t.send(recorded, to=[t.ben]), Dropped)
    assert dropped.reason == "stale_live_base"
    events = t.speak(10)
    assert not _of(events, SpeechFlagged)
    assert sum(len(e.packets) for e in _of(events, SpeechVerified)) >= 10 - 1 - 4


@settings(max_examples=40, deadline=None)
@given(
    st.data(),
    st.integers(min_value=1, max_value=40),
    st.booleans(),
)
def test_no_false_flags_whatever_is_lost_repeated_or_reordered(data, packets, skips) -> None:
    """Genuine speech only (DTX pauses up to the longest DTX makes, key reveals, the seal),
    delivered with swaps of neighbours, then 40 % loss and duplicates: nothing is flagged."""
    t = Trio()
    sent = []  # every packet the speaker sends, in order
    position = 0
    for n in range(packets):
        if skips and data.draw(st.booleans(), label=f"skip before {n}"):
            position += data.draw(
                st.integers(min_value=5, max_value=MAX_SKIP_FRAMES), label="pause"
            )
        frames = [bytes([n % 251, position % 251]) * 4] * 4
        sent.append(t.ana.voice(MODE, position, frames, t.now))
        position += 4
        t.now += 0.16
    sent += t.ana.end_over(t.now)
    for i in range(0, len(sent) - 1, 3):  # packets that overtake their neighbour on the way
        if data.draw(st.booleans(), label=f"swap {i}"):
            sent[i], sent[i + 1] = sent[i + 1], sent[i]
    delivered = []
    for packet in sent:
        fate = data.draw(st.sampled_from(["ok", "ok", "lost", "lost", "twice"]), label="fate")
        delivered += [] if fate == "lost" else [packet] * (2 if fate == "twice" else 1)
    events = [e for p in delivered for e in t.send(p, to=[t.ben])]
    assert not _of(events, SpeechFlagged)
    # (The seal's verdict is not asserted: at this loss 8-bit positions can be placed 256
    # frames off, which shows as forged at the seal; see THREATS.md.)


def test_a_counter_taken_far_ahead_is_flagged_by_the_next_key() -> None:
    """Eve takes a counter 20 packets ahead of the speaker (its key would be out only when
    the speaker gets there, seconds later) for words placed now: the next key shows the
    speaker said those positions under earlier counters."""
    t = Trio()
    t.speak(3)
    fake = t.forged(t.ana.sender.next_counter + 20, t.position + 8)
    (heard,) = _of(t.send(fake, to=[t.ben]), Voice)
    assert heard.frames.position == 20  # placed (and played) now
    events = t.speak(6)  # packets at positions 20.. verified when the next key comes
    (flag,) = _of(events, SpeechFlagged)
    assert flag.reason == "ahead" and flag.positions == (20, 21, 22, 23)


def test_a_counter_ahead_placed_ahead_is_flagged_before_it_plays() -> None:
    """Taken 40 packets ahead, Eve's words are placed where that counter belongs (5 s on):
    they are flagged before the speaker gets there, so before they play."""
    t = Trio()
    t.speak(3)
    fake = t.forged(t.ana.sender.next_counter + 40, t.position + 8)
    (heard,) = _of(t.send(fake, to=[t.ben]), Voice)
    placed = heard.frames.position
    assert placed > t.position + 100
    while not _of(t.speak(1), SpeechFlagged):
        assert t.position < placed  # ... flagged before the speaker says those positions


def test_an_over_across_the_hourly_ratchet_is_checked_without_false_flags() -> None:
    """The speaker keeps its over's key through the hour (within the grace), then moves to
    the new key, whose counters restart: a signed rebase says where its intervals go on."""
    edge = step_start(ratchet_step(T0) + 1)
    t = Trio(now=edge - 1.0, grant=400)
    events = t.speak(1300)  # 208 s: across the hour, and past the over key's grace
    assert t.ana._over_sender(t.now)[1] is t.ana.keys  # it moved to the new hour's key
    verified = sum(len(e.packets) for e in _of(events, SpeechVerified))
    assert not _of(events, SpeechFlagged) and verified >= 1300 - 1 - 4
    (ended,) = _of(t.seal(), OverEnded)  # the new key's receiver continued the positions
    assert ended.verdict == "verified"
    assert not t.ben.stats["flagged_speech"]


def test_the_adversary_bench_row_runs_and_no_injected_frame_plays_verified_only() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed
    from bench.adversary import ATTACKS, live_injection

    assert live_injection in ATTACKS
    row = live_injection(True)
    assert row.tried > 0 and row.played == 0 and row.rejected <= row.tried
    assert 0 < row.memory_bytes < 4_000_000  # the pending checks are bounded (MAX_PENDING)
