"""``kiss:///dev/ttyUSB0?baud=9600``: a KISS TNC on a serial port (USB, Bluetooth SPP, pty).

pyserial does the port; a reader thread blocks in ``read`` with a short timeout and hands
bytes to the event loop, which works the same on every platform pyserial supports. A device
that disappears (unplugged, its pty master closed) makes ``read`` fail; the link then reopens
the same path with backoff, so a udev symlink (/dev/serial/by-id/...) survives re-plugging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.errors import UsageError
from relay.links.kiss.link import KissLink, Transport
from relay.links.kiss.options import COMMON_KEYS, parse_options, query

DEFAULT_BAUD = 9600
_POLL_S = 0.05  # how long the reader thread blocks before looking at the stop flag
_WRITE_TIMEOUT_S = 2.0


class SerialTransport(Transport):
    """A serial port read by a helper thread."""

    def __init__(self, device: str, baud: int = DEFAULT_BAUD) -> None:
        self.device = device
        self.baud = baud
        self.name = device
        self._serial: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._chunks: asyncio.Queue[bytes | BaseException] | None = None

    async def open(self) -> None:
        await self.close()
        self._serial = await asyncio.to_thread(self._open_port)
        self._stop = threading.Event()
        self._chunks = asyncio.Queue()
        self._thread = threading.Thread(
            target=self._pump,
            args=(self._serial, asyncio.get_running_loop(), self._chunks, self._stop),
            name=f"kiss serial {self.device}",
            daemon=True,
        )
        self._thread.start()

    def _open_port(self) -> Any:
        import serial  # optional at import time: kiss+tcp:// does not need pyserial

        return serial.Serial(
            port=self.device,
            baudrate=self.baud,
            timeout=_POLL_S,
            write_timeout=_WRITE_TIMEOUT_S,
            exclusive=True if os.name == "posix" else None,
        )

    @staticmethod
    def _pump(
        port: Any,
        loop: asyncio.AbstractEventLoop,
        chunks: asyncio.Queue[bytes | BaseException],
        stop: threading.Event,
    ) -> None:
        """Reader thread: bytes (or the exception that ended reading) go to ``chunks``."""
        item: bytes | BaseException
        while not stop.is_set():
            try:
                item = port.read(port.in_waiting or 1)
            except Exception as exc:  # pyserial raises SerialException / OSError / TypeError
                item = exc
            if item or isinstance(item, BaseException):
                try:
                    loop.call_soon_threadsafe(chunks.put_nowait, item)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    return
            if isinstance(item, BaseException):
                return

    async def read(self) -> bytes:
        if self._chunks is None:
            return b""
        item = await self._chunks.get()
        if isinstance(item, OSError):
            raise item
        if isinstance(item, BaseException):
            raise OSError(f"serial port failed: {item}")
        return item

    async def write(self, data: bytes) -> None:
        if self._serial is None:
            raise OSError("serial port is not open")
        try:
            await asyncio.to_thread(self._serial.write, data)
        except OSError:
            raise
        except Exception as exc:  # e.g. TypeError from a port closed underneath
            raise OSError(f"serial write failed: {exc}") from exc

    async def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        port, self._serial = self._serial, None
        self._chunks = None
        if thread is not None:
            await asyncio.to_thread(thread.join, 1.0)
        if port is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(port.close)

    def unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot open the KISS TNC on {self.device}: {exc}. Is it plugged in, and may "
            f"this user open it (group dialout)?"
        )


def _device(url: str, netloc: str, path: str) -> str:
    if netloc and path not in ("", "/"):
        raise UsageError(f"{url}: write serial ports with three slashes, kiss:///dev/ttyUSB0")
    device = unquote(netloc or path)
    if device.startswith("/") and device[1:].upper().startswith("COM"):
        device = device[1:]  # kiss:///COM3 on Windows
    if not device:
        raise UsageError(f"{url} names no serial port; try kiss:///dev/ttyUSB0?baud=9600")
    return device


def open_url(url: str) -> KissLink:
    """A link for ``kiss:///DEVICE[?baud=N&options]``; opens the port on first use."""
    parts = urlsplit(url)
    q = query(url, parts.query, (*COMMON_KEYS, "baud"))
    baud = DEFAULT_BAUD
    if "baud" in q:
        try:
            baud = int(q.pop("baud"))
        except ValueError:
            baud = 0
        if not 50 <= baud <= 4_000_000:
            raise UsageError(f"{url}: baud must be a serial speed such as 9600 or 115200")
    options = parse_options(url, q)
    return KissLink(url, SerialTransport(_device(url, parts.netloc, parts.path), baud), options)
