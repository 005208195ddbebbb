"""meshtastic:// and meshtastic+tcp:// URLs: parsed and validated before anything connects.

Every mistake is a :class:`relay.errors.UsageError` naming the option and what it takes, so
a typo in a link URL fails at once instead of after a connection attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from relay.errors import UsageError
from relay.radio.profiles import preset

MTU = 233  # Meshtastic DATA_PAYLOAD_LEN
PRIVATE_APP = 256
DEFAULT_TCP_PORT = 4403
DEFAULT_QUEUE = 32
DEFAULT_TIMEOUT = 20.0
_KEYS = ("port", "channel", "hop_limit", "want_ack", "preset", "queue", "timeout")
_TRUE, _FALSE = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


@dataclass(frozen=True, slots=True)
class MeshtasticOptions:
    """A parsed meshtastic:// URL."""

    tcp: bool
    device: str  # serial device path, or TCP host
    tcp_port: int = DEFAULT_TCP_PORT
    port: int = PRIVATE_APP
    channel: int = 0
    hop_limit: int | None = None
    want_ack: bool = False
    preset: str | None = None
    queue: int = DEFAULT_QUEUE
    timeout: float = DEFAULT_TIMEOUT


def library() -> Any:
    """The meshtastic package, or a clear UsageError saying how to get it."""
    try:
        import meshtastic.serial_interface
        import meshtastic.tcp_interface
    except ImportError as exc:
        raise UsageError(
            f"meshtastic:// links need the meshtastic library ({exc}); "
            "install it with: pip install 'relay[meshtastic]'"
        ) from None
    return meshtastic


def _int(key: str, value: str, lo: int, hi: int) -> int:
    try:
        out = int(value)
    except ValueError:
        raise UsageError(f"meshtastic {key}={value!r} is not a whole number") from None
    if not lo <= out <= hi:
        raise UsageError(f"meshtastic {key} must be {lo}..{hi}, got {out}")
    return out


def _app_port(value: str) -> int:
    if value.isdigit():
        return _int("port", value, 1, 511)
    from meshtastic.protobuf import portnums_pb2

    try:
        return portnums_pb2.PortNum.Value(value.upper())
    except ValueError:
        raise UsageError(
            f"meshtastic port={value!r} is neither a number nor a port name (e.g. PRIVATE_APP)"
        ) from None


def parse_url(url: str) -> MeshtasticOptions:
    """Validate a meshtastic:// or meshtastic+tcp:// URL; every mistake is a UsageError."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("meshtastic", "meshtastic+tcp"):
        raise UsageError(f"not a meshtastic:// URL: {url!r}")
    raw: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.strip().lower()
        if key not in _KEYS:
            raise UsageError(f"unknown meshtastic option {key!r} (known: {', '.join(_KEYS)})")
        if key in raw:
            raise UsageError(f"meshtastic option {key!r} given twice")
        raw[key] = value.strip()
    opts: dict[str, Any] = {}
    if scheme == "meshtastic+tcp":
        if parts.path not in ("", "/") or not parts.hostname:
            raise UsageError(f"expected meshtastic+tcp://HOST[:PORT], got {url!r}")
        try:
            tcp_port = parts.port or DEFAULT_TCP_PORT
        except ValueError:
            raise UsageError(f"meshtastic+tcp:// port must be 1..65535 in {url!r}") from None
        opts.update(tcp=True, device=parts.hostname, tcp_port=tcp_port)
    else:
        if parts.netloc or not parts.path.startswith("/"):
            raise UsageError(
                f"meshtastic:// takes a device path after three slashes, e.g. "
                f"meshtastic:///dev/ttyACM0, got {url!r}"
            )
        opts.update(tcp=False, device=parts.path)
    if "port" in raw:
        opts["port"] = _app_port(raw["port"])
    if "channel" in raw:
        opts["channel"] = _int("channel", raw["channel"], 0, 7)
    if "hop_limit" in raw:
        opts["hop_limit"] = _int("hop_limit", raw["hop_limit"], 0, 7)
    if "want_ack" in raw:
        flag = raw["want_ack"].lower()
        if flag not in _TRUE + _FALSE:
            raise UsageError(f"meshtastic want_ack is on or off, got {flag!r}")
        opts["want_ack"] = flag in _TRUE
    if "preset" in raw:
        opts["preset"] = preset(raw["preset"]).name
    if "queue" in raw:
        opts["queue"] = _int("queue", raw["queue"], 1, 10_000)
    if "timeout" in raw:
        try:
            opts["timeout"] = float(raw["timeout"])
        except ValueError:
            opts["timeout"] = -1.0
        if not 0 < opts["timeout"] < 3600:
            raise UsageError(f"meshtastic timeout must be 0..3600 seconds, got {raw['timeout']!r}")
    return MeshtasticOptions(**opts)
