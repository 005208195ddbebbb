"""Rooms, sans-I/O: a moderator, 3 speakers and 20 listeners passing packets in memory."""

from __future__ import annotations

import pytest

from relay.core import roommsg as msg
from relay.core.identity import Identity, PublicIdentity
from relay.core.keytree import ratchet_step, step_start
from relay.core.room import (
    RATCHET_GRACE,
    RATCHET_SKEW,
    Clip,
    Dropped,
    FloorChanged,
    HandRaised,
    KeyRotated,
    MemberChanged,
    OverEnded,
    Room,
    Voice,
)
from relay.core.wire import ControlKind
from relay.errors import UsageError
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
T0 = 1_750_000_000.0
ROOM_ID = bytes(range(8))
KEY = bytes(range(100, 132))


class Net:
    def __init__(self, speakers=3, listeners=20):
        self.mod_id = Identity.generate()
        self.speaker_ids = [Identity.generate() for _ in range(speakers)]
        self.listener_ids = [Identity.generate() for _ in range(listeners)]
        everyone = [self.mod_id, *self.speaker_ids, *self.listener_ids]
        # Listeners were enrolled with `invite --for`: the moderator knows their X25519 keys.
        roster = [i.public for i in self.listener_ids]
        self.rooms = {
            ident.identity: Room(
                ROOM_ID,
                KEY,
                0,
                [self.mod_id.public],
                ident,
                MemoryCounters(),
                roster=roster if ident is self.mod_id else (),
            )
            for ident in everyone
        }
        self.mod = self.rooms[self.mod_id.identity]
        self.speakers = [self.rooms[i.identity] for i in self.speaker_ids]
        self.listeners = [self.rooms[i.identity] for i in self.listener_ids]
        self.now = T0
        self.skew: dict[Room, float] = {}  # seconds a member's clock runs ahead of now

    def send(self, packet, sender, *, to=None, lose=()):
        """Deliver one packet to everybody else; returns {room: events}."""
        out = {}
        for room in to if to is not None else self.rooms.values():
            if room is sender or room in lose:
                continue
            out[room] = room.receive(packet, self.now + self.skew.get(room, 0.0))
        return out

    def over(self, speaker, frames=20, fpp=4, *, lose_at=()):
        """The speaker talks ``frames`` frames and ends the over; returns listeners' events."""
        events = {room: [] for room in self.rooms.values()}
        for i, first in enumerate(range(0, frames, fpp)):
            batch = [bytes([first + j % 7]) * 8 for j in range(min(fpp, frames - first))]
            packet = speaker.voice(MODE, first, batch, self.now)
            lose = lose_at[i] if i < len(lose_at) else ()
            for room, ev in self.send(packet, speaker, lose=lose).items():
                events[room] += ev
            self.now += 0.16
        for packet in speaker.end_over(self.now):
            for room, ev in self.send(packet, speaker).items():
                events[room] += ev
        return events


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _grant(net, speaker, seconds=30):
    """Raise the speaker's hand (the moderator learns its counter), then grant the floor."""
    if speaker is not net.mod:
        net.send(speaker.raise_hand(net.now), speaker)
    return net.send(net.mod.grant(speaker.me.identity, seconds, net.now), net.mod)


def test_hand_queue_grant_and_verified_over_for_20_listeners():
    net = Net()
    for sp in net.speakers:
        evs = net.send(sp.raise_hand(net.now), sp)
        assert _of(evs[net.mod], HandRaised)
    assert net.mod.hands == [s.me.identity for s in net.speakers]
    first = net.speakers[0]
    evs = _grant(net, first)
    assert all(_of(evs[li], FloorChanged)[0].holder == first.me.identity for li in net.listeners)
    assert first.holds_floor(net.now)
    assert net.mod.hands == [s.me.identity for s in net.speakers[1:]]
    events = net.over(first)
    for li in net.listeners:
        assert len(_of(events[li], Voice)) == 5
        (ended,) = _of(events[li], OverEnded)
        assert ended.verdict == "verified" and ended.frames == 20
        assert li.floor is None  # the over released the floor


