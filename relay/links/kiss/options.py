"""The query options of ``kiss://`` and ``kiss+tcp://`` URLs, checked once, with clear errors.

``port`` (TNC port 0-15), ``callsign`` (turns on AX.25 UI framing), ``dest`` (AX.25
destination, default QST), ``modem`` (9600, 1200, 4800: the airtime model), ``txdelay`` /
``txtail`` / ``slottime`` (milliseconds, multiples of 10), ``persist`` (0-255) and
``fullduplex`` (0/1): these five are sent to the TNC after every (re)connect, and only when
given. ``queue`` bounds the transmit queue, ``mtu`` lowers the datagram limit, ``lead``
(seconds) is how much estimated airtime may wait inside the TNC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl

from relay.errors import UsageError
from relay.links.kiss import ax25
from relay.links.kiss.codec import Command
from relay.links.kiss.profile import Modem, kiss_profile

COMMON_KEYS = (
    "port",
    "callsign",
    "dest",
    "modem",
    "txdelay",
    "txtail",
    "slottime",
    "persist",
    "fullduplex",
    "queue",
    "mtu",
    "lead",
)
DEFAULT_DEST = "QST"
DEFAULT_QUEUE = 64
DEFAULT_LEAD_S = 1.0
_QST = ax25.Address(DEFAULT_DEST)


@dataclass(frozen=True, slots=True)
class KissOptions:
    """Everything a KISS link was asked for (see the module docstring)."""

    modem: Modem
    port: int = 0
    callsign: ax25.Address | None = None
    dest: ax25.Address = _QST
    txdelay_ms: int | None = None
    txtail_ms: int | None = None
    slottime_ms: int | None = None
    persist: int | None = None
    fullduplex: bool | None = None
    queue: int = DEFAULT_QUEUE
    mtu: int = 256
    lead_s: float = DEFAULT_LEAD_S

    @property
    def header_bytes(self) -> int:
        """Bytes added around each datagram inside the KISS frame (the AX.25 header)."""
        return ax25.HEADER_LEN if self.callsign is not None else 0

    def tnc_settings(self) -> list[tuple[Command, int]]:
        """The parameter commands to send after each connect, in a fixed order."""
        out: list[tuple[Command, int]] = []
        if self.txdelay_ms is not None:
            out.append((Command.TXDELAY, self.txdelay_ms // 10))
        if self.persist is not None:
            out.append((Command.P, self.persist))
        if self.slottime_ms is not None:
            out.append((Command.SLOTTIME, self.slottime_ms // 10))
        if self.txtail_ms is not None:
            out.append((Command.TXTAIL, self.txtail_ms // 10))
        if self.fullduplex is not None:
            out.append((Command.FULLDUPLEX, int(self.fullduplex)))
        return out


def _int(url: str, key: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{url}: {key} must be an integer {lo}-{hi}, got {text!r}") from None
    if not lo <= value <= hi:
        raise UsageError(f"{url}: {key} must be {lo}-{hi}, got {value}")
    return value


def _ms(url: str, key: str, text: str) -> int:
    value = _int(url, key, text, 0, 2550)
    if value % 10:
        raise UsageError(f"{url}: {key} is in milliseconds, a multiple of 10 (KISS units)")
    return value


def _bool(url: str, key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{url}: {key} must be 0 or 1, got {text!r}")


def query(url: str, raw_query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The URL's query as a dict; unknown or repeated keys are a UsageError."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        if key not in allowed:
            raise UsageError(f"{url}: unknown option {key!r} (known: {', '.join(allowed)})")
        if key in out:
            raise UsageError(f"{url}: option {key!r} is given twice")
        out[key] = value
    return out


def parse_options(url: str, q: dict[str, str]) -> KissOptions:
    """KissOptions from an already-split query (see :func:`query`)."""
    profile = kiss_profile()
    kw: dict[str, object] = {"modem": profile.modem(q.get("modem"))}
    if "port" in q:
        kw["port"] = _int(url, "port", q["port"], 0, 15)
    if "callsign" in q:
        kw["callsign"] = ax25.Address.parse(q["callsign"])
    if "dest" in q:
        if "callsign" not in q:
            raise UsageError(f"{url}: dest= needs callsign= (it is the AX.25 destination)")
        kw["dest"] = ax25.Address.parse(q["dest"])
    for key in ("txdelay", "txtail", "slottime"):
        if key in q:
            kw[f"{key}_ms"] = _ms(url, key, q[key])
    if "persist" in q:
        kw["persist"] = _int(url, "persist", q["persist"], 0, 255)
    if "fullduplex" in q:
        kw["fullduplex"] = _bool(url, "fullduplex", q["fullduplex"])
    if "queue" in q:
        kw["queue"] = _int(url, "queue", q["queue"], 1, 100_000)
    header = ax25.HEADER_LEN if "callsign" in q else 0
    top = profile.max_frame - 1 - header  # the type byte and the AX.25 header must fit too
    kw["mtu"] = _int(url, "mtu", q["mtu"], 1, top) if "mtu" in q else profile.mtu
    if "lead" in q:
        try:
            lead = float(q["lead"])
        except ValueError:
            lead = math.nan
        if not (math.isfinite(lead) and 0 <= lead <= 60):
            raise UsageError(f"{url}: lead must be 0-60 seconds, got {q['lead']!r}")
        kw["lead_s"] = lead
    return KissOptions(**kw)  # type: ignore[arg-type]
