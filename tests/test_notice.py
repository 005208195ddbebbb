"""Relay notices: signed, in the clear, information only."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.crypto import hint_epoch
from relay.core.identity import Identity
from relay.core.notice import (
    NOTICE_LEN,
    NoticeReason,
    RelayNotice,
    build_notice,
    is_notice,
    parse_notice,
)
from relay.core.room import Dropped, RelayNoticed, Room
from relay.errors import PacketError, UsageError
from relay.store.counters import MemoryCounters

BRIDGE = Identity.generate()
NOW = 1_750_000_000


def _notice(**kw) -> RelayNotice:
    fields = dict(
        reason=NoticeReason.AIRTIME,
        hint=0x3F,
        speaker=0xBEEF,
        first_counter=70_000,
        packets=25,
        issued_at=NOW,
        relay=BRIDGE.public,
    )
    fields.update(kw)
    return RelayNotice(**fields)


def test_round_trip_and_text():
    packet = build_notice(BRIDGE, _notice())
    assert len(packet) == NOTICE_LEN == 141 and is_notice(packet)
    got = parse_notice(packet, NOW + 5)
    assert got == _notice()
    assert BRIDGE.public.fingerprint in got.text and "airtime" in got.text and "beef" in got.text


def test_tampered_stale_and_foreign_notices_are_refused():
    packet = build_notice(BRIDGE, _notice())
    for i in (0, 1, 5, 8, 12, 20, 100, 140):
        bad = bytearray(packet)
        bad[i] ^= 0x01
        with pytest.raises(PacketError):
            parse_notice(bytes(bad), NOW)
    with pytest.raises(PacketError, match="too long ago"):
        parse_notice(packet, NOW + 3600)
    with pytest.raises(UsageError):
        build_notice(Identity.generate(), _notice())  # not in its own name
    with pytest.raises(UsageError):
        _notice(packets=1 << 16)


@given(st.binary(max_size=300))
def test_parser_only_ever_raises_packet_error(data):
    with contextlib.suppress(PacketError):
        parse_notice(data, NOW)


@given(st.integers(0, NOTICE_LEN - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused(index, flip):
    packet = bytearray(build_notice(BRIDGE, _notice()))
    packet[index] ^= flip
    with pytest.raises(PacketError):
        parse_notice(bytes(packet), NOW)


def test_a_room_shows_notices_about_itself_and_drops_the_rest():
    me = Identity.generate()
    room = Room(os.urandom(8), os.urandom(32), 0, [me.public], me, MemoryCounters())
    now = time.time()
    hint = room.keys.hint(hint_epoch(now))
    ours = build_notice(BRIDGE, _notice(hint=hint, issued_at=int(now)))
    (event,) = room.receive(ours, now)
    assert isinstance(event, RelayNoticed) and event.notice.hint == hint
    elsewhere = next(h for h in range(256) if h not in room.keys.hints_near(now, 2))
    other = build_notice(BRIDGE, _notice(hint=elsewhere, issued_at=int(now)))
    (dropped,) = room.receive(other, now)
    assert isinstance(dropped, Dropped) and dropped.reason == "notice_other_room"
    forged = bytearray(ours)
    forged[-1] ^= 1
    (dropped,) = room.receive(bytes(forged), now)
    assert isinstance(dropped, Dropped) and dropped.reason == "notice_forged"
