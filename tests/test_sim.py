import asyncio
import contextlib
import random
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import DutyCycleExceeded, LinkError, UsageError
from relay.links.sim.channel import (
    _KEYS,
    Ether,
    GilbertElliott,
    NoLoss,
    RandomLoss,
    SimLink,
    clear_registry,
    ethers,
    loss_model,
    parse_url,
)
from relay.links.url import open_link
from relay.radio.profiles import custom, preset
from relay.runtime.clock import run

FAST = preset("SHORT_FAST")


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_registry()
    yield
    clear_registry()


async def _collect(link: SimLink) -> list[bytes]:
    out = []
    while link.pending():
        out.append((await link.recv()).data)
    return out


def test_delivery_at_send_time_plus_airtime() -> None:
    ether = Ether(FAST)
    a, b = ether.attach("alice"), ether.attach("bob")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(5)
        t0 = loop.time()
        await a.send(b"x" * 100)
        got = await b.recv()
        assert got.data == b"x" * 100
        assert got.time == pytest.approx(t0 + FAST.airtime(100), abs=1e-9)
        assert loop.time() == pytest.approx(got.time)

    run(main())
    assert a.stats.sent == 1 and a.stats.bytes_sent == 100
    assert a.stats.airtime_s == pytest.approx(FAST.airtime(100))
    assert b.stats.received == 1
    assert a.airtime(100) == FAST.airtime(100)
    assert a.mtu == 233


def test_everyone_but_the_sender_hears() -> None:
    ether = Ether(FAST)
    a, b, c = (ether.attach() for _ in range(3))

    async def main() -> None:
        await a.send(b"hello")
        await a.drain()
        assert await _collect(b) == [b"hello"]
        assert await _collect(c) == [b"hello"]
        assert a.pending() == 0

    run(main())


def test_nodes_apart_do_not_hear_each_other_but_the_one_between_hears_both() -> None:
    async def main() -> None:
        a = open_link("sim://valley?node=a&apart=c")
        b, c = open_link("sim://valley?node=b"), open_link("sim://valley?node=c")
        await a.send(b"from a")
        await a.drain()
        await c.send(b"from c")
        await c.drain()
        assert await _collect(b) == [b"from a", b"from c"]
        assert await _collect(c) == [] and await _collect(a) == []
        for link in (a, b, c):
            await link.close()

    run(main())
    for bad, match in (("apart=x", "needs node="), ("node=a&apart=a", "other nodes")):
        with pytest.raises(UsageError, match=match):
            open_link(f"sim://valley2?{bad}")


def test_mtu_refused() -> None:
    a = Ether(FAST).attach()

    async def main() -> None:
        await a.send(b"x" * 233)
        with pytest.raises(UsageError, match="MTU of 233"):
            await a.send(b"x" * 234)

    run(main())
    assert a.stats.refused == 1 and a.stats.sent == 1


def test_back_to_back_sends_queue_and_drain() -> None:
    ether = Ether(FAST)
    a, b = ether.attach(), ether.attach()
    air = FAST.airtime(50)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(5):
            await a.send(bytes([i]) * 50)
        await a.drain()
        assert loop.time() == pytest.approx(5 * air)
        got = [await b.recv() for _ in range(5)]
        assert [d.data[0] for d in got] == [0, 1, 2, 3, 4]
        assert [d.time for d in got] == pytest.approx([air * (i + 1) for i in range(5)])

    run(main())
    assert ether.occupancy() == pytest.approx(1.0)
    assert ether.stats.airtime_s == pytest.approx(5 * air)


def test_back_pressure_from_bounded_queue() -> None:
    ether = Ether(FAST, queue_size=2)
    a = ether.attach()
    air = FAST.airtime(50)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        returned = []
        for _ in range(5):
            await a.send(b"x" * 50)
            returned.append(loop.time())
        return returned

    # 1 on air + 2 queued go at once; the 4th waits for the first to finish, and so on.
    assert run(main()) == pytest.approx([0, 0, 0, air, 2 * air])


def test_touching_transmissions_do_not_collide() -> None:
    ether = Ether(FAST)
    a, b = ether.attach(), ether.attach()

    async def main() -> None:
        await a.send(b"ping")
        got = await b.recv()
        await b.send(b"pong")  # starts exactly when "ping" ended
        assert (await a.recv()).data == b"pong"
        assert got.data == b"ping"

    run(main())
    assert ether.stats.collisions == 0


