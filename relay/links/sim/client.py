"""A radio node on a shared ether in another process: ``sim://127.0.0.1:7300``.

:class:`RemoteSimLink` is a :class:`~relay.links.base.Link` whose channel is hosted by
``relay ether`` (:mod:`relay.links.sim.server`). It behaves like an in-process
:class:`~relay.links.sim.SimLink`: the MTU and ``airtime()`` come from the ether's WELCOME,
``send`` returns once the ether has queued the datagram (waiting while the node's transmit
queue is full, raising what the ether raised: UsageError, DutyCycleExceeded, LinkError),
``recv`` returns datagrams stamped with this process's loop time at arrival.

Opening:

* ``open_link("sim://127.0.0.1:7300?node=alice")`` (sync, through :func:`open_url`) connects
  and does the handshake with a blocking socket, so ``mtu`` is known at once. Do not use it
  from a coroutine running on the same event loop as the ether server (the server could not
  answer); use ``await open_remote(url)`` there.
* ``await open_remote(url)`` does the same without blocking.

Query options: ``node=`` and ``queue=`` belong to the node and are sent to the ether. The
channel's options (preset, sf/bw/cr, loss, burst, seed, duty cycle...) belong to the ether;
they may be repeated in the URL, but a URL contradicting the ether raises UsageError.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections import deque

from relay.errors import DutyCycleExceeded, FramingError, LinkError, UsageError
from relay.links.base import Datagram, Inbox, Link, LinkStats
from relay.links.sim.channel import GilbertElliott, LossModel, parse_url, remote_address
from relay.links.sim.codec import (
    ETHER_TO_NODE,
    PROTOCOL_VERSION,
    Ack,
    ChannelInfo,
    Data,
    Decoder,
    Drain,
    Drained,
    Error,
    Hello,
    Message,
    Nack,
    NackKind,
    Welcome,
    encode,
)

CONNECT_TIMEOUT = 3.0
_READ_SIZE = 4096
_NACK_ERRORS: dict[NackKind, type[Exception]] = {
    NackKind.USAGE: UsageError,
    NackKind.DUTY_CYCLE: DutyCycleExceeded,
    NackKind.LINK: LinkError,
}


_CHANNEL_KEYS = frozenset(
    {"profile", "loss", "seed", "duty_cycle", "duty_policy", "duty_window", "lbt"}
)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refused(host: str, port: int) -> LinkError:
    return LinkError(
        f"no ether at {_where(host, port)} — start one with `relay ether --port {port}`"
    )


def _answer(host: str, port: int, msgs: list[Message]) -> ChannelInfo:
    """The ether's first answer to HELLO: its channel, or why it refused us."""
    first = msgs[0]
    if isinstance(first, Error):
        raise UsageError(f"the ether at {_where(host, port)} refused this node: {first.message}")
    if not isinstance(first, Welcome):
        raise LinkError(
            f"{_where(host, port)} answered {type(first).__name__.upper()} instead of WELCOME; "
            f"is it a relay ether?"
        )
    if first.info.version != PROTOCOL_VERSION:
        raise LinkError(
            f"the ether at {_where(host, port)} speaks protocol {first.info.version}, "
            f"this relay speaks {PROTOCOL_VERSION}; use the same relay version"
        )
    return first.info


def _hello(node: dict[str, object]) -> Hello:
    return Hello(
        name=str(node.get("name") or ""),
        queue_size=int(node.get("queue_size") or 0),  # type: ignore[call-overload]
    )


def _loss_of(model: LossModel) -> tuple[float, float | None]:
    if isinstance(model, GilbertElliott) and model.p_bad_to_good > 0:
        return model.mean_loss, 1.0 / model.p_bad_to_good
    return model.mean_loss, None


