"""Codec2 encode/decode, wrapped so pycodec2's traps cannot bite the rest of the project.

pycodec2 handles ONE frame per call, silently mis-encodes strided or non-native arrays and only
accepts ``bytes`` for decoding. These wrappers make one contiguous little-endian copy of the
input, loop frame by frame and check frame sizes, and add nothing else to the hot path.
"""

from __future__ import annotations

import numpy as np
import pycodec2

from relay.errors import UsageError
from relay.voice.modes import CodecMode

_LE_INT16 = np.dtype("<i2")


def _check_pcm(pcm: np.ndarray) -> None:
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise UsageError("PCM must be a 1-D numpy array of int16 samples")
    if pcm.dtype.kind != "i" or pcm.dtype.itemsize != 2:
        raise UsageError(f"PCM must be int16 samples, not {pcm.dtype}")


class Encoder:
    """Turns 8 kHz int16 speech into Codec2 frames (stateful: one per outgoing stream)."""

    def __init__(self, mode: CodecMode) -> None:
        self.mode = mode
        self._codec = pycodec2.Codec2(mode.pycodec2_mode)
        self.samples_per_frame: int = mode.samples_per_frame
        self.bytes_per_frame: int = mode.bytes_per_frame

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Encode ``pcm`` (1-D int16, 8 kHz); a trailing partial frame is padded with zeros.

        The input is copied once into a fresh contiguous little-endian buffer, so strided views
        and big-endian arrays encode exactly like their plain copies.
        """
        _check_pcm(pcm)
        spf = self.samples_per_frame
        n = -(-len(pcm) // spf)
        buf = np.zeros(n * spf, dtype=_LE_INT16)
        buf[: len(pcm)] = pcm
        encode = self._codec.encode
        return [encode(row) for row in buf.reshape(n, spf)]


class Decoder:
    """Turns Codec2 frames back into 8 kHz int16 speech (stateful: one per incoming stream)."""

    def __init__(self, mode: CodecMode) -> None:
        self.mode = mode
        self._codec = pycodec2.Codec2(mode.pycodec2_mode)
        self.samples_per_frame: int = mode.samples_per_frame
        self.bytes_per_frame: int = mode.bytes_per_frame

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode exactly one frame into ``samples_per_frame`` int16 samples.

        A frame of the wrong size is refused: pycodec2 would read past it or ignore the rest.
        """
        if type(frame) is not bytes:
            if not isinstance(frame, bytearray | memoryview):
                raise UsageError(f"a Codec2 frame must be bytes, not {type(frame).__name__}")
            frame = bytes(frame)
        if len(frame) != self.bytes_per_frame:
            raise UsageError(
                f"Codec2 {self.mode.name} frame must be {self.bytes_per_frame} bytes, "
                f"got {len(frame)}"
            )
        return self._codec.decode(frame)
