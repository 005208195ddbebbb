"""Speech for benchmarks: every sample in ../shared/samples if there, else the bundled ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relay.voice.audio import read_audio

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "samples"
BUNDLED = HERE.parent / "relay" / "samples"


def speech_files() -> list[Path]:
    folder = SHARED if SHARED.is_dir() else BUNDLED
    return sorted(folder.glob("*.wav"))


def all_speech() -> np.ndarray:
    """All samples joined: one long realistic input."""
    return np.concatenate([read_audio(p) for p in speech_files()])
