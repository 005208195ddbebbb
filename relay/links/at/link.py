"""UART LoRa modules behind the link interface: ``at:///dev/ttyUSB1?profile=rylr998``.

One data-driven driver for every module in ``firmware_profiles/at.toml``: it fills the
profile's command templates, matches replies with the profile's regexes, and for transparent
modules (EBYTE) adds its own sync + length + CRC-16 framing. What it promises:

* bad bytes from the module (garbage, truncated or overlong lines, unexpected replies, bad
  checksums) are skipped, counted in ``stats.extra`` and logged, never raised;
* a vanished port (unplugged USB, closed pty, a module that stops answering) is noticed; the
  driver reopens it with exponential backoff and re-runs the profile's init commands;
* a datagram ``send`` accepted is transmitted, or counted: one being sent when the port dies
  is sent again after the reconnect (receivers' replay windows drop a duplicate); while the
  port is down the queue is bounded and the oldest datagrams are dropped and counted.

URL options: ``profile`` (required), ``baud``, ``addr``, ``dest``, ``network``, ``sf``,
``bw`` (kHz or Hz: 125, 125k, 125000), ``cr`` (5..8 or 4/5), ``preamble``, ``freq`` (Hz),
``power`` (dBm), ``air_rate`` (EBYTE: 2.4k...), ``queue`` (transmit queue, default 32).
POSIX only (the port's file descriptor is watched by the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import deque
from urllib.parse import parse_qsl, urlsplit

from relay.errors import LinkError, UsageError
from relay.links.at.codec import Event, FrameDecoder, Junk, Line, LineParser, Packet, frame
from relay.links.at.codec import encode_payload as _encode
from relay.links.at.profile import ATProfile, Settings
from relay.links.at.profile import profile as _profile
from relay.links.base import Datagram, Inbox, Link, LinkStats

log = logging.getLogger("relay.links.at.link")

DEFAULT_QUEUE = 32
RX_QUEUE = 256
REPLY_TIMEOUT = 1.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
SEND_TRIES = 2  # a refused send is retried once (modules answer "busy" now and then)
_KEYS = (
    "profile", "baud", "addr", "dest", "network", "sf", "bw", "cr", "preamble", "freq",
    "power", "air_rate", "queue",
)  # fmt: skip


class _PortDown(Exception):
    """The port went away or the module stopped answering: reopen."""


class _Refused(Exception):
    """The module answered a command with an error reply."""


class _Expect:
    """Reply lines a command waits for, in order; the future resolves on the last."""

    def __init__(self, steps: list[re.Pattern[str]], fut: asyncio.Future[str], cmd: str):
        self.steps = steps
        self.fut = fut
        self.cmd = cmd


class ATLink(Link):
    """One UART LoRa module on a serial port (or a pty)."""

    def __init__(
        self,
        port: str,
        profile: ATProfile,
        settings: Settings | None = None,
        *,
        baud: int | None = None,
        queue_size: int = DEFAULT_QUEUE,
        reply_timeout: float = REPLY_TIMEOUT,
        url: str | None = None,
    ) -> None:
        self.port = port
        self.profile = profile
        self.settings = settings or profile.settings()
        self.values = self.settings.values(profile) if profile.mode == "at" else {}
        self.baud = baud or profile.baud
        self.url = url or f"at://{port}?profile={profile.name}"
        self.mtu = profile.mtu
        self.stats = LinkStats()
        self.queue_size = queue_size
        self.reply_timeout = reply_timeout
        self.closed = False
        self.up = False
        self.last_error = ""
        self._serial = None  # serial.Serial while open
        self._fd: int | None = None
        self._parser = LineParser(profile) if profile.mode == "at" else None
        self._framer = FrameDecoder(profile.mtu) if profile.mode == "raw" else None
        self._pending: deque[bytes] = deque()
        self._sending = False
        self._accepted = False
        self._early: str | None = None  # a TX DONE line that beat its waiter
        self._inbox = Inbox(RX_QUEUE)
        self._expect: _Expect | None = None
        self._down: str | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None  # up/down, queue moved
        self._task: asyncio.Task[None] | None = None
        self._stale: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ATLink {self.port} {self.profile.name} {'up' if self.up else 'down'}>"

    def airtime(self, nbytes: int) -> float:
        return self.settings.lora.time_on_air(self.profile.air_bytes(nbytes))

    # -- lifecycle

    def open_port(self) -> None:
        """Open the serial port now (raises LinkError): ``open_url`` fails fast on a typo."""
        import serial  # pyserial; imported here so `relay --help` stays quick

        try:
            ser = serial.Serial(self.port, self.baud, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(
                f"cannot open {self.port}: {exc} (is it plugged in? see `relay devices`)"
            ) from None
        self._serial = ser
        self._fd = ser.fileno()
        self._down = None

    def _close_port(self) -> None:
        loop = self._loop_or_none()
        if self._fd is not None and loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial = None
        self._fd = None
        decoder = self._parser or self._framer
        if decoder is not None:
            for event in decoder.reset():
                self._handle(event)

    @staticmethod
    def _loop_or_none() -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def start(self) -> None:
        """Start the driver's task (done by send/recv/ready; needs a running loop)."""
        if self._task is None and not self.closed:
            self._wake = asyncio.Event()
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.url)

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until the module is configured and ready; LinkError if it does not get there."""
        self.start()
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.up:
            if self.closed:
                raise LinkError(f"{self.url} is closed")
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                why = f": {self.last_error}" if self.last_error else ""
                raise LinkError(f"{self.url} did not become ready in {timeout:g} s{why}")
            await self._changed_wait(left)

    async def _changed_wait(self, timeout: float | None = None) -> None:
        assert self._changed is not None
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self.closed:
            try:
                if self._serial is None:
                    self.open_port()
                self._attach()
                await self._initialise()
                self.up = True
                delay = BACKOFF_MIN
                log.info("%s: ready (%s)", self.url, self.profile.title)
                self._notify()
                await self._transmit_loop()
            except (_PortDown, LinkError) as exc:
                if str(exc) != self.last_error:
                    log.warning("%s: port down: %s; reopening with backoff", self.url, exc)
                self.last_error = str(exc)
            was_up, self.up = self.up, False
            if was_up:
                self.stats.bump("port_lost")
            self._close_port()
            self._notify()
            if self.closed:
                break
            self.stats.bump("reopen_attempts")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _attach(self) -> None:
        assert self._fd is not None
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    async def _initialise(self) -> None:
        if self.profile.mode == "raw":
            return
        for command in self.profile.init:
            try:
                await self._command(command.cmd.format_map(self.values), [command.expect])
            except _Refused as exc:
                raise LinkError(f"module refused {command.cmd.split('=')[0]}: {exc}") from None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up = False
        if self._task is not None:
            # Python 3.11's wait_for can swallow a cancel that races a reply, so the task
            # also checks `closed` after every wait; notify wakes it, wait() bounds it.
            self._task.cancel()
            self._notify()
            await asyncio.wait({self._task}, timeout=1.0)
        if self._pending:  # includes one in flight that the module never took
            self.stats.bump("discarded_on_close", len(self._pending))
            log.warning("%s: closed with %d datagrams unsent", self.url, len(self._pending))
            self._pending.clear()
        self._close_port()
        if self._stale is not None:
            self._stale.cancel()
        self._inbox.fail(LinkError(f"{self.url} is closed"))
        self._notify()

    # -- reading

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._lost("the device is gone (end of file)")
            return
        if self._parser is not None:
            events = self._parser.feed(data)
        else:
            assert self._framer is not None
            events = self._framer.feed(data)
            self._arm_stale()
        for event in events:
            self._handle(event)

    def _arm_stale(self) -> None:
        if self._stale is not None:
            self._stale.cancel()
            self._stale = None
        if self._framer is not None and self._framer.buffered:
            wait = self.airtime(self.mtu) + 0.5
            self._stale = asyncio.get_running_loop().call_later(wait, self._drop_stale)

    def _drop_stale(self) -> None:
        self._stale = None
        if self._framer is not None:
            for event in self._framer.stale():
                self._handle(event)

    def _lost(self, why: str) -> None:
        """The port failed under us: stop reading, wake whoever waits, let _run reopen."""
        if self._down is not None:
            return
        self._down = why
        loop = self._loop_or_none()
        if self._fd is not None and loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._fd)
        if self._expect is not None and not self._expect.fut.done():
            self._expect.fut.set_exception(_PortDown(why))
        self._notify()

    def _handle(self, event: Event) -> None:
        if isinstance(event, Packet):
            self._deliver(event)
        elif isinstance(event, Junk):
            self._junk(event.reason, event.detail)
        elif isinstance(event, Line):
            self._reply(event.text)

    def _deliver(self, packet: Packet) -> None:
        loop = asyncio.get_running_loop()
        dgram = Datagram(packet.data, loop.time(), packet.rssi, packet.snr)
        self.stats.received += 1
        if self._inbox.put(dgram):
            self._junk("rx_overflow", "receive queue full: oldest datagram dropped")

    def _junk(self, reason: str, detail: str) -> None:
        self.stats.bump(reason)
        n = self.stats.extra[reason]
        if n <= 5 or n % 100 == 0:
            log.warning("%s: skipped %s (%d so far): %s", self.url, reason, n, detail)

    def _reply(self, text: str) -> None:
        if self.closed:
            return
        exp = self._expect
        if exp is not None and not exp.fut.done():
            if text == exp.cmd:
                return  # the module echoes commands
            if exp.steps[0].match(text):
                exp.steps.pop(0)
                if not exp.steps:
                    exp.fut.set_result(text)
                return
            if self.profile.error is not None and self.profile.error.match(text):
                exp.fut.set_exception(_Refused(text))
                return
        tx_done = self.profile.tx_done
        if tx_done is not None and tx_done.match(text):
            self._early = text  # may be the one _transmit is about to wait for
            return
        self._junk("unexpected", f"reply nobody asked for: {text[:80]!r}")

    # -- commands

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = asyncio.get_running_loop().time() + 2.0
        while view:
            if self._down is not None or self._fd is None:
                raise _PortDown(self._down or "port closed")
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._lost(f"write failed: {exc.strerror or exc}")
                raise _PortDown(self._down or "write failed") from None
            view = view[n:]
            if view:
                if asyncio.get_running_loop().time() > deadline:
                    self._lost("write stalled for 2 s")
                    raise _PortDown("write stalled")
                await asyncio.sleep(0.002)

    async def _command(
        self, cmd: str, steps: list[re.Pattern[str]], timeout: float | None = None
    ) -> str:
        """Send ``cmd`` (unless empty) and wait for its reply lines, in order."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._expect = _Expect(list(steps), fut, cmd)
        if self._early is not None and steps[0].match(self._early):
            fut.set_result(self._early)  # it came before we started waiting (TX DONE)
        self._early = None
        try:
            if cmd:
                await self._write(cmd.encode("ascii") + b"\r\n")
            try:
                result = await asyncio.wait_for(fut, timeout or self.reply_timeout)
            except TimeoutError:
                # A module that misses a reply is in an unknown state (hung, reset, lost
                # its settings): reopen and run init again rather than guess.
                self._junk("timeouts", f"no answer to {cmd[:40]!r}")
                self._lost(f"no answer to {(cmd or 'a transmission')[:24]!r} in time")
                raise _PortDown(self._down or "module silent") from None
        finally:
            self._expect = None
        return result

    async def _wait_line(self, pattern: re.Pattern[str], timeout: float) -> str:
        return await self._command("", [pattern], timeout)

    # -- sending

    async def send(self, data: bytes) -> None:
        data = bytes(data)
        self._refuse_if_closed()
        if not 1 <= len(data) <= self.mtu:
            self.stats.refused += 1
            raise UsageError(
                f"datagram of {len(data)} bytes is outside 1..{self.mtu}, the MTU of "
                f"{self.profile.title} ({self.profile.encoding})"
            )
        self.start()
        while len(self._pending) >= self.queue_size:
            if not self.up:
                self._pending.popleft()
                self._junk("dropped_while_down", "transmit queue full while the port is down")
                break
            await self._changed_wait()
            if self.closed:
                self.stats.refused += 1
                raise LinkError(f"{self.url} is closed")
        self._pending.append(data)
        self._notify()

    async def drain(self) -> None:
        """Wait until every queued datagram has been sent (or the link closed)."""
        self.start()
        while (self._pending or self._sending) and not self.closed:
            await self._changed_wait()

    async def _transmit_loop(self) -> None:
        assert self._wake is not None
        while not self.closed:
            if self._down is not None:
                raise _PortDown(self._down)
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            data = self._pending.popleft()
            self._sending, self._accepted = True, False
            try:
                for attempt in range(SEND_TRIES):
                    try:
                        await self._transmit(data)
                        break
                    except _Refused as exc:
                        if attempt + 1 == SEND_TRIES:
                            self._junk("tx_failed", f"module refused a datagram: {exc}")
                        else:
                            await asyncio.sleep(self.airtime(len(data)))
            except BaseException:
                if not self._accepted:  # the module never took it: send it after reopening
                    self._pending.appendleft(data)
                raise
            finally:
                self._sending = False
                self._notify()

    def _took(self, data: bytes) -> None:
        """The module has the datagram: from here on it counts as sent."""
        self._accepted = True
        self.stats.sent += 1
        self.stats.bytes_sent += len(data)
        self.stats.airtime_s += self.airtime(len(data))

    async def _transmit(self, data: bytes) -> None:
        p = self.profile
        airtime = self.airtime(len(data))
        if p.mode == "raw":
            await self._write(frame(data, p.mtu))
            self._took(data)
            # The module takes the bytes at UART speed, then is on air: pace to both.
            await asyncio.sleep(airtime + (len(data) + 5) * 10 / self.baud)
            return
        text = _encode(p.encoding, data)
        cmd = p.send.format_map({**self.values, "payload": text, "length": len(text)})
        assert p.send_ok is not None
        await self._command(cmd, [p.send_ok])
        self._took(data)
        if p.tx_wait == "done" and p.tx_done is not None:
            await self._wait_line(p.tx_done, self.reply_timeout + 2 * airtime)
        elif p.tx_wait == "airtime":
            await asyncio.sleep(airtime)
        for command in p.after_send:
            await self._command(command.cmd.format_map(self.values), [command.expect])

    # -- receiving

    async def recv(self) -> Datagram:
        if self.closed:
            raise LinkError(f"{self.url} is closed")
        self.start()
        return await self._inbox.get(asyncio.get_running_loop())

    def pending(self) -> int:
        """Datagrams received and not yet taken with ``recv``."""
        return len(self._inbox)


