"""Where a talking member's voice comes from: the microphone, or a file where there is none.

A source is called once per over (each push of push-to-talk) with the room's codec mode and
yields 8 kHz int16 audio one Codec2 frame at a time, at the pace it is spoken, which is what
:meth:`relay.runtime.room.RoomNode.speak_live` takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from relay.voice.modes import CodecMode

AudioSource = Callable[[CodecMode], AsyncIterator[np.ndarray]]


def file_source(pcm: np.ndarray) -> AudioSource:
    """Speak ``pcm`` (8 kHz int16) from its start at every push, in real time (loop time),
    the over ending with the file (or earlier, when the talker lets go)."""
    audio = np.ascontiguousarray(pcm, dtype=np.int16)

    async def frames(mode: CodecMode) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        step = mode.samples_per_frame
        start = loop.time()
        for i, at in enumerate(range(0, len(audio), step)):
            frame = audio[at : at + step]
            if len(frame) < step:
                frame = np.concatenate([frame, np.zeros(step - len(frame), np.int16)])
            delay = start + (i + 1) * mode.frame_seconds - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # a frame exists once it has been said
            yield frame

    return frames


def microphone_source(sd: Any, *, device: Any = None) -> AudioSource:
    """The sound card's microphone (sounddevice, an optional extra)."""
    from relay.voice.device import microphone

    return lambda mode: microphone(sd, mode, device=device)


def level(pcm: np.ndarray) -> float:
    """A level meter's reading of ``pcm``, 0..1: its RMS on a 60 dB scale below full scale."""
    if not len(pcm):
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    if rms <= 0:
        return 0.0
    db = 20 * np.log10(rms / 32768.0)
    return float(min(1.0, max(0.0, (db + 60.0) / 60.0)))
