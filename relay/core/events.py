"""What a receiving session hands out: a closed set of small immutable events."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.identity import PublicIdentity
from relay.voice.modes import CodecMode


@dataclass(frozen=True, slots=True)
class VoiceFrames:
    """Authenticated Codec2 frames from a known sender."""

    sender: bytes  # the sender's full identity
    mode: CodecMode
    position: int  # absolute index of frames[0] in the over (unwrapped from 8 bits)
    frames: tuple[bytes, ...]
    counter: int
    time: float
    # FEC packets only: lower-rate copies of the frames just before ``position`` (the last
    # one is position - 1), in ``redundant_mode``. Not covered by over seals: play them only
    # where the primary is missing.
    redundant: tuple[bytes, ...] = ()
    redundant_mode: CodecMode | None = None
    session: bytes = b""  # the sender session it was opened under (see crypto.py)
    # The speaker's live MAC and the chain link the packet reveals, if any (core.live).
    live_mac: int = 0
    live_link: bytes | None = None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """An authenticated control packet from a known sender.

    Room-level authentication only: kinds that change room state carry a signature that the
    rooms layer checks against ``associated`` (the packet's clear header).
    """

    sender: bytes
    kind: int
    payload: bytes
    counter: int
    time: float
    associated: bytes = b""  # the clear header and session: what a signature covers
    session: bytes = b""


@dataclass(frozen=True, slots=True)
class ClipData:
    """An authenticated voice-message packet from a known sender (see :mod:`relay.clip`)."""

    sender: bytes
    payload: bytes
    counter: int
    time: float
    session: bytes = b""


@dataclass(frozen=True, slots=True)
class Hello:
    """A member introduced itself; its signature over the packet has been verified."""

    public: PublicIdentity
    kind: int
    payload: bytes
    counter: int
    time: float
    session: bytes = b""  # the session it introduces (signed, like the rest)
    issued_at: int = 0  # the member's signed clock: an old recording cannot introduce


@dataclass(frozen=True, slots=True)
class Rejected:
    """A packet that was dropped, and why. ``reason`` is a stable counter key:
    malformed, version, unknown_sender, unknown_session, stale_session, ahead, auth,
    replay, stale, hint."""

    reason: str
    detail: str
    time: float


Event = VoiceFrames | ControlMessage | ClipData | Hello | Rejected

__all__ = ["ClipData", "ControlMessage", "Event", "Hello", "Rejected", "VoiceFrames"]