def test_collision_and_half_duplex() -> None:
    ether = Ether(FAST)
    a, b, c = ether.attach("a"), ether.attach("b"), ether.attach("c")

    async def main() -> None:
        await a.send(b"a" * 100)
        await asyncio.sleep(FAST.airtime(100) / 2)  # b starts in the middle of a's packet
        await b.send(b"b" * 100)
        await b.drain()
        await asyncio.sleep(1)

    run(main())
    assert ether.stats.collisions == 2
    assert ether.stats_total("collisions") == 2
    assert c.stats.received == 0
    assert c.stats.extra["collisions"] == 2
    # a and b were on air while the other's packet arrived: half duplex, they heard nothing.
    assert a.stats.extra["half_duplex_missed"] == 1
    assert b.stats.extra["half_duplex_missed"] == 1
    assert a.stats.received == b.stats.received == 0
    assert ether.stats_total("dropped") == 4


def test_later_listener_only_misses_what_overlaps_its_own_transmission() -> None:
    ether = Ether(FAST)
    a, b = ether.attach(), ether.attach()

    async def main() -> None:
        await a.send(b"1")
        await a.send(b"2")
        await a.drain()
        await b.send(b"3")
        await b.drain()
        assert await _collect(b) == [b"1", b"2"]
        assert await _collect(a) == [b"3"]

    run(main())


def _loss_pattern(model: object, seed: int, n: int = 4000) -> list[bool]:
    ether = Ether(FAST, loss=model, seed=seed)  # type: ignore[arg-type]
    a, b = ether.attach(), ether.attach()

    async def main() -> list[bool]:
        for i in range(n):
            await a.send(i.to_bytes(2, "big"))
        await a.drain()
        seen = {int.from_bytes(d, "big") for d in await _collect(b)}
        return [i not in seen for i in range(n)]

    return run(main())


def test_random_loss_rate_and_reproducibility() -> None:
    lost = _loss_pattern(0.1, seed=1)
    assert 0.085 < sum(lost) / len(lost) < 0.115
    assert _loss_pattern(0.1, seed=1) == lost
    assert _loss_pattern(0.1, seed=2) != lost


def _mean_run(pattern: list[bool]) -> float:
    runs, current = [], 0
    for lost in pattern:
        if lost:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return sum(runs) / len(runs)


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    burst = _loss_pattern(GilbertElliott.from_mean(0.2, 5), seed=3)
    independent = _loss_pattern(RandomLoss(0.2), seed=3)
    assert 0.15 < sum(burst) / len(burst) < 0.25
    assert 0.17 < sum(independent) / len(independent) < 0.23
    assert _mean_run(burst) > 3.5
    assert _mean_run(independent) < 1.5


def test_loss_model_constructors() -> None:
    assert isinstance(loss_model(0), NoLoss)
    assert isinstance(loss_model(0.1), RandomLoss)
    ge = loss_model(0.1, burst=4)
    assert isinstance(ge, GilbertElliott)
    assert ge.mean_loss == pytest.approx(0.1)
    assert ge.p_bad_to_good == pytest.approx(0.25)
    assert loss_model(1.0).mean_loss == 1.0  # everything lost is a legitimate test channel
    with pytest.raises(UsageError, match="loss"):
        loss_model(1.0, burst=3)
    with pytest.raises(UsageError, match="loss"):
        loss_model(-0.1)
    with pytest.raises(UsageError, match="burst"):
        loss_model(0.1, burst=0.5)
    with pytest.raises(UsageError, match="impossible"):
        GilbertElliott.from_mean(0.9, 1)
    rng = random.Random(0)
    ge_draws = [ge.lost(rng) for _ in range(20000)]
    assert sum(ge_draws) / len(ge_draws) == pytest.approx(0.1, abs=0.02)


def test_per_receiver_loss_is_independent() -> None:
    ether = Ether(FAST, loss=0.3, seed=5)
    a, b, c = ether.attach(), ether.attach(), ether.attach()

    async def main() -> None:
        for i in range(200):
            await a.send(bytes([i]))
        await a.drain()

    run(main())
    assert b.stats.received != c.stats.received or b.stats.extra != c.stats.extra
    assert ether.stats.lost == b.stats.extra["lost"] + c.stats.extra["lost"]