def check_options(url: str, opts: dict[str, object], info: ChannelInfo) -> None:
    """Raise UsageError if channel options given in ``url`` contradict the ether's."""
    wrong: list[str] = []
    profile = opts.get("profile")
    if profile is not None:
        theirs = info.profile
        same = (
            profile.lora == theirs.lora  # type: ignore[attr-defined]
            and profile.mtu == theirs.mtu  # type: ignore[attr-defined]
            and profile.link_overhead_bytes == theirs.link_overhead_bytes  # type: ignore[attr-defined]
        )
        if not same:
            wrong.append(f"radio {profile.name} (the ether runs {theirs.name})")  # type: ignore[attr-defined]
    if "loss" in opts:
        loss, burst = _loss_of(opts["loss"])  # type: ignore[arg-type]
        same = math.isclose(loss, info.loss, abs_tol=1e-9) and (
            (burst is None and info.burst is None)
            or (burst is not None and info.burst is not None and math.isclose(burst, info.burst))
        )
        if not same:
            theirs_txt = f"loss={info.loss:g}" + (
                f", burst={info.burst:g}" if info.burst is not None else ""
            )
            wrong.append(f"loss (the ether has {theirs_txt})")
    if "seed" in opts and opts["seed"] != info.seed:
        wrong.append(f"seed={opts['seed']} (the ether's seed is {info.seed})")
    if "duty_cycle" in opts and not math.isclose(opts["duty_cycle"], info.duty_cycle):  # type: ignore[arg-type]
        wrong.append(f"duty_cycle={opts['duty_cycle']:g} (the ether's is {info.duty_cycle:g})")
    if "duty_policy" in opts and opts["duty_policy"] != info.duty_policy:
        wrong.append(f"duty_policy={opts['duty_policy']} (the ether's is {info.duty_policy})")
    if "duty_window" in opts and not math.isclose(opts["duty_window"], info.duty_window):  # type: ignore[arg-type]
        wrong.append(f"duty_window={opts['duty_window']:g} (the ether's is {info.duty_window:g})")
    if "lbt" in opts and bool(opts["lbt"]) != info.lbt:
        ours, theirs_lbt = ("on", "off") if opts["lbt"] else ("off", "on")
        wrong.append(f"lbt={ours} (the ether has it {theirs_lbt})")
    unknown = sorted(set(opts) - _CHANNEL_KEYS)
    if unknown:
        raise UsageError(f"{url}: {', '.join(unknown)} cannot be set on a node of a remote ether")
    if wrong:
        raise UsageError(
            f"{url} contradicts the ether it names: {'; '.join(wrong)}. The channel's settings "
            f"belong to `relay ether`; drop them from the URL or restart the ether with them"
        )


# --- opening -------------------------------------------------------------------------------


def _parse(url: str) -> tuple[str, int, dict[str, object], dict[str, object]]:
    address = remote_address(url)
    if address is None:
        raise UsageError(f"{url!r} names no ether server (sim://HOST:PORT)")
    _, opts, node = parse_url(url)
    if "apart" in node:
        raise UsageError(f"{url}: apart= works on in-process channels only, not a remote ether")
    return address[0], address[1], opts, node


def open_url(url: str, *, timeout: float = CONNECT_TIMEOUT) -> RemoteSimLink:
    """Join the ether named by ``sim://HOST:PORT?node=NAME`` (blocking handshake)."""
    host, port, opts, node = _parse(url)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise _refused(host, port) from None
    except OSError as exc:
        raise LinkError(f"cannot reach an ether at {_where(host, port)}: {exc}") from None
    try:
        decoder = Decoder(ETHER_TO_NODE)
        deadline = time.monotonic() + timeout
        sock.sendall(encode(_hello(node)))
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(_READ_SIZE)
            if not chunk:
                raise LinkError(
                    f"{_where(host, port)} hung up before answering; is it a relay ether?"
                )
            msgs = decoder.feed(chunk)
            if msgs:
                break
        info = _answer(host, port, msgs)
        check_options(url, opts, info)
    except TimeoutError:
        sock.close()
        raise LinkError(
            f"{_where(host, port)} did not answer within {timeout:g} s; is it a relay ether "
            f"(and not one running on this coroutine's own event loop)?"
        ) from None
    except FramingError as exc:
        sock.close()
        raise LinkError(f"{_where(host, port)} does not speak the ether protocol: {exc}") from None
    except ConnectionError as exc:
        sock.close()
        raise LinkError(f"lost {_where(host, port)} during the handshake: {exc}") from None
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return RemoteSimLink(host, port, info, decoder=decoder, early=msgs[1:], sock=sock)


