"""The project's exception families.

Two families that are never mixed (the h11 split):

* :class:`PeerError` — something that arrived from outside was wrong (a malformed, forged,
  replayed or undecryptable packet, garbage from a device). The receiver counts it, drops it
  and carries on; it is never fatal.
* :class:`UsageError` — the caller did something wrong (bad flag, unreadable file, a frame too
  big for the link's MTU). It is raised to the caller; the CLI turns it into one line on stderr
  and exit code 2.

Messages never carry key material, passphrases or plaintext.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every exception the project raises on purpose."""


class PeerError(RelayError):
    """Input from a peer or device was wrong: count it, drop it, keep going."""


class PacketError(PeerError):
    """A packet was rejected. ``reason`` is a short stable key used for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UsageError(RelayError):
    """The caller asked for something impossible or gave bad input."""


class LinkError(RelayError):
    """A link (radio, socket, simulated channel) failed or refused an operation."""


class DutyCycleExceeded(LinkError):
    """Sending now would exceed the link's regulatory duty-cycle budget."""


class FramingError(PeerError):
    """Bytes on a stream (socket, serial port) do not follow the framing: drop that peer."""