def test_floor_contention_only_the_holder_is_heard():
    net = Net()
    a, b = net.speakers[:2]
    for sp in (a, b):
        net.send(sp.raise_hand(net.now), sp)
    _grant(net, a)
    with pytest.raises(UsageError, match="floor"):
        b.voice(MODE, 0, [bytes(8)], net.now)
    # b transmits anyway, bypassing its own room object, at the same time as a.
    rogue = b.sender.voice(MODE, 0, [b"\x55" * 8] * 4, net.now)
    legit = a.voice(MODE, 0, [b"\x11" * 8] * 4, net.now)
    for li in net.listeners:
        # Nobody vouched for b's voice (no grant named its session): refused unopened.
        assert _of(li.receive(rogue, net.now), Dropped)[0].reason == "unknown_session"
        assert _of(li.receive(legit, net.now), Voice)
        assert li.stats["unknown_session"] == 1


def test_forged_grants_are_ignored():
    net = Net()
    mallory = net.speakers[2]  # holds the room key, is not a moderator
    net.send(mallory.introduce(net.now), mallory)  # so everyone can open her packets
    fake = msg.ModMessage(msg.ModAction.GRANT, mallory.me.identity, 60, int(net.now))
    # 1. signed with her own key, from her own identity
    own = mallory.sender.control_signed(ControlKind.MOD, fake.pack(), mallory.me, net.now)
    # 2. sealed as the moderator (she can derive his packet key) but signed by her
    from relay.core.session import Sender
    from relay.core.signing import signed_message

    as_mod = Sender(
        mallory.keys, net.mod_id.identity, MemoryCounters(), session=net.mod.sender.session
    )
    header_counter = 10_000
    as_mod._next, as_mod._limit = header_counter, header_counter + 10
    packet = as_mod.control(ControlKind.MOD, fake.pack() + bytes(64), net.now)
    forged_sig = mallory.me.sign(
        signed_message(
            mallory.keys.key_id, net.mod_id.identity, packet[:7], ControlKind.MOD, fake.pack()
        )
    )
    as_mod._next = header_counter
    packet = as_mod.control(ControlKind.MOD, fake.pack() + forged_sig, net.now)
    for li in net.listeners:
        assert _of(li.receive(own, net.now), Dropped)[0].reason == "forged_moderation"
        assert _of(li.receive(packet, net.now), Dropped)[0].reason == "forged_signature"
        assert li.floor is None


def test_replayed_and_rewrapped_old_grants_are_ignored():
    net = Net()
    a, b = net.speakers[:2]
    for sp in (a, b):
        net.send(sp.raise_hand(net.now), sp)
    old_grant = net.mod.grant(a.me.identity, 30, net.now)
    net.send(old_grant, net.mod)
    net.now += 1
    net.send(net.mod.grant(b.me.identity, 30, net.now), net.mod)
    for li in net.listeners:
        assert li.floor == b.me.identity
        # The exact old packet: the replay window stops it.
        assert _of(li.receive(old_grant, net.now), Dropped)[0].reason == "replay"
        assert li.floor == b.me.identity
    # An insider re-wraps the old signed body in a fresh packet under the moderator's key
    # (any member can open the old packet and derive the moderator's packet key): the
    # signature covers the original header, so it no longer verifies.
    from relay.core.session import Receiver

    opener = Receiver(a.keys)
    opener.add_sender(net.mod_id.identity, net.mod.sender.session)
    signed_body = opener.receive(old_grant, net.now).payload
    rewrapped = _as(net, a, net.mod, 50_000).control(ControlKind.MOD, signed_body, net.now)
    for li in net.listeners:
        assert _of(li.receive(rewrapped, net.now), Dropped)[0].reason == "forged_signature"
        assert li.floor == b.me.identity


