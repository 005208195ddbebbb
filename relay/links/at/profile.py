"""AT module profiles: the data in ``firmware_profiles/at.toml``, loaded and checked.

A profile says how to talk to one family of UART LoRa modules (command templates, reply
regexes, MTU, LoRa defaults). Keeping it data means a new module or firmware dialect is a
TOML edit; this module only validates it, so a broken table fails loudly at load time rather
than as a confusing timeout on the serial line.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from relay import shipped
from relay.errors import UsageError
from relay.radio.lora import MAX_PAYLOAD, LoRaParams

MODES = ("at", "raw")
ENCODINGS = ("base64", "hex", "framed")
TX_WAITS = ("done", "airtime", "none")
FRAME_OVERHEAD = 5  # framed encoding: 2 sync + 1 length + 2 CRC-16


@dataclass(frozen=True, slots=True)
class Command:
    """One command the driver sends, and the reply that means it worked."""

    cmd: str
    expect: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Settings:
    """The radio and addressing values a profile's templates are filled with."""

    lora: LoRaParams
    freq_hz: int
    power: int
    addr: int
    dest: int
    network: int

    def values(self, profile: ATProfile) -> dict[str, Any]:
        bw = int(self.lora.bw_hz)
        return {
            "freq_hz": self.freq_hz,
            "freq_mhz": f"{self.freq_hz / 1e6:g}",
            "sf": self.lora.sf,
            "bw_hz": bw,
            "bw_khz": f"{bw / 1000:g}",
            "bw_code": profile.bw_code(bw),
            "cr": self.lora.cr,
            "cr_code": profile.cr_code(self.lora.cr),
            "preamble": self.lora.preamble,
            "power": self.power,
            "addr": self.addr,
            "dest": self.dest,
            "network": self.network,
        }


