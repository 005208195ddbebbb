import asyncio
import threading
import time

from relay.runtime.clock import VirtualTimeLoop, run


def test_long_sleep_costs_no_wall_time() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        start = loop.time()
        await asyncio.sleep(3600)
        return start, loop.time()

    wall = time.monotonic()
    start, end = run(main())
    assert time.monotonic() - wall < 5.0  # not an hour; seconds at most on a loaded machine
    assert end - start == 3600


def test_timer_order_and_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def later(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            seen.append((name, loop.time()))

        loop.call_at(loop.time() + 2.5, lambda: seen.append(("call_at", loop.time())))
        await asyncio.gather(later("c", 3.0), later("a", 1.0), later("b", 2.0), later("z", 0))
        return seen

    seen = run(main())
    assert [n for n, _ in seen] == ["z", "a", "b", "call_at", "c"]
    assert [t for _, t in seen] == [0.0, 1.0, 2.0, 2.5, 3.0]


def test_wait_for_timeout_is_virtual() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), timeout=600)
        except TimeoutError:
            return loop.time()
        raise AssertionError("should have timed out")

    assert run(main()) == 600


def test_thread_can_wake_the_loop() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        def worker() -> None:
            time.sleep(0.02)
            loop.call_soon_threadsafe(fut.set_result, "woken")

        threading.Thread(target=worker).start()
        return await fut  # no timers pending: the loop blocks on the real selector

    assert run(main()) == "woken"


def test_real_time_mode() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert not isinstance(loop, VirtualTimeLoop)
        start = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - start

    elapsed = run(main(), virtual=False)
    assert 0.015 < elapsed < 1.0


def test_loop_is_closed_after_run() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())

    run(main())
    assert loops[0].is_closed()
