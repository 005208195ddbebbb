"""Packet-loss concealment: fill missing frames so a lost packet is a glide, not a hole.

Three methods, chosen per stream:

``interpolate`` (the default)
    Codec2 1600 and 1300 frames are bit-packed scalar indices of quantised speech parameters
    (voicing, pitch Wo, energy, ten LSPs; Gray-coded, MSB first; the layout below is read
    from codec2's ``codec2_encode_1600``/``_1300``). Each index grows monotonically with its
    parameter, so interpolating indices interpolates parameters. When the next good frame is
    already in the jitter buffer (mid-over it almost always is: the buffer emits a missing
    slot only once a later frame arrived), a missing frame becomes a synthetic frame between
    the last good and the next good one, decoded by the stream's own decoder, so its state
    stays continuous. With no next frame (the over's end) the last frame is extrapolated with
    falling energy and faded out. Other modes (VQ-coded: 3200, 2400, 1400, 1200, 700C) fall
    back to ``repeat``.
``repeat``
    Replay the last good frame's bits through the decoder under a gain that ramps down
    across the frame: 1.0→0.7, 0.7→0.5, 0.5→0.25, 0.25→0, then silence.
``silence``
    Missing frames are silence (the baseline a benchmark compares against).

Before any good frame there is nothing to repeat, so the output is silence. A frame that is
missing as a primary but present as a lower-rate redundant copy (FEC) is decoded by a
decoder of the redundant mode instead (:meth:`Concealer.render_redundant`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np

from relay.errors import UsageError
from relay.voice.codec import Decoder
from relay.voice.jitter import PlayoutSlot
from relay.voice.modes import CodecMode

FADE = (1.0, 0.7, 0.5, 0.25, 0.0)  # gain at the boundaries of consecutive missing frames
METHODS = ("interpolate", "repeat", "silence")
DEFAULT_METHOD = "interpolate"
# Energy index steps (about 1.6 dB each) removed per frame when extrapolating past the end.
EXTRAPOLATE_DECAY = 3
COMFORT_MIN, COMFORT_MAX = 8.0, 120.0  # comfort noise RMS bounds (int16; about -72..-49 dBFS)
# How far apart the last and next good frames may be for interpolation (frames): beyond this
# (over 1.2 s of 1600) the speech on either side is unrelated, so fade out and back in instead.
MAX_INTERPOLATE_GAP = 30

# Field layouts: (kind, width) in packing order. kind: v = voicing, w = Wo index, e = energy
# index, l = LSP index. Widths of the ten scalar LSP indices: 4,4,4,4,4,4,4,3,3,2 (36 bits).
_LSP = tuple(("l", w) for w in (4, 4, 4, 4, 4, 4, 4, 3, 3, 2))
_HALF = (("v", 1), ("v", 1), ("w", 7), ("e", 5))  # two 10 ms voicings, then Wo and energy
LAYOUTS: dict[str, tuple[tuple[str, int], ...]] = {
    "1600": (*_HALF, *_HALF, *_LSP),
    "1300": (("v", 1), ("v", 1), ("v", 1), ("v", 1), ("w", 7), ("e", 5), *_LSP),
}


def _ungray(g: int) -> int:
    n = g
    g >>= 1
    while g:
        n ^= g
        g >>= 1
    return n


def _gray(n: int) -> int:
    return n ^ (n >> 1)


class FrameFields:
    """Bit-level access to one mode's frames: unpack to natural indices and pack back."""

    def __init__(self, layout: Sequence[tuple[str, int]], frame_bytes: int) -> None:
        self.layout = tuple(layout)
        self.frame_bytes = frame_bytes
        self._bits = frame_bytes * 8
        if sum(w for _, w in self.layout) > self._bits:
            raise UsageError("field layout is longer than the frame")

    def unpack(self, frame: bytes) -> list[int]:
        bits, pos, out = int.from_bytes(frame, "big"), self._bits, []
        for _, width in self.layout:
            pos -= width
            out.append(_ungray((bits >> pos) & ((1 << width) - 1)))
        return out

    def pack(self, fields: Sequence[int]) -> bytes:
        bits, pos = 0, self._bits
        for (_, width), value in zip(self.layout, fields, strict=True):
            pos -= width
            bits |= _gray(max(0, min((1 << width) - 1, int(value)))) << pos
        return bits.to_bytes(self.frame_bytes, "big")

    def interpolate(self, a: bytes, b: bytes, t: float) -> bytes:
        """A frame ``t`` (0..1) of the way from ``a`` to ``b``: indices linearly, voicing from
        the nearer end (a half-voiced frame does not exist)."""
        fa, fb = self.unpack(a), self.unpack(b)
        out = []
        for (kind, _), x, y in zip(self.layout, fa, fb, strict=True):
            if kind == "v":
                out.append(x if t < 0.5 else y)
            else:
                out.append(round(x + (y - x) * t))
        return self.pack(out)

    def decay(self, frame: bytes, steps: int) -> bytes:
        """``frame`` with every energy index lowered by ``steps`` and the pitch of the last
        subframe held (a steady vowel that fades, rather than a repeated syllable)."""
        f = self.unpack(frame)
        kinds = [k for k, _ in self.layout]
        last_w = max((i for i, k in enumerate(kinds) if k == "w"), default=None)
        for i, kind in enumerate(kinds):
            if kind == "e":
                f[i] -= steps
            elif kind == "w" and last_w is not None:
                f[i] = f[last_w]
        return self.pack(f)


