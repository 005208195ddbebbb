"""Audio files: any readable format and rate in, 8 kHz mono int16 out; atomic WAV writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import relay
from relay.errors import UsageError
from relay.voice import audio, read_audio, write_audio

SAMPLES = Path(relay.__file__).parent / "samples"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pcm, _ = sf.read(SAMPLES / "forig.wav", dtype="int16")
    return pcm


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    err = got.astype(np.float64) - ref
    return 10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-9))


def test_bundled_wav_reads_bit_exact(speech):
    got = read_audio(SAMPLES / "forig.wav")
    assert got.dtype == np.int16 and got.ndim == 1
    assert np.array_equal(got, speech)


@pytest.mark.parametrize(
    ("suffix", "subtype", "min_snr"),
    [(".wav", "PCM_16", 200), (".flac", "PCM_16", 200), (".ogg", "VORBIS", 5)],
)
def test_round_trip_through_formats(tmp_path, speech, suffix, subtype, min_snr):
    path = tmp_path / f"speech{suffix}"
    sf.write(path, speech, 8000, subtype=subtype)
    got = read_audio(path)
    assert got.dtype == np.int16
    slack = 64 if suffix == ".ogg" else 0  # Vorbis may add or trim a few samples at the ends
    assert abs(len(got) - len(speech)) <= slack
    n = min(len(got), len(speech))
    assert snr_db(speech[:n], got[:n]) > min_snr


def test_44k1_stereo_becomes_8k_mono(tmp_path, speech):
    import soxr

    hi = soxr.resample(speech.astype(np.float64) / 32768, 8000, 44100)
    # Different levels per channel: the mix is their mean.
    stereo = np.stack([hi * 0.8, hi * 0.4], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    got = read_audio(path)
    assert got.dtype == np.int16 and got.ndim == 1
    assert abs(len(got) - len(speech)) <= 1
    n = min(len(got), len(speech))
    assert snr_db(speech[:n] * 0.6, got[:n]) > 20


def test_float_overs_are_clipped_not_wrapped(tmp_path):
    t = np.arange(8000) / 8000
    loud = 3.0 * np.sin(2 * np.pi * 200 * t)
    path = tmp_path / "loud.wav"
    sf.write(path, loud, 8000, subtype="FLOAT")
    got = read_audio(path)
    assert got.max() == 32767 and got.min() == -32768
    # Wrapping would put negative samples where the sine is at its positive peak.
    assert np.all(got[loud > 1.0] == 32767)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such audio file"):
        read_audio(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(UsageError, match="directory"):
        read_audio(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.wav", b"this is not audio at all " * 40),
        ("zero.wav", b""),
        ("x.raw", b"\x00" * 640),
    ],
)
def test_unreadable_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not an audio file") as info:
        read_audio(path)
    assert "\n" not in str(info.value)


def test_empty_and_too_short_audio(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), 8000)
    with pytest.raises(UsageError, match="no audio"):
        read_audio(empty)
    short = tmp_path / "short.wav"
    sf.write(short, np.ones(100, dtype=np.int16), 8000)
    with pytest.raises(UsageError, match="too short"):
        read_audio(short)


@pytest.mark.parametrize("rate", [10, 2_000_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros(4000, dtype=np.int16), rate)
    with pytest.raises(UsageError, match="sample rate"):
        read_audio(path)


def test_write_8k_round_trips_exactly(tmp_path, speech):
    path = tmp_path / "out.wav"
    write_audio(path, speech)
    data, rate = sf.read(path, dtype="int16")
    assert rate == 8000 and np.array_equal(data, speech)
    assert sf.info(path).format == "WAV"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_write_16k_has_the_right_length(tmp_path, speech):
    path = tmp_path / "out16.wav"
    write_audio(path, speech, rate=16000)
    data, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    assert abs(len(data) - 2 * len(speech)) <= 1
    back = read_audio(path)
    n = min(len(back), len(speech))
    assert snr_db(speech[:n], back[:n]) > 20


def test_written_file_gets_normal_permissions(tmp_path, speech):
    # mkstemp creates 0600 files; the result should look like any file open() would create.
    path = tmp_path / "perm.wav"
    write_audio(path, speech)
    assert path.stat().st_mode & 0o777 == 0o666 & ~audio._umask()
    os.chmod(path, 0o640)
    write_audio(path, speech)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("rate", [7999, 192_001, 0, 44100.0])
def test_write_refuses_bad_rates(tmp_path, speech, rate):
    with pytest.raises(UsageError):
        write_audio(tmp_path / "x.wav", speech, rate=rate)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_missing_directory(tmp_path, speech):
    with pytest.raises(UsageError, match="does not exist"):
        write_audio(tmp_path / "no" / "such" / "out.wav", speech)


def test_write_refuses_bad_pcm(tmp_path):
    with pytest.raises(UsageError):
        write_audio(tmp_path / "x.wav", np.zeros(100, dtype=np.float32))


def test_failed_write_leaves_nothing(tmp_path, speech, monkeypatch):
    def broken(file, data, *args, **kwargs):
        file.write(b"RIFF partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", broken)
    with pytest.raises(UsageError, match="No space left"):
        write_audio(tmp_path / "out.wav", speech)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, speech, monkeypatch):
    path = tmp_path / "out.wav"
    path.write_bytes(b"old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_audio(path, speech)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    assert path.read_bytes() == b"old"
