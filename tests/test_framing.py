"""The ether protocol codec: round trips, chunking, and garbage only ever raising FramingError."""

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import FramingError, UsageError
from relay.links.sim.codec import (
    ETHER_TO_NODE,
    MAGIC,
    MAX_DATAGRAM,
    MAX_FRAME,
    NODE_TO_ETHER,
    Ack,
    ChannelInfo,
    Data,
    Decoder,
    Drain,
    Drained,
    Error,
    FrameType,
    Hello,
    Nack,
    NackKind,
    Welcome,
    decode_frame,
    encode,
)
from relay.radio.profiles import custom, preset, presets

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="&?#/="),
    max_size=16,
)
profiles = st.one_of(
    st.sampled_from(presets()),
    st.builds(
        custom,
        st.integers(5, 12),
        st.sampled_from([62_500, 125_000, 250_000, 500_000]),
        st.integers(5, 8),
    ),
)
infos = st.builds(
    ChannelInfo,
    profile=profiles,
    node=names,
    channel=names,
    duty_cycle=st.floats(0.001, 1.0),
    duty_policy=st.sampled_from(["queue", "refuse"]),
    duty_window=st.floats(1.0, 86_400.0),
    loss=st.floats(0.0, 1.0),
    burst=st.none() | st.floats(1.0, 100.0),
    seed=st.none() | st.integers(-(2**63), 2**63),
    queue_size=st.integers(1, 255),
    lbt=st.booleans(),
)
messages = st.one_of(
    st.builds(Hello, version=st.integers(0, 255), name=names, queue_size=st.integers(0, 255)),
    st.builds(Welcome, infos),
    st.builds(Data, st.binary(max_size=MAX_DATAGRAM)),
    st.just(Ack()),
    st.builds(Nack, st.sampled_from(NackKind), st.text(max_size=40)),
    st.just(Drain()),
    st.just(Drained()),
    st.builds(Error, st.text(max_size=40)),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_in_any_chunks(msgs: list, cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    decoder = Decoder()
    out = []
    for chunk in _chunks(stream, cuts):
        out.extend(decoder.feed(chunk))
    decoder.eof()
    assert out == msgs
    assert decoder.buffered == 0


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2048),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.sampled_from([None, NODE_TO_ETHER, ETHER_TO_NODE]),
)
def test_arbitrary_bytes_only_raise_framing_error(
    data: bytes, cuts: list[int], accept: frozenset | None
) -> None:
    decoder = Decoder(accept)
    try:
        for chunk in _chunks(data, cuts):
            for msg in decoder.feed(chunk):
                encode(msg)  # whatever decodes is a well-formed message
        decoder.eof()
    except FramingError:
        with pytest.raises(FramingError):  # a broken stream stays broken
            decoder.feed(b"")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FrameType), st.binary(max_size=600))
def test_arbitrary_payloads_of_every_type(kind: FrameType, payload: bytes) -> None:
    with contextlib.suppress(FramingError):
        decode_frame(bytes((kind,)) + payload)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text() | st.floats()))
def test_welcome_with_arbitrary_json_only_raises_framing_error(obj: dict) -> None:
    good = json.loads(encode(Welcome(ChannelInfo(preset("SHORT_FAST"), "n")))[3:])
    for source in (obj, {**good, **obj}, {**good, "profile": {**good["profile"], **obj}}):
        body = bytes((FrameType.WELCOME,)) + json.dumps(source).encode()
        if len(body) > MAX_FRAME:
            continue
        with contextlib.suppress(FramingError):
            decode_frame(body)


def test_layout_is_length_type_payload() -> None:
    assert encode(Data(b"abc")) == b"\x00\x04\x03abc"
    assert encode(Ack()) == b"\x00\x01\x04"
    hello = encode(Hello(name="alice", queue_size=4))
    assert hello == b"\x00\x0c\x01" + MAGIC + b"\x01\x04alice"


def test_bad_frames() -> None:
    for stream, why in [
        (b"\x00\x00", "length 0"),
        ((MAX_FRAME + 1).to_bytes(2, "big") + b"\x03", "length 1025"),
        (b"\x00\x01\x63", "unknown frame type 99"),
        (b"\x00\x02\x04x", "unexpected bytes"),
        (b"\x00\x07\x01RLYX\x01\x00", "magic"),
        (b"GET / HTTP/1.1\r\n", "length"),
    ]:
        with pytest.raises(FramingError, match=why):
            Decoder().feed(stream)
    with pytest.raises(FramingError, match="unexpected WELCOME"):
        Decoder(NODE_TO_ETHER).feed(encode(Welcome(ChannelInfo(preset("SHORT_FAST"), "n"))))
    with pytest.raises(FramingError, match="unexpected HELLO"):
        Decoder(ETHER_TO_NODE).feed(encode(Hello()))
    decoder = Decoder()
    assert decoder.feed(encode(Ack())[:2]) == []
    with pytest.raises(FramingError, match="inside a frame"):
        decoder.eof()


def test_encode_refuses_impossible_messages() -> None:
    with pytest.raises(UsageError):
        Data(b"x" * (MAX_DATAGRAM + 1))
    with pytest.raises(UsageError):
        Hello(name="x" * 65)
    with pytest.raises(UsageError):
        Hello(name="a&b")
    long_error = encode(Error("é" * 2000))  # messages are cut to fit, on a character boundary
    assert len(long_error) <= MAX_FRAME + 2
    assert Decoder().feed(long_error)[0].message.startswith("éé")
