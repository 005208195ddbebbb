"""Radio profiles: a LoRa setting plus what the firmware around it costs.

The numbers (Meshtastic presets, MTUs, header overheads, regional duty cycles) are data in
``firmware_profiles/*.toml``; this module only loads and validates them, so a new
firmware or region is a TOML edit, not a code change.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from typing import Any

from relay import shipped
from relay.errors import UsageError
from relay.radio.lora import MAX_PAYLOAD, LoRaParams


@dataclass(frozen=True, slots=True)
class RadioProfile:
    """A LoRa setting as a link sees it: how big a datagram may be and what it costs on air."""

    name: str
    lora: LoRaParams
    mtu: int  # largest datagram the link carries
    link_overhead_bytes: int = 0  # firmware framing added on air around each datagram
    description: str = ""
    duty_cycle: float = 1.0  # regulatory fraction of time a node may transmit

    def __post_init__(self) -> None:
        if self.mtu < 1 or self.link_overhead_bytes < 0:
            raise UsageError(f"profile {self.name}: mtu must be >= 1 and overhead >= 0")
        if self.mtu + self.link_overhead_bytes > MAX_PAYLOAD:
            raise UsageError(
                f"profile {self.name}: mtu {self.mtu} + overhead {self.link_overhead_bytes} "
                f"exceeds the LoRa maximum of {MAX_PAYLOAD} bytes"
            )
        if not 0.0 < self.duty_cycle <= 1.0:
            raise UsageError(
                f"duty cycle must be a fraction in (0, 1], e.g. 0.01 for 1 %, "
                f"got {self.duty_cycle!r}"
            )

    def airtime(self, datagram_bytes: int) -> float:
        """Seconds on air for one datagram, firmware framing included."""
        return self.lora.time_on_air(datagram_bytes + self.link_overhead_bytes)

    def with_duty_cycle(self, duty_cycle: float) -> RadioProfile:
        """The same profile under a regional duty-cycle limit."""
        return dataclasses.replace(self, duty_cycle=duty_cycle)


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    duty_cycle: float
    description: str = ""


@functools.cache
def _load(filename: str) -> dict[str, Any]:
    text = shipped.read_text("firmware_profiles", filename)
    return tomllib.loads(text)


@functools.cache
def _meshtastic() -> dict[str, RadioProfile]:
    doc = _load("meshtastic.toml")
    out: dict[str, RadioProfile] = {}
    for name, p in doc["presets"].items():
        lora = LoRaParams(sf=p["sf"], bw_hz=p["bw_hz"], cr=p["cr"], preamble=doc["preamble"])
        out[name.upper()] = RadioProfile(
            name=name.upper(),
            lora=lora,
            mtu=doc["mtu"],
            link_overhead_bytes=doc["link_overhead_bytes"],
            description=p.get("description", ""),
        )
    return out


def presets() -> tuple[RadioProfile, ...]:
    """Every Meshtastic modem preset, fastest first (the order of the TOML file)."""
    return tuple(_meshtastic().values())


def preset(name: str) -> RadioProfile:
    """A Meshtastic preset by name, any case, '-' or '_' (e.g. "short_fast", "LongFast")."""
    table = _meshtastic()
    key = str(name).strip().upper().replace("-", "_")
    if key not in table:
        # Accept the app's CamelCase spelling: LongFast -> LONG_FAST.
        squashed = {k.replace("_", ""): k for k in table}
        key = squashed.get(key.replace("_", ""), key)
    try:
        return table[key]
    except KeyError:
        known = ", ".join(table)
        raise UsageError(f"unknown radio preset {name!r} (known: {known})") from None


def firmware_default() -> RadioProfile:
    """The preset a fresh Meshtastic node runs (LONG_FAST)."""
    return preset(_load("meshtastic.toml")["firmware_default"])


def custom(
    sf: int,
    bw_hz: float | None = None,
    cr: int | None = None,
    *,
    preamble: int | None = None,
    duty_cycle: float = 1.0,
) -> RadioProfile:
    """A raw-LoRa profile for a hand-picked setting (``lora.toml`` supplies the defaults)."""
    doc = _load("lora.toml")
    defaults = doc.get("defaults", {})
    bw = defaults["bw_hz"] if bw_hz is None else bw_hz
    rate = defaults["cr"] if cr is None else cr
    lora = LoRaParams(
        sf=sf, bw_hz=bw, cr=rate, preamble=doc["preamble"] if preamble is None else preamble
    )
    return RadioProfile(
        name=f"SF{lora.sf}/BW{lora.bw_hz / 1000:g}k/CR{lora.coding_rate}",
        lora=lora,
        mtu=doc["mtu"],
        link_overhead_bytes=doc["link_overhead_bytes"],
        description=doc.get("description", ""),
        duty_cycle=duty_cycle,
    )


@functools.cache
def _regions() -> dict[str, Region]:
    doc = _load("regions.toml")
    return {
        name.upper(): Region(name.upper(), float(r["duty_cycle"]), r.get("description", ""))
        for name, r in doc["regions"].items()
    }


def regions() -> tuple[Region, ...]:
    """Every region with a known duty-cycle rule."""
    return tuple(_regions().values())


def duty_cycle_for(region: str) -> float:
    """The regulatory duty cycle (a fraction) of a region, e.g. "EU_868" -> 0.01."""
    key = str(region).strip().upper().replace("-", "_")
    try:
        return _regions()[key].duty_cycle
    except KeyError:
        known = ", ".join(_regions())
        raise UsageError(f"unknown region {region!r} (known: {known})") from None
