"""The key tree: removals in O(log N), lost wraps recovered silently, hourly ratchets that a
seized device cannot undo (sans-I/O, direct Room objects, virtual time)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import roommsg as msg
from relay.core.identity import Identity
from relay.core.keytree import (
    RATCHET_SECONDS,
    KeyTree,
    MemberPath,
    ratchet_step,
    step_start,
)
from relay.core.room import (
    REKEY_DELAYS,
    Dropped,
    KeyRotated,
    KeyState,
    OverEnded,
    Room,
    Voice,
)
from relay.errors import PacketError
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

MODE = mode_by_name("1600")
ROOM_ID = bytes(range(8))
KEY = bytes(range(100, 132))
T0 = step_start(ratchet_step(1_780_000_000)) + 600.0  # ten minutes into an hour


class TreeNet:
    """A moderator holding the key tree and ``listeners`` members each holding their path
    (as their invites delivered it), plus one speaker; packets pass in memory."""

    def __init__(self, listeners: int, speakers: int = 1, now: float = T0) -> None:
        self.now = now
        step = ratchet_step(now)
        self.mod_id = Identity.generate()
        self.tree = KeyTree(step)
        ids = [Identity.generate() for _ in range(speakers + listeners)]
        self.mod = Room(
            ROOM_ID,
            KEY,
            0,
            [self.mod_id.public],
            self.mod_id,
            MemoryCounters(),
            roster=[i.public for i in ids],
            step=step,
            tree=self.tree,
        )
        self.members = [
            Room(
                ROOM_ID,
                KEY,
                0,
                [self.mod_id.public],
                ident,
                MemoryCounters(),
                step=step,
                path=self.tree.add(ident.identity),
            )
            for ident in ids
        ]
        self.speakers = self.members[:speakers]
        self.listeners = self.members[speakers:]
        self.air: list[bytes] = []  # everything sent, as an eavesdropper records it

    def everyone(self):
        return [self.mod, *self.members]

    def send(self, packet, sender, *, lose=()):
        self.air.append(packet)
        return {
            room: room.receive(packet, self.now)
            for room in self.everyone()
            if room is not sender and room not in lose
        }

    def over(self, speaker, frames=12, fpp=4):
        """Raise a hand, get the floor, speak, seal; returns everyone's events."""
        self.send(speaker.raise_hand(self.now), speaker)
        grant = self.mod.grant(speaker.me.identity, 30, self.now)
        for packet in [*self.mod.due(self.now), grant]:  # as a moderator's node sends them
            self.send(packet, self.mod)
        events = {room: [] for room in self.everyone()}
        for first in range(0, frames, fpp):
            packet = speaker.voice(MODE, first, [bytes([first + 1]) * 8] * fpp, self.now)
            for room, ev in self.send(packet, speaker).items():
                events[room] += ev
            self.now += 0.16
        for packet in speaker.end_over(self.now):
            for room, ev in self.send(packet, speaker).items():
                events[room] += ev
        return events


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def _heard(events):
    return [e.verdict for e in _of(events, OverEnded)]


def test_removal_from_a_room_of_100_rekeys_in_log_n_and_only_the_removed_goes_deaf():
    net = TreeNet(listeners=99)
    gone = net.listeners[0]
    packets = net.mod.remove(gone.me.identity, net.now)
    removal, rekey = packets[0], packets[1:]
    # About log2(100) wraps in fragments that fit the MTU: 7 levels, 3 packets.
    wraps = [msg.RekeyFragment.parse(_body(net, p)) for p in rekey]
    assert sum(len(f.wraps) for f in wraps) <= math.ceil(math.log2(100))
    assert all(not f.sealed for f in wraps) and len(rekey) == 3
    assert all(len(p) <= net.mod.mtu for p in packets)
    rotated = set()
    for p in packets:
        for room, events in net.send(p, net.mod).items():
            if _of(events, KeyRotated):
                rotated.add(room)
    assert rotated == set(net.members) - {gone}
    assert gone.epoch == 0 and all(m.epoch == 1 for m in rotated)
    # The next over: every other member reads and verifies it; the removed one opens nothing.
    events = net.over(net.speakers[0])
    for member in net.listeners[1:]:
        assert _heard(events[member]) == ["verified"]
        assert len(_of(events[member], Voice)) == 3
    assert not _of(events[gone], Voice) and not _of(events[gone], OverEnded)
    assert all(isinstance(e, Dropped) for e in events[gone])
    assert removal  # the signed removal went first


