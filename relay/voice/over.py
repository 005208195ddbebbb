"""One over, encoded for sending: primary frames, optional FEC copies, optional DTX skips.

Talkers (``relay talk`` from a file or the microphone, the demos, benchmarks) all prepare
speech here, so FEC and DTX mean the same thing everywhere: FEC encodes the same audio a
second time in the mode :data:`relay.core.wire.FEC_PAIRS` names; DTX keeps only the frames
:mod:`relay.voice.vad` calls speech (with hangover), remembering each kept frame's position
in the over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from relay.errors import UsageError
from relay.voice.codec import Encoder
from relay.voice.modes import CodecMode

SentFrame = tuple[int, bytes, bytes | None]  # over position, frame, its FEC copy (or None)


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


class OverEncoder:
    """:func:`encode_over` as the audio arrives: the live microphone and files share it.

    :meth:`push` takes captured audio and returns the frames decided so far as
    ``(position, frame, FEC copy or None)``; with DTX a frame comes out once the gate has
    decided it (see :class:`relay.voice.vad.DtxGate`), so output lags input a little.
    :meth:`finish` ends the over (a trailing partial frame is padded with zeros).
    """

    def __init__(self, mode: CodecMode, *, fec: bool = False, dtx: bool = False) -> None:
        self.mode = mode
        self._encoder = Encoder(mode)
        self._copies: Encoder | None = None
        if fec:
            from relay.core.wire import fec_mode

            self._copies = Encoder(fec_mode(mode))
            if self._copies.samples_per_frame != mode.samples_per_frame:
                raise UsageError(f"FEC copies of {mode.name} must be one for one")
        self._gate = None
        if dtx:
            from relay.voice.vad import DtxGate

            self._gate = DtxGate(mode)
        self._held = np.zeros(0, dtype=np.int16)  # samples short of a whole frame
        self._pending: deque[tuple[bytes, bytes | None]] = deque()  # encoded, not yet decided
        self.total = 0  # positions decided so far (sent or skipped)
        self._last_skipped: SentFrame | None = None  # sent after all if the over ends on it

    def push(self, pcm: np.ndarray) -> list[SentFrame]:
        """Frames to send for ``pcm`` (1-D int16, 8 kHz) and what came before it."""
        held = np.concatenate([self._held, pcm])
        whole = len(held) - len(held) % self.mode.samples_per_frame
        self._held = held[whole:]
        self._encode(held[:whole])
        keep = self._gate.push(held[:whole]) if self._gate is not None else None
        return self._decided(keep)

    def finish(self) -> list[SentFrame]:
        """The frames still to send: the over ends with the audio pushed so far.

        With DTX an over that ends in a pause still ends with a frame (its last one, as a
        keep-alive): the seal counts positions up to the last frame sent, and listeners
        tell a pause from loss by the frame after it, so without it the pause would be cut
        from what they hear (or counted as lost frames).
        """
        rest, self._held = self._held, np.zeros(0, dtype=np.int16)
        self._encode(rest)
        keep = None
        if self._gate is not None:
            keep = self._gate.push(rest) + self._gate.finish()
        out = self._decided(keep)
        last = self._last_skipped
        if last is not None and last[0] == self.total - 1:
            out.append(last)
        return out

    def _encode(self, pcm: np.ndarray) -> None:
        frames = self._encoder.encode(pcm)
        copies = self._copies.encode(pcm) if self._copies is not None else [None] * len(frames)
        self._pending.extend(zip(frames, copies, strict=True))

    def _decided(self, keep: list[bool] | None) -> list[SentFrame]:
        if keep is None:  # no DTX: every frame is sent as soon as it is encoded
            keep = [True] * len(self._pending)
        out = []
        for send in keep:
            frame, copy = self._pending.popleft()
            if send:
                out.append((self.total, frame, copy))
            else:
                self._last_skipped = (self.total, frame, copy)
            self.total += 1
        return out


def encode_over(
    pcm: np.ndarray, mode: CodecMode, *, fec: bool = False, dtx: bool = False
) -> EncodedOver:
    """Encode speech for one over (``fec``: also in the paired mode; ``dtx``: skip silence)."""
    encoder = OverEncoder(mode, fec=fec, dtx=dtx)
    sent = encoder.push(pcm) + encoder.finish()
    positions = [p for p, _, _ in sent]
    frames = [f for _, f, _ in sent]
    redundant = [c for _, _, c in sent if c is not None] if fec else None
    return EncodedOver(mode, frames, positions, redundant, encoder.total)
