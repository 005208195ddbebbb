"""Audio files in and out: whatever the user has, converted to Codec2's 8 kHz mono int16.

Reading accepts anything libsndfile reads at any sane rate; writing is atomic (temp file in the
same directory, then ``os.replace``) so a crash or a full disk never leaves half a WAV behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from relay.errors import UsageError
from relay.voice.modes import MODES, SAMPLE_RATE

MIN_INPUT_RATE = 1000  # below this a file is broken, not speech
MAX_INPUT_RATE = 768_000
MIN_OUTPUT_RATE = 8000
MAX_OUTPUT_RATE = 192_000
MIN_SAMPLES = min(m.samples_per_frame for m in MODES)  # one frame of the shortest mode (20 ms)


def _to_int16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) to int16, clipping overs (float files may exceed full scale)."""
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x
    return soxr.resample(x, rate_in, rate_out, quality="HQ")


def read_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an audio file as 8 kHz mono int16, mixing channels down and resampling as needed."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such audio file: {p}")
    if p.is_dir():
        raise UsageError(f"{p} is a directory, not an audio file")
    try:
        with sf.SoundFile(p) as f:
            rate = f.samplerate
            if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
                raise UsageError(f"{p}: sample rate {rate} Hz is not plausible")
            data = f.read(dtype="float64", always_2d=True)
    except (sf.SoundFileError, TypeError, ValueError) as e:
        # TypeError: headerless raw PCM (libsndfile wants the rate and format given).
        why = "no audio header; raw PCM is not supported" if isinstance(e, TypeError) else None
        raise UsageError(f"{p}: not an audio file or unreadable ({why or _one_line(e)})") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror or e})") from None
    if data.shape[0] == 0:
        raise UsageError(f"{p}: the file contains no audio")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    pcm = _to_int16(_resample(mono, rate, SAMPLE_RATE))
    if len(pcm) < MIN_SAMPLES:
        ms = 1000 * MIN_SAMPLES // SAMPLE_RATE
        raise UsageError(f"{p}: audio too short (under {ms} ms, less than one Codec2 frame)")
    return pcm


def write_audio(path: str | os.PathLike[str], pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write 8 kHz int16 ``pcm`` as a 16-bit WAV at ``rate``, atomically.

    The file appears complete or not at all; any previous file at ``path`` survives a failure.
    """
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise UsageError(f"sample rate must be an integer, not {rate!r}")
    if not MIN_OUTPUT_RATE <= rate <= MAX_OUTPUT_RATE:
        raise UsageError(
            f"output sample rate {rate} Hz out of range {MIN_OUTPUT_RATE}..{MAX_OUTPUT_RATE}"
        )
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.int16:
        raise UsageError("PCM to write must be a 1-D int16 numpy array")
    p = Path(path)
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {p}: directory {parent} does not exist")
    if p.is_dir():
        raise UsageError(f"cannot write {p}: it is a directory")
    out = pcm if rate == SAMPLE_RATE else _to_int16(_resample(pcm / 32768.0, SAMPLE_RATE, rate))

    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        raise UsageError(f"cannot write {p}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, out, int(rate), format="WAV", subtype="PCM_16")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(p))
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {p}: {e.strerror or e}") from None
        raise


def _new_file_mode(p: Path) -> int:
    """Keep an existing file's mode; otherwise what ``open()`` would give (mkstemp uses 0600)."""
    try:
        return p.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # os.umask() can only be read by setting it, which races other threads; Linux shows it here.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _one_line(e: Exception) -> str:
    text = str(getattr(e, "error_string", None) or e).strip().splitlines()
    return text[-1] if text else type(e).__name__
