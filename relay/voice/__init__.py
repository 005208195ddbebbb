"""Voice: Codec2 frames, audio files, playout timing and loss concealment.

Names are re-exported lazily: ``relay.voice.modes`` is imported by the wire format and must not
drag numpy, libsndfile, soxr and pycodec2 into every process that only parses packets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from relay.voice.modes import DEFAULT_MODE, MODES, SAMPLE_RATE, CodecMode, mode_by_name

if TYPE_CHECKING:
    from relay.voice.adapt import ModePolicy
    from relay.voice.audio import read_audio, write_audio
    from relay.voice.codec import Decoder, Encoder
    from relay.voice.conceal import Concealer
    from relay.voice.jitter import JitterBuffer, JitterStats, PlayoutSlot
    from relay.voice.over import EncodedOver, encode_over

_LAZY = {
    "read_audio": "relay.voice.audio",
    "write_audio": "relay.voice.audio",
    "Decoder": "relay.voice.codec",
    "Encoder": "relay.voice.codec",
    "Concealer": "relay.voice.conceal",
    "JitterBuffer": "relay.voice.jitter",
    "JitterStats": "relay.voice.jitter",
    "PlayoutSlot": "relay.voice.jitter",
    "ModePolicy": "relay.voice.adapt",
    "EncodedOver": "relay.voice.over",
    "encode_over": "relay.voice.over",
}

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "SAMPLE_RATE",
    "CodecMode",
    "Concealer",
    "Decoder",
    "EncodedOver",
    "Encoder",
    "JitterBuffer",
    "JitterStats",
    "ModePolicy",
    "PlayoutSlot",
    "encode_over",
    "mode_by_name",
    "read_audio",
    "write_audio",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