# --- URLs ----------------------------------------------------------------------------------


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        out = int(value, 0)
    except ValueError:
        raise UsageError(f"at:// {key}={value!r} is not a whole number") from None
    if not lo <= out <= hi:
        raise UsageError(f"at:// {key} must be {lo}..{hi}, got {out}")
    return out


def _bw(value: str) -> float:
    text = value.strip().lower().removesuffix("hz")
    scale = 1e3 if text.endswith("k") else 1.0
    try:
        bw = float(text.removesuffix("k")) * scale
    except ValueError:
        raise UsageError(f"at:// bw={value!r} is not a bandwidth (e.g. 125, 125k)") from None
    return bw * 1e3 if bw <= 1000 else bw


def parse_url(url: str) -> tuple[str, ATProfile, Settings, dict[str, int]]:
    """Split an at:// URL into (port, profile, settings, driver options); validates all."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "at":
        raise UsageError(f"not an at:// URL: {url!r}")
    port = (parts.netloc + parts.path) if parts.netloc else parts.path
    if not port:
        raise UsageError("at:// needs a serial port, e.g. at:///dev/ttyUSB0?profile=rylr998")
    raw: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.strip().lower()
        if key not in _KEYS:
            raise UsageError(f"unknown at:// option {key!r} (known: {', '.join(_KEYS)})")
        if key in raw:
            raise UsageError(f"at:// option {key!r} given twice")
        raw[key] = value.strip()
    if not raw.get("profile"):
        from relay.links.at.profile import profiles

        raise UsageError(f"at:// needs ?profile=NAME (known: {', '.join(profiles())})")
    prof = _profile(raw.pop("profile"))
    opts: dict[str, int] = {}
    if "baud" in raw:
        opts["baud"] = _int("baud", raw.pop("baud"), 300, 4_000_000)
    if "queue" in raw:
        opts["queue_size"] = _int("queue", raw.pop("queue"), 1, 4096)
    kw: dict[str, object] = {}
    limits = {
        "addr": (0, 65535), "dest": (0, 65535), "network": (0, 255), "sf": (5, 12),
        "preamble": (6, 65535), "freq": (100_000_000, 3_000_000_000), "power": (-9, 30),
    }  # fmt: skip
    for key, (lo, hi) in limits.items():
        if key in raw:
            kw["freq_hz" if key == "freq" else key] = _int(key, raw.pop(key), lo, hi)
    if "bw" in raw:
        kw["bw_hz"] = _bw(raw.pop("bw"))
    if "cr" in raw:
        kw["cr"] = _int("cr", raw.pop("cr").removeprefix("4/"), 5, 8)
    if "air_rate" in raw:
        kw["air_rate"] = raw.pop("air_rate")
    settings = prof.settings(**kw)  # type: ignore[arg-type]
    return port, prof, settings, opts


def open_url(url: str) -> ATLink:
    """Open the module named by ``url`` (the port now; the module's init once a loop runs)."""
    port, prof, settings, opts = parse_url(url)
    link = ATLink(port, prof, settings, url=url, **opts)  # type: ignore[arg-type]
    link.open_port()
    return link
