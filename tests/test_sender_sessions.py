"""Sender sessions: who may introduce one, and what a replay or a key holder cannot do with them."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from test_room import KEY, MODE, ROOM_ID, T0, Net, _grant, _of

from relay.core.identity import Identity
from relay.core.room import Clip, Dropped, FloorChanged, HandRaised, Room, Voice
from relay.core.session import INTRO_FRESH, MAX_SESSIONS, Receiver, Sender
from relay.core.wire import ControlKind
from relay.store.counters import MemoryCounters


def _sessions(room: Room, ident: bytes) -> int:
    return sum(1 for m in room.receiver.export() if m.identity == ident)


def test_a_recorded_introduction_cannot_bring_back_a_session():
    """A HELLO older than INTRO_FRESH introduces nothing; a session a receiver dropped for
    newer ones cannot come back, however fresh its recording."""
    net = Net(1, 1)
    a = net.speakers[0]
    li = net.listeners[0]
    old = a.raise_hand(net.now)
    fresh = Room(ROOM_ID, KEY, 0, [net.mod_id.public], Identity.generate(), MemoryCounters())
    assert _of(fresh.receive(old, net.now + INTO_PAST), Dropped)[0].reason == "stale_session"
    # Five restarts of a (five sessions), each introduced a second apart.
    first = old
    assert _of(li.receive(first, net.now), HandRaised)
    for i in range(1, MAX_SESSIONS + 1):
        again = Room(ROOM_ID, KEY, 0, [net.mod_id.public], a.me, MemoryCounters())
        li.receive(again.raise_hand(net.now + i), net.now + i)
    assert _sessions(li, a.me.identity) == MAX_SESSIONS
    # The first session was dropped: its recording, replayed at once, is refused.
    li2_view = li.receive(first, net.now + MAX_SESSIONS)
    assert _of(li2_view, Dropped)[0].reason == "stale_session"
    sender = Sender(li.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
    clip = sender.clip(b"\x40old session", net.now)
    assert _of(li.receive(clip, net.now + MAX_SESSIONS), Dropped)[0].reason == "unknown_session"


INTO_PAST = INTRO_FRESH + 1


def test_a_key_holder_cannot_create_sessions_or_force_work():
    """Packets under made-up sessions, of every unsigned or forged kind, create no state:
    each costs one key derivation and one trial decryption, and is refused."""
    net = Net(2, 2)
    mallory = net.speakers[1]
    li = net.listeners[0]
    before = len(li.receiver.export())
    for i in range(200):
        s = Sender(mallory.keys, net.mod_id.identity, MemoryCounters(), session=os.urandom(8))
        s._next, s._limit = i, i + 1
        kind = (ControlKind.MOD, ControlKind.BEACON, ControlKind.HAND, 9)[i % 4]
        for packet in (s.clip(b"\x40x", net.now), s.control(kind, bytes(120), net.now)):
            (event,) = li.receive(packet, net.now)
            assert isinstance(event, Dropped)
            assert event.reason in {"unknown_session", "forged_signature", "unknown_kind"}
    assert len(li.receiver.export()) == before
    assert _sessions(li, net.mod_id.identity) <= MAX_SESSIONS
    # The moderator is still obeyed.
    evs = _grant(net, net.speakers[0])
    assert _of(evs[li], FloorChanged)


def test_a_restarted_moderator_is_obeyed_and_its_old_actions_do_not_come_back():
    """The moderator restarts with counters restored from an old backup (lower than what the
    room saw): its new session's grants and beacons are obeyed; an action of the old session
    signed before the newer ones is refused when it arrives late."""
    net = Net(2, 3)
    a, b = net.speakers
    _grant(net, a)
    net.over(a)
    net.send(b.raise_hand(net.now), b)
    late = net.mod.grant(b.me.identity, 30, net.now)  # held back by a bridge
    net.now += 2
    restarted = Room(
        ROOM_ID,
        KEY,
        0,
        [net.mod_id.public],
        net.mod_id,
        MemoryCounters(),
        roster=[li.me.public for li in net.listeners],
    )
    net.rooms[net.mod_id.identity] = net.mod = restarted
    evs = net.send(restarted.beacon(net.now), restarted)
    assert all(not _of(evs[li], Dropped) for li in net.listeners)
    net.send(a.raise_hand(net.now), a)
    evs = net.send(restarted.grant(a.me.identity, 30, net.now), restarted)
    assert all(_of(evs[li], FloorChanged) for li in net.listeners)
    for li in net.listeners:
        assert _of(li.receive(late, net.now), Dropped)[0].reason == "stale_moderation"
        assert li.floor == a.me.identity
    packet = a.voice(MODE, 0, [b"\x01" * 8] * 4, net.now)
    assert all(_of(li.receive(packet, net.now), Voice) for li in net.listeners)


def test_a_late_joiner_learns_the_speakers_session_from_a_beacon():
    net = Net(1, 1)
    a = net.speakers[0]
    _grant(net, a)
    late = Room(ROOM_ID, KEY, 0, [net.mod_id.public], Identity.generate(), MemoryCounters())
    packet = a.voice(MODE, 0, [b"\x01" * 8] * 4, net.now)
    assert _of(late.receive(packet, net.now), Dropped)  # who is speaking, under what?
    assert _of(late.receive(net.mod.beacon(net.now), net.now), FloorChanged)
    packet = a.voice(MODE, 4, [b"\x02" * 8] * 4, net.now)
    assert _of(late.receive(packet, net.now), Voice)


def test_a_plain_receiver_knows_nothing_it_was_not_told():
    """Without a rooms layer nothing introduces a session: control and clips under an
    unknown session are refused unopened."""
    keys = Room(
        ROOM_ID, KEY, 0, [Identity.generate().public], Identity.generate(), MemoryCounters()
    ).keys
    sender = Sender(keys, b"alice", MemoryCounters())
    receiver = Receiver(keys)
    receiver.add_sender(b"alice")
    assert receiver.receive(sender.over_end(3, T0), T0).reason == "unknown_session"
    assert receiver.receive(sender.voice(MODE, 0, [bytes(8)] * 4, T0), T0).reason == (
        "unknown_session"
    )
    receiver.add_sender(b"alice", sender.session)
    assert receiver.receive(sender.voice(MODE, 4, [bytes(8)] * 4, T0), T0).sender == b"alice"


def test_the_clear_session_bytes_link_nothing_across_a_key_rotation():
    """A session outlives a rotation, but what travels in the clear is masked per room key
    and member: an eavesdropper cannot match a member's packets under the old and new key."""
    net = Net(1, 2)
    before = net.mod.beacon(net.now)
    seal = net.speakers[0].lower_hand(net.now)
    session = net.mod.sender.session
    for packet in net.mod.remove(net.listeners[1].me.identity, net.now):
        net.send(packet, net.mod, to=[net.listeners[0]])
    after = net.mod.beacon(net.now)
    assert net.mod.sender.session == session and net.listeners[0].epoch == 1
    assert before[7:15] != after[7:15]
    assert before[7:15] != seal[7:15]  # two members under one key: unrelated bytes too
    evs = net.send(after, net.mod, to=[net.listeners[0]])
    assert not _of(evs[net.listeners[0]], Dropped)