def _body(net, packet):
    """A rekey fragment's signed body, opened as any holder of the old key could."""
    from relay.core.crypto import RoomKeys
    from relay.core.session import Receiver
    from relay.core.signing import split_signature

    receiver = Receiver(RoomKeys(KEY), window=4096)
    receiver.add_sender(net.mod_id.identity, net.mod.sender.session)
    event = receiver.receive(packet, net.now)
    body, _sig = split_signature(event.payload)
    return body


def test_wraps_name_tree_nodes_not_members():
    net = TreeNet(listeners=20)
    rekey = net.mod.remove(net.listeners[3].me.identity, net.now)[1:]
    blob = b"".join(_body(net, p) for p in rekey)
    for member in net.members:
        assert member.me.identity[:4] not in blob  # no identity, no identity-derived tag
        assert member.me.public.agreement_key[:4] not in blob


def test_lost_wraps_are_recovered_from_later_copies_without_transmitting():
    net = TreeNet(listeners=30)
    gone = net.listeners[0]
    unlucky = net.listeners[1:6]
    net.send(net.mod.beacon(net.now), net.mod)  # as every few seconds: members know its session
    for p in net.mod.remove(gone.me.identity, net.now):
        net.send(p, net.mod, lose=unlucky)  # these five lost the first copy entirely
    assert all(m.epoch == 0 for m in unlucky)
    assert net.mod.due(net.now) == []  # nothing more yet
    net.now += REKEY_DELAYS[1]
    second = net.mod.due(net.now)
    assert len(second) == 2  # the second copy of the rekey (30 members: 5 wraps, 2 packets)
    for p in second[:1]:
        net.send(p, net.mod, lose=unlucky[:2])  # two of them lose part of it again
    for p in second[1:]:
        net.send(p, net.mod)
    net.now += REKEY_DELAYS[2] - REKEY_DELAYS[1]
    for p in net.mod.due(net.now):
        net.send(p, net.mod)
    assert net.mod.next_due is None  # three copies, then silence
    assert all(m.epoch == 1 for m in net.members if m is not gone)
    assert gone.epoch == 0
    # The members never produced a packet: receive() only returns events.
    events = net.over(net.speakers[0])
    assert all(_heard(events[m]) == ["verified"] for m in unlucky)


def test_a_member_that_lost_the_first_rekey_copy_still_hears_the_next_over():
    """The floor is granted a second after a removal, long before the rekey's next copy is
    due (REKEY_DELAYS[1]): the grant goes out after one more copy, so members that lost the
    first one read the grant and the over (before: they lost the whole over; found by
    bench/room_latency at 5 % loss). The later copies keep their times, and only the first
    grant after the removal brings a copy."""
    net = TreeNet(listeners=30)
    gone, unlucky = net.listeners[0], net.listeners[1:6]
    net.send(net.mod.beacon(net.now), net.mod)
    for p in net.mod.remove(gone.me.identity, net.now):
        net.send(p, net.mod, lose=unlucky)
    assert all(m.epoch == 0 for m in unlucky)
    net.now += 1.0
    events = net.over(net.speakers[0])
    assert all(m.epoch == 1 for m in unlucky)
    assert all(_heard(events[m]) == ["verified"] for m in unlucky)
    assert not _of(events[gone], Voice)
    events = net.over(net.speakers[0])  # a second grant: no copy of its own
    assert all(_heard(events[m]) == ["verified"] for m in net.listeners[1:])
    net.now = T0 + REKEY_DELAYS[2]
    assert len(net.mod.due(net.now)) == 2 * 2  # the 10 s and 40 s copies, 2 fragments each
    assert net.mod.next_due is None


def test_a_member_that_missed_every_copy_stays_on_the_old_key_and_says_nothing():
    net = TreeNet(listeners=8)
    gone, deaf = net.listeners[:2]
    net.send(net.mod.beacon(net.now), net.mod)
    for p in net.mod.remove(gone.me.identity, net.now):
        net.send(p, net.mod, lose=[deaf])
    for delay in REKEY_DELAYS[1:3]:
        for p in net.mod.due(net.now + delay):
            net.send(p, net.mod, lose=[deaf])
    assert deaf.epoch == 0  # needs a new invite: honest, not silent failure of others
    events = net.over(net.speakers[0])
    assert not _of(events[deaf], Voice)