def frame_fields(mode_name: str, frame_bytes: int) -> FrameFields | None:
    """Bit-field access for a mode whose frames can be interpolated, else None."""
    layout = LAYOUTS.get(mode_name)
    return FrameFields(layout, frame_bytes) if layout else None


class Concealer:
    """Turns playout slots into PCM, one ``samples_per_frame`` int16 array per slot.

    ``render(slot, ahead)`` takes an optional look-ahead ``(position, frame)`` of the next
    good frame after a missing slot; callers without one still get the fade-out.
    """

    def __init__(self, decoder: Decoder, method: str = DEFAULT_METHOD) -> None:
        if method not in METHODS:
            raise UsageError(f"unknown concealment {method!r} (known: {', '.join(METHODS)})")
        self.decoder = decoder
        self.method = method
        n = decoder.samples_per_frame
        self._ramps = [
            np.linspace(a, b, n, endpoint=False, dtype=np.float32) for a, b in pairwise(FADE)
        ]
        mode = getattr(decoder, "mode", None)  # stand-in decoders in tests have none
        self._fields = (
            frame_fields(mode.name, mode.bytes_per_frame)
            if method == "interpolate" and mode is not None
            else None
        )
        self._last: bytes | None = None
        self._last_pos: int | None = None
        self._missing_run = 0  # consecutive missing frames since the last good one
        self._redundant: dict[str, Decoder] = {}
        self._red_last: dict[str, int | None] = {}  # position each redundant decoder last saw
        self._after_redundant = False
        self._floor: float | None = None  # quietest frame RMS so far (comfort noise level)
        self._rng = np.random.default_rng(0x2E1A7)  # deterministic: tests compare outputs
        self.frames_comfort = 0  # skipped (DTX) frames filled with comfort noise
        self.frames_concealed = 0  # missing frames filled with speech (not silence)
        self.frames_interpolated = 0  # of which, interpolated towards the next good frame
        self.frames_redundant = 0  # missing primaries played from a redundant (FEC) copy

    def _good(self, frame: bytes, position: int | None) -> np.ndarray:
        if self._after_redundant:
            # The decoder still holds the frame before the gap and would glide from it across
            # speech the redundant copies already played: prime it with this frame first.
            self.decoder.decode(frame)
            self._after_redundant = False
        pcm = self.decoder.decode(frame)
        self._last, self._last_pos, self._missing_run = frame, position, 0
        rms = float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) if len(pcm) else 0.0
        self._floor = rms if self._floor is None else min(self._floor, rms)
        return pcm

    def render_comfort(self) -> np.ndarray:
        """Comfort noise for a frame the talker skipped (DTX): the quietest level heard in
        this over, clamped low, so a pause sounds like a room and not like a dead link."""
        level = (
            COMFORT_MIN if self._floor is None else min(COMFORT_MAX, max(COMFORT_MIN, self._floor))
        )
        noise = self._rng.normal(0.0, 1.0, self.decoder.samples_per_frame + 1)
        noise = noise[1:] + 0.7 * noise[:-1]  # a gentle low-pass: less hiss, more room
        noise *= level / 1.22
        self._missing_run = len(FADE)  # a loss right after a pause has nothing to repeat
        self.frames_comfort += 1
        return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)

    def render_frame(
        self,
        frame: bytes | None,
        position: int | None = None,
        ahead: tuple[int, bytes] | None = None,
    ) -> np.ndarray:
        """PCM for one frame, or for a gap where ``frame`` is None.

        ``position`` and ``ahead`` (the next good frame's position and bits) enable
        interpolation; without them a gap is extrapolated and faded.
        """
        if frame is not None:
            return self._good(frame, position)
        run = self._missing_run
        self._missing_run = run + 1
        silence = np.zeros(self.decoder.samples_per_frame, dtype=np.int16)
        if self._last is None or self.method == "silence":
            return silence
        fields = self._fields
        if fields is not None:
            if (
                ahead is not None
                and position is not None
                and self._last_pos is not None
                and 0 < position - self._last_pos < ahead[0] - self._last_pos
                and ahead[0] - self._last_pos <= MAX_INTERPOLATE_GAP
            ):
                t = (position - self._last_pos) / (ahead[0] - self._last_pos)
                self.frames_concealed += 1
                self.frames_interpolated += 1
                return self.decoder.decode(fields.interpolate(self._last, ahead[1], t))
            if run >= len(self._ramps):
                return silence
            self.frames_concealed += 1
            pcm = self.decoder.decode(fields.decay(self._last, EXTRAPOLATE_DECAY * (run + 1)))
            return np.rint(pcm * self._ramps[run]).astype(np.int16)
        if run >= len(self._ramps):
            return silence
        self.frames_concealed += 1
        pcm = self.decoder.decode(self._last)
        return np.rint(pcm * self._ramps[run]).astype(np.int16)

    def render_redundant(
        self, mode: CodecMode, frame: bytes, position: int | None = None
    ) -> np.ndarray:
        """PCM for a missing primary from its lower-rate redundant copy (FEC).

        A decoder of the redundant mode is kept for the stream. Codec2 decoders glide from the
        previous frame they decoded; when that was not the frame just before (the usual case:
        redundant copies come only for lost packets), the decoder is primed with this frame
        first, so it glides from itself instead of from speech seconds ago.
        """
        if mode.samples_per_frame != self.decoder.samples_per_frame:
            raise UsageError("a redundant mode must have the primary's frame duration")
        decoder = self._redundant.get(mode.name)
        if decoder is None:
            decoder = self._redundant[mode.name] = Decoder(mode)
        last = self._red_last.get(mode.name)
        if position is None or last is None or last != position - 1:
            decoder.decode(frame)
        self._red_last[mode.name] = position
        self.frames_redundant += 1
        self._missing_run = 0
        self._after_redundant = True
        return decoder.decode(frame)

    def render(self, slot: PlayoutSlot, ahead: tuple[int, bytes] | None = None) -> np.ndarray:
        """PCM for one playout slot (``ahead``: the next good frame, if known)."""
        return self.render_frame(slot.frame, slot.position, ahead)

    def render_all(self, slots: Iterable[PlayoutSlot]) -> np.ndarray:
        """PCM for consecutive slots, concatenated (empty int16 array for none); a gap is
        interpolated towards the next good frame in ``slots``."""
        slots = list(slots)
        parts = []
        ahead: tuple[int, bytes] | None = None
        for i, s in enumerate(slots):
            if s.frame is None and (ahead is None or ahead[0] <= s.position):
                ahead = next(((t.position, t.frame) for t in slots[i + 1 :] if t.frame), None)
            parts.append(self.render(s, ahead))
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts)
