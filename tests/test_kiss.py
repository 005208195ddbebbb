"""The sans-I/O KISS codec: escaping, commands, and a decoder that survives any input."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import UsageError
from relay.links.kiss.codec import (
    FEND,
    FESC,
    TFEND,
    TFESC,
    Command,
    Decoder,
    Frame,
    command_frame,
    data_frame,
    encode,
    escape,
)

PARAMS = [Command.TXDELAY, Command.P, Command.SLOTTIME, Command.TXTAIL, Command.FULLDUPLEX]

frames = st.one_of(
    st.builds(
        Frame,
        st.sampled_from([Command.DATA, Command.SETHARDWARE]),
        st.binary(max_size=300),
        st.integers(0, 15),
    ),
    st.builds(
        Frame,
        st.sampled_from(PARAMS),
        st.integers(0, 255).map(lambda v: bytes((v,))),
        st.integers(0, 15),
    ),
    st.just(Frame(Command.RETURN)),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


def test_escaping_and_the_wire_format() -> None:
    assert escape(b"a\xc0b\xdbc") == b"a\xdb\xdcb\xdb\xddc"
    assert data_frame(b"\xc0", port=0) == b"\xc0\x00\xdb\xdc\xc0"
    assert data_frame(b"hi", port=3) == b"\xc0\x30hi\xc0"
    assert command_frame(Command.TXDELAY, 10) == b"\xc0\x01\x0a\xc0"
    assert command_frame(Command.FULLDUPLEX, 1, port=1) == b"\xc0\x15\x01\xc0"
    assert command_frame(Command.RETURN) == b"\xc0\xff\xc0"
    # port 12, data: the type byte itself is FEND and must be escaped
    assert data_frame(b"x", port=12) == b"\xc0\xdb\xdcx\xc0"


@pytest.mark.parametrize(
    "call",
    [
        lambda: data_frame(b"x", port=16),
        lambda: data_frame(b"x", port=-1),
        lambda: data_frame("text"),  # type: ignore[arg-type]
        lambda: command_frame(Command.TXDELAY, 256),
        lambda: command_frame(Command.P, b""),
        lambda: encode(Frame(Command.RETURN, b"x")),
        lambda: Decoder().feed("text"),  # type: ignore[arg-type]
        lambda: Decoder(max_frame=0),
    ],
)
def test_caller_mistakes_are_usage_errors(call) -> None:
    with pytest.raises(UsageError):
        call()


@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_through_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode(f) for f in sent)
    dec = Decoder()
    got = [f for chunk in chunked(wire, cuts) for f in dec.feed(chunk)]
    assert got == sent
    assert dec.counts.get("garbage_bytes", 0) == 0


@given(st.binary(max_size=400))
def test_escaped_bodies_never_hold_a_raw_fend(payload: bytes) -> None:
    wire = data_frame(payload)
    assert wire[0] == FEND and wire[-1] == FEND
    assert FEND not in wire[1:-1]
    assert FEND not in escape(payload)


@settings(max_examples=300)
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=8))
def test_arbitrary_bytes_never_raise(noise: bytes, cuts: list[int]) -> None:
    dec = Decoder(max_frame=64)
    for chunk in chunked(noise, cuts):
        for frame in dec.feed(chunk):
            assert isinstance(frame.command, Command) and 0 <= frame.port <= 15
            assert len(frame.payload) < 64
    dec.reset()
    dec.flush_garbage()


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=200))
def test_garbage_around_frames_is_skipped(lead: bytes, junk: bytes, payload: bytes) -> None:
    """Junk before the first FEND is counted as garbage; junk between frames looks like a
    frame (KISS shares FENDs) and is dropped or passed on, but never eats a good frame."""
    lead = lead.replace(b"\xc0", b"")
    wire = lead + data_frame(payload) + junk + data_frame(b"second") + junk
    dec = Decoder()
    got = iter(dec.feed(wire))
    for want in (Frame(Command.DATA, payload), Frame(Command.DATA, b"second")):
        assert want in got  # in order, possibly with junk frames between
    assert dec.counts.get("garbage_bytes", 0) == len(lead)


def test_broken_frames_are_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    counted: dict[str, int] = {}
    dec = Decoder(max_frame=8, count=lambda k, n: counted.update({k: counted.get(k, 0) + n}))
    dec.name = "tnc"
    caplog.set_level(logging.WARNING)
    wire = (
        b"noise"  # outside any frame
        + bytes((FEND, 0x00, FESC, 0x41, FEND))  # bad escape
        + bytes((FEND, 0x07, 1, 2, FEND))  # unknown command 7
        + bytes((FEND, 0x01, 1, 2, FEND))  # TXDELAY with two bytes
        + bytes((FEND, 0x00)) + bytes(20) + bytes((FEND,))  # oversize
        + bytes((FEND, FEND, FEND))  # idle fill: nothing
        + bytes((FEND, 0x00, FESC, TFEND, FESC, TFESC, FEND))  # a good one
        + bytes((FEND, 0x00, 9))  # cut off
    )  # fmt: skip
    assert dec.feed(wire) == [Frame(Command.DATA, bytes((FEND, FESC)))]
    dec.reset()
    assert dec.counts == {
        "garbage_bytes": 5,
        "bad_escape": 1,
        "unknown_command": 2,
        "oversize": 1,
        "frames": 1,
        "truncated": 1,
    }
    assert counted == dec.counts
    text = caplog.text
    assert "tnc: skipped 5 bytes outside frames" in text
    assert "FESC followed by 0x41" in text
    assert "unknown type byte 0x07" in text
    assert "longer than 8 bytes" in text
    # after a reset the next frame decodes normally
    assert dec.feed(data_frame(b"ok")) == [Frame(Command.DATA, b"ok")]


def test_dangling_escape_at_frame_end() -> None:
    dec = Decoder()
    assert dec.feed(bytes((FEND, 0x00, 0x41, FESC, FEND))) == []
    assert dec.counts == {"bad_escape": 1}