def test_duty_cycle_queue_waits_for_the_window() -> None:
    air = FAST.airtime(10)
    # Budget: room for exactly two datagrams per 10 s window.
    ether = Ether(FAST, duty_cycle=2.5 * air / 10.0, duty_window=10.0)
    a, b = ether.attach(), ether.attach()

    async def main() -> None:
        for _ in range(3):
            await a.send(b"x" * 10)
        await a.drain()
        times = [(await b.recv()).time for _ in range(3)]
        assert times[:2] == pytest.approx([air, 2 * air])
        # The third goes once the first transmission has left the window.
        assert times[2] == pytest.approx(air + 10.0 + air, abs=1e-5)

    run(main())
    assert a.stats.extra["duty_waits"] == 1
    assert a.stats.refused == 0


def test_duty_cycle_refuse_raises() -> None:
    air = FAST.airtime(10)
    ether = Ether(FAST, duty_cycle=2.5 * air / 10.0, duty_window=10.0, duty_policy="refuse")
    a = ether.attach()

    async def main() -> None:
        await a.send(b"x" * 10)
        await a.send(b"x" * 10)
        with pytest.raises(DutyCycleExceeded, match="duty cycle"):
            await a.send(b"x" * 10)
        await asyncio.sleep(11)
        await a.send(b"x" * 10)  # the window has moved on

    run(main())
    assert a.stats.refused == 1 and a.stats.sent == 3


def test_duty_cycle_profile_default_and_oversized_datagram() -> None:
    ether = Ether(FAST.with_duty_cycle(0.0001), duty_window=10.0)  # 1 ms of air per 10 s
    assert ether.duty_cycle == 0.0001
    a = ether.attach()

    async def main() -> None:
        with pytest.raises(DutyCycleExceeded, match="whole duty-cycle budget"):
            await a.send(b"x")

    run(main())


def test_close_wakes_receivers_and_refuses_sends() -> None:
    ether = Ether(FAST)
    a, b = ether.attach(), ether.attach()

    async def main() -> None:
        waiting = asyncio.create_task(b.recv())
        await asyncio.sleep(1)
        await b.close()
        with pytest.raises(LinkError):
            await waiting
        with pytest.raises(LinkError):
            await b.recv()
        with pytest.raises(LinkError):
            await b.send(b"x")
        await a.send(b"x")  # nobody listening is fine
        await a.drain()
        await b.close()  # idempotent

    run(main())
    assert "b" not in ether.nodes and len(ether.nodes) == 1


def test_close_wakes_blocked_sender() -> None:
    a = Ether(FAST, queue_size=1).attach()

    async def main() -> None:
        await a.send(b"1")
        await a.send(b"2")
        blocked = asyncio.create_task(a.send(b"3"))
        await asyncio.sleep(0)
        await a.close()
        with pytest.raises(LinkError):
            await blocked

    run(main())
    assert a.stats.extra["discarded_on_close"] == 1


def test_real_time_delivery() -> None:
    turbo = preset("SHORT_TURBO")
    ether = Ether(turbo)
    a, b = ether.attach(), ether.attach()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.send(b"x" * 10)
        return (await b.recv()).time - t0

    assert run(main(), virtual=False) == pytest.approx(turbo.airtime(10), abs=0.02)


def test_ether_reused_on_a_new_loop() -> None:
    ether = Ether(FAST)
    a, b = ether.attach(), ether.attach()

    async def main() -> float:
        await a.send(b"x")
        return (await b.recv()).time

    first = run(main())
    assert run(main()) == pytest.approx(first)


# --- URLs ----------------------------------------------------------------------------------


def test_open_url_options() -> None:
    link = open_link(
        "sim://lab?preset=medium_fast&loss=0.1&burst=4&seed=7&duty_cycle=1%"
        "&duty_policy=refuse&duty_window=600&node=alice&queue=4"
    )
    assert isinstance(link, SimLink)
    ether = link.ether
    assert ether.name == "lab" and link.name == "alice"
    assert ether.profile == preset("MEDIUM_FAST")
    assert isinstance(ether.loss, GilbertElliott)
    assert ether.loss.mean_loss == pytest.approx(0.1)
    assert ether.seed == 7
    assert ether.duty_cycle == pytest.approx(0.01)
    assert ether.duty_policy == "refuse" and ether.duty_window == 600
    assert link._queue_size == 4
    assert link.url == "sim://lab?node=alice"