def test_removals_keep_working_as_members_join_and_leave():
    net = TreeNet(listeners=5)
    late = []
    for _ in range(7):  # members enrolled after others: nothing on the air for anyone
        ident = Identity.generate()
        net.mod.enroll(ident.public)
        room = Room(
            ROOM_ID,
            net.mod._room_key,
            net.mod.epoch,
            [net.mod_id.public],
            ident,
            MemoryCounters(),
            step=net.mod.step,
            path=net.tree.add(ident.identity),
        )
        late.append(room)
    net.members += late
    net.listeners += late
    assert len(net.tree) == 13
    for victim in (net.listeners[0], late[-1], net.listeners[2], late[0]):
        for p in net.mod.remove(victim.me.identity, net.now):
            net.send(p, net.mod)
        alive = [m for m in net.members if m.me.identity in net.tree]
        assert all(m.epoch == net.mod.epoch for m in alive)
        assert victim.epoch == net.mod.epoch - 1
        net.now += 1
    events = net.over(net.speakers[0])
    for m in net.listeners:
        expected = ["verified"] if m.me.identity in net.tree else []
        assert _heard(events[m]) == expected


def test_hourly_ratchet_needs_no_packet_and_keeps_everyone_together():
    net = TreeNet(listeners=4)
    before = net.over(net.speakers[0])
    assert _heard(before[net.listeners[0]]) == ["verified"]
    key_before = net.listeners[0].keys.key_id
    net.now = step_start(ratchet_step(net.now) + 1) + 1.0
    events = net.over(net.speakers[0])
    for m in net.listeners:
        assert _heard(events[m]) == ["verified"]
        assert m.keys.key_id != key_before and m.step == ratchet_step(net.now)


def test_clock_skew_at_the_hour_both_ways():
    net = TreeNet(listeners=2)
    a, behind = net.speakers[0], net.listeners[1]
    boundary = step_start(ratchet_step(net.now) + 1)
    net.send(a.raise_hand(net.now), a)
    net.send(net.mod.grant(a.me.identity, 7200, net.now), net.mod)
    # The speaker's clock is 60 s ahead: it has ratcheted, the listeners have not yet.
    early = a.voice(MODE, 0, [b"\x01" * 8] * 4, boundary + 30)
    assert _of(behind.receive(early, boundary - 30), Voice)
    # A listener 60 s ahead has ratcheted; a speaker still in the old hour is heard.
    b = TreeNet(listeners=1)
    sp, li = b.speakers[0], b.listeners[0]
    b.send(sp.raise_hand(b.now), sp)
    b.send(b.mod.grant(sp.me.identity, 7200, b.now), b.mod)
    edge = step_start(ratchet_step(b.now) + 1)
    late = sp.voice(MODE, 0, [b"\x02" * 8] * 4, edge - 30)
    assert _of(li.receive(late, edge + 30), Voice)
    # Far outside the grace, the old hour's key opens nothing.
    stale = sp.sender.voice(MODE, 4, [b"\x03" * 8] * 4, edge - 29)
    assert _of(li.receive(stale, edge + 3600), Dropped)


def test_a_device_seized_after_the_ratchet_opens_nothing_recorded_before():
    net = TreeNet(listeners=6)
    victim = net.listeners[1]
    saved: list[KeyState] = []
    victim.on_rotate = saved.append  # what the store would write, replacing the old
    net.over(net.speakers[0])  # speech in hour r
    removal = net.mod.remove(net.listeners[0].me.identity, net.now)  # a rekey in hour r
    for p in removal:
        net.send(p, net.mod)
    net.over(net.speakers[0])
    recorded = list(net.air)
    # An hour later (past the grace) the device is seized: its state is the last one saved.
    net.now = step_start(ratchet_step(net.now) + 1) + 600
    victim.tick(net.now)
    seized = saved[-1]
    assert seized.step == ratchet_step(net.now)
    thief = Room(
        ROOM_ID,
        seized.key,
        seized.epoch,
        [net.mod_id.public],
        victim.me,  # the identity's private keys too
        MemoryCounters(),
        roster=[m.me.public for m in net.members],
        step=seized.step,
        path=MemberPath.parse(seized.path.pack(), seized.step),
    )
    thief_at = net.now
    opened = [e for p in recorded for e in thief.receive(p, thief_at) if not isinstance(e, Dropped)]
    assert opened == []
    # Nor do the tree keys open the recorded rekey: its wraps were made an hour before.
    for p in removal[1:]:
        frag = msg.RekeyFragment.parse(_body(net, p))  # opened with the old room key
        context = thief._rekey_context(frag.epoch)
        assert thief.path.apply(frag.step, frag.depth, frag.wraps, context) is None
    assert frag.wraps


