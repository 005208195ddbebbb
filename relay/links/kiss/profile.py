"""What a KISS link needs to know about TNCs and their modems, read from ``kiss.toml``.

The airtime model is deliberately plain so it can be checked against a real TNC: key-up delay
(TXDELAY) + frame bits at the modem's rate (HDLC FCS and flag, bit stuffing) + TXTAIL.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from typing import Any

from relay import shipped
from relay.errors import UsageError


@dataclass(frozen=True, slots=True)
class Modem:
    """One modem a TNC may run, and the key-up timing assumed for it."""

    name: str
    bits_per_second: int
    txdelay_ms: int
    txtail_ms: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class KissProfile:
    """TNC facts shared by every KISS link (see ``firmware_profiles/kiss.toml``)."""

    mtu: int
    min_frame: int
    max_frame: int
    hdlc_overhead_bytes: int
    bit_stuffing: float
    default_modem: str
    modems: dict[str, Modem]

    def modem(self, name: str | None) -> Modem:
        key = self.default_modem if name is None else str(name).strip()
        if key not in self.modems:
            known = ", ".join(sorted(self.modems, key=int))
            raise UsageError(f"unknown KISS modem {name!r} (known bit rates: {known})")
        return self.modems[key]

    def airtime(self, frame_bytes: int, modem: Modem, txdelay_ms: int, txtail_ms: int) -> float:
        """Seconds on air for a KISS frame of ``frame_bytes`` (what the TNC transmits)."""
        frame = max(frame_bytes, self.min_frame) + self.hdlc_overhead_bytes
        bits = frame * 8 * self.bit_stuffing
        return (txdelay_ms + txtail_ms) / 1000.0 + bits / modem.bits_per_second


@functools.cache
def kiss_profile() -> KissProfile:
    """The profile shipped with the package."""
    text = shipped.read_text("firmware_profiles", "kiss.toml")
    doc: dict[str, Any] = tomllib.loads(text)
    modems = {
        str(name): Modem(
            name=str(name),
            bits_per_second=int(m["bits_per_second"]),
            txdelay_ms=int(m["txdelay_ms"]),
            txtail_ms=int(m["txtail_ms"]),
            description=str(m.get("description", "")),
        )
        for name, m in doc["modems"].items()
    }
    return KissProfile(
        mtu=int(doc["mtu"]),
        min_frame=int(doc["min_frame"]),
        max_frame=int(doc["max_frame"]),
        hdlc_overhead_bytes=int(doc["hdlc_overhead_bytes"]),
        bit_stuffing=float(doc["bit_stuffing"]),
        default_modem=str(doc["default_modem"]),
        modems=modems,
    )
