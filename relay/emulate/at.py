"""Fake UART LoRa modules on pseudo-terminals, sharing one simulated LoRa channel.

Each :class:`EmulatedModule` answers its firmware's AT commands (REYAX, RAK3172 RUI3, Wio-E5
test mode) or, for EBYTE transparent modules, carries raw bytes. What one module transmits
travels over a :class:`relay.links.sim.Ether` with real LoRa airtime, half duplex, collisions
and optional loss, and comes out of the others' ptys the way the real firmware prints it.

The replies are written here from the firmware manuals, independently of the driver's regexes
in ``at.toml``, so the tests check the profiles against a second reading of the same manuals.
Fault hooks for tests: :meth:`EmulatedModule.inject`, :meth:`unplug`, :meth:`replug`,
``silent`` (stop answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.emulate.pty import PtyPort
from relay.links.at.codec import decode_payload
from relay.links.at.profile import ATProfile
from relay.links.sim.channel import Ether, SimLink
from relay.radio.lora import LoRaParams
from relay.radio.profiles import RadioProfile

log = logging.getLogger("relay.emulate.at")

FAMILIES = {"rylr998": "reyax", "rylr896": "reyax", "rak3172": "rak", "wio-e5": "wio"}
REYAX_HEADER = 6  # the emulator's air header: dest u16, src u16, network u8, length u8


def channel_profile(lora: LoRaParams) -> RadioProfile:
    """A raw LoRa profile for the shared channel: the modules' air bytes are the payload."""
    return RadioProfile(name=f"SF{lora.sf}/BW{lora.bw_hz / 1000:g}k", lora=lora, mtu=255)


@dataclass
class _Config:
    """What the host configured; only checked and reported, the channel decides the air."""

    addr: int = 0
    network: int = 0
    radio: tuple[int, ...] = ()
    rx_on: bool = False  # RAK PRECV / Wio RXLRPKT
    mode_ok: bool = False  # RAK P2P / Wio TEST mode
    extra: dict[str, str] = field(default_factory=dict)