def test_a_co_moderator_removes_and_the_tree_holder_rotates():
    net = TreeNet(listeners=10)
    co = net.listeners[0]
    net.send(net.mod.appoint(co.me.public, net.now), net.mod)
    gone = net.listeners[5]
    packets = co.remove(gone.me.identity, net.now)
    assert len(packets) == 1  # the signed removal only: the co-moderator holds no tree
    net.send(packets[0], co)
    assert gone.me.identity in net.mod.removed
    for p in net.mod.due(net.now):
        net.send(p, net.mod)
    assert all(m.epoch == 1 for m in net.members if m is not gone) and gone.epoch == 0
    events = net.over(net.speakers[0])
    assert _heard(events[co]) == ["verified"] and not _of(events[gone], Voice)


def test_members_without_a_leaf_get_the_key_sealed_and_untagged():
    net = TreeNet(listeners=4)
    legacy_id = Identity.generate()
    legacy = Room(
        ROOM_ID, KEY, 0, [net.mod_id.public], legacy_id, MemoryCounters(), step=net.mod.step
    )
    net.mod.roster[legacy_id.identity] = legacy_id.public  # enrolled before the tree existed
    net.members.append(legacy)
    for p in net.mod.remove(net.listeners[0].me.identity, net.now):
        net.send(p, net.mod)
    assert legacy.epoch == 1


# -- parsers -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_rekey_fragment_parser_rejects_garbage_cleanly(data):
    try:
        frag = msg.RekeyFragment.parse(data)
    except PacketError:
        return
    assert frag.pack() == data


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, (1 << 24) - 1),
    st.integers(1, 255).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
    st.integers(0, msg.MAX_TREE_DEPTH),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=40, max_size=40)), max_size=4),
    st.lists(st.binary(min_size=48, max_size=48), max_size=3),
)
def test_rekey_fragment_round_trips(epoch, step, count_index, depth, wraps, sealed):
    count, index = count_index
    eph = bytes(range(32)) if sealed else b""
    frag = msg.RekeyFragment(epoch, step, index, count, depth, tuple(wraps), eph, tuple(sealed))
    assert msg.RekeyFragment.parse(frag.pack()) == frag


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500), st.integers(0, 1 << 20))
def test_member_path_parser_rejects_garbage_cleanly(data, step):
    try:
        path = MemberPath.parse(data, step)
    except PacketError:
        return
    assert path.pack() == data


def test_tree_refuses_impossible_states():
    tree = KeyTree(ratchet_step(T0))
    ident = Identity.generate().identity
    path = tree.add(ident)
    assert tree.add(ident).position == path.position  # re-invite: the same leaf
    with pytest.raises(Exception, match="damaged"):
        KeyTree.restore(tree.step, 0, [], {ident: 0})
    assert RATCHET_SECONDS == 3600