def test_old_grant_replayed_to_a_late_joiner_after_a_beacon_is_stale():
    net = Net()
    a, b = net.speakers[:2]
    for sp in (a, b):
        net.send(sp.raise_hand(net.now), sp)
    old_grant = net.mod.grant(a.me.identity, 30, net.now)
    net.send(old_grant, net.mod)
    net.send(net.mod.grant(b.me.identity, 30, net.now), net.mod)
    late_id = Identity.generate()
    late = Room(ROOM_ID, KEY, 0, [net.mod_id.public], late_id, MemoryCounters())
    late.receive(net.mod.beacon(net.now), net.now)
    assert late.floor == b.me.identity
    assert _of(late.receive(old_grant, net.now), Dropped)[0].reason == "stale_moderation"
    assert late.floor == b.me.identity


def test_late_joiner_converges_on_floor_and_hand_queue():
    net = Net()
    a, b, c = net.speakers
    net.send(a.raise_hand(net.now), a)
    net.send(b.raise_hand(net.now), b)
    net.send(c.raise_hand(net.now), c)
    net.send(net.mod.grant(c.me.identity, 60, net.now), net.mod)
    net.send(net.mod.mute(b.me.identity, net.now), net.mod)
    late = Room(ROOM_ID, KEY, 0, [net.mod_id.public], Identity.generate(), MemoryCounters())
    # Before the beacon the late joiner cannot even open c's voice.
    first = c.voice(MODE, 0, [bytes(8)] * 4, net.now)
    assert _of(late.receive(first, net.now), Dropped)[0].reason == "unknown_sender"
    net.now += 5
    late.receive(net.mod.beacon(net.now), net.now)
    assert late.floor == c.me.identity
    assert [h[:8] for h in late.hands] == [a.me.identity[:8]]
    assert len(late.muted) == 1
    assert _of(late.receive(c.voice(MODE, 4, [bytes(8)] * 4, net.now), net.now), Voice)