def test_open_url_defaults_and_custom_radio() -> None:
    link = open_link("sim://")
    assert link.ether.name == "default"
    assert link.ether.profile == preset("SHORT_FAST")
    assert isinstance(link.ether.loss, NoLoss)
    custom_link = open_link("sim://raw?sf=9&bw=125&cr=4/6")
    assert custom_link.ether.profile == custom(9, 125_000, 6)
    assert custom_link.mtu == 255
    assert open_link("sim://raw2?sf=9&bw=62.5k").ether.profile.lora.bw_hz == 62_500
    assert open_link("sim://eu?region=EU_868").ether.duty_cycle == 0.01
    assert open_link("sim://blank?sf=&loss=").ether.profile == preset("SHORT_FAST")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("sim://x?colour=red", "unknown sim:// option 'colour'"),
        ("sim://x?loss=lots", "not a valid number"),
        ("sim://x?loss=1.5", "loss must be a probability"),
        ("sim://x?loss=0.1&loss=0.2", "given twice"),
        ("sim://x?preset=FASTEST", "unknown radio preset 'FASTEST'"),
        ("sim://x?preset=SHORT_FAST&sf=7", "either preset= or sf="),
        ("sim://x?bw=125k", "need sf="),
        ("sim://x?sf=13", "spreading factor"),
        ("sim://x?sf=7&cr=4/9", "coding rate"),
        ("sim://x?duty_cycle=0", "duty_cycle must be in"),
        ("sim://x?duty_cycle=0.1&region=US", "not both"),
        ("sim://x?region=MARS", "unknown region"),
        ("sim://x?duty_policy=drop", "queue or refuse"),
        ("sim://x?burst=0", "burst"),
        ("sim://x?seed=1.5", "not a valid number"),
        ("sim://x?queue=0", "queue must be"),
        ("sim://x/path", "channel name and options only"),
        ("sim://x?duty_window=nan", "finite"),
    ],
)
def test_open_url_errors(url: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        open_link(url)
    assert "x" not in ethers()


def test_named_ether_is_shared() -> None:
    a = open_link("sim://room?preset=SHORT_FAST&seed=3&node=a")
    b = open_link("sim://room")
    c = open_link("sim://room?preset=short_fast")  # repeating some options is fine
    other = open_link("sim://elsewhere")
    assert isinstance(a, SimLink) and isinstance(b, SimLink) and isinstance(c, SimLink)
    assert a.ether is b.ether is c.ether
    assert other.ether is not a.ether  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="different options"):
        open_link("sim://room?preset=LONG_FAST")
    with pytest.raises(UsageError, match="different options"):
        open_link("sim://room?seed=4")
    with pytest.raises(UsageError, match="already on"):
        open_link("sim://room?node=a")

    async def main() -> None:
        await a.send(b"over the shared air")
        assert (await b.recv()).data == b"over the shared air"
        assert (await c.recv()).data == b"over the shared air"
        for link in (a, b, c):
            await link.close()

    run(main())
    assert "room" not in ethers()  # the last node leaving frees the name
    assert open_link("sim://room?preset=LONG_FAST").ether.profile.name == "LONG_FAST"


_keys = st.sampled_from([*_KEYS, "bogus"])
_values = st.text(alphabet="0123456789.-/%kKabcfgilnoqrstuFST_", max_size=8)


@given(st.lists(st.tuples(_keys, _values), max_size=5))
@settings(max_examples=300, deadline=None)
def test_parse_url_only_ever_raises_usage_error(pairs: list[tuple[str, str]]) -> None:
    url = "sim://fuzz?" + "&".join(f"{k}={quote(v)}" for k, v in pairs)
    with contextlib.suppress(UsageError):
        parse_url(url)


def test_listen_before_talk_avoids_a_collision() -> None:
    from relay.links.sim.channel import Ether
    from relay.radio.profiles import preset
    from relay.runtime.clock import run

    async def scenario(lbt: bool):
        ether = Ether(preset("SHORT_FAST"), lbt=lbt, seed=3)
        a, b, c = ether.attach("a"), ether.attach("b"), ether.attach("c")
        await a.send(b"x" * 100)
        await asyncio.sleep(0.01)  # b starts while a is on air
        await b.send(b"y" * 100)
        await a.drain()
        await b.drain()
        got = []
        while c.pending():
            got.append((await c.recv()).data[:1])
        return ether.stats.collisions, got, b.stats.extra.get("lbt_waits", 0)

    collisions, got, _ = run(scenario(False))
    assert collisions == 2 and got == []
    collisions, got, waits = run(scenario(True))
    assert collisions == 0 and got == [b"x", b"y"] and waits == 1


def test_lbt_url_option() -> None:
    from relay.links.sim.channel import parse_url

    assert parse_url("sim://x?lbt=on")[1]["lbt"] is True
    with pytest.raises(UsageError, match="lbt"):
        parse_url("sim://x?lbt=maybe")
