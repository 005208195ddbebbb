import pytest

from relay.errors import UsageError
from relay.radio.profiles import (
    custom,
    duty_cycle_for,
    firmware_default,
    preset,
    presets,
    regions,
)

NAMES = [
    "SHORT_TURBO",
    "SHORT_FAST",
    "SHORT_SLOW",
    "MEDIUM_FAST",
    "MEDIUM_SLOW",
    "LONG_TURBO",
    "LONG_FAST",
    "LONG_MODERATE",
    "LONG_SLOW",
    "VERY_LONG_SLOW",
]


def test_all_presets_present() -> None:
    assert [p.name for p in presets()] == NAMES
    for p in presets():
        assert p.mtu == 233 and p.link_overhead_bytes == 22
        assert p.lora.preamble == 16
        assert p.description


def test_preset_parameters() -> None:
    lf = preset("LONG_FAST")
    assert (lf.lora.sf, lf.lora.bw_hz, lf.lora.cr) == (11, 250_000, 5)
    vls = preset("VERY_LONG_SLOW")
    assert (vls.lora.sf, vls.lora.bw_hz, vls.lora.cr) == (12, 62_500, 8)
    assert firmware_default() == lf


@pytest.mark.parametrize("spelling", ["short_fast", "Short-Fast", "ShortFast", " SHORT_FAST "])
def test_preset_spellings(spelling: str) -> None:
    assert preset(spelling).name == "SHORT_FAST"


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(UsageError, match="LONG_FAST") as err:
        preset("WARP_SPEED")
    assert "WARP_SPEED" in str(err.value)


def test_airtime_includes_link_overhead() -> None:
    p = preset("SHORT_FAST")
    assert p.airtime(200) == p.lora.time_on_air(222)
    p.airtime(233)
    with pytest.raises(UsageError):
        p.airtime(234)  # 256 bytes on air


def test_custom() -> None:
    c = custom(9)
    assert (c.lora.sf, c.lora.bw_hz, c.lora.cr, c.lora.preamble) == (9, 125_000, 5, 8)
    assert c.mtu == 255 and c.link_overhead_bytes == 0
    assert c.name == "SF9/BW125k/CR4/5"
    assert c.airtime(10) == c.lora.time_on_air(10)
    assert custom(12, 62_500, 8, duty_cycle=0.1).duty_cycle == 0.1
    with pytest.raises(UsageError, match="spreading factor"):
        custom(3)


def test_profile_validation() -> None:
    with pytest.raises(UsageError, match="duty cycle"):
        preset("SHORT_FAST").with_duty_cycle(0)
    with pytest.raises(UsageError, match="duty cycle"):
        preset("SHORT_FAST").with_duty_cycle(1.5)
    assert preset("SHORT_FAST").with_duty_cycle(0.01).duty_cycle == 0.01


def test_regions() -> None:
    assert duty_cycle_for("US") == 1.0
    assert duty_cycle_for("eu_868") == 0.01
    assert duty_cycle_for("EU_868_G3") == 0.10
    assert {r.name for r in regions()} >= {"US", "EU_868", "EU_868_G3", "EU_433"}
    with pytest.raises(UsageError, match="known: US"):
        duty_cycle_for("ATLANTIS")
