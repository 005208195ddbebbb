"""AX.25 UI framing: callsign addresses, round trips, and hostile frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import FramingError, UsageError
from relay.links.kiss.ax25 import Address, UIFrame, decode_ui, encode_ui

calls = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=6)
addresses = st.builds(Address, calls, st.integers(0, 15))


def test_known_encoding() -> None:
    # N0CALL-1 -> QST, "hi": chars shifted left, SSID bytes with C bit and extension bit
    frame = encode_ui(Address("QST"), Address.parse("n0call-1"), b"hi")
    assert frame[:7] == bytes(b"QST   "[i] << 1 for i in range(6)) + b"\xe0"
    assert frame[7:14] == bytes(b"N0CALL"[i] << 1 for i in range(6)) + b"\x63"
    assert frame[14:] == b"\x03\xf0hi"
    assert str(Address.parse("N0CALL-0")) == "N0CALL"
    assert str(Address.parse(" w1aw-15 ")) == "W1AW-15"


@pytest.mark.parametrize("text", ["", "TOOLONG1", "N0-CALL", "N0CALL-16", "N0CALL-", "é"])
def test_bad_callsigns_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        Address.parse(text)


def test_too_many_digipeaters() -> None:
    with pytest.raises(UsageError):
        encode_ui(Address("A"), Address("B"), b"", tuple(Address("D", i) for i in range(9)))


@given(addresses, addresses, st.binary(max_size=300), st.lists(addresses, max_size=8))
def test_round_trip(dest: Address, src: Address, info: bytes, path: list[Address]) -> None:
    frame = encode_ui(dest, src, info, tuple(path))
    assert decode_ui(frame) == UIFrame(dest, src, info, tuple(path))


@given(st.binary(max_size=120))
def test_hostile_bytes_raise_only_framing_errors(raw: bytes) -> None:
    try:
        ui = decode_ui(raw)
    except FramingError:
        return
    assert isinstance(ui.info, bytes) and len(ui.path) <= 8


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (encode_ui(Address("A"), Address("B"), b"x")[:10], "ends inside"),
        (encode_ui(Address("A"), Address("B"), b"")[:15], "control and PID"),
        (encode_ui(Address("A"), Address("B"), b"x").replace(b"\x03\xf0", b"\x00\xf0"), "UI"),
        (encode_ui(Address("A"), Address("B"), b"x").replace(b"\x03\xf0", b"\x03\xcc"), "PID"),
        (bytes(Address("A").encode(last=True)) + b"\x03\xf0", "no source"),
    ],
)
def test_non_ui_frames_are_refused(frame: bytes, why: str) -> None:
    with pytest.raises(FramingError, match=why):
        decode_ui(frame)