class EmulatedModule:
    """One fake module: a pty on one side, a node on the shared channel on the other."""

    def __init__(
        self,
        profile: ATProfile,
        ether: Ether,
        name: str,
        *,
        link: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.profile = profile
        self.ether = ether
        self.name = name
        self.link = link
        self.family = FAMILIES.get(profile.name, "raw" if profile.mode == "raw" else "reyax")
        self.node: SimLink = ether.attach(name)
        self.cfg = _Config(
            addr=profile.defaults.get("addr", 0), network=profile.defaults.get("network", 0)
        )
        self.silent = False  # stop answering (a hung module)
        self.refuse_sends = 0  # answer the next N sends with the firmware's error
        self.commands = 0
        self.port: PtyPort | None = None
        self._rng = rng or random.Random(0)
        self._buf = bytearray()
        self._raw_flush: asyncio.TimerHandle | None = None
        self._tx_queue: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: list[tuple[re.Pattern[str], Callable[..., str | None]]] = {
            "reyax": self._reyax_handlers,
            "rak": self._rak_handlers,
            "wio": self._wio_handlers,
            "raw": lambda: [],
        }[self.family]()

    # -- lifecycle

    @property
    def device(self) -> str:
        """What a driver opens: the stable symlink if any, else the pty."""
        assert self.port is not None
        return self.port.device

    def start(self) -> None:
        self.replug()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._air_rx()), loop.create_task(self._air_tx())]

    def unplug(self) -> None:
        """The USB cable comes out: the pty disappears under the driver."""
        if self.port is not None:
            self.port.close()
            self.port = None
        self._buf.clear()

    def replug(self) -> None:
        """Plugged back in: a fresh pty (the symlink, if any, points at it), fresh firmware."""
        self.unplug()
        self.cfg.rx_on = self.cfg.mode_ok = False
        self.port = PtyPort(self._from_host, link=self.link)
        self.port.start()
        if self.family == "reyax":
            self._say("+READY")

    async def close(self) -> None:
        self.unplug()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.node.close()

    def inject(self, data: bytes) -> None:
        """Write bytes to the host as if the module had said them (garbage tests)."""
        if self.port is not None:
            self.port.write(data)

    def _say(self, *lines: str) -> None:
        if self.port is not None:
            self.port.write(b"".join(line.encode("ascii") + b"\r\n" for line in lines))

    # -- host side

    def _from_host(self, data: bytes) -> None:
        if self.family == "raw":
            self._raw_in(data)
            return
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end]).strip(b"\r\n ").decode("ascii", "replace")
            del self._buf[: end + 1]
            if line and not self.silent:
                self.commands += 1
                self._command(line)
        if len(self._buf) > 1024:
            self._buf.clear()

    def _command(self, line: str) -> None:
        if self.refuse_sends and re.match(r"AT\+(SEND|PSEND|TEST=TXLRPKT)", line):
            self.refuse_sends -= 1
            self._say(self._error())
            return
        for pattern, handler in self._handlers:
            m = pattern.fullmatch(line)
            if m is not None:
                reply = handler(*m.groups())
                if reply:
                    self._say(reply)
                return
        self._say(self._error())

    def _error(self) -> str:
        return {"reyax": "+ERR=4", "rak": "AT_ERROR", "wio": "+AT: ERROR(-1)"}[self.family]

    def _raw_in(self, data: bytes) -> None:
        """EBYTE transparent mode: bytes go on air when the UART pauses or a packet fills."""
        self._buf += data
        size = self.profile.module_max
        while len(self._buf) >= size:
            self._queue_tx(bytes(self._buf[:size]))
            del self._buf[:size]
        if self._raw_flush is not None:
            self._raw_flush.cancel()
        if self._buf:
            self._raw_flush = asyncio.get_running_loop().call_later(0.003, self._raw_idle)

    def _raw_idle(self) -> None:
        self._raw_flush = None
        if self._buf:
            self._queue_tx(bytes(self._buf))
            self._buf.clear()

    # -- air side

    def _queue_tx(self, air: bytes, done: str | None = None) -> None:
        self._tx_queue.put_nowait((air, done))

    async def _air_tx(self) -> None:
        while True:
            air, done = await self._tx_queue.get()
            with contextlib.suppress(Exception):
                await self.node.send(air)
                await self.node.drain()
            if done:
                self._say(done)

    async def _air_rx(self) -> None:
        while True:
            dgram = await self.node.recv()
            if self.port is None:
                continue  # unplugged: heard by nobody
            rssi = -30 - self._rng.randint(0, 60)
            snr = self._rng.randint(-5, 12)
            if self.family == "raw":
                self.port.write(dgram.data)
            elif self.family == "reyax":
                self._reyax_rx(dgram.data, rssi, snr)
            elif self.cfg.rx_on and self.family == "rak":
                self._say(f"+EVT:RXP2P:{rssi}:{snr}:{dgram.data.hex().upper()}")
            elif self.cfg.rx_on and self.family == "wio":
                self._say(
                    f"+TEST: LEN:{len(dgram.data)}, RSSI:{rssi}, SNR:{snr}",
                    f'+TEST: RX "{dgram.data.hex().upper()}"',
                )

    def _radio(self, *values: int) -> None:
        """Remember a LoRa setting; say so when it differs from the channel's."""
        self.cfg.radio = values
        lora = self.ether.profile.lora
        if values[:2] != (lora.sf, int(lora.bw_hz)):
            log.warning(
                "%s: configured SF%d/BW%d Hz, but the emulated channel runs SF%d/BW%d Hz; "
                "airtime follows the channel",
                self.name, values[0], values[1], lora.sf, int(lora.bw_hz),
            )  # fmt: skip

    # -- REYAX RYLR998 / RYLR896

    def _reyax_handlers(self) -> list[tuple[re.Pattern[str], Callable[..., str | None]]]:
        return [
            (re.compile(r"AT"), lambda: "+OK"),
            (re.compile(r"AT\+BAND=(\d+)"), lambda f: "+OK"),
            (re.compile(r"AT\+PARAMETER=(\d+),(\d+),(\d+),(\d+)"), self._reyax_parameter),
            (re.compile(r"AT\+NETWORKID=(\d+)"), self._reyax_network),
            (re.compile(r"AT\+ADDRESS=(\d+)"), self._reyax_address),
            (re.compile(r"AT\+SEND=(\d+),(\d+),(.*)"), self._reyax_send),
        ]

    def _reyax_parameter(self, sf: str, bw: str, cr: str, pre: str) -> str:
        p = self.profile
        bw_hz = {v: k for k, v in p.bw_codes.items()}.get(int(bw))
        if not p.sf_min <= int(sf) <= p.sf_max or bw_hz is None or not 1 <= int(cr) <= 4:
            return "+ERR=2"
        self._radio(int(sf), bw_hz, int(cr) + 4, int(pre))
        return "+OK"

    def _reyax_network(self, n: str) -> str:
        self.cfg.network = int(n)
        return "+OK"

    def _reyax_address(self, n: str) -> str:
        if int(n) > 65535:
            return "+ERR=2"
        self.cfg.addr = int(n)
        return "+OK"

    def _reyax_send(self, dest: str, length: str, text: str) -> str:
        if int(length) != len(text) or not 0 < len(text) <= self.profile.module_max:
            return "+ERR=5"
        header = int(dest).to_bytes(2, "big") + self.cfg.addr.to_bytes(2, "big")
        header += bytes((self.cfg.network & 0xFF, len(text)))
        self._queue_tx(header + text.encode("ascii"))
        return "+OK"

    def _reyax_rx(self, air: bytes, rssi: int, snr: int) -> None:
        if len(air) < REYAX_HEADER:
            return
        dest, src = int.from_bytes(air[:2], "big"), int.from_bytes(air[2:4], "big")
        if air[4] != (self.cfg.network & 0xFF) or dest not in (0, self.cfg.addr):
            return
        text = air[REYAX_HEADER:].decode("ascii", "replace")
        self._say(f"+RCV={src},{len(text)},{text},{rssi},{snr}")

    # -- RAK3172 (RUI3) P2P

    def _rak_handlers(self) -> list[tuple[re.Pattern[str], Callable[..., str | None]]]:
        return [
            (re.compile(r"AT"), lambda: "OK"),
            (re.compile(r"AT\+NWM=(\d)"), self._rak_nwm),
            (re.compile(r"AT\+P2P=(\d+):(\d+):(\d+):(\d):(\d+):(\d+)"), self._rak_p2p),
            (re.compile(r"AT\+PRECV=(\d+)"), self._rak_precv),
            (re.compile(r"AT\+PSEND=(.*)"), self._rak_psend),
        ]

    def _rak_nwm(self, mode: str) -> str:
        if mode != "0":
            return "AT_PARAM_ERROR"
        if not self.cfg.mode_ok:
            self.cfg.mode_ok = True
            self._say("OK", "Current Work Mode: LoRa P2P.")
            return ""
        return "OK"

    def _rak_p2p(self, freq: str, sf: str, bw: str, cr: str, pre: str, pwr: str) -> str:
        if not self.cfg.mode_ok or int(bw) not in (125, 250, 500) or int(cr) > 3:
            return "AT_PARAM_ERROR"
        self._radio(int(sf), int(bw) * 1000, int(cr) + 5, int(pre))
        return "OK"

    def _rak_precv(self, value: str) -> str:
        if not self.cfg.mode_ok:
            return "AT_ERROR"
        self.cfg.rx_on = value != "0"
        return "OK"

    def _rak_psend(self, hexdata: str) -> str:
        try:
            data = decode_payload("hex", hexdata)
        except Exception:
            return "AT_PARAM_ERROR"
        if not self.cfg.mode_ok or not 0 < len(data) <= self.profile.mtu:
            return "AT_PARAM_ERROR"
        self._queue_tx(data, done="+EVT:TXP2P DONE")
        return "OK"

    # -- Seeed Wio-E5 test mode

    def _wio_handlers(self) -> list[tuple[re.Pattern[str], Callable[..., str | None]]]:
        return [
            (re.compile(r"AT"), lambda: "+AT: OK"),
            (re.compile(r"AT\+MODE=TEST"), self._wio_mode),
            (
                re.compile(
                    r"AT\+TEST=RFCFG,([\d.]+),SF(\d+),(\d+),(\d+),(\d+),(\d+),(\w+),\w+,\w+"
                ),
                self._wio_rfcfg,
            ),
            (re.compile(r"AT\+TEST=RXLRPKT"), self._wio_rx),
            (re.compile(r'AT\+TEST=TXLRPKT,"([^"]*)"'), self._wio_tx),
        ]

    def _wio_mode(self) -> str:
        self.cfg.mode_ok = True
        return "+MODE: TEST"

    def _wio_rfcfg(self, f: str, sf: str, bw: str, txpr: str, rxpr: str, pw: str, crc: str):
        if not self.cfg.mode_ok:
            return "+TEST: ERROR(-1)"
        self._radio(int(sf), int(bw) * 1000, 5, int(txpr))
        return (
            f"+TEST: RFCFG F:{round(float(f) * 1e6)}, SF{sf}, BW{bw}K, TXPR:{txpr}, "
            f"RXPR:{rxpr}, POW:{pw}dBm, CRC:{crc}, IQ:OFF, NET:OFF"
        )

    def _wio_rx(self) -> str:
        if not self.cfg.mode_ok:
            return "+TEST: ERROR(-1)"
        self.cfg.rx_on = True
        return "+TEST: RXLRPKT"

    def _wio_tx(self, hexdata: str) -> str:
        try:
            data = decode_payload("hex", hexdata)
        except Exception:
            return "+TEST: ERROR(-1)"
        if not self.cfg.mode_ok or not 0 < len(data) <= self.profile.mtu:
            return "+TEST: ERROR(-1)"
        self.cfg.rx_on = False  # the radio leaves receive mode to transmit
        self._queue_tx(data, done="+TEST: TX DONE")
        return f'+TEST: TXLRPKT "{hexdata}"'


