"""A pseudo-terminal that stands in for a USB serial device, driven from asyncio.

Client programs (pyserial, the meshtastic library) open the slave path as if it were
``/dev/ttyACM0``. The emulator holds the master and also keeps the slave open itself, in raw
mode: so a client closing and reopening the port does not tear the pty down, and the line
settings stay binary-clean (no echo, no CR/LF translation) until the client sets its own.

``link=PATH`` adds a stable symlink to the slave: pty numbers change every time, a symlink lets
a client reconnect to "the same device" after the emulator restarts (the unplug test).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_BACKLOG = 64 * 1024  # bytes buffered for a client that is not reading


class PtyPort:
    """One pty: ``on_data`` gets every chunk a client writes; ``write`` never blocks."""

    def __init__(self, on_data: Callable[[bytes], None], *, link: str | None = None) -> None:
        self._on_data = on_data
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.link = link
        self._out = bytearray()
        self.dropped_bytes = 0  # output dropped because nobody read it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        if link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(self.path, link)

    @property
    def device(self) -> str:
        """The path a client should open (the symlink when there is one)."""
        return self.link or self.path

    @property
    def backlog(self) -> int:
        """Bytes written and not yet taken by the pty."""
        return len(self._out)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if len(self._out) + len(data) > MAX_BACKLOG:
            self.dropped_bytes += len(data)
            return
        idle = not self._out
        self._out += data
        if idle:
            self._flush()

    def _flush(self) -> None:
        while self._out and not self.closed:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("pty %s: write failed: %s", self.path, exc)
                self._out.clear()
                return
            del self._out[:n]
        if self._loop is None or self.closed:
            return
        if self._out:
            self._loop.add_writer(self.master, self._flush)
        else:
            self._loop.remove_writer(self.master)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: no client has the slave open right now
                log.warning("pty %s: read failed: %s", self.path, exc)
            return
        if data:
            self._on_data(data)

    def close(self) -> None:
        """The device vanishes: clients reading the slave get an I/O error."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.master)
            self._loop.remove_writer(self.master)
        if self.link:
            with contextlib.suppress(OSError):
                if os.path.islink(self.link) and os.readlink(self.link) == self.path:
                    os.unlink(self.link)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
