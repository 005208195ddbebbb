"""Voice-message payloads: round trips, and parsers that raise only PacketError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from relay.clip.wire import (
    MAX_BITMAP,
    OFFER_LEN,
    WINDOW,
    Ack,
    Offer,
    Piece,
    kind_of,
    parse,
)
from relay.errors import PacketError, UsageError

ids = st.binary(min_size=4, max_size=4)


@given(
    ids,
    st.integers(0, 7),
    st.integers(1, (1 << 24) - 1),
    st.integers(1, 1 << 20),
    st.integers(16, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(min_size=64, max_size=64),
    st.booleans(),
)
def test_offer_round_trip(msg_id, mode, frames, total, piece, created, sig, poll) -> None:
    assume(-(-total // piece) <= 0xFFFF)
    offer = Offer(msg_id, mode, frames, total, piece, created, sig, poll)
    packed = offer.pack()
    assert len(packed) == OFFER_LEN == 83
    back = parse(packed)
    assert back == offer and back.poll == poll


@given(ids, st.integers(0, 0xFFFE), st.binary(min_size=1, max_size=240), st.booleans())
def test_piece_round_trip(msg_id, index, data, poll) -> None:
    piece = Piece(msg_id, index, data, poll)
    assert parse(piece.pack()) == piece
    assert len(piece.pack()) == 7 + len(data)


@given(ids, st.sets(st.integers(0, 600), max_size=300), st.booleans(), st.booleans())
def test_ack_describes_what_is_held(msg_id, have, have_offer, complete) -> None:
    ack = Ack.of(msg_id, have, have_offer=have_offer, complete=complete)
    back = parse(ack.pack())
    assert back == ack
    assert len(ack.pack()) <= 7 + MAX_BITMAP
    held = back.held(601)
    assert held <= have  # never claims a piece it does not hold
    # Everything below base plus everything inside the window is described exactly.
    assert {i for i in have if i < back.base + WINDOW} == held


@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_packet_error(data: bytes) -> None:
    try:
        item = parse(data)
    except PacketError:
        return
    assert parse(item.pack()) == item


@given(st.binary(min_size=1, max_size=100), st.integers(0, 99), st.integers(0, 7))
def test_every_bit_flip_parses_or_is_refused(data: bytes, pos: int, bit: int) -> None:
    raw = bytearray(Piece(b"abcd", 3, data).pack())
    raw[pos % len(raw)] ^= 1 << bit
    with contextlib.suppress(PacketError):
        parse(bytes(raw))


def test_bad_payloads_are_refused_with_a_reason() -> None:
    for bad in (b"", b"\x00", b"\x0f" + b"x" * 20, b"\x01" * 10, b"\x02abcd\x00\x01", b"\x03ab"):
        with pytest.raises(PacketError) as info:
            parse(bad)
        assert info.value.reason == "clip_malformed"
    with pytest.raises(PacketError):
        kind_of(b"\x09")
    with pytest.raises(PacketError):  # unknown flag bits
        parse(bytes([0x42]) + b"abcd\x00\x01x")
    with pytest.raises(PacketError):  # a bitmap longer than the window
        parse(bytes([0x03]) + b"abcd\x00\x00" + b"\xff" * (MAX_BITMAP + 1))
    with pytest.raises(PacketError):  # an offer that describes nothing
        parse(Offer(b"abcd", 6, 1, 1, 1, 0).pack()[:9] + b"\0" * 4 + b"\0\1" + b"\0" * 68)


def test_building_impossible_values_is_the_callers_bug() -> None:
    with pytest.raises(UsageError):
        Offer(b"abc", 6, 1, 1, 1, 0)
    with pytest.raises(UsageError):
        Offer(b"abcd", 6, 0, 1, 1, 0)
    with pytest.raises(UsageError):
        Offer(b"abcd", 6, 1, 0x10000 * 2, 1, 0)  # too many pieces
    with pytest.raises(UsageError):
        Piece(b"abcd", 0, b"")
    with pytest.raises(UsageError):
        Ack(b"abcd", 0, b"\0" * (MAX_BITMAP + 1))
