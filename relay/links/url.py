"""Open a link from a URL, the way pyserial's ``serial_for_url`` opens a port.

Each scheme maps to a module that exposes ``open_url(url) -> Link``; drivers register here so
adding a radio family touches one line.
"""

from __future__ import annotations

import importlib
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from relay.errors import UsageError
from relay.links.base import Link

SCHEMES: dict[str, str] = {
    "sim": "relay.links.sim.url",
    "at": "relay.links.at.link",
    "meshtastic": "relay.links.meshtastic.link",
    "meshtastic+tcp": "relay.links.meshtastic.link",
    "kiss": "relay.links.kiss.serial",
    "kiss+tcp": "relay.links.kiss.tcp",
    "mqtt": "relay.links.mqtt",
    "mqtts": "relay.links.mqtt",
}


def open_link(url: str) -> Link:
    """Open the link named by ``url`` (e.g. ``sim://demo?preset=SHORT_FAST&loss=0.1``)."""
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise UsageError(
            f"link URL {url!r} has no scheme; try sim://, e.g. sim://?preset=SHORT_FAST"
        )
    module = SCHEMES.get(scheme)
    if module is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise UsageError(f"unknown link scheme {scheme}:// (known: {known})")
    return importlib.import_module(module).open_url(url)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``: what logs, exit lines, JSON keys and
    ``repr`` show of a link (any scheme; only ``mqtt://`` takes credentials today)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = parts.port
    except ValueError:  # unparseable: hide everything between '//' and '@'
        scheme, sep, rest = url.partition("://")
        _userinfo, at, host = rest.rpartition("@")
        return f"{scheme}{sep}***@{host}" if at else url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
