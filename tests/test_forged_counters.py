"""A forged max-counter packet of any type, from a member holding the room key, silences nobody.

For every packet type and control kind (voice, voice+FEC, clip, HAND, MOD, BEACON, REKEY,
OVER_END, an unknown kind, a HELLO in the victim's name, a relay notice naming the victim),
Mallory (a member: she holds the room key and knows every member's session, which is in the
clear on control packets) sends one forged packet as the moderator and one as a speaker,
with the highest counter there is and again with the highest counter an unsigned packet may
carry. Afterwards every kind of the victims' real packets must still be accepted -- grants,
beacons, mutes, a removal and its rekey from the moderator; a hand raise, an over (verified),
FEC voice, a clip and a lowered hand from the speaker -- by listeners that kept running and by
listeners restarted from the windows they persisted.
"""

from __future__ import annotations

import pytest
from test_room import KEY, MODE, ROOM_ID, Net, _grant, _of

from relay.core import wire
from relay.core.identity import Identity
from relay.core.notice import NoticeReason, RelayNotice, build_notice
from relay.core.room import (
    UNSIGNED_AHEAD,
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
from relay.core.session import Sender
from relay.core.wire import ControlKind
from relay.store.counters import MemoryCounters
from relay.store.replay import ReplayStore

MAX = (1 << 24) - 1
M700 = wire.fec_mode(MODE)


def _forger(mallory: Room, victim: Room, counter: int) -> Sender:
    """A sender with the victim's identity and session, at ``counter``: what a key holder
    can build (the room key, the victim's identity and its session are all she needs)."""
    forged = Sender(
        mallory.keys, victim.me.identity, MemoryCounters(), session=victim.sender.session
    )
    forged._next, forged._limit = counter, counter + 1
    return forged


class _Impostor:
    """Signs with Mallory's key while claiming the victim's identity (for HELLO)."""

    def __init__(self, mallory: Identity, victim: Identity) -> None:
        self.identity, self.public, self._real = victim.identity, victim.public, mallory

    def sign(self, message: bytes) -> bytes:
        return self._real.sign(message)


def _forge(kind: str, net: Net, mallory: Room, victim: Room, counter: int) -> bytes:
    s = _forger(mallory, victim, counter)
    now = net.now
    if kind == "voice":
        return s.voice(MODE, 400, [b"\x66" * 8] * 4, now)
    if kind == "voice_fec":
        return s.voice(MODE, 400, [b"\x66" * 8] * 4, now, [b"\x66" * 4] * 4)
    if kind == "clip":
        return s.clip(b"\x40forged clip payload", now)
    if kind == "hello":
        return s.hello(ControlKind.HAND, b"\x01", _Impostor(mallory.me, victim.me), now)
    if kind == "notice":
        bridge = Identity.generate()
        notice = RelayNotice(
            NoticeReason.AIRTIME,
            net.mod.keys.hint(int(now // 3600)),
            victim.sender._cipher.short_id,
            counter,
            1,
            int(now),
            bridge.public,
        )
        return build_notice(bridge, notice)
    # A control kind: she cannot sign, so the body carries a made-up signature.
    return s.control(int(kind), b"\x01" + bytes(32 + 6) + bytes(64), now)


KINDS = [
    "voice",
    "voice_fec",
    "clip",
    "hello",
    "notice",
    str(int(ControlKind.HAND)),
    str(int(ControlKind.MOD)),
    str(int(ControlKind.BEACON)),
    str(int(ControlKind.REKEY)),
    str(int(ControlKind.OVER_END)),
    str(int(ControlKind.LIVE_BASE)),
    "9",  # a kind nobody defined
]


def _restart(net: Net, tmp_path, listeners: list[Room]) -> list[Room]:
    """Each listener saves its replay windows to disk, stops, and starts again from them."""
    again = []
    for room in listeners:
        store = ReplayStore(tmp_path / f"replay-{room.me.identity[:4].hex()}.db")
        store.save(room.keys.key_id, room.receiver.export())
        fresh = Room(ROOM_ID, KEY, 0, [net.mod_id.public], room.me, MemoryCounters())
        fresh.receiver.restore(store.load(fresh.keys.key_id))
        store.close()
        net.rooms[room.me.identity] = fresh
        again.append(fresh)
    net.listeners = again
    return again


def _no_drops(events: dict) -> None:
    for room, evs in events.items():
        assert not _of(evs, Dropped), (room.me.identity[:4].hex(), _of(evs, Dropped))


def _everything_still_works(net: Net, a: Room) -> None:
    """Every kind of real packet from the moderator and from speaker ``a`` is accepted."""
    listeners = net.listeners
    # Speaker: a hand raise (HELLO), reaching the moderator and every listener.
    evs = net.send(a.raise_hand(net.now), a)
    assert _of(evs[net.mod], HandRaised)
    _no_drops({li: evs[li] for li in listeners})
    # Moderator: a grant, a beacon.
    evs = net.send(net.mod.grant(a.me.identity, 60, net.now), net.mod)
    assert all(_of(evs[li], FloorChanged) for li in listeners)
    evs = net.send(net.mod.beacon(net.now), net.mod)
    _no_drops({li: evs[li] for li in listeners})
    # Speaker: an over with plain and FEC voice, verified; a clip; a lowered hand.
    packets = [a.voice(MODE, 0, [b"\x01" * 8] * 4, net.now)]
    packets += [a.voice(MODE, 4, [b"\x02" * 8] * 4, net.now, [b"\x01" * 4] * 4)]
    packets += [a.voice(MODE, 8, [b"\x03" * 8] * 4, net.now)]
    played = {li: 0 for li in listeners}
    for p in packets:
        for li, ev in net.send(p, a, to=listeners).items():
            played[li] += len(_of(ev, Voice))
    assert set(played.values()) == {3}
    for p in a.end_over(net.now):
        for li, ev in net.send(p, a, to=listeners).items():
            _no_drops({li: ev})
            for over in _of(ev, OverEnded):
                assert over.verdict == "verified"  # no copy was needed: all primaries came
    evs = net.send(a.clip(b"\x40a real clip", net.now), a, to=listeners)
    assert all(_of(evs[li], Clip) for li in listeners)
    evs = net.send(a.lower_hand(net.now), a, to=[net.mod, *listeners])
    _no_drops(evs)
    # Moderator: mute and unmute, then a removal and the key rotation it sends.
    for packet in (
        net.mod.mute(a.me.identity, net.now),
        net.mod.mute(a.me.identity, net.now, unmute=True),
    ):
        evs = net.send(packet, net.mod)
        assert all(_of(evs[li], MemberChanged) for li in listeners)
    gone = net.speakers[1]
    packets = net.mod.remove(gone.me.identity, net.now)
    rotated = {li: 0 for li in listeners}
    for p in packets:
        for li, ev in net.send(p, net.mod, to=listeners).items():
            assert not [d for d in _of(ev, Dropped) if d.reason != "replay"], _of(ev, Dropped)
            rotated[li] += len(_of(ev, KeyRotated))
    assert set(rotated.values()) == {1}


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
@pytest.mark.parametrize("victim", ["moderator", "speaker"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_forged_max_counter_packet_silences_nobody(kind, victim, restart, tmp_path):
    net = Net(2, 3)  # listeners enrolled: the moderator's removal rekeys them
    a, mallory = net.speakers
    _grant(net, a)
    net.over(a)
    target = net.mod if victim == "moderator" else a
    # The highest counter there is; and the highest an unsigned packet of the victim's may
    # carry (its last signed counter plus UNSIGNED_AHEAD): accepted, yet harmless.
    bound = target.sender.next_counter - 1 + UNSIGNED_AHEAD
    speaking = kind.startswith("voice") and victim == "speaker"
    if speaking:
        # Forged voice while the victim holds the floor, at the top of its grant's range:
        # played (a key holder can inject words; the over's seal flags them), but the
        # speaker's real packets must still get through.
        _grant(net, a)
        bound = net.listeners[0].grant_range[1]
    for counter in (MAX, bound):
        packet = _forge(kind, net, mallory, target, counter)
        for li in net.listeners:
            for event in li.receive(packet, net.now):
                assert not isinstance(event, FloorChanged | KeyRotated | MemberChanged)
                assert speaking or not isinstance(event, Voice)
    if speaking:
        for p in a.end_over(net.now):
            net.send(p, a)
    if restart:
        _restart(net, tmp_path, net.listeners)
    _everything_still_works(net, a)
