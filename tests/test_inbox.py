"""The receive queue every link driver shares: order, waiters, cancellation, failure."""

from __future__ import annotations

import asyncio

import pytest

from relay.errors import LinkError
from relay.links.base import Datagram, Inbox


def dg(n: int) -> Datagram:
    return Datagram(bytes([n]), float(n))


def test_queued_datagrams_come_out_in_arrival_order() -> None:
    async def main() -> None:
        inbox = Inbox()
        for n in range(5):
            assert inbox.put(dg(n)) is False
        assert len(inbox) == 5
        loop = asyncio.get_running_loop()
        assert [(await inbox.get(loop)).data[0] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert len(inbox) == 0 and not inbox

    asyncio.run(main())


def test_a_waiting_receiver_gets_the_datagram_before_the_queue_does() -> None:
    async def main() -> None:
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(inbox.get(loop))
        second = asyncio.create_task(inbox.get(loop))
        await asyncio.sleep(0)
        inbox.put(dg(1))
        inbox.put(dg(2))
        inbox.put(dg(3))
        assert len(inbox) == 1  # two went straight to the waiters, oldest waiter first
        assert (await first).data == b"\x01"
        assert (await second).data == b"\x02"
        assert inbox.get_nowait().data == b"\x03"
        with pytest.raises(IndexError):
            inbox.get_nowait()

    asyncio.run(main())


def test_a_limit_drops_the_oldest_and_says_so() -> None:
    inbox = Inbox(limit=2)
    assert [inbox.put(dg(n)) for n in range(4)] == [False, False, True, True]
    assert [inbox.get_nowait().data[0] for _ in range(2)] == [2, 3]


def test_a_receiver_cancelled_while_waiting_takes_nothing() -> None:
    async def main() -> None:
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        gone = asyncio.create_task(inbox.get(loop))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        inbox.put(dg(7))
        assert len(inbox) == 1
        assert (await inbox.get(loop)).data == b"\x07"

    asyncio.run(main())


def test_a_receiver_cancelled_after_being_handed_a_datagram_gives_it_back() -> None:
    async def main() -> None:
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        unlucky = asyncio.create_task(inbox.get(loop))
        await asyncio.sleep(0)
        inbox.put(dg(1))  # resolves the waiter's future...
        unlucky.cancel()  # ...but the task is cancelled before it runs again
        inbox.put(dg(2))
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        assert [inbox.get_nowait().data[0] for _ in range(len(inbox))] == [1, 2]

        # given back to the next waiter, if one is already waiting
        unlucky = asyncio.create_task(inbox.get(loop))
        await asyncio.sleep(0)
        patient = asyncio.create_task(inbox.get(loop))
        await asyncio.sleep(0)
        inbox.put(dg(3))  # to the oldest waiter
        unlucky.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        assert len(inbox) == 0  # went straight on to the other waiter
        assert (await patient).data == b"\x03"

    asyncio.run(main())


def test_fail_wakes_every_waiter_and_keeps_what_is_queued() -> None:
    async def main() -> None:
        inbox = Inbox()
        loop = asyncio.get_running_loop()
        waiters = [asyncio.create_task(inbox.get(loop)) for _ in range(3)]
        await asyncio.sleep(0)
        inbox.fail(LinkError("closed"))
        for task in waiters:
            with pytest.raises(LinkError, match="closed"):
                await task
        inbox.put(dg(1))  # nobody waits any more: it is queued
        assert len(inbox) == 1
        inbox.clear()
        assert len(inbox) == 0

    asyncio.run(main())


def test_forgotten_waiters_are_not_handed_datagrams() -> None:
    async def main() -> None:
        inbox = Inbox()
        waiter = asyncio.create_task(inbox.get(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        inbox.forget_waiters()
        inbox.put(dg(1))
        assert len(inbox) == 1 and not waiter.done()
        waiter.cancel()

    asyncio.run(main())
