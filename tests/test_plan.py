import json

import pytest

from relay.plan import (
    COMFORT_LATENCY,
    COMFORT_OCCUPANCY,
    MAX_LATENCY,
    VOICE_PACKET_OVERHEAD,
    evaluate,
    max_frames_per_packet,
    plan,
    speech_airtime,
)
from relay.radio.profiles import custom, preset
from relay.voice.modes import MODES, mode_by_name

M1600 = mode_by_name("1600")


def test_overhead_default() -> None:
    assert VOICE_PACKET_OVERHEAD == 18  # 16 B of header, position and tag, 2 B live MAC


def test_short_fast_fits_live_1600() -> None:
    result = plan(preset("SHORT_FAST"))
    assert result.fits_live
    assert any(r.fits for r in result.rows if r.mode is M1600)
    assert plan(preset("SHORT_FAST"), mode="1600").fits_live
    assert "Live voice fits SHORT_FAST" in result.advice


def test_long_fast_fits_nothing() -> None:
    result = plan(preset("LONG_FAST"))
    assert not result.fits_live
    assert result.best is None
    assert result.rows and not any(r.fits for r in result.rows)
    assert "does not fit LONG_FAST" in result.advice
    assert "voice messages" in result.advice
    seconds = speech_airtime(preset("LONG_FAST"), "1600")
    assert f"{seconds:.2f} s of airtime" in result.advice
    assert seconds > 1.9


def test_mode_restricts_rows() -> None:
    profile = preset("SHORT_FAST")
    result = plan(profile, mode="1600")
    assert {r.mode for r in result.rows} == {M1600}
    fpps = [r.frames_per_packet for r in result.rows]
    assert fpps == list(range(1, (profile.mtu - 18 - 8) // 8 + 1))  # room for a live key
    assert result.best is not None and result.best.mode is M1600
    assert plan(profile, mode=M1600).rows == result.rows
    assert {r.mode for r in plan(profile).rows} == set(MODES)


def test_row_arithmetic() -> None:
    profile = preset("SHORT_FAST")
    row = evaluate(profile, M1600, 5)
    assert row.datagram_bytes == 18 + 5 * 8
    assert row.airtime_per_packet == profile.airtime(58)
    # 1600 has 25 frames per second: 5 packets of 5 frames.
    assert row.airtime_per_second == pytest.approx(5 * profile.airtime(58))
    assert row.occupancy == row.airtime_per_second
    assert row.relay_occupancy == pytest.approx(2 * row.occupancy)
    assert row.latency == pytest.approx(6 * 0.04 + profile.airtime(58))


def test_rows_never_exceed_mtu() -> None:
    for profile in (preset("SHORT_FAST"), custom(7, 125_000, 5)):
        for row in plan(profile).rows:
            assert row.datagram_bytes <= profile.mtu


@pytest.mark.parametrize("name", ["SHORT_TURBO", "SHORT_FAST"])
def test_best_prefers_headroom_then_highest_bitrate_then_lowest_latency(name) -> None:
    result = plan(preset(name))
    best = result.best
    assert best is not None
    comfortable = [
        r
        for r in result.rows
        if r.fits and r.relay_occupancy <= COMFORT_OCCUPANCY and r.latency <= COMFORT_LATENCY
    ]
    assert best in comfortable
    assert best.mode.bitrate == max(r.mode.bitrate for r in comfortable)
    same = [r for r in comfortable if r.mode is best.mode]
    assert best.latency == min(r.latency for r in same)
    assert best.latency <= MAX_LATENCY and best.relay_occupancy <= 0.9


def test_best_falls_back_to_a_row_that_only_just_fits() -> None:
    # 1600 on SHORT_FAST: 4 frames/packet needs a little more than 85 % with the relay hop.
    best = plan(preset("SHORT_FAST"), mode="1600").best
    assert best is not None and best.frames_per_packet == 4
    assert best.relay_occupancy > COMFORT_OCCUPANCY


def test_duty_cycle_limits() -> None:
    profile = preset("SHORT_FAST")
    assert not plan(profile, duty_cycle=0.01).fits_live
    assert not plan(profile.with_duty_cycle(0.01)).fits_live
    advice = plan(profile, duty_cycle=0.01).advice
    assert "1 % duty cycle" in advice
    assert plan(profile.with_duty_cycle(0.01), duty_cycle=1.0).fits_live


def test_latency_bound_advice() -> None:
    advice = plan(preset("SHORT_SLOW")).advice
    assert "latency" in advice and "voice messages" in advice


def test_overhead_argument() -> None:
    profile = preset("SHORT_FAST")
    # (233 - overhead - 8 B for a revealed live key) // 8
    assert max_frames_per_packet(profile, M1600, overhead=16) == 26
    assert max_frames_per_packet(profile, M1600, overhead=33) == 24
    assert plan(profile, overhead=33).rows[0].datagram_bytes == 33 + 8


def test_tiny_mtu_has_no_rows() -> None:
    from dataclasses import replace

    tiny = replace(custom(7), mtu=18)
    result = plan(tiny, mode="1600")
    assert result.rows == () and not result.fits_live
    assert "MTU" in result.advice
    assert speech_airtime(tiny) == float("inf")


def test_to_dict_is_json() -> None:
    data = plan(preset("SHORT_FAST")).to_dict()
    text = json.dumps(data)
    back = json.loads(text)
    assert back["fits_live"] is True
    assert back["profile"]["name"] == "SHORT_FAST"
    assert back["profile"]["cr"] == "4/5"
    assert back["best"]["mode"] in {m.name for m in MODES}
    assert len(back["rows"]) == len(plan(preset("SHORT_FAST")).rows)
    assert json.loads(json.dumps(plan(preset("LONG_FAST")).to_dict()))["best"] is None


# --- FEC ----------------------------------------------------------------------------------


def test_fec_cost_adds_the_copies_bytes_and_airtime() -> None:
    from relay.plan import fec_cost

    profile = preset("SHORT_FAST")
    row = evaluate(profile, M1600, 5)
    cost = fec_cost(profile, row)
    assert cost is not None and cost.mode.name == "700C"
    assert cost.datagram_bytes == row.datagram_bytes + 5 * 4
    assert cost.airtime_per_second > row.airtime_per_second
    assert cost.extra_airtime == pytest.approx(cost.airtime_per_second / row.airtime_per_second - 1)
    assert fec_cost(profile, evaluate(profile, mode_by_name("3200"), 5)) is None  # no pairing
    big = fec_cost(profile, evaluate(profile, M1600, max_frames_per_packet(profile, M1600)))
    assert big is not None and not big.fits and "MTU" in big.problems[0]
    json.dumps(big.to_dict())  # no infinities in JSON


def test_planner_recommends_fec_only_for_lossy_links_where_it_fits() -> None:
    profile = preset("SHORT_FAST")
    clean = plan(profile)
    assert not clean.use_fec and clean.fec is not None and "--fec" in clean.advice
    lossy = plan(profile, loss=0.1)
    assert lossy.use_fec and lossy.fec is not None and lossy.fec.fits
    assert lossy.best is not None and lossy.best.mode.name == "1600"
    assert "use it: --fec" in lossy.advice
    d = lossy.to_dict()
    assert d["recommend"]["fec"] is True and d["fec"]["redundant_mode"] == "700C"
    assert not plan(profile, loss=0.01).use_fec
    assert not plan(preset("LONG_FAST"), loss=0.2).use_fec  # nothing live fits at all
