"""The wire format: round-trips, strict parsing, and arbitrary bytes never escape PacketError."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core import wire
from relay.errors import PacketError, UsageError
from relay.voice.modes import MODES

headers = st.builds(
    wire.Header,
    ptype=st.sampled_from(list(wire.PacketType)),
    sub=st.integers(0, 7),
    hint=st.integers(0, 255),
    sender=st.integers(0, 0xFFFF),
    counter=st.integers(0, wire.COUNTER_LIMIT - 1),
)


def test_voice_overhead_is_18_bytes_with_a_64_bit_tag_and_a_live_mac():
    assert wire.VOICE_PACKET_OVERHEAD == 18
    assert wire.VOICE_PACKET_MAX_OVERHEAD == 26  # with a revealed live key
    assert wire.TAG_LEN * 8 >= 64


@given(headers)
def test_header_round_trip(header):
    packed = header.pack()
    assert len(packed) == wire.HEADER_LEN
    assert wire.Header.parse(packed + bytes(wire.TAG_LEN + 1)) == header


@given(st.sampled_from(MODES), st.integers(0, 255), st.data())
def test_voice_body_round_trip(mode, position, data):
    count = data.draw(st.integers(1, 30))
    frames = tuple(
        data.draw(st.binary(min_size=mode.bytes_per_frame, max_size=mode.bytes_per_frame))
        for _ in range(count)
    )
    body = wire.VoiceBody(position, frames)
    packed = body.pack(mode)
    assert len(packed) == 1 + count * mode.bytes_per_frame
    assert wire.VoiceBody.parse(packed, mode) == body


@given(st.integers(0, 255), st.binary(max_size=64))
def test_control_body_round_trip(kind, payload):
    body = wire.ControlBody(kind, payload)
    assert wire.ControlBody.parse(body.pack()) == body


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_packet_error(data):
    try:
        header, associated, sealed = wire.split(data)
    except PacketError as exc:
        assert exc.reason in {"malformed", "version"}
        assert str(exc)
    else:
        assert associated == data[: wire.HEADER_LEN]
        assert len(sealed) >= wire.TAG_LEN + 1
        assert header.pack() == associated


@given(st.sampled_from(MODES), st.binary(max_size=100))
def test_arbitrary_voice_plaintext_raises_only_packet_error(mode, data):
    try:
        body = wire.VoiceBody.parse(data, mode)
    except PacketError as exc:
        assert exc.reason == "malformed"
    else:
        assert body.pack(mode) == data


@pytest.mark.parametrize("length", range(wire.MIN_PACKET_LEN))
def test_truncated_packets_are_malformed(length):
    with pytest.raises(PacketError, match="shorter") as info:
        wire.split(bytes(length))
    assert info.value.reason == "malformed"


def test_other_version_is_refused_clearly():
    packet = bytearray(wire.Header(0, 2, 0, 0, 0).pack() + bytes(9))
    packet[0] = (2 << 6) | (packet[0] & 0x3F)
    with pytest.raises(PacketError, match="version 2") as info:
        wire.split(bytes(packet))
    assert info.value.reason == "version"


def test_unknown_type_and_mode_are_malformed():
    with pytest.raises(PacketError, match="unknown packet type"):
        wire.split(bytes([(1 << 6) | (7 << 3)]) + bytes(20))
    with pytest.raises(PacketError, match="unknown codec mode index 7"):
        wire.split(bytes([(1 << 6) | 7]) + bytes(20))
    with pytest.raises(PacketError, match="nonzero sub"):
        wire.split(bytes([(1 << 6) | (1 << 3) | 1]) + bytes(20))


def test_building_impossible_values_is_a_usage_error():
    with pytest.raises(UsageError):
        wire.Header(0, 0, 0, 0, wire.COUNTER_LIMIT)
    with pytest.raises(UsageError):
        wire.VoiceBody(0, (b"\x00" * 7,)).pack(MODES[2])
    with pytest.raises(UsageError):
        wire.VoiceBody(0, ()).pack(MODES[2])


@given(st.integers(-10_000, 10_000), st.integers(-120, 120))
def test_unwrap_position_recovers_nearby_positions(expected, delta):
    actual = expected + delta
    assert wire.unwrap_position(actual % 256, expected) == actual


@given(st.integers(0, 1_000_000), st.integers(0, 255), st.integers(0, 255), st.integers(0, 50))
def test_unwrap_after_a_floor_survives_pauses_in_lost_packets(floor, gap, short, laps):
    """A packet after the floor (the last one's end) is found wherever it lies in the next
    256 positions, however far the estimate falls short of it (DTX pauses in lost packets),
    and far beyond when the estimate is close (many lost packets, no pauses)."""
    actual = floor + gap
    assert wire.unwrap_position(actual % 256, max(floor, actual - short), floor) == actual
    far = floor + gap + 256 * laps
    assert wire.unwrap_position(far % 256, far - min(short, 120), floor) == far


@given(st.integers(256, 1_000_000), st.integers(0, 255), st.integers(0, 255), st.integers(0, 50))
def test_unwrap_below_a_ceiling_survives_pauses(ceiling, gap, over, laps):
    """A late packet (an earlier counter) ends before the last one: found wherever it lies in
    the 256 positions below, however far the estimate overshoots it."""
    actual = ceiling - gap
    assert (
        wire.unwrap_position(actual % 256, min(ceiling, actual + over), ceiling=ceiling) == actual
    )
    far = actual - 256 * laps
    assert wire.unwrap_position(far % 256, far + min(over, 120), ceiling=ceiling) == far
