"""Making a voice message: pick the codec mode for the link, cut, sign.

The planner's numbers decide the mode: the highest of 1600, 1200 and 700C whose airtime per
second of speech, stretched by the duty cycle, is at most ``MAX_STRETCH`` (a message should
not take longer to deliver than to say); otherwise 700C, the cheapest.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from relay.clip.wire import MAX_PIECES, PIECE_HEADER_LEN, Offer, digest
from relay.core.identity import Identity
from relay.core.wire import CLIP_PACKET_OVERHEAD
from relay.errors import UsageError
from relay.plan import speech_airtime
from relay.radio.profiles import RadioProfile
from relay.voice.modes import CodecMode, mode_by_name

CLIP_MODES = ("1600", "1200", "700C")
MAX_STRETCH = 1.0
PACKET_OVERHEAD = CLIP_PACKET_OVERHEAD  # clear header, sender session, tag
PIECE_OVERHEAD = PACKET_OVERHEAD + PIECE_HEADER_LEN  # 30 B around each piece's data


def max_piece_size(mtu: int) -> int:
    """Data bytes one piece carries on a link of this MTU."""
    size = min(mtu - PIECE_OVERHEAD, 0xFFFF)
    if size < 1:
        raise UsageError(f"a link MTU of {mtu} B cannot carry a voice-message piece")
    return size


def clip_airtime_per_second(profile: RadioProfile, mode: CodecMode, duty_cycle: float) -> float:
    """Wall-clock seconds of sending per second of speech (airtime / duty cycle)."""
    return speech_airtime(profile, mode, 1.0, PIECE_OVERHEAD) / duty_cycle


def choose_mode(profile: RadioProfile, duty_cycle: float | None = None) -> CodecMode:
    """The codec mode for voice messages on this radio (see the module docstring)."""
    dc = profile.duty_cycle if duty_cycle is None else duty_cycle
    for name in CLIP_MODES:
        mode = mode_by_name(name)
        if clip_airtime_per_second(profile, mode, dc) <= MAX_STRETCH:
            return mode
    return mode_by_name(CLIP_MODES[-1])


def check_size(nbytes: int, mode: CodecMode, max_bytes: int) -> None:
    """UsageError when a message is over the configured limit (said in seconds too)."""
    if nbytes > max_bytes:
        per_second = mode.bytes_per_frame * mode.frames_per_second
        raise UsageError(
            f"voice message of {nbytes / per_second:.1f} s ({nbytes} B of Codec2 {mode.name}) "
            f"exceeds the limit of {max_bytes} B (about {max_bytes / per_second:.0f} s); "
            "send a shorter one or raise --max-bytes"
        )


def build_offer(
    identity: Identity,
    room_id: bytes,
    mode: CodecMode,
    frames: Sequence[bytes],
    piece_size: int,
    created: float,
    *,
    max_bytes: int,
    msg_id: bytes | None = None,
) -> tuple[Offer, bytes]:
    """The signed offer and the codec stream of one message."""
    if not frames:
        raise UsageError("a voice message needs at least one frame of speech")
    if any(len(f) != mode.bytes_per_frame for f in frames):
        raise UsageError(f"every Codec2 {mode.name} frame is {mode.bytes_per_frame} bytes")
    data = b"".join(frames)
    check_size(len(data), mode, max_bytes)
    if -(-len(data) // piece_size) > MAX_PIECES:
        raise UsageError(f"a voice message is at most {MAX_PIECES} pieces")
    offer = Offer(
        msg_id=msg_id or os.urandom(4),
        mode=mode.wire_index,
        frames=len(frames),
        total=len(data),
        piece_size=piece_size,
        created=int(created) & 0xFFFFFFFF,
    )
    signature = identity.sign(offer.signed_message(room_id, identity.identity, digest(data)))
    return dataclasses.replace(offer, signature=signature), data


def frames_of(offer: Offer, data: bytes) -> list[bytes]:
    """The codec frames of a complete message."""
    from relay.voice.modes import mode_by_index

    mode = mode_by_index(offer.mode)
    if mode is None or offer.frames * mode.bytes_per_frame != len(data):
        raise UsageError("this voice message's codec mode or size is not one relay plays")
    n = mode.bytes_per_frame
    return [data[i : i + n] for i in range(0, len(data), n)]
