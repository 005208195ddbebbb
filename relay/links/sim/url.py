"""``sim://`` URLs: a channel in this process, or one that ``relay ether`` serves.

``sim://NAME?...`` (no port) attaches to an in-process channel (:mod:`relay.links.sim.channel`);
``sim://HOST:PORT?...`` joins a channel in another process (:mod:`relay.links.sim.client`).
Deciding here keeps the channel model free of the client, which builds on it.
"""

from __future__ import annotations

from relay.links.base import Link
from relay.links.sim import channel, client


def open_url(url: str) -> Link:
    """Open the sim:// link named by ``url`` (see :func:`relay.links.sim.channel.open_url`)."""
    if channel.remote_address(url) is not None:
        return client.open_url(url)
    return channel.open_url(url)