def test_the_last_hours_grant_range_still_guards_its_key():
    net = TreeNet(listeners=2, speakers=2)
    a, mallory = net.speakers
    li = net.listeners[0]
    edge = step_start(ratchet_step(net.now) + 1)
    net.now = edge - 20
    net.send(a.raise_hand(net.now), a)
    net.send(mallory.introduce(net.now), mallory)
    net.send(net.mod.grant(a.me.identity, 30, net.now), net.mod)  # range: 30 s of counters
    from relay.core.session import Sender

    # The hour's key, a's identity and session, a counter inside the session's bound
    # (UNSIGNED_AHEAD) but past the grant's range.
    as_a = Sender(mallory.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
    as_a._next, as_a._limit = 1_900, 1_910
    forged = as_a.voice(MODE, 0, [b"\x66" * 8] * 4, edge - 10)
    real = a.voice(MODE, 0, [b"\x11" * 8] * 4, edge - 10)  # a's clock is a little behind
    assert not _of(li.receive(forged, edge + 5), Voice)  # outside the last hour's range
    assert _of(li.receive(real, edge + 5), Voice)


def test_an_over_across_the_hour_verifies():
    """Packets of one over come under two keys whose counters restart: no false DTX skips
    (found by the room demo when the hour fell inside its first over)."""
    net = TreeNet(listeners=2)
    a = net.speakers[0]
    edge = step_start(ratchet_step(net.now) + 1)
    net.now = edge - 0.5
    net.send(a.raise_hand(net.now), a)
    net.send(net.mod.grant(a.me.identity, 30, net.now), net.mod)
    sent = []
    for i in range(12):  # 3 packets in the old hour, 9 in the new one
        sent.append(a.voice(MODE, 4 * i, [bytes([i + 1]) * 8] * 4, net.now))
        net.now += 0.16
    sent += a.end_over(net.now)
    for li in net.listeners:
        events = [e for p in sent for e in li.receive(p, net.now + 0.2)]  # all arrive late
        assert _heard(events) == ["verified"] and len(_of(events, Voice)) == 12


def test_an_over_with_silence_skipped_across_the_hour_verifies():
    """DTX: the speaker keeps the over's key through the hour (within the grace), so its
    counters run on and listeners still tell skipped positions from lost ones."""
    net = TreeNet(listeners=2)
    a = net.speakers[0]
    edge = step_start(ratchet_step(net.now) + 1)
    net.now = edge - 0.5
    net.send(a.raise_hand(net.now), a)
    net.send(net.mod.grant(a.me.identity, 30, net.now), net.mod)
    sent, position = [], 0
    for i in range(12):
        sent.append(a.voice(MODE, position, [bytes([i + 1]) * 8] * 4, net.now))
        position += 4 + (2 if i in (1, 3, 7) else 0)  # silence, one right at the hour
        net.now += 0.16
    sent += a.end_over(net.now)
    for li in net.listeners:
        events = []
        for p in sent:
            events += li.receive(p, net.now)
        assert _heard(events) == ["verified"]


def test_after_the_hour_an_insider_still_cannot_silence_the_speaker():
    """Counters restart under the new hour's key, so the grant's range does not carry over;
    the sender session's bound on unsigned packets (UNSIGNED_AHEAD) keeps the speaker in
    reach all the same."""
    from relay.core.session import Sender

    net = TreeNet(listeners=2, speakers=2)
    a, mallory = net.speakers
    li = net.listeners[0]
    net.send(a.raise_hand(net.now), a)
    net.send(mallory.introduce(net.now), mallory)
    net.send(net.mod.grant(a.me.identity, 7200, net.now), net.mod)
    after = step_start(ratchet_step(net.now) + 1) + 400
    for room in (a, mallory):
        room.tick(after)
    for ahead, refused in ((5_000, True), (2_000, False)):
        forged = Sender(mallory.keys, a.me.identity, MemoryCounters(), session=a.sender.session)
        forged._next, forged._limit = ahead, ahead + 10
        events = li.receive(forged.voice(MODE, 0, [b"\x66" * 8] * 4, after), after)
        assert bool(_of(events, Dropped)) == refused
    assert _of(li.receive(a.voice(MODE, 0, [b"\x11" * 8] * 4, after), after), Voice)


def test_a_hand_raised_in_the_last_hour_is_not_granted_with_its_old_counter():
    """The hand's counter is in the last hour's key; a grant under the new key naming it
    would refuse the speaker's first packets (found by the room demo at the hour)."""
    net = TreeNet(listeners=2)
    a = net.speakers[0]
    edge = step_start(ratchet_step(net.now) + 1)
    hand = a.raise_hand(edge - 1)
    for room in net.everyone():
        if room is not a:
            room.receive(hand, edge + 1)  # it arrives after the hour
    assert net.mod.next_hand() is None  # not grantable until a hand under this hour's key
    net.now = edge + 2
    net.send(a.raise_hand(net.now), a)
    assert net.mod.next_hand() == a.me.identity
    events = net.over(a)
    assert all(_heard(events[li]) == ["verified"] for li in net.listeners)