def test_unsigned_runs_are_bounded_and_the_sender_reintroduces_itself_in_time():
    """Clips may run at most UNSIGNED_AHEAD past the sender's last signed counter; a room says
    when to introduce itself again (every INTRO_EVERY), long before receivers would refuse."""
    from relay.core.room import UNSIGNED_AHEAD
    from relay.core.session import INTRO_EVERY

    net = Net(1, 1)
    a, li = net.speakers[0], net.listeners[0]
    li.receive(a.introduce(net.now), net.now)
    wanted_at = None
    for i in range(UNSIGNED_AHEAD):
        if wanted_at is None and a.needs_introduction:
            wanted_at = i
        assert _of(li.receive(a.clip(b"\x40" + i.to_bytes(2, "big"), net.now), net.now), Clip)
    assert wanted_at == INTRO_EVERY
    # A sender that ignores the hint is refused past the bound, until it says who it is.
    assert _of(li.receive(a.clip(b"\x40late", net.now), net.now), Dropped)[0].reason == "ahead"
    li.receive(a.introduce(net.now), net.now)
    assert not a.needs_introduction
    assert _of(li.receive(a.clip(b"\x40again", net.now), net.now), Clip)


_FUZZ_NET = Net(1, 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(6)), st.binary(max_size=200))
def test_arbitrary_bytes_after_a_real_header_never_crash_a_room(ptype, tail):
    """Any type, the moderator's real short id, hint and a counter; then anything: the room
    drops it (or shows a notice), never raises, and moves no window."""
    net = _FUZZ_NET
    li = net.listeners[0]
    real = net.mod.beacon(net.now)
    head = bytes(((1 << 6) | (ptype << 3),)) + real[1:7]
    before = li.receiver.export()
    for event in li.receive(head + tail, net.now):
        assert isinstance(event, Dropped) or type(event).__name__ == "RelayNoticed"
    assert li.receiver.export() == before
