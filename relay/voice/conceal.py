"""Packet-loss concealment: fill missing frames so a lost packet is a fade, not a click.

A missing frame replays the last good frame's bits through the decoder (Codec2 regenerates the
excitation, so the repeat does not buzz and the decoder's state stays continuous) under a gain
that ramps down across the frame: 1.0→0.7, 0.7→0.5, 0.5→0.25, 0.25→0, then silence. Before any
good frame there is nothing to repeat, so the output is silence.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import numpy as np

from relay.voice.codec import Decoder
from relay.voice.jitter import PlayoutSlot

FADE = (1.0, 0.7, 0.5, 0.25, 0.0)  # gain at the boundaries of consecutive missing frames


class Concealer:
    """Turns playout slots into PCM, one ``samples_per_frame`` int16 array per slot."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        n = decoder.samples_per_frame
        self._ramps = [
            np.linspace(a, b, n, endpoint=False, dtype=np.float32) for a, b in pairwise(FADE)
        ]
        self._last: bytes | None = None
        self._missing_run = 0  # consecutive missing frames since the last good one
        self.frames_concealed = 0  # missing frames filled with faded speech (not silence)

    def render_frame(self, frame: bytes | None) -> np.ndarray:
        """PCM for one frame, or for a gap where ``frame`` is None."""
        if frame is not None:
            pcm = self.decoder.decode(frame)
            self._last = frame
            self._missing_run = 0
            return pcm
        run = self._missing_run
        self._missing_run = run + 1
        if self._last is None or run >= len(self._ramps):
            return np.zeros(self.decoder.samples_per_frame, dtype=np.int16)
        self.frames_concealed += 1
        pcm = self.decoder.decode(self._last)
        return np.rint(pcm * self._ramps[run]).astype(np.int16)

    def render(self, slot: PlayoutSlot) -> np.ndarray:
        """PCM for one playout slot."""
        return self.render_frame(slot.frame)

    def render_all(self, slots: Iterable[PlayoutSlot]) -> np.ndarray:
        """PCM for consecutive slots, concatenated (empty int16 array for none)."""
        parts = [self.render_frame(s.frame) for s in slots]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts)