async def open_remote(url: str, *, timeout: float = CONNECT_TIMEOUT) -> RemoteSimLink:
    """Join the ether named by ``sim://HOST:PORT?node=NAME`` without blocking the loop."""
    host, port, opts, node = _parse(url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        raise _refused(host, port) from None
    except TimeoutError:
        raise LinkError(f"cannot reach an ether at {_where(host, port)}: timed out") from None
    except OSError as exc:
        raise LinkError(f"cannot reach an ether at {_where(host, port)}: {exc}") from None
    decoder = Decoder(ETHER_TO_NODE)

    async def handshake() -> list[Message]:
        writer.write(encode(_hello(node)))
        await writer.drain()
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                raise LinkError(
                    f"{_where(host, port)} hung up before answering; is it a relay ether?"
                )
            msgs = decoder.feed(chunk)
            if msgs:
                return msgs

    try:
        msgs = await asyncio.wait_for(handshake(), timeout)
        info = _answer(host, port, msgs)
        check_options(url, opts, info)
    except BaseException as exc:
        writer.close()
        if isinstance(exc, TimeoutError):
            raise LinkError(
                f"{_where(host, port)} did not answer within {timeout:g} s; is it a relay ether?"
            ) from None
        if isinstance(exc, FramingError):
            raise LinkError(
                f"{_where(host, port)} does not speak the ether protocol: {exc}"
            ) from None
        if isinstance(exc, ConnectionError):
            raise LinkError(f"lost {_where(host, port)} during the handshake: {exc}") from None
        raise
    link = RemoteSimLink(host, port, info, decoder=decoder, early=msgs[1:])
    link._start(reader, writer)
    return link


# --- the link ------------------------------------------------------------------------------


class RemoteSimLink(Link):
    """One node on an ether served by another process (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        info: ChannelInfo,
        *,
        decoder: Decoder,
        early: list[Message] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.info = info
        self.name = info.node
        self.url = f"sim://{_where(host, port)}?node={info.node}"
        self.mtu = info.profile.mtu
        self.profile = info.profile
        self.stats = LinkStats()
        self.closed = False
        self._decoder = decoder
        self._early = list(early or [])
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._send_lock = asyncio.Lock()  # binds to a loop on first use (Python >= 3.10)
        self._failure: str | None = None
        self._inbox = Inbox()
        self._replies: deque[tuple[asyncio.Future[Message], type]] = deque()

    def __repr__(self) -> str:
        return f"<RemoteSimLink {self.name} on sim://{_where(self.host, self.port)}>"

    def airtime(self, nbytes: int) -> float:
        return self.profile.airtime(nbytes)

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)

    # -- plumbing

    def _start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader, self._writer = reader, writer
        self._sock = None
        self._task = self._loop.create_task(self._read_loop(), name=f"relay-ether-{self.name}")

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not None:
            if self._loop is not loop:
                raise LinkError(f"{self.url} is in use by another event loop")
            if self._starting is not None and not self._starting.done():
                await asyncio.shield(self._starting)
            return
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        self._loop = loop
        self._starting = loop.create_future()
        try:
            assert self._sock is not None
            reader, writer = await asyncio.open_connection(sock=self._sock)
        except OSError as exc:
            self._fail(f"lost the ether at {_where(self.host, self.port)}: {exc}")
            self._starting.set_result(None)
            raise LinkError(self._failure) from None
        self._loop = None
        self._start(reader, writer)
        self._starting.set_result(None)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        where = _where(self.host, self.port)
        try:
            for msg in self._early:
                self._dispatch(msg)
            self._early.clear()
            while True:
                try:
                    chunk = await self._reader.read(_READ_SIZE)
                except (ConnectionError, OSError) as exc:
                    self._fail(f"lost the ether at {where}: {exc}")
                    return
                if not chunk:
                    self._fail(f"the ether at {where} went away (connection closed)")
                    return
                for msg in self._decoder.feed(chunk):
                    self._dispatch(msg)
                    if self._failure is not None:
                        return
        except FramingError as exc:
            self._fail(f"the ether at {where} sent something unreadable: {exc}")
        finally:
            if self._failure is not None and self._writer is not None:
                self._writer.close()

    def _dispatch(self, msg: Message) -> None:
        where = _where(self.host, self.port)
        if isinstance(msg, Data):
            assert self._loop is not None
            self.stats.received += 1
            self._inbox.put(Datagram(msg.data, self._loop.time()))
        elif isinstance(msg, Ack | Nack | Drained):
            if not self._replies:
                raise FramingError(f"unrequested {type(msg).__name__.upper()}")
            fut, expected = self._replies.popleft()
            if not isinstance(msg, expected):
                raise FramingError(f"{type(msg).__name__.upper()} out of order")
            if not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, Error):
            self._fail(f"the ether at {where} closed this link: {msg.message}")
        else:
            raise FramingError(f"unexpected {type(msg).__name__.upper()}")

    def _fail(self, message: str) -> None:
        """The connection is over: every waiter gets LinkError(message)."""
        if self._failure is None:
            self._failure = message
        err = self._failure
        self._inbox.fail(LinkError(err))
        while self._replies:
            fut, _ = self._replies.popleft()
            if not fut.done():
                fut.set_exception(LinkError(err))

    async def _request(self, msg: Data | Drain, expected: type | tuple[type, ...]) -> Message:
        if self._failure is not None:
            raise LinkError(self._failure)
        assert self._loop is not None and self._writer is not None
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._replies.append((fut, expected))  # type: ignore[arg-type]
        try:
            self._writer.write(encode(msg))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._fail(f"lost the ether at {_where(self.host, self.port)}: {exc}")
        return await fut

    # -- the Link interface

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        self._refuse_if_closed()
        if self._failure is not None:
            self.stats.refused += 1
            raise LinkError(self._failure)
        self._check_size(data, self.profile.name)
        await self._ensure_started()
        async with self._send_lock:
            reply = await self._request(Data(data), (Ack, Nack))
        if isinstance(reply, Nack):
            self.stats.refused += 1
            raise _NACK_ERRORS[reply.kind](reply.message)
        self.stats.sent += 1
        self.stats.bytes_sent += len(data)
        self.stats.airtime_s += self.airtime(len(data))

    async def drain(self) -> None:
        """Wait until the ether has sent everything this node queued."""
        if self.closed or self._failure is not None or (self._loop is None and self._sock is None):
            return
        await self._ensure_started()
        async with self._send_lock:
            await self._request(Drain(), Drained)

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        if self._inbox:
            return self._inbox.get_nowait()
        await self._ensure_started()
        if not self._inbox and self._failure is not None:
            raise LinkError(self._failure)
        assert self._loop is not None
        return await self._inbox.get(self._loop)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._inbox.clear()
        self._fail(f"{self.url} is closed")
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