def test_tampered_over_is_shown_forged_and_lossy_over_partial():
    net = Net()
    a, mallory = net.speakers[0], net.speakers[1]
    _grant(net, a)
    # Mallory holds the room key: she injects frames as a (her packet lands first).
    from relay.core.session import Sender

    as_a = Sender(mallory.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
    nxt = a.sender.next_counter
    as_a._next, as_a._limit = nxt, nxt + 64  # a's next counters, raced
    injected = as_a.voice(MODE, 0, [b"\x66" * 8] * 4, net.now)
    victims = net.listeners[:5]
    for li in victims:
        assert _of(li.receive(injected, net.now), Voice)  # played: it looks like a
    events = net.over(a)
    for li in victims:
        assert _of(events[li], OverEnded)[0].verdict == "forged"
    for li in net.listeners[5:]:
        assert _of(events[li], OverEnded)[0].verdict == "verified"
    # A lost packet: everything that arrived is still verified (its own segment was lost).
    _grant(net, a)
    lossy = net.listeners[10]
    events = net.over(a, frames=40, lose_at=[(), (lossy,)])
    ended = _of(events[lossy], OverEnded)[0]
    assert ended.verdict == "verified" and ended.segments_ok == ended.segments_total - 1
    # A long over shares segments between packets: a loss leaves its partner unverifiable by
    # the seal; the speaker's live MACs verified it as it played, so the over is verified.
    _grant(net, a)
    events = net.over(a, frames=200, lose_at=[(), (lossy,)])
    ended = _of(events[lossy], OverEnded)[0]
    assert ended.verdict == "verified" and ended.segments_ok < ended.segments_total <= 35
    # Without live checks (a hand raised without a key chain) the partner stays unverifiable.
    net.send(a.sender.hello(ControlKind.HAND, msg.pack_hand(True), a.me, net.now), a)
    net.send(net.mod.grant(a.me.identity, 30, net.now), net.mod)
    events = net.over(a, frames=200, lose_at=[(), (lossy,)])
    ended = _of(events[lossy], OverEnded)[0]
    assert ended.verdict == "partial" and ended.segments_total <= 35
    assert _of(events[net.listeners[11]], OverEnded)[0].verdict == "verified"


def test_removed_member_is_dropped_and_cannot_read_the_new_key():
    net = Net()
    gone = net.listeners[0]
    a = net.speakers[0]
    net.mod.enroll(a.me.public)  # a was invited --for it: it receives new keys
    packets = net.mod.remove(gone.me.identity, net.now)
    assert len(packets) >= 2  # the removal, then the new key in fragments
    rotated = []
    for p in packets:
        for room, events in net.send(p, net.mod).items():
            rotated += [(room, e) for e in events if isinstance(e, KeyRotated)]
    who = {room for room, _ in rotated}
    assert set(net.listeners[1:]) <= who and a in who
    assert gone not in who and gone.epoch == 0
    assert all(r.epoch == 1 for r in who)
    # New traffic: the removed member cannot open it.
    _grant(net, a)
    packet = a.voice(MODE, 0, [bytes(8)] * 4, net.now)
    assert _of(gone.receive(packet, net.now), Dropped)
    assert _of(net.listeners[1].receive(packet, net.now), Voice)
    # Its own later packets are dropped by everyone.
    late = gone.sender.voice(MODE, 0, [bytes(8)] * 4, net.now)
    for li in net.listeners[1:]:
        assert _of(li.receive(late, net.now), Dropped)
    hello = gone.raise_hand(net.now)
    assert all(_of(li.receive(hello, net.now), Dropped) for li in net.listeners[1:3])
    removal = [MemberChanged(gone.me.identity, "removed")]
    assert removal  # the change is announced as an event


def test_only_moderators_moderate_and_appointed_comoderator_can():
    net = Net()
    speaker = net.speakers[0]
    with pytest.raises(UsageError, match="moderator"):
        speaker.grant(net.speakers[1].me.identity, 10, net.now)
    co = net.speakers[1]
    net.send(net.mod.appoint(co.me.public, net.now), net.mod)
    assert co.is_moderator
    net.send(speaker.raise_hand(net.now), speaker)
    evs = net.send(co.grant(speaker.me.identity, 10, net.now), co)
    assert all(_of(evs[li], FloorChanged) for li in net.listeners)


def test_floor_expires():
    net = Net()
    a = net.speakers[0]
    _grant(net, a, seconds=2)
    net.now += 3
    with pytest.raises(UsageError):
        a.voice(MODE, 0, [bytes(8)], net.now)
    rogue = a.sender.voice(MODE, 0, [bytes(8)], net.now)
    assert _of(net.listeners[0].receive(rogue, net.now), Dropped)[0].reason == "floor_violation"


def test_beacon_rate_respects_airtime_share():
    net = Net(1, 1)
    assert net.mod.beacon_interval(0.05) == 5.0
    assert net.mod.beacon_interval(0.5) == pytest.approx(25.0)


def test_seal_copies_are_counted_once_and_a_forged_end_changes_nothing():
    net = Net(2, 3)
    a, mallory = net.speakers
    net.send(mallory.introduce(net.now), mallory)
    _grant(net, a)
    net.send(a.voice(MODE, 0, [bytes(8)] * 4, net.now), a)
    # Mallory ends a's over, unsigned and then signed by herself: nothing happens.
    from relay.core.session import Sender

    as_a = Sender(mallory.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
    as_a._next, as_a._limit = 5000, 5010
    for payload in ((4).to_bytes(4, "big"), bytes(30) + bytes(64)):
        fake_end = as_a.control(ControlKind.OVER_END, payload, net.now)
        for li in net.listeners:
            assert _of(li.receive(fake_end, net.now), Dropped)
            assert li.floor == a.me.identity
    seals = a.end_over(net.now, copies=3)
    assert len(seals) == 3
    for li in net.listeners:
        ended = [e for p in seals for e in li.receive(p, net.now) if isinstance(e, OverEnded)]
        assert [e.verdict for e in ended] == ["verified"]


def test_rekey_is_sent_in_copies_and_applied_once():
    net = Net(1, 6)
    packets = net.mod.remove(net.listeners[0].me.identity, net.now, copies=2)
    rotations = {li: 0 for li in net.listeners[1:]}
    for p in packets:
        for li, events in net.send(p, net.mod, to=net.listeners[1:]).items():
            rotations[li] += len(_of(events, KeyRotated))
    assert set(rotations.values()) == {1}


def test_insider_cannot_push_the_speaker_out_of_its_replay_window():
    net = Net(2, 3)
    a, mallory = net.speakers
    net.send(a.raise_hand(net.now), a)  # the moderator learns a's counter
    _grant(net, a)
    from relay.core.session import Sender

    for ahead in (5_000, 1_000):  # outside the grant's counter range, then inside it
        as_a = Sender(mallory.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
        as_a._next, as_a._limit = ahead, ahead + 1
        injected = as_a.voice(MODE, 0, [b"\x66" * 8] * 4, net.now)
        events = net.send(injected, mallory, to=net.listeners)
        outside = ahead == 5_000
        assert all(bool(_of(ev, Dropped)) == outside for ev in events.values())
    real = a.voice(MODE, 0, [b"\x11" * 8] * 4, net.now)
    for li in net.listeners:
        assert _of(li.receive(real, net.now), Voice)


# --- findings of the second security review, each pinned by a test -------------------------


def _as(net, impostor, victim, counter):
    from relay.core.session import Sender

    # Every key holder knows the victim's session: it is in the clear on control packets.
    forged = Sender(
        impostor.keys, victim.me.identity, MemoryCounters(), session=victim.sender.session
    )
    forged._next, forged._limit = counter, counter + 10
    return forged


def test_unsigned_unknown_kind_cannot_poison_the_moderators_window():
    net = Net(2, 3)
    mallory = net.speakers[1]
    junk = _as(net, mallory, net.mod, (1 << 24) - 2).control(9, b"x", net.now)
    for li in net.listeners:
        assert _of(li.receive(junk, net.now), Dropped)[0].reason == "unknown_kind"
    evs = _grant(net, net.speakers[0])
    assert all(_of(evs[li], FloorChanged) for li in net.listeners)


def test_introduced_puppets_do_not_receive_the_next_key():
    net = Net(2, 3)
    mallory = net.speakers[1]
    puppet = Room(ROOM_ID, KEY, 0, [net.mod_id.public], Identity.generate(), MemoryCounters())
    net.send(puppet.introduce(net.now), puppet, to=[net.mod])
    assert puppet.me.identity in net.mod.introduced
    assert puppet.me.identity not in net.mod.roster
    packets = net.mod.remove(mallory.me.identity, net.now)
    events = [e for p in packets for e in puppet.receive(p, net.now)]
    assert not _of(events, KeyRotated) and puppet.epoch == 0


def test_unusable_x25519_key_is_refused_and_cannot_block_removal():
    net = Net(1, 3)
    from relay.core.identity import PublicIdentity

    with pytest.raises(UsageError, match="X25519"):
        net.mod.enroll(PublicIdentity(Identity.generate().identity, bytes(32)))
    packets = net.mod.remove(net.listeners[0].me.identity, net.now)
    assert len(packets) > 1 and net.mod.epoch == 1


def test_injected_high_counter_does_not_crash_or_silence_the_speaker():
    net = Net(2, 3)
    a, mallory = net.speakers
    _grant(net, a)
    injected = _as(net, mallory, a, a.sender.next_counter + 900).voice(
        MODE, 0, [b"\x66" * 8] * 4, net.now
    )
    real = [a.voice(MODE, i * 4, [bytes([i]) * 8] * 4, net.now) for i in range(3)]
    for li in net.listeners:
        li.receive(injected, net.now)
        for p in real:
            (event,) = _of(li.receive(p, net.now), Voice)
            assert event.frames.position >= 0


def test_a_different_frame_for_a_played_position_makes_the_over_forged():
    net = Net(2, 3)
    a, mallory = net.speakers
    _grant(net, a)
    ahead = _as(net, mallory, a, a.sender.next_counter + 1)
    fake = ahead.voice(MODE, 4, [b"\x66" * 8] * 4, net.now)  # where a's 2nd packet will be
    li = net.listeners[0]
    assert _of(li.receive(fake, net.now), Voice)
    events = net.over(a, frames=12)
    assert _of(events[li], OverEnded)[0].verdict == "forged"


def test_recorded_beacon_replayed_hours_later_is_stale():
    net = Net(1, 1)
    _grant(net, net.speakers[0])
    beacon = net.mod.beacon(net.now)
    fresh = Room(ROOM_ID, KEY, 0, [net.mod_id.public], Identity.generate(), MemoryCounters())
    later = net.now + 6 * 3600
    # A receiver that never heard the moderator's session refuses to learn it from an old
    # beacon; one that knows the session refuses the beacon for its age.
    assert _of(fresh.receive(beacon, later), Dropped)[0].reason == "stale_session"
    assert fresh.floor is None
    knows = net.listeners[0]
    net.send(net.mod.beacon(net.now), net.mod, to=[knows])
    # Within the hour it opens and is stale; hours later the keys have ratcheted on
    # (relay.core.keytree) and it does not even open.
    assert _of(knows.receive(beacon, net.now + 700), Dropped)[0].reason == "stale_moderation"
    assert _of(knows.receive(beacon, later), Dropped)


def test_old_key_carries_no_voice_after_rotation():
    net = Net(2, 3)
    a, gone = net.speakers
    net.mod.enroll(a.me.public)
    for li in net.listeners:
        net.mod.enroll(li.me.public)
    for p in net.mod.remove(gone.me.identity, net.now):
        net.send(p, net.mod)
    _grant(net, a)
    stale = _as(net, gone, a, 100).voice(MODE, 0, [bytes(8)] * 4, net.now)  # old key
    for li in net.listeners:
        assert li.epoch == 1
        assert _of(li.receive(stale, net.now), Dropped)


def test_beacon_fits_the_mtu_with_a_long_hand_queue():
    net = Net(40, 1)
    for sp in net.speakers:
        net.mod.enroll(sp.me.public)  # strangers' hands are capped; enrolled members' are not
        net.send(sp.raise_hand(net.now), sp, to=[net.mod])
    assert len(net.mod.hands) == 40
    assert len(net.mod.beacon(net.now)) <= net.mod.mtu


def test_seals_after_a_rotation_are_not_mistaken_for_copies_and_rotation_is_reported():
    net = Net(2, 2)
    a, gone = net.speakers
    net.mod.enroll(a.me.public)
    for li in net.listeners:
        net.mod.enroll(li.me.public)
    seen = []
    net.mod.on_rotate = lambda state: seen.append(state.epoch)
    events = net.over(a) if _grant(net, a) else None
    for p in net.mod.remove(gone.me.identity, net.now):
        net.send(p, net.mod)
    assert seen == [1]
    _grant(net, a)  # the moderator's counters restarted: this grant may reuse a grant_seq
    events = net.over(a)
    for li in net.listeners:
        assert _of(events[li], OverEnded)[0].verdict == "verified"


def test_clip_packets_reach_members_once_and_never_from_the_muted():
    net = Net(speakers=2, listeners=3)
    a, b = net.speakers
    net.send(a.introduce(net.now), a)  # members learn a's identity from its hello
    packet = a.clip(b"piece-1", net.now)
    got = net.send(packet, a)
    for room in net.listeners:
        assert _of(got[room], Clip) == [
            Clip(a.me.identity, b"piece-1", _of(got[room], Clip)[0].counter)
        ]
    # A replay, a tampered copy and an unknown sender's clip are dropped and counted.
    listener = net.listeners[0]
    assert _of(listener.receive(packet, net.now), Dropped)[0].reason == "replay"
    tampered = packet[:-1] + bytes([packet[-1] ^ 1])
    assert _of(listener.receive(tampered, net.now), Dropped)
    assert _of(listener.receive(b.clip(b"who?", net.now), net.now), Dropped)
    # Muted: the sender refuses locally, and receivers refuse what it sends anyway.
    net.send(net.mod.mute(a.me.identity, net.now), net.mod)
    with pytest.raises(UsageError, match="muted"):
        a.clip(b"piece-2", net.now)
    forced = a.sender.clip(b"piece-2", net.now)
    assert _of(listener.receive(forced, net.now), Dropped)[0].reason == "muted"
    with pytest.raises(UsageError):
        a.sender.clip(b"", net.now)


def _over_across_the_hour(net, speaker, *, lose=None, skip=0):
    """An over from a second before the hour to past its key's ratchet grace: the speaker
    keeps the over's key through the ratchet, then moves to the new hour's key (its counters
    restart). ``lose``: {room: seconds around the switch it hears nothing}; ``skip``: frames
    the speaker leaves out (DTX) right at the switch. Returns ({room: events}, what it said
    as {position: frame})."""
    switch = step_start(ratchet_step(net.now) + 1) + RATCHET_GRACE - RATCHET_SKEW
    lose = lose or {}
    events = {room: [] for room in net.rooms.values()}
    said, position = {}, 0
    while net.now < switch + 12:
        if skip and switch <= net.now < switch + 0.16:
            position += skip
        frames = [bytes([position % 251, position // 251 % 251]) * 4] * 4
        said.update((position + i, f) for i, f in enumerate(frames))
        packet = speaker.voice(MODE, position, frames, net.now)
        deaf = [room for room, span in lose.items() if abs(net.now - switch) <= span]
        for room, ev in net.send(packet, speaker, lose=deaf).items():
            events[room] += ev
        position += 4
        net.now += 0.16
    assert speaker._over_sender(net.now)[1] is speaker.keys  # it moved to the new key
    for packet in speaker.end_over(net.now):
        for room, ev in net.send(packet, speaker).items():
            events[room] += ev
    return events, said


def _placed_as_said(events, said):
    """Every frame a listener got is where the speaker said it."""
    for voice in _of(events, Voice):
        for i, frame in enumerate(voice.frames.frames):
            assert said[voice.frames.position + i] == frame


def test_an_over_outliving_its_keys_ratchet_grace_is_verified_not_forged():
    """Listeners place the new key's packets after what they heard under the old key (they
    used to land back near position 0 and the seal read forged), with clocks in step, 100 s
    ahead, or 200 s behind (the speaker's new key is then the next hour's to them)."""
    net = Net(1, 4)
    (a,) = net.speakers
    in_step, ahead, behind, lossy = net.listeners
    net.now = step_start(ratchet_step(T0) + 1) - 1.0
    for room in net.rooms.values():
        room.tick(net.now)  # KEY is this hour's key (a room's first time names its step)
    net.skew = {ahead: 100.0, behind: -200.0}
    _grant(net, a, seconds=400)
    events, said = _over_across_the_hour(net, a, lose={lossy: 0.5})
    for li in (in_step, ahead, behind):
        assert len(_of(events[li], Voice)) == len(said) // 4
        _placed_as_said(events[li], said)
        (ended,) = _of(events[li], OverEnded)
        assert (ended.verdict, ended.frames) == ("verified", len(said))
    # It lost the packets on either side of the switch: the rest is placed, nothing forged.
    _placed_as_said(events[lossy], said)
    assert _of(events[lossy], OverEnded)[0].verdict == "partial"
    assert not lossy.stats["forged_over"]


def test_a_pause_at_the_keys_switch_leaves_the_over_partial_not_forged():
    net = Net(1, 2)
    (a,) = net.speakers
    net.now = step_start(ratchet_step(T0) + 1) - 1.0
    _grant(net, a, seconds=400)
    events, said = _over_across_the_hour(net, a, skip=40)
    for li in net.listeners:
        _placed_as_said(events[li], said)
        # The skip cannot be told from loss across two keys' counters: partial, not forged.
        assert _of(events[li], OverEnded)[0].verdict == "partial"


@pytest.mark.parametrize("lose_seal", [False, True])
def test_an_over_right_after_one_that_ended_before_the_hour_starts_afresh(lose_seal):
    """The over before the hour told the next hour's receiver where it stood; its seal (or,
    if every copy was lost, the next grant) ends that, so the speaker's next over, under
    the new key seconds later, is placed from 0 again."""
    net = Net(1, 2)
    (a,) = net.speakers
    edge = step_start(ratchet_step(T0) + 1)
    net.now = edge - 3.0
    _grant(net, a)
    for position in range(0, 48, 4):  # 1.9 s, ending a second before the hour
        net.send(a.voice(MODE, position, [bytes([position]) * 8] * 4, net.now), a)
        net.now += 0.16
    for packet in a.end_over(net.now):
        net.send(packet, a, lose=net.listeners if lose_seal else ())
    net.now = edge + 0.5
    _grant(net, a)
    events = net.over(a, frames=48)
    assert a.keys is a._over_sender(net.now)[1]  # the new hour's key
    for li in net.listeners:
        assert [v.frames.position for v in _of(events[li], Voice)] == list(range(0, 48, 4))
        assert _of(events[li], OverEnded)[0].verdict == "verified"


def test_a_beacon_names_a_muted_stranger_in_full_and_the_mute_holds():
    """Strangers (known from their HELLO only, not enrolled) named by a beacon's prefixes are
    the members we know: a listener that missed the mute applies it (it used to keep the
    prefix only, and played the stranger's clips), and so does one that hears of the
    stranger only after the beacon; an unmute lifts both."""
    net = Net(speakers=2, listeners=2)
    stranger, asking = net.speakers
    missed, late = net.listeners
    for sp in (stranger, asking):
        net.send(sp.introduce(net.now), sp, lose=[late])
    net.send(asking.raise_hand(net.now), asking, to=[net.mod])
    net.send(net.mod.mute(stranger.me.identity, net.now), net.mod, lose=[missed, late])
    net.send(net.mod.beacon(net.now), net.mod, to=[missed, late])
    assert missed.muted == {stranger.me.identity}
    assert missed.hands == [asking.me.identity]
    assert late.muted == {stranger.me.identity[:8]}  # never heard of it: a prefix
    net.send(stranger.introduce(net.now), stranger, to=[late])
    for li in (missed, late):
        assert li.is_muted(stranger.me.identity)
        forced = stranger.sender.clip(b"words", net.now)
        assert _of(li.receive(forced, net.now), Dropped)[0].reason == "muted"
    net.send(stranger.raise_hand(net.now), stranger, to=[missed, late])  # not queued
    assert stranger.me.identity not in missed.hands + late.hands
    net.send(net.mod.mute(stranger.me.identity, net.now, unmute=True), net.mod)
    for li in (missed, late):
        assert not li.is_muted(stranger.me.identity)
        assert _of(li.receive(stranger.clip(b"words", net.now), net.now), Clip)


def test_a_beacon_prefix_naming_two_known_members_mutes_both_and_grants_neither():
    net = Net(speakers=1, listeners=0)
    (stranger,) = net.speakers
    prefix = stranger.me.identity[:8]
    twin = PublicIdentity(prefix + bytes(24), Identity.generate().public.agreement_key)
    co_id = Identity.generate()  # a co-moderator who enrolled the twin
    moderators = [net.mod_id.public, co_id.public]
    co = Room(ROOM_ID, KEY, 0, moderators, co_id, MemoryCounters(), roster=[twin])
    net.rooms[co_id.identity] = co
    net.send(stranger.raise_hand(net.now), stranger)  # co knows it from its HELLO
    assert stranger.me.identity in co.hands
    net.send(net.mod.beacon(net.now), net.mod, to=[co])
    assert co.hands == [prefix]  # which of the two? Not granted on a guess
    assert co.next_hand() is None
    net.send(net.mod.mute(stranger.me.identity, net.now), net.mod, lose=[co])
    net.send(net.mod.beacon(net.now), net.mod, to=[co])
    assert co.muted == {stranger.me.identity, twin.identity}
