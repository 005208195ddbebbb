"""Running blocking driver libraries (pyserial, meshtastic) beside an asyncio event loop.

Vendor libraries block: they sleep to pace serial writes, wait for queue space, wait for a
handshake. Their calls run on daemon threads here, and results come back to the loop only
through ``loop.call_soon_threadsafe``. Daemon threads, not an executor: a call stuck inside
a library (a vanished device) must never stop the program from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from relay.errors import LinkError

T = TypeVar("T")


def _settle(
    fut: asyncio.Future[Any],
    ok: bool,
    value: Any,
    orphan: Callable[[Any], None] | None,
) -> None:
    if fut.done():  # the caller gave up waiting (cancelled, timed out)
        if ok and orphan is not None:
            orphan(value)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, exc
    except BaseException as exc:  # a library calling sys.exit() must not end the program
        return False, LinkError(f"driver library gave up: {type(exc).__name__}: {exc}")


def _deliver(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: tuple[bool, Any],
    orphan: Callable[[Any], None] | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, fut, *result, orphan)


def in_thread(
    fn: Callable[..., T],
    *args: Any,
    name: str = "relay-driver",
    orphan: Callable[[T], None] | None = None,
) -> asyncio.Future[T]:
    """Run ``fn(*args)`` on a fresh daemon thread. If the awaiting side has given up by the
    time it returns, ``orphan(result)`` is called on the loop (e.g. to close a connection
    that was opened too late)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    thread = threading.Thread(
        target=lambda: _deliver(loop, fut, _call(fn, args), orphan), daemon=True, name=name
    )
    thread.start()
    return fut


class Worker:
    """One daemon thread running submitted calls in order (a send path keeps its order)."""

    def __init__(self, name: str = "relay-worker") -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def stop(self) -> None:
        """Finish the call in progress (if it ever returns), then end the thread."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, fut, fn, args = job
            _deliver(loop, fut, _call(fn, args), None)
