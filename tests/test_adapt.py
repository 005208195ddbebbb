"""Adaptive codec mode: the policy, and loss reports riding on seals and beacons only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_room import Net, _grant, _of

from relay.core import roommsg as msg
from relay.core.room import LossReport, OverEnded
from relay.errors import PacketError, UsageError
from relay.voice.adapt import ModePolicy

A, B = b"a" * 32, b"b" * 32


def test_steps_down_on_heavy_loss_and_up_when_it_clears():
    p = ModePolicy(hold=20.0, window=60.0)
    assert p.mode(0.0).name == "1600"
    p.report(A, 30, 1.0)
    assert p.mode(1.0).name == "1300"
    assert p.mode(5.0).name == "1300"  # hold: one step per 20 s
    assert p.mode(25.0).name == "1200"
    p.report(A, 2, 30.0)
    p.report(B, 8, 30.0)  # one member still between up and down: stay
    assert p.mode(50.0).name == "1200"
    p.report(B, 1, 51.0)
    assert p.mode(51.0).name == "1300"
    assert p.mode(80.0).name == "1600"
    assert p.mode(200.0).name == "1600"  # never above the room's mode


def test_stale_reports_expire_and_the_floor_is_700c():
    p = ModePolicy(hold=0.0, window=10.0)
    p.report(A, 90, 0.0)
    assert [p.mode(t).name for t in (0, 1, 2, 3, 4)] == ["1300", "1200", "700C", "700C", "700C"]
    assert p.worst_loss(20.0) is None
    assert p.mode(20.0).name == "1200"  # no recent report: step back up


def test_short_airtime_steps_down():
    p = ModePolicy(hold=0.0, window=30.0)
    p.airtime(needed=0.5, available=0.4, now=0.0)
    assert p.mode(0.0).name == "1300"
    p.airtime(needed=0.3, available=0.4, now=1.0)  # fits now, but short counts for 30 s
    assert p.mode(10.0).name == "1200"
    assert p.mode(40.0).name == "1300"  # budget fine again: climbing back
    assert p.mode(41.0).name == "1600"


def test_policy_refuses_nonsense():
    with pytest.raises(UsageError):
        ModePolicy(top="3200")
    with pytest.raises(UsageError):
        ModePolicy(up_loss=20, down_loss=10)
    with pytest.raises(UsageError):
        ModePolicy().report(A, 101, 0.0)
    p = ModePolicy()
    p.set_top("1200")
    assert p.mode(0.0).name == "1200"


# --- wire: optional trailing loss byte ------------------------------------------------------


@given(st.none() | st.integers(0, 100), st.integers(1, 40))
def test_seal_with_or_without_loss_round_trips(loss, frames):
    seal = msg.OverSeal(frames, 7, 4, tuple(b"abcd" for _ in range(-(-frames // 4))), loss)
    assert msg.OverSeal.parse(seal.pack()) == seal


@given(st.none() | st.integers(0, 100))
def test_beacon_with_or_without_loss_round_trips(loss):
    beacon = msg.Beacon(1, A, 20, 3, (b"h" * msg.PREFIX_LEN,), (), 1000, 5, loss)
    assert msg.Beacon.parse(beacon.pack()) == beacon


def test_loss_byte_over_100_is_malformed():
    seal = msg.OverSeal(4, 1, 4, (b"abcd",), 50).pack()
    with pytest.raises(PacketError):
        msg.OverSeal.parse(seal[:-1] + bytes((101,)))
    with pytest.raises(PacketError):
        msg.OverSeal.parse(seal + b"\x00")
    with pytest.raises(UsageError):
        msg.OverSeal(4, 1, 4, (b"abcd",), 101).pack()


def test_speakers_report_their_loss_in_seals_and_listeners_learn_it():
    net = Net(speakers=2, listeners=3)
    a, b = net.speakers
    for sp in (a, b):
        net.send(sp.raise_hand(net.now), sp)
    _grant(net, a)
    # b misses two of a's five packets
    events = net.over(a, frames=20, fpp=4, lose_at=[(), (b,), (), (b,), ()])
    assert b.heard_loss == pytest.approx(0.4)
    assert all(li.heard_loss == 0.0 for li in net.listeners)
    assert not _of(events[net.listeners[0]], LossReport)  # a heard nothing yet: no report
    _grant(net, b)
    events = net.over(b, frames=8, fpp=4)
    for li in net.listeners:
        (report,) = _of(events[li], LossReport)
        assert report.reporter == b.me.identity and report.loss == 40
        assert _of(events[li], OverEnded)[0].verdict == "verified"
    # the moderator's beacon carries its own loss
    evs = net.send(net.mod.beacon(net.now), net.mod)
    (report,) = _of(evs[net.listeners[0]], LossReport)
    assert report.reporter == net.mod.me.identity and report.loss == 0