@dataclass(frozen=True)
class ATProfile:
    """One module family, as the data-driven driver and the emulator use it."""

    name: str
    title: str
    description: str
    configure: str
    mode: str
    baud: int
    encoding: str
    module_max: int
    mtu: int
    air_overhead: int
    lora: LoRaParams
    freq_hz: int
    power_dbm: int
    sf_min: int
    sf_max: int
    bw_codes: dict[int, Any] = field(default_factory=dict)
    cr_codes: dict[int, Any] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    init: tuple[Command, ...] = ()
    send: str = ""
    send_ok: re.Pattern[str] | None = None
    tx_wait: str = "airtime"
    tx_done: re.Pattern[str] | None = None
    after_send: tuple[Command, ...] = ()
    rx: re.Pattern[str] | None = None
    rx_prefix: str = ""
    rx_meta: re.Pattern[str] | None = None
    error: re.Pattern[str] | None = None
    ignore: tuple[re.Pattern[str], ...] = ()
    air_rate: str | None = None
    air_rates: dict[str, tuple[int, int]] = field(default_factory=dict)

    def bw_code(self, bw_hz: int) -> Any:
        if not self.bw_codes:
            return bw_hz
        if bw_hz not in self.bw_codes:
            known = ", ".join(f"{b / 1000:g}k" for b in sorted(self.bw_codes))
            raise UsageError(f"{self.name} cannot use bandwidth {bw_hz / 1000:g} kHz ({known})")
        return self.bw_codes[bw_hz]

    def cr_code(self, cr: int) -> Any:
        if not self.cr_codes:
            return cr
        if cr not in self.cr_codes:
            known = ", ".join(f"4/{c}" for c in sorted(self.cr_codes))
            raise UsageError(f"{self.name} cannot use coding rate 4/{cr} (supports {known})")
        return self.cr_codes[cr]

    def air_bytes(self, nbytes: int) -> int:
        """Bytes on air for a datagram of ``nbytes``: encoding (ASCII firmwares send the
        text we give them) plus the module's own header."""
        if self.encoding == "base64":
            body = 4 * ((nbytes + 2) // 3)  # REYAX transmits the characters themselves
        elif self.encoding == "framed":
            body = nbytes + FRAME_OVERHEAD
        else:  # hex is decoded by the module: raw bytes on air
            body = nbytes
        return min(body + self.air_overhead, MAX_PAYLOAD)

    def settings(
        self,
        *,
        sf: int | None = None,
        bw_hz: float | None = None,
        cr: int | None = None,
        preamble: int | None = None,
        freq_hz: int | None = None,
        power: int | None = None,
        addr: int | None = None,
        dest: int | None = None,
        network: int | None = None,
        air_rate: str | None = None,
    ) -> Settings:
        """Profile defaults overridden by what the user asked for, checked against the
        firmware (a setting the module would refuse is a UsageError now, not an +ERR later)."""
        base = self.lora
        if air_rate is not None or (self.air_rates and sf is None and bw_hz is None):
            rate = air_rate or self.air_rate
            if rate not in self.air_rates:
                known = ", ".join(self.air_rates) or "none"
                raise UsageError(f"{self.name} has no air rate {rate!r} (known: {known})")
            sf, bw_hz = self.air_rates[rate]
        lora = LoRaParams(
            sf=base.sf if sf is None else sf,
            bw_hz=base.bw_hz if bw_hz is None else bw_hz,
            cr=base.cr if cr is None else cr,
            preamble=base.preamble if preamble is None else preamble,
        )
        if not self.sf_min <= lora.sf <= self.sf_max:
            raise UsageError(f"{self.name} takes SF{self.sf_min}..SF{self.sf_max}, not SF{lora.sf}")
        if self.mode == "at":
            self.bw_code(int(lora.bw_hz))
            self.cr_code(lora.cr)
        d = self.defaults
        return Settings(
            lora=lora,
            freq_hz=self.freq_hz if freq_hz is None else freq_hz,
            power=self.power_dbm if power is None else power,
            addr=d.get("addr", 0) if addr is None else addr,
            dest=d.get("dest", 0) if dest is None else dest,
            network=d.get("network", 0) if network is None else network,
        )


def _regex(name: str, key: str, value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise UsageError(f"AT profile {name}: {key} must be a regex string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise UsageError(f"AT profile {name}: {key} is not a valid regex: {exc}") from None


def _opt_regex(name: str, raw: dict[str, Any], key: str) -> re.Pattern[str] | None:
    return _regex(name, key, raw[key]) if key in raw else None


def _commands(name: str, key: str, items: Any) -> tuple[Command, ...]:
    out = []
    for item in items or ():
        if not isinstance(item, dict) or not isinstance(item.get("cmd"), str):
            raise UsageError(f"AT profile {name}: every {key} entry needs cmd and expect")
        out.append(Command(item["cmd"], _regex(name, f"{key} expect", item.get("expect"))))
    return tuple(out)


def _expected_mtu(encoding: str, module_max: int) -> int:
    if encoding == "base64":
        return module_max // 4 * 3
    if encoding == "hex":
        return module_max // 2
    return module_max - FRAME_OVERHEAD


def build(name: str, raw: dict[str, Any]) -> ATProfile:
    """One profile from its TOML table; every inconsistency is a UsageError."""
    try:
        mode, encoding = raw["mode"], raw["encoding"]
        if mode not in MODES or encoding not in ENCODINGS:
            raise UsageError(f"AT profile {name}: mode {mode!r} / encoding {encoding!r}")
        if (mode == "raw") != (encoding == "framed"):
            raise UsageError(f"AT profile {name}: raw mode goes with framed encoding only")
        module_max, mtu = int(raw["module_max"]), int(raw["mtu"])
        if mtu != _expected_mtu(encoding, module_max) or not 1 <= mtu <= MAX_PAYLOAD:
            raise UsageError(
                f"AT profile {name}: mtu {mtu} does not follow from {encoding} in "
                f"{module_max} (expected {_expected_mtu(encoding, module_max)})"
            )
        lo = raw["lora"]
        lora = LoRaParams(sf=lo["sf"], bw_hz=lo["bw_hz"], cr=lo["cr"], preamble=lo["preamble"])
        codes = raw.get("codes", {})
        tx_wait = raw.get("tx_wait", "airtime")
        if tx_wait not in TX_WAITS:
            raise UsageError(f"AT profile {name}: tx_wait must be one of {', '.join(TX_WAITS)}")
        profile = ATProfile(
            name=name,
            title=raw.get("title", name),
            description=raw.get("description", ""),
            configure=raw.get("configure", "").strip(),
            mode=mode,
            baud=int(raw["baud"]),
            encoding=encoding,
            module_max=module_max,
            mtu=mtu,
            air_overhead=int(raw.get("air_overhead", 0)),
            lora=lora,
            freq_hz=int(lo["freq_hz"]),
            power_dbm=int(lo["power_dbm"]),
            sf_min=int(raw.get("sf_min", 5)),
            sf_max=int(raw.get("sf_max", 12)),
            bw_codes={int(k): v for k, v in codes.get("bw", {}).items()},
            cr_codes={int(k): v for k, v in codes.get("cr", {}).items()},
            defaults={k: int(v) for k, v in raw.get("defaults", {}).items()},
            init=_commands(name, "init", raw.get("init")),
            send=raw.get("send", ""),
            send_ok=_opt_regex(name, raw, "send_ok"),
            tx_wait=tx_wait,
            tx_done=_opt_regex(name, raw, "tx_done"),
            after_send=_commands(name, "after_send", raw.get("after_send")),
            rx=_opt_regex(name, raw, "rx"),
            rx_prefix=raw.get("rx_prefix", ""),
            rx_meta=_opt_regex(name, raw, "rx_meta"),
            error=_opt_regex(name, raw, "error"),
            ignore=tuple(_regex(name, "ignore", r) for r in raw.get("ignore", ())),
            air_rate=raw.get("air_rate"),
            air_rates={
                str(k): (int(v["sf"]), int(v["bw_hz"])) for k, v in raw.get("air_rates", {}).items()
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"AT profile {name} is incomplete or malformed: {exc!r}") from None
    if mode == "at":
        missing = [k for k in ("send", "send_ok", "rx") if not getattr(profile, k)]
        if missing or "{payload}" not in profile.send:
            raise UsageError(f"AT profile {name}: needs send (with {{payload}}), send_ok, rx")
        if "payload" not in profile.rx.groupindex:  # type: ignore[union-attr]
            raise UsageError(f"AT profile {name}: rx needs a (?P<payload>...) group")
        if tx_wait == "done" and profile.tx_done is None:
            raise UsageError(f"AT profile {name}: tx_wait = 'done' needs a tx_done regex")
    profile.settings()  # the defaults themselves must be valid for the firmware
    return profile


@functools.cache
def profiles() -> dict[str, ATProfile]:
    """Every AT profile shipped in ``firmware_profiles/at.toml``, by name."""
    text = shipped.read_text("firmware_profiles", "at.toml")
    doc = tomllib.loads(text)
    return {name: build(name, raw) for name, raw in doc.get("profiles", {}).items()}


def profile(name: str) -> ATProfile:
    """A profile by name, any case (``rylr998``, ``RAK3172``, ``wio_e5``)."""
    table = profiles()
    key = str(name).strip().lower().replace("_", "-")
    if key not in table:
        raise UsageError(f"unknown AT profile {name!r} (known: {', '.join(table)})")
    return table[key]
