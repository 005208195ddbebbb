"""One over, encoded for sending: primary frames, optional FEC copies, optional DTX skips.

Talkers (``relay talk``, the demos, benchmarks) all prepare speech here, so FEC and DTX mean
the same thing everywhere: FEC encodes the same audio a second time in the mode
:data:`relay.core.wire.FEC_PAIRS` names; DTX keeps only the frames :mod:`relay.voice.vad`
calls speech (with hangover), remembering each kept frame's position in the over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relay.voice.codec import Encoder
from relay.voice.modes import CodecMode


@dataclass(frozen=True, slots=True)
class EncodedOver:
    """What a talker sends for one over."""

    mode: CodecMode
    frames: list[bytes]  # frames to send, in order
    positions: list[int]  # over position of each frame (jumps where DTX skipped silence)
    redundant: list[bytes] | None  # FEC copies, one per frame in ``frames``; None: no FEC
    total: int  # positions in the over (sent or skipped)

    @property
    def dtx(self) -> bool:
        return len(self.frames) < self.total

    @property
    def seconds(self) -> float:
        return self.total * self.mode.frame_seconds

    def head(self, positions: int) -> EncodedOver:
        """The first ``positions`` frame periods of the over (a grant ran short)."""
        n = sum(1 for p in self.positions if p < positions)
        red = self.redundant[:n] if self.redundant is not None else None
        total = min(self.total, positions)
        return EncodedOver(self.mode, self.frames[:n], self.positions[:n], red, total)


def encode_over(
    pcm: np.ndarray, mode: CodecMode, *, fec: bool = False, dtx: bool = False
) -> EncodedOver:
    """Encode speech for one over (``fec``: also in the paired mode; ``dtx``: skip silence)."""
    frames = Encoder(mode).encode(pcm)
    redundant = None
    if fec:
        from relay.core.wire import fec_mode

        redundant = Encoder(fec_mode(mode)).encode(pcm)[: len(frames)]
    positions = list(range(len(frames)))
    if dtx and frames:
        from relay.voice.vad import dtx_positions

        positions = dtx_positions(pcm, mode)[: len(frames)]
        frames = [frames[p] for p in positions]
        if redundant is not None:
            redundant = [redundant[p] for p in positions]
    total = -(-len(pcm) // mode.samples_per_frame)
    return EncodedOver(mode, frames, positions, redundant, total)
