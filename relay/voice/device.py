"""Microphone and speaker through sounddevice (PortAudio), an optional extra.

``pip install 'relay[audio]'`` brings it in. It is imported only when --mic or --speaker is
asked for, so everything else works on machines without a sound card or PortAudio.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from relay.errors import UsageError
from relay.runtime.voice import Playout
from relay.voice.modes import SAMPLE_RATE, CodecMode

INSTALL_HINT = "pip install 'relay[audio]'"


def require_sounddevice(flag: str) -> Any:
    """The sounddevice module, or a UsageError saying how to get it."""
    try:
        import sounddevice
    except ImportError:
        raise UsageError(f"{flag} needs the optional sounddevice package: {INSTALL_HINT}") from None
    except OSError as exc:  # the package is there but the PortAudio library is not
        raise UsageError(
            f"{flag} needs PortAudio, which sounddevice could not load ({exc}); install your "
            "system's portaudio package"
        ) from None
    return sounddevice


def record(sd: Any, seconds: float, *, device: Any = None) -> np.ndarray:
    """``seconds`` of speech from the microphone, all at once (a voice message, not live)."""
    try:
        pcm = sd.rec(
            int(seconds * SAMPLE_RATE),
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="int16",
            device=device,
        )
        sd.wait()
    except Exception as exc:  # PortAudio reports a missing or busy device this way
        raise UsageError(f"cannot record from the microphone: {exc}") from None
    return np.ascontiguousarray(pcm[:, 0], dtype=np.int16)


async def microphone(sd: Any, mode: CodecMode, *, device: Any = None) -> AsyncIterator[np.ndarray]:
    """Yield the microphone's audio (1-D int16, 8 kHz) one Codec2 frame at a time.

    Blocks of one frame, not one packet: the talker encodes, runs DTX and cuts packets
    itself (:meth:`relay.runtime.room.RoomNode.speak_live`), and DTX decides a frame only
    after hearing a little past it, so packet-sized blocks would add a packet of latency.
    """
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def captured(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, np.array(indata[:, 0], dtype=np.int16))

    stream = sd.InputStream(
        samplerate=SAMPLE_RATE,
        channels=1,
        dtype="int16",
        blocksize=mode.samples_per_frame,
        callback=captured,
        device=device,
    )
    try:
        stream.start()
    except Exception as exc:  # PortAudio reports a missing or busy device this way
        raise UsageError(f"cannot open the microphone: {exc}") from None
    try:
        while True:
            yield await blocks.get()
    finally:
        stream.stop()
        stream.close()


class SpeakerSink:
    """Plays int16 blocks as they are written; silence when there is nothing to play."""

    def __init__(self, sd: Any, *, device: Any = None) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self.stream = sd.OutputStream(
            samplerate=SAMPLE_RATE, channels=1, dtype="int16", callback=self._fill, device=device
        )
        try:
            self.stream.start()
        except Exception as exc:
            raise UsageError(f"cannot open the speaker: {exc}") from None

    def write(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(pcm)

    def _fill(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while filled < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - filled, len(chunk))
                out[filled : filled + take] = chunk[:take]
                filled += take
                if take < len(chunk):
                    self._chunks[0] = chunk[take:]
                else:
                    self._chunks.popleft()
        out[filled:] = 0

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


class SpeakerPlayout(Playout):
    """A :class:`Playout` that also sends every frame to a sink the moment it is played."""

    def __init__(self, sink: SpeakerSink | Any, **playout: Any) -> None:
        super().__init__(**playout)
        self.sink = sink
        self._written: dict[int, int] = {}  # id(over) -> pcm chunks already sent to the sink
        self._closed_seen = 0

    def _forward(self) -> None:
        live = [stream.over for stream in self._streams.values()]
        for over in [*self.overs[self._closed_seen :], *live]:
            done = self._written.get(id(over), 0)
            for chunk in over.pcm[done:]:
                self.sink.write(chunk)
            self._written[id(over)] = len(over.pcm)
        for over in self.overs[self._closed_seen :]:
            self._written.pop(id(over), None)
        self._closed_seen = len(self.overs)

    def voice(self, event, arrival: float) -> None:  # type: ignore[no-untyped-def]
        super().voice(event, arrival)
        self._forward()

    def end(self, sender: bytes, total: int | None, verdict: str | None = None) -> None:
        super().end(sender, total, verdict)
        self._forward()

    def tick(self, now: float) -> None:
        super().tick(now)
        self._forward()
