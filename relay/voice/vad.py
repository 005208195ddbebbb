"""Voice activity detection for discontinuous transmission (DTX): send only what is speech.

Airtime is the scarcest thing on a LoRa channel, and a conversation is half pauses. WebRTC's
VAD (the ``webrtcvad-wheels`` build of Google's GMM detector) marks each 20 ms of 8 kHz audio as
speech or not; a Codec2 frame is speech when any of its sub-blocks is. Decisions are then
widened so words keep their edges:

* hangover: frames after speech stay "speech" for :data:`HANGOVER` seconds (word endings,
  fricatives and the decay of a vowel are quiet and the VAD drops them first);
* pre-roll: :data:`PREROLL` seconds before speech onsets are kept (a live talker holds each
  frame that long before deciding it: one 40 ms frame of latency);
* bridging: pauses shorter than :data:`MIN_GAP` seconds are sent anyway (skipping them saves
  almost nothing and costs a comfort-noise seam in the middle of a phrase);
* keep-alive: a skipped run never exceeds :data:`MAX_SKIP` seconds, so listeners' playout
  (idle timeout 3 s) and the 8-bit position unwrapping (128 frames) keep the over's timing.

:class:`DtxGate` is the one implementation, for files and microphones alike.

Receivers tell a DTX gap from loss by the packet counter: consecutive counters with a jump in
frame position mean the talker skipped those frames (see ``relay.runtime.voice``).
"""

from __future__ import annotations

import numpy as np

from relay.errors import UsageError
from relay.voice.modes import SAMPLE_RATE, CodecMode

BLOCK = 160  # 20 ms at 8 kHz: a block size webrtcvad accepts
AGGRESSIVENESS = 3  # 0..3; measured: 3 skips background between phrases, speech STOI unchanged
HANGOVER = 0.16  # seconds kept after the last speech frame
PREROLL = 0.04  # seconds kept before a speech onset
MIN_GAP = 0.2  # pauses shorter than this are sent anyway
MAX_SKIP = 2.0  # seconds: at most this much is skipped in a row
# On by default: bench/quality.py measured 31.7 % airtime saved on conversation-like speech
# (5 conversations, 270 s) with speech-part STOI 0.004 below continuous (goal: >= 30 %, 0.01).
DTX_DEFAULT = True
MAX_SKIP_FRAMES = 100  # and never so many frames that 8-bit positions become ambiguous


def _vad(aggressiveness: int):
    try:
        import webrtcvad
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise UsageError("DTX needs webrtcvad (pip install webrtcvad-wheels)") from exc
    if not 0 <= aggressiveness <= 3:
        raise UsageError(f"VAD aggressiveness must be 0..3, got {aggressiveness}")
    return webrtcvad.Vad(aggressiveness)


