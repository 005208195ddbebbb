import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import UsageError
from relay.radio.lora import LoRaParams
from relay.radio.profiles import preset

# Semtech formula vectors: explicit header, CRC on, CR 4/5, preamble 8 (milliseconds).
VECTORS = [
    (10, 41.22, 288.8, 991.2),
    (23, 61.70, 370.7, 1482.8),
    (51, 102.66, 616.4, 2465.8),
    (255, 399.62, 2295.8, 9019.4),
]


@pytest.mark.parametrize(("size", "sf7", "sf10", "sf12"), VECTORS)
def test_semtech_vectors(size: int, sf7: float, sf10: float, sf12: float) -> None:
    for sf, expected in ((7, sf7), (10, sf10), (12, sf12)):
        params = LoRaParams(sf=sf, bw_hz=125_000, cr=5, preamble=8)
        assert params.time_on_air(size) * 1000 == pytest.approx(expected, abs=0.05)


def test_ldro_auto() -> None:
    assert LoRaParams(sf=12, bw_hz=125_000).low_data_rate_optimize  # 32.8 ms symbols
    assert LoRaParams(sf=11, bw_hz=125_000).low_data_rate_optimize  # 16.4 ms
    assert not LoRaParams(sf=10, bw_hz=125_000).low_data_rate_optimize
    assert not LoRaParams(sf=11, bw_hz=250_000).low_data_rate_optimize  # 8.2 ms
    forced = LoRaParams(sf=12, bw_hz=125_000, ldro=False)
    assert forced.time_on_air(51) < LoRaParams(sf=12, bw_hz=125_000).time_on_air(51)


@pytest.mark.parametrize(
    ("name", "ms"),
    [("SHORT_TURBO", 89), ("SHORT_FAST", 178), ("MEDIUM_FAST", 570), ("LONG_FAST", 1911)],
)
def test_meshtastic_222_bytes(name: str, ms: float) -> None:
    lora = preset(name).lora
    assert lora.preamble == 16
    assert lora.time_on_air(222) * 1000 == pytest.approx(ms, rel=0.01)


def test_symbol_time() -> None:
    assert LoRaParams(sf=7, bw_hz=125_000).symbol_time == pytest.approx(1.024e-3)


def test_implicit_header_and_no_crc_are_shorter() -> None:
    base = LoRaParams(sf=9, bw_hz=125_000)
    lean = LoRaParams(sf=9, bw_hz=125_000, explicit_header=False, crc=False)
    assert lean.time_on_air(50) < base.time_on_air(50)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sf": 4, "bw_hz": 125_000}, "spreading factor"),
        ({"sf": 13, "bw_hz": 125_000}, "spreading factor"),
        ({"sf": 7.0, "bw_hz": 125_000}, "spreading factor"),
        ({"sf": 7, "bw_hz": 125}, "bandwidth"),
        ({"sf": 7, "bw_hz": 125_000, "cr": 4}, "coding rate"),
        ({"sf": 7, "bw_hz": 125_000, "cr": 9}, "coding rate"),
        ({"sf": 7, "bw_hz": 125_000, "preamble": 2}, "preamble"),
    ],
)
def test_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        LoRaParams(**kwargs)


def test_payload_bounds() -> None:
    params = LoRaParams(sf=7, bw_hz=125_000)
    params.time_on_air(0)
    params.time_on_air(255)
    with pytest.raises(UsageError, match=r"0\.\.255"):
        params.time_on_air(256)
    with pytest.raises(UsageError):
        params.time_on_air(-1)


def test_frozen() -> None:
    params = LoRaParams(sf=7, bw_hz=125_000)
    with pytest.raises(AttributeError):
        params.sf = 8  # type: ignore[misc]


@given(
    sf=st.integers(5, 12),
    bw=st.sampled_from([62_500, 125_000, 250_000, 500_000]),
    cr=st.integers(5, 8),
    size=st.integers(0, 254),
)
def test_airtime_grows_with_payload(sf: int, bw: int, cr: int, size: int) -> None:
    params = LoRaParams(sf=sf, bw_hz=bw, cr=cr)
    assert 0 < params.time_on_air(size) <= params.time_on_air(size + 1)
    assert params.time_on_air(size) <= LoRaParams(sf=sf, bw_hz=bw, cr=8).time_on_air(size)
