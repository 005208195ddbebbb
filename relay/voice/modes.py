"""Codec2 modes: the facts every layer needs (wire index, frame size, frame duration).

pycodec2 names modes by integers (700 means 700C). The wire carries a 3-bit index.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.errors import UsageError

SAMPLE_RATE = 8000  # Codec2 works on 8 kHz mono int16


@dataclass(frozen=True, slots=True)
class CodecMode:
    name: str  # "1600", "700C"
    pycodec2_mode: int  # what pycodec2.Codec2() takes
    wire_index: int  # 0..7 on the wire
    samples_per_frame: int
    bytes_per_frame: int

    @property
    def bitrate(self) -> int:
        return 700 if self.name == "700C" else int(self.name)

    @property
    def frame_seconds(self) -> float:
        return self.samples_per_frame / SAMPLE_RATE

    @property
    def frames_per_second(self) -> float:
        return SAMPLE_RATE / self.samples_per_frame


# Highest bitrate first: the planner prefers quality when airtime allows.
MODES: tuple[CodecMode, ...] = (
    CodecMode("3200", 3200, 0, 160, 8),
    CodecMode("2400", 2400, 1, 160, 6),
    CodecMode("1600", 1600, 2, 320, 8),
    CodecMode("1400", 1400, 3, 320, 7),
    CodecMode("1300", 1300, 4, 320, 7),
    CodecMode("1200", 1200, 5, 320, 6),
    CodecMode("700C", 700, 6, 320, 4),
)
_BY_NAME = {m.name: m for m in MODES}
_BY_INDEX = {m.wire_index: m for m in MODES}
DEFAULT_MODE = _BY_NAME["1600"]


def mode_by_name(name: str | int) -> CodecMode:
    """Look a mode up by a user's spelling: 1600, "1600", "700C", "700c", 700."""
    key = str(name).strip().upper()
    if key == "700":
        key = "700C"
    try:
        return _BY_NAME[key]
    except KeyError:
        known = ", ".join(m.name for m in MODES)
        raise UsageError(f"unknown codec mode {name!r} (known: {known})") from None


def mode_by_index(index: int) -> CodecMode | None:
    """The mode with this wire index, or None if the index is unassigned."""
    return _BY_INDEX.get(index)
