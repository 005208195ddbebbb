"""Virtual time for asyncio, so tests drive hours of radio time in milliseconds.

``VirtualTimeLoop`` is an ordinary selector event loop whose clock only moves when the loop
would otherwise sleep: when nothing is ready and the next timer is ``t`` seconds away, the
clock jumps forward by ``t`` instead of waiting. Real file descriptors (sockets, the self-pipe
that ``call_soon_threadsafe`` writes to) are still polled, so real I/O keeps working; with no
timer pending the loop blocks on the real selector, so other threads can still wake it.

Caveat: work done in other threads (``run_in_executor``) takes no virtual time, so a virtual
timeout around such work fires at once unless the thread finishes first.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """Wraps a real selector; turns timed waits into jumps of the owning loop's clock."""

    def __init__(self, real: selectors.BaseSelector) -> None:
        self._real = real
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._real.select(None)
        ready = self._real.select(0)
        if not ready and timeout > 0 and self.loop is not None:
            self.loop.advance(timeout)
        return ready

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual; sleeping costs no wall time."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        selector = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the loop does this itself whenever it would sleep)."""
        if seconds < 0:
            raise ValueError("virtual time cannot go backwards")
        self._virtual_now += seconds


def new_loop(*, virtual: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: virtual time (tests, simulations) or the real clock."""
    return VirtualTimeLoop() if virtual else asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T], *, virtual: bool = True) -> T:
    """Run ``coro`` to completion on a fresh loop of the right kind, then close the loop."""
    factory = VirtualTimeLoop if virtual else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
