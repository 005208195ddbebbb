"""``kiss+tcp://HOST:PORT``: a KISS TNC behind a TCP socket (direwolf's KISSPORT, 8001).

Example: ``kiss+tcp://127.0.0.1:8001?callsign=N0CALL-1&txdelay=100``; the options are in
:mod:`relay.links.kiss.options`. TCP keepalive is on, so a TNC host that vanishes without
closing the connection is noticed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

from relay.errors import UsageError
from relay.links.kiss.link import KissLink, Transport
from relay.links.kiss.options import COMMON_KEYS, parse_options, query

DEFAULT_PORT = 8001  # direwolf's KISSPORT
CONNECT_TIMEOUT = 3.0
_READ_SIZE = 4096


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpTransport(Transport):
    """An asyncio TCP connection to a TNC."""

    def __init__(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.name = _where(host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        await self.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _tune(sock)
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes:
        if self._reader is None:
            return b""
        return await self._reader.read(_READ_SIZE)

    async def write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("not connected")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def unreachable(self, exc: BaseException) -> str:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return (
            f"no KISS TNC at {self.name} ({why}); is the TNC running and listening there "
            f"(direwolf: KISSPORT {self.port})?"
        )


def _tune(sock: socket.socket) -> None:
    """Small frames go out at once; a dead peer is noticed within about half a minute."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def open_url(url: str) -> KissLink:
    """A link for ``kiss+tcp://HOST[:PORT][?options]``; connects on first use."""
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise UsageError(f"{url}: kiss+tcp:// takes HOST:PORT and no path")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise UsageError(f"{url}: bad port ({exc})") from None
    if not host:
        raise UsageError(f"{url} names no host; try kiss+tcp://127.0.0.1:{DEFAULT_PORT}")
    options = parse_options(url, query(url, parts.query, COMMON_KEYS))
    return KissLink(url, TcpTransport(host, port or DEFAULT_PORT), options)
