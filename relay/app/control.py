"""The local control socket: `relay mod` reaches the moderator that is running.

A moderator process (``relay console``, ``relay moderate``) serves one Unix socket per room
in ``<home>/control/`` (the directory 0700, the socket 0600, and each peer's user id checked
with SO_PEERCRED where the system has it): only the user who runs it can moderate through it.
Nothing here touches the radio; a request becomes the same
:meth:`relay.app.session.RoomSession.act` call a key press makes.

The protocol is one JSON line each way: ``{"action": "mute", "member": "ana", "seconds":
null}`` in, ``{"ok": true, "message": "muted ana"}`` or ``{"ok": false, "error": "..."}`` out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relay.errors import RelayError, UsageError
from relay.store.home import Home

CONTROL_DIR = "control"
MAX_REQUEST = 4096
TIMEOUT = 30.0
SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes on Linux, 104 on the BSDs

Handler = Callable[[str, str | None, int | None], Awaitable[str]]


class NotRunning(RelayError):
    """No moderator of that room is running in this home."""


def control_path(home: Home, room_id: bytes) -> Path:
    """The socket a moderator of ``room_id`` serves in ``home``."""
    return home.path / CONTROL_DIR / f"{room_id.hex()[:16]}.sock"


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700, or check that an existing one is ours and tighten it."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"refusing to use {path}: it is not a directory")
    if info.st_uid != os.getuid():
        raise UsageError(f"refusing to use {path}: another user owns it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def _addressable(path: Path):
    """A name for ``path`` short enough for sockaddr_un (long test directories are not):
    through the directory's file descriptor under /proc on Linux."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_is_us(sock: socket.socket) -> bool:
    """The connecting process runs as our user (SO_PEERCRED); True where it cannot be asked
    (the 0700 directory already keeps other users out)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None or not sys.platform.startswith("linux"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


class ControlServer:
    """Serves ``relay mod`` requests for one room; ``handler(action, member, seconds)``
    returns one line or raises UsageError."""

    def __init__(self, home: Home, room_id: bytes, handler: Handler) -> None:
        self.path = control_path(home, room_id)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self.served = 0

    async def start(self) -> bool:
        """Listen; False (and nothing served) when another moderator process of this room
        already serves the socket."""
        home = self.path.parent.parent
        if not home.is_dir():
            raise UsageError(f"no relay home at {home}")
        _private_dir(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                return False
            self.path.unlink()  # left behind by a process that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _addressable(self.path) as address:
                sock.bind(address)
            os.chmod(self.path, 0o600)
            sock.listen(8)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot serve {self.path}: {exc.strerror}") from None
        return True

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> ControlServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is None or not _peer_is_us(sock):
                return
            try:
                line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            except (TimeoutError, ValueError):
                return
            reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line[:MAX_REQUEST])
            if not isinstance(request, dict):
                raise ValueError
            action = request["action"]
            member = request.get("member")
            seconds = request.get("seconds")
            if not isinstance(action, str) or not isinstance(member, str | None):
                raise ValueError
            if seconds is not None and (
                type(seconds) is not int or not 0 < seconds < 65536  # (not a bool either)
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request"}
        try:
            message = await self.handler(action, member, seconds)
        except UsageError as exc:
            return {"ok": False, "error": str(exc)}
        except RelayError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.served += 1
        return {"ok": True, "message": message}


async def _answers(path: Path) -> bool:
    """Someone is listening on ``path``."""
    try:
        with _addressable(path) as address:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(address), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def request(
    home: Home,
    room_id: bytes,
    action: str,
    member: str | None = None,
    seconds: int | None = None,
    *,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """Ask the running moderator of ``room_id`` to act; NotRunning when none runs."""
    path = control_path(home, room_id)
    if not path.exists():
        raise NotRunning("no moderator of this room is running here")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _addressable(path) as address:
            try:
                sock.connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                raise NotRunning("no moderator of this room is running here") from None
            except PermissionError:
                raise UsageError(f"cannot open {path}: permission denied") from None
        body = {"action": action, "member": member, "seconds": seconds}
        sock.sendall(json.dumps(body).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise UsageError(f"the moderator did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise UsageError(f"cannot talk to the moderator: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise UsageError("the moderator's answer was cut off (did it stop?)") from None
    if not isinstance(reply, dict):
        raise UsageError("the moderator's answer was not understood")
    return reply


async def serve_moderation(
    home: Home, session: Any, on_done: Callable[[str], None] | None = None
) -> ControlServer | None:
    """Serve ``relay mod`` for a :class:`~relay.app.session.RoomSession` that moderates; None
    when another process of this room already serves it. ``on_done`` is told each action
    done (a line to print or show)."""
    from relay.app.session import MODERATOR_ACTIONS

    async def handle(action: str, member: str | None, seconds: int | None) -> str:
        if action not in MODERATOR_ACTIONS:
            raise UsageError(f"`relay mod` does not {action}")
        message = await session.act(action, member, seconds)
        if on_done is not None:
            on_done(message)
        return message

    server = ControlServer(home, session.member.info.room_id, handle)
    return server if await server.start() else None
