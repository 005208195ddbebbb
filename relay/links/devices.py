"""Which serial port is which radio: pyserial's port list matched against ``hw/devices.toml``.

A USB id names the USB-serial chip, not the board behind it, so the answer is a ranked list of
guesses with the link URL to try for each; the catalog is data so a new board is a TOML edit.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

from relay import shipped


@dataclass(frozen=True, slots=True)
class Guess:
    """One thing a port may be, and how relay would open it."""

    device: str
    driver: str
    profile: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Port:
    """One serial port as the OS reports it, with relay's guesses."""

    device: str
    vid: str | None = None  # 4 lowercase hex digits
    pid: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    serial_number: str | None = None
    description: str | None = None
    chip: str | None = None
    guesses: tuple[Guess, ...] = field(default_factory=tuple)

    @property
    def usb_id(self) -> str | None:
        return f"{self.vid}:{self.pid}" if self.vid and self.pid else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["usb_id"] = self.usb_id
        out["guesses"] = [asdict(g) for g in self.guesses]
        return out


@functools.cache
def catalog() -> dict[str, Any]:
    """The parsed ``hw/devices.toml``."""
    text = shipped.read_text("hw", "devices.toml")
    return tomllib.loads(text)


def _guess(raw: dict[str, Any], port: str) -> Guess:
    url = raw.get("url")
    return Guess(
        device=raw["device"],
        driver=raw.get("driver", "none"),
        profile=raw.get("profile"),
        url=url.replace("{port}", port) if url else None,
    )


def identify(
    device: str,
    vid: int | str | None = None,
    pid: int | str | None = None,
    *,
    manufacturer: str | None = None,
    product: str | None = None,
    serial_number: str | None = None,
    description: str | None = None,
) -> Port:
    """Match one port against the catalog: product strings first (they name boards), then
    the USB id (it names only the chip)."""
    vid_s = _hex(vid)
    pid_s = _hex(pid)
    doc = catalog()
    guesses: list[Guess] = []
    text = " ".join(s for s in (manufacturer, product, description) if s).lower()
    for entry in doc.get("product", []):
        if text and entry["match"].lower() in text:
            guesses.append(_guess(entry, device))
    chip = None
    for entry in doc.get("usb", []):
        if (entry["vid"].lower(), entry["pid"].lower()) == (vid_s, pid_s):
            chip = entry.get("chip")
            guesses.extend(_guess(c, device) for c in entry.get("candidates", []))
    seen: set[tuple[str, str | None]] = set()
    unique = []
    for g in guesses:
        if (g.device, g.url) not in seen:
            seen.add((g.device, g.url))
            unique.append(g)
    return Port(
        device=device,
        vid=vid_s,
        pid=pid_s,
        manufacturer=manufacturer,
        product=product,
        serial_number=serial_number,
        description=description,
        chip=chip,
        guesses=tuple(unique),
    )


def _hex(value: int | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return f"{value:04x}"
    return value.strip().lower().removeprefix("0x").zfill(4)


def list_devices() -> list[Port]:
    """Every serial port on this machine, identified as well as the catalog allows."""
    from serial.tools import list_ports

    ports = []
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        ports.append(
            identify(
                info.device,
                info.vid,
                info.pid,
                manufacturer=info.manufacturer,
                product=info.product,
                serial_number=info.serial_number,
                description=None if info.description in (None, "n/a") else info.description,
            )
        )
    return ports
