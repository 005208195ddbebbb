"""A room's latency budget: `relay plan --max-delay`, the room setting and its invite, the demo.

A moderated room tolerates more delay than a phone call; with about a second allowed (and no
repeater re-sending on the channel) live voice fits MEDIUM_FAST. The default (300 ms
comfortable, 400 ms at most, one relay hop) must plan exactly as before.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import invoke, ok, refused
from hypothesis import given
from hypothesis import strategies as st

from relay.core.identity import Identity
from relay.core.invite import SIG_LEN, TEXT_PREFIX, RoomInfo, decode_invite, encode_invite
from relay.demo.voice import DemoSettings, bundled_sample, choose_frames_per_packet, run_demo
from relay.errors import UsageError
from relay.plan import (
    DEFAULT_MAX_DELAY_MS,
    MAX_LATENCY,
    MAX_MAX_DELAY_MS,
    MAX_RELAY_HOPS,
    MIN_MAX_DELAY_MS,
    RELAY_HOPS,
    Budget,
    plan,
)
from relay.radio.profiles import preset, presets
from relay.runtime.clock import run
from relay.runtime.member import open_member
from relay.store.home import Home
from relay.store.rooms import RoomStore
from relay.voice.modes import mode_by_name

ROOM_BUDGET = Budget(1000, 0)  # about a second, listeners hear the talker directly


def _best(result):
    b = result.best
    return None if b is None else (b.mode.name, b.frames_per_packet)


# ------------------------------------------------------------------------------ the planner
def test_the_default_budget_plans_exactly_as_before() -> None:
    assert (Budget().max_delay_ms, Budget().relay_hops) == (DEFAULT_MAX_DELAY_MS, RELAY_HOPS)
    assert Budget().max_latency == MAX_LATENCY and Budget().comfort_latency == 0.3
    for profile in presets():
        before = plan(profile)
        after = plan(profile, **Budget().plan_kwargs())
        assert after == before, profile.name
    # What the README promises by default: SHORT_FAST fits (1400, 4 frames, 266 ms), the
    # MEDIUM presets do not.
    assert _best(plan(preset("SHORT_FAST"))) == ("1400", 4)
    assert not plan(preset("MEDIUM_FAST")).fits_live
    assert not plan(preset("MEDIUM_SLOW")).fits_live


def test_a_larger_budget_is_an_allowance_not_a_target() -> None:
    """Presets that fit a phone call keep their phone-call plan under a 1 s budget."""
    for name in ("SHORT_TURBO", "SHORT_FAST"):
        default = plan(preset(name))
        roomy = plan(preset(name), **Budget(1000).plan_kwargs())
        assert _best(roomy) == _best(default), name
        assert roomy.best.latency <= 0.3


def test_one_second_offers_live_voice_on_medium_fast_with_larger_packets() -> None:
    profile = preset("MEDIUM_FAST")
    result = plan(profile, **ROOM_BUDGET.plan_kwargs())
    assert result.fits_live and "Live voice fits MEDIUM_FAST" in result.advice
    assert result.best.latency <= 1.0 and result.best.relay_occupancy <= 0.9
    fitting = [r for r in result.rows if r.fits]
    assert all(r.latency <= 1.0 for r in fitting)
    for mode in ("700C", "1200"):  # low rates fit, in packets far larger than SHORT_FAST's
        sizes = [r.frames_per_packet for r in fitting if r.mode.name == mode]
        assert sizes and min(sizes) >= 6, (mode, sizes)
    assert not any(r.fits for r in result.rows if r.mode.name in ("3200", "2400"))
    assert _best(result) == ("1400", 9)
    j = result.to_dict()
    assert (j["max_delay_ms"], j["relay_hops"], j["fits_live"]) == (1000, 0, True)


def test_a_repeater_or_medium_slow_needs_more_than_a_second_and_the_advice_says_so() -> None:
    """Honest limits: with a repeater re-sending every packet MEDIUM_FAST needs about 1.12 s
    (700C, 19 frames); MEDIUM_SLOW needs about 1.23 s and no repeater (700C, 16 frames).
    (Every voice packet carries its 2-byte live MAC: the planner counts it.)"""
    fast, slow = preset("MEDIUM_FAST"), preset("MEDIUM_SLOW")
    with_repeater = plan(fast, **Budget(1000, 1).plan_kwargs())
    assert not with_repeater.fits_live
    assert "--max-delay 1000 --relay-hops 0" in with_repeater.advice
    assert not plan(fast, **Budget(1100, 1).plan_kwargs()).fits_live
    assert _best(plan(fast, **Budget(1150, 1).plan_kwargs())) == ("700C", 19)
    assert not plan(slow, **ROOM_BUDGET.plan_kwargs()).fits_live
    assert not plan(slow, **Budget(1200, 0).plan_kwargs()).fits_live
    roomier = plan(slow, **Budget(1250, 0).plan_kwargs())
    assert _best(roomier) == ("700C", 16) and roomier.best.latency <= 1.25
    default = plan(fast)
    assert "--max-delay 1000 --relay-hops 0" in default.advice  # the way to live voice


def test_budget_limits_are_checked() -> None:
    for bad in (MIN_MAX_DELAY_MS - 1, MAX_MAX_DELAY_MS + 1, 1000.0, "1000"):
        with pytest.raises(UsageError, match="delay budget"):
            Budget(bad)
    for hops in (-1, MAX_RELAY_HOPS + 1):
        with pytest.raises(UsageError, match="relay hops"):
            Budget(1000, hops)


def test_relay_plan_max_delay_cli() -> None:
    out = json.loads(
        ok(
            "plan", "--preset", "MEDIUM_FAST", "--max-delay", "1000", "--relay-hops", "0", "--json"
        ).stdout
    )
    assert out["fits_live"] and out["best"]["latency_ms"] <= 1000
    assert (out["max_delay_ms"], out["relay_hops"]) == (1000, 0)
    default = json.loads(ok("plan", "--preset", "SHORT_FAST", "--json").stdout)
    assert (default["max_delay_ms"], default["relay_hops"]) == (400, 1)
    assert (default["best"]["mode"], default["best"]["frames_per_packet"]) == ("1400", 4)
    table = ok("plan", "--preset", "MEDIUM_FAST", "--max-delay", "1000", "--relay-hops", "0")
    words = " ".join(table.stdout.split())  # rich wraps lines at the terminal width
    assert "delay budget 1000 ms" in words and "Live voice fits" in words
    refused("plan", "--max-delay", "50", match="--max-delay")
    refused("plan", "--relay-hops", "9", match="--relay-hops")


# ------------------------------------------------------------------------------ the room setting
MOD = Identity.from_private_bytes(bytes(range(64)))
MEMBER = Identity.from_private_bytes(bytes(range(64, 128)))


def _info(budget: Budget | None) -> RoomInfo:
    return RoomInfo(bytes(8), "far", "MEDIUM_FAST", "1200", 0, bytes(32), (MOD.public,), budget)


@given(
    st.integers(MIN_MAX_DELAY_MS, MAX_MAX_DELAY_MS),
    st.integers(0, MAX_RELAY_HOPS),
    st.booleans(),
)
def test_the_budget_travels_signed_in_the_invite(ms: int, hops: int, sealed: bool) -> None:
    info = _info(Budget(ms, hops))
    text = encode_invite(info, MOD, MEMBER.public if sealed else None, 1_700_000_000)
    assert decode_invite(text, MEMBER).room == info


def test_invites_without_a_budget_are_unchanged_and_a_bad_budget_is_refused() -> None:
    info = _info(None)
    text = encode_invite(info, MOD, None, 1_700_000_000)
    assert decode_invite(text, None).room.budget is None
    assert to_blob(text)[1] == 0  # no flag: the bytes of an invite from before budgets
    # A budget byte changed in transit breaks the signature.
    signed = to_blob(encode_invite(_info(ROOM_BUDGET), MOD, None, 1_700_000_000))
    at = signed.index(b"MEDIUM_FAST") + len("MEDIUM_FAST") + 1  # after the mode byte
    assert signed[at : at + 3] == bytes([0x03, 0xE8, 0])
    tampered = signed[:at] + bytes([0x00, 0x64]) + signed[at + 2 :]
    with pytest.raises(UsageError, match="signature"):
        decode_invite(to_text(tampered), None)
    # A moderator who signs an impossible budget is refused with a clear line.
    from relay.core.invite import SIGN_DOMAIN

    body = signed[:-SIG_LEN]
    body = body[:at] + bytes([0x00, 0x05]) + body[at + 2 :]
    with pytest.raises(UsageError, match="invite is not usable: a delay budget"):
        decode_invite(to_text(body + MOD.sign(SIGN_DOMAIN + body)), None)


def to_blob(text: str) -> bytes:
    import base64

    body = text[len(TEXT_PREFIX) :]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def to_text(blob: bytes) -> str:
    import base64

    return TEXT_PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def test_room_create_stores_the_budget_members_get_it_and_talkers_plan_with_it(tmp_path) -> None:
    mod, ana = str(tmp_path / "mod"), str(tmp_path / "ana")
    for home in (mod, ana):
        ok("id", "init", "--home", home)
    created = json.loads(
        ok(
            "room", "create", "far", "--preset", "MEDIUM_FAST", "--max-delay", "1000",
            "--relay-hops", "0", "--home", mod, "--json",
        ).stdout
    )  # fmt: skip
    assert (created["max_delay_ms"], created["relay_hops"]) == (1000, 0)
    ok("room", "create", "near", "--preset", "MEDIUM_FAST", "--home", mod)  # no budget
    public = json.loads(ok("id", "show", "--home", ana, "--json").stdout)["public_id"]
    for room in ("far", "near"):
        invite = ok("room", "invite", room, "--for", public, "--home", mod).stdout.split()[-1]
        joined = ok("room", "join", invite, "--home", ana).stdout
        assert ("delay budget 1000 ms, 0 relay hop(s)" in joined) == (room == "far")
    with RoomStore(Home(ana)) as rooms:
        assert rooms.get("far").budget == ROOM_BUDGET
        assert rooms.get("near").budget is None
    refused("room", "create", "x", "--max-delay", "20000", "--home", mod, match="--max-delay")

    async def frames() -> dict[str, tuple[int, bool]]:
        out = {}
        for room in ("far", "near"):
            url = f"sim://{room}-budget?preset=MEDIUM_FAST"
            async with open_member(Home(ana), room, url) as member:
                out[room] = member.frames_per_packet()
        return out

    got = run(frames(), virtual=True)
    m1600 = mode_by_name("1600")
    assert got["far"] == (10, True)  # live: 10 frames of 1600
    assert got["far"] == choose_frames_per_packet(preset("MEDIUM_FAST"), m1600, budget=ROOM_BUDGET)
    assert got["near"][1] is False  # the default budget: voice messages on MEDIUM_FAST


# ------------------------------------------------------------------------------ the demo
def test_demo_on_medium_fast_with_a_one_second_budget_is_live_and_under_it(tmp_path) -> None:
    settings = DemoSettings(preset("MEDIUM_FAST"), mode_by_name("1200"), budget=ROOM_BUDGET)
    r = run_demo(settings, bundled_sample(), tmp_path / "o.wav")
    assert r["fits_live"] and (r["max_delay_ms"], r["relay_hops"]) == (1000, 0)
    assert r["frames_per_packet"] >= 7  # SHORT_FAST plans 4
    assert r["packets_received"] == r["packets_sent"] and r["frames_concealed"] == 0
    assert r["over_complete"] and r["frames_late"] == 0
    assert 0 < r["latency_ms"]["max"] < 1000  # measured mouth-to-ear, not the plan's estimate
    assert r["channel_occupancy"] < 0.9
    default = run_demo(
        DemoSettings(preset("MEDIUM_FAST"), mode_by_name("1200")),
        bundled_sample("forig.wav"),
        tmp_path / "d.wav",
    )
    assert not default["fits_live"]


def test_relay_demo_and_demo_room_take_the_budget() -> None:
    result = invoke(
        "demo", "room", "--preset", "MEDIUM_FAST", "--max-delay", "1000", "--relay-hops", "0",
        "--speakers", "1", "--listeners", "2", "--no-attacks", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["fits_live"] and (r["max_delay_ms"], r["relay_hops"]) == (1000, 0)
    assert r["overs_delivered"] == r["overs"] == r["overs_verified"]
    assert r["latency_ms"]["max"] < 1000


def test_a_budget_change_reaches_members_with_their_next_invite(tmp_path) -> None:
    mod, ana = Home(tmp_path / "mod"), Home(tmp_path / "ana")
    for home in (mod, ana):
        ok("id", "init", "--home", str(home.path))
    me, her = mod.identity(), ana.identity()
    with RoomStore(mod) as rooms:
        info = rooms.create("far", "MEDIUM_FAST", "1200", me)
        first = encode_invite(info, me, her.public, 1_700_000_000)
        changed = rooms.set_budget(info.room_id, ROOM_BUDGET)
        assert changed.budget == ROOM_BUDGET and rooms.get("far").budget == ROOM_BUDGET
        second = encode_invite(changed, me, her.public, 1_700_000_060)
    with RoomStore(ana) as rooms:
        assert rooms.join(decode_invite(first, her), her.public).budget is None
        with pytest.raises(UsageError, match="only a moderator"):
            rooms.set_budget(info.room_id, ROOM_BUDGET)
        assert rooms.join(decode_invite(second, her), her.public).budget == ROOM_BUDGET
        assert rooms.join(decode_invite(first, her), her.public).budget == ROOM_BUDGET  # older
    shown = json.loads(ok("room", "budget", "far", "--home", str(ana.path), "--json").stdout)
    assert shown == {"name": "far", "default": False, "max_delay_ms": 1000, "relay_hops": 0}
    ok("room", "budget", "far", "--default", "--home", str(mod.path))
    with RoomStore(mod) as rooms:
        assert rooms.get("far").budget is None
    refused("room", "budget", "far", "--relay-hops", "7", "--home", str(mod.path), match="0..3")