class Emulator:
    """Several emulated modules of one profile on one shared simulated channel."""

    def __init__(
        self,
        profile: ATProfile,
        count: int = 2,
        *,
        lora: LoRaParams | None = None,
        loss: float = 0.0,
        seed: int | None = 0,
        link_prefix: str | None = None,
    ) -> None:
        self.profile = profile
        self.lora = lora or profile.settings().lora
        self.ether = Ether(channel_profile(self.lora), loss=loss, seed=seed, name="at-emulator")
        rng = random.Random(seed)
        self.modules = [
            EmulatedModule(
                profile,
                self.ether,
                f"at{i}",
                link=f"{link_prefix}{i}" if link_prefix else None,
                rng=rng,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        for module in self.modules:
            module.start()

    def url(self, module: EmulatedModule, **extra: object) -> str:
        """The at:// URL that opens ``module`` with settings matching the channel."""
        opts: dict[str, object] = {"profile": self.profile.name}
        default = self.profile.settings().lora
        if (self.lora.sf, self.lora.bw_hz) != (default.sf, default.bw_hz):
            opts.update(sf=self.lora.sf, bw=f"{self.lora.bw_hz / 1000:g}k")
        if self.lora.cr != default.cr:
            opts["cr"] = self.lora.cr
        opts.update(extra)
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"at://{module.device}?{query}"

    async def close(self) -> None:
        for module in self.modules:
            await module.close()

    def summary(self) -> dict[str, float]:
        """Channel counters plus commands the modules answered."""
        s = self.ether.stats
        return {
            "commands": sum(m.commands for m in self.modules),
            "transmissions": s.transmissions,
            "delivered": s.delivered,
            "lost": s.lost,
            "collisions": s.collisions,
            "half_duplex_missed": s.half_duplex_missed,
        }

    async def __aenter__(self) -> Emulator:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
