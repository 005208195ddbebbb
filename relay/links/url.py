"""Open a link from a URL, the way pyserial's ``serial_for_url`` opens a port.

Each scheme maps to a module that exposes ``open_url(url) -> Link``; drivers register here so
adding a radio family touches one line.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

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