class RawVad:
    """The VAD's own decision per Codec2 frame (True = speech), audio in as it arrives.

    Audio goes in by whole 20 ms blocks and whole frames (whichever is longer), so a stream
    cut into any pieces gets exactly the decisions of the same audio in one piece; the last
    partial piece is padded with zeros by :meth:`finish`, as the encoder pads its last frame.
    """

    def __init__(self, mode: CodecMode, aggressiveness: int = AGGRESSIVENESS) -> None:
        spf = mode.samples_per_frame
        if spf % BLOCK and BLOCK % spf:
            raise UsageError(f"codec {mode.name} frames do not align with 20 ms VAD blocks")
        self._vad = _vad(aggressiveness)
        self._spf = spf
        self._unit = max(spf, BLOCK)  # one divides the other
        self._held = np.zeros(0, dtype="<i2")

    def push(self, pcm: np.ndarray) -> list[bool]:
        """Decisions for the frames completed by ``pcm`` (1-D int16, 8 kHz)."""
        held = np.concatenate([self._held, np.asarray(pcm, dtype="<i2")])
        whole = len(held) - len(held) % self._unit
        self._held = held[whole:]
        return self._decide(held[:whole])

    def finish(self) -> list[bool]:
        """Decisions for what is left, padded to whole frames (and 20 ms blocks)."""
        frames = -(-len(self._held) // self._spf)
        buf = np.zeros(-(-len(self._held) // self._unit) * self._unit, dtype="<i2")
        buf[: len(self._held)] = self._held
        self._held = np.zeros(0, dtype="<i2")
        return self._decide(buf)[:frames]

    def _decide(self, buf: np.ndarray) -> list[bool]:
        blocks = [
            self._vad.is_speech(buf[i : i + BLOCK].tobytes(), SAMPLE_RATE)
            for i in range(0, len(buf), BLOCK)
        ]
        spf = self._spf
        if spf >= BLOCK:
            per = spf // BLOCK
            return [any(blocks[i : i + per]) for i in range(0, len(blocks), per)]
        # 10 ms frames (none today): each frame takes its 20 ms block's decision
        return [blocks[(i * spf) // BLOCK] for i in range(len(buf) // spf)]


def raw_speech_frames(
    pcm: np.ndarray, mode: CodecMode, aggressiveness: int = AGGRESSIVENESS
) -> np.ndarray:
    """The VAD's own decision per Codec2 frame (True = speech), before widening."""
    vad = RawVad(mode, aggressiveness)
    return np.array(vad.push(pcm) + vad.finish(), dtype=bool)


class DtxGate:
    """Send (True) or skip (False) per Codec2 frame, audio in as it is captured.

    The one implementation of the rules in the module docstring, for a whole file
    (:func:`speech_frames`) and for a live microphone alike. Decisions come out in order but
    late: pre-roll needs :data:`PREROLL` of audio after a frame, and a pause is only known
    to be skipped once it has lasted :data:`MIN_GAP` (shorter ones are sent), so a talker
    holds the frames it has not been told about yet. :meth:`finish` ends the over: a pause
    still open at the end is skipped, however short.
    """

    def __init__(
        self,
        mode: CodecMode,
        *,
        aggressiveness: int = AGGRESSIVENESS,
        hangover: float = HANGOVER,
        preroll: float = PREROLL,
        min_gap: float = MIN_GAP,
        max_skip: float = MAX_SKIP,
    ) -> None:
        fs = mode.frame_seconds
        self.raw = RawVad(mode, aggressiveness)
        self._hang, self._pre = round(hangover / fs), round(preroll / fs)
        self._gap_min = round(min_gap / fs)
        self._cap = max(1, min(MAX_SKIP_FRAMES, round(max_skip / fs)))
        self._seen = 0  # frames with a raw decision
        self._widened = 0  # frames whose widened decision (pre-roll, hangover) is known
        self._last_speech = -(10**9)  # the latest raw speech frame
        self._pause: int | None = None  # first frame of the undecided pause, if any
        self.decided = 0  # frames decided (send or skip)

    def push(self, pcm: np.ndarray) -> list[bool]:
        """Decisions for the next frames (possibly none yet, possibly several)."""
        out: list[bool] = []
        self._take(self.raw.push(pcm), out)
        return out

    def finish(self) -> list[bool]:
        """Decisions for every frame left: the over ends here."""
        out: list[bool] = []
        self._take(self.raw.finish(), out)
        while self._widened < self._seen:  # no speech after the end: nothing to look ahead to
            self._widen(out)
        if self._pause is not None:
            self._close_pause(self._seen, bridged=False, out=out)
        return out

    def _take(self, raw: list[bool], out: list[bool]) -> None:
        for speech in raw:
            if speech:
                self._last_speech = self._seen
            self._seen += 1
            if self._seen > self._pre:  # frame ``_widened`` has its pre-roll look-ahead
                self._widen(out)

    def _widen(self, out: list[bool]) -> None:
        """Decide frame ``_widened``: speech within pre-roll before it or hangover after."""
        k = self._widened
        self._widened += 1
        if self._last_speech >= k - self._hang:
            if self._pause is not None:
                short = k - self._pause < self._gap_min and self._pause > 0
                self._close_pause(k, bridged=short, out=out)
            self._emit(True, out)
        elif self._pause is None:
            self._pause = k
            self._settle(out)
        else:
            self._settle(out)

    def _settle(self, out: list[bool]) -> None:
        """A pause too long to bridge (or the over's first) is skipped as far as it goes."""
        assert self._pause is not None
        if self._pause == 0 or self._widened - self._pause >= self._gap_min:
            while self.decided < self._widened:
                self._emit(self._keep_alive(self.decided - self._pause), out)

    def _close_pause(self, end: int, *, bridged: bool, out: list[bool]) -> None:
        assert self._pause is not None
        while self.decided < end:
            self._emit(bridged or self._keep_alive(self.decided - self._pause), out)
        self._pause = None

    def _keep_alive(self, into_pause: int) -> bool:
        """One frame per ``cap`` skipped in a row is sent anyway."""
        cap = self._cap
        return into_pause >= cap and (into_pause - cap) % (cap + 1) == 0

    def _emit(self, keep: bool, out: list[bool]) -> None:
        # an over starts with a frame: the listener's playout anchors on it
        out.append(keep or self.decided == 0)
        self.decided += 1


def speech_frames(
    pcm: np.ndarray,
    mode: CodecMode,
    *,
    aggressiveness: int = AGGRESSIVENESS,
    hangover: float = HANGOVER,
    preroll: float = PREROLL,
    min_gap: float = MIN_GAP,
    max_skip: float = MAX_SKIP,
) -> np.ndarray:
    """Per Codec2 frame: send it (True) or skip it (False); see the module docstring."""
    gate = DtxGate(
        mode,
        aggressiveness=aggressiveness,
        hangover=hangover,
        preroll=preroll,
        min_gap=min_gap,
        max_skip=max_skip,
    )
    return np.array(gate.push(pcm) + gate.finish(), dtype=bool)


def dtx_positions(pcm: np.ndarray, mode: CodecMode, **options) -> list[int]:
    """Over positions of the frames DTX sends (increasing; the rest are skipped)."""
    return [int(i) for i in np.flatnonzero(speech_frames(pcm, mode, **options))]
