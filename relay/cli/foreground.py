"""Serving in the foreground until Ctrl-C: what the emulator commands share.

Kept apart from ``relay.cli.emulate`` so each emulator's own file imports it without importing
the group that lists it (no import loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys


async def run_until_stopped(duration: float | None) -> None:
    """Wait for Ctrl-C / SIGTERM, or ``duration`` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


def log_to_stderr(name: str, verbose: bool) -> None:
    """Send logger ``name`` to stderr as "relay emulate: ...": INFO with --verbose, else WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("relay emulate: %(message)s"))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False
