"""Codec2 wrappers: frame counts and sizes, deterministic bits, pycodec2's traps defused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import relay
from relay.errors import UsageError
from relay.voice import MODES, Decoder, Encoder, mode_by_name

SAMPLES = Path(relay.__file__).parent / "samples"


def speech(name: str = "morig.wav") -> np.ndarray:
    pcm, rate = sf.read(SAMPLES / name, dtype="int16")
    assert rate == 8000 and pcm.ndim == 1
    return pcm


def envelope(pcm: np.ndarray, block: int = 160) -> np.ndarray:
    n = len(pcm) // block
    blocks = pcm[: n * block].astype(np.float64).reshape(n, block)
    return np.log1p(np.sqrt((blocks**2).mean(axis=1)))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_round_trip_real_speech(mode):
    pcm = speech()
    frames = Encoder(mode).encode(pcm)
    assert len(frames) == -(-len(pcm) // mode.samples_per_frame)
    assert all(type(f) is bytes and len(f) == mode.bytes_per_frame for f in frames)

    dec = Decoder(mode)
    out = [dec.decode(f) for f in frames]
    assert all(o.dtype == np.int16 and o.shape == (mode.samples_per_frame,) for o in out)
    decoded = np.concatenate(out)

    # Codec2 rebuilds phase, so compare loudness envelopes after the codec's delay.
    delay = 210 if mode.name == "700C" else 145
    a = envelope(pcm)
    b = envelope(decoded[delay : delay + len(pcm)])
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.9
    ratio = np.mean(decoded.astype(np.float64) ** 2) / np.mean(pcm.astype(np.float64) ** 2)
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_encoded_bits_are_deterministic(mode):
    pcm = speech("forig.wav")
    assert Encoder(mode).encode(pcm) == Encoder(mode).encode(pcm)


@pytest.mark.parametrize("name", ["1600", "3200", "700C"])
def test_strided_and_big_endian_input_encode_like_a_plain_copy(name):
    mode = mode_by_name(name)
    wide = speech("cross.wav")
    strided = wide[::2]
    assert not strided.flags.c_contiguous
    expected = Encoder(mode).encode(strided.copy())
    assert Encoder(mode).encode(strided) == expected
    assert Encoder(mode).encode(strided.astype(">i2")) == expected


def test_last_partial_frame_is_zero_padded():
    mode = mode_by_name("1600")
    pcm = speech()[: 3 * mode.samples_per_frame + 5]
    padded = np.zeros(4 * mode.samples_per_frame, dtype=np.int16)
    padded[: len(pcm)] = pcm
    frames = Encoder(mode).encode(pcm)
    assert len(frames) == 4
    assert frames == Encoder(mode).encode(padded)


def test_empty_input_gives_no_frames():
    assert Encoder(mode_by_name("1600")).encode(np.zeros(0, dtype=np.int16)) == []


@pytest.mark.parametrize(
    "bad",
    [np.zeros(320, dtype=np.float32), np.zeros((2, 320), dtype=np.int16), [0] * 320],
    ids=["float", "2-D", "list"],
)
def test_encoder_refuses_non_int16_pcm(bad):
    with pytest.raises(UsageError):
        Encoder(mode_by_name("1600")).encode(bad)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_decoder_checks_frame_length(mode):
    dec = Decoder(mode)
    for size in (0, mode.bytes_per_frame - 1, mode.bytes_per_frame + 1, 2 * mode.bytes_per_frame):
        with pytest.raises(UsageError, match=f"{mode.bytes_per_frame} bytes"):
            dec.decode(bytes(size))


def test_decoder_accepts_bytearray_and_refuses_other_types():
    mode = mode_by_name("1400")
    frame = Encoder(mode).encode(speech()[:320])[0]
    dec = Decoder(mode)
    assert dec.decode(bytearray(frame)).shape == (320,)
    assert dec.decode(memoryview(frame)).shape == (320,)
    with pytest.raises(UsageError):
        dec.decode("abcdefg")  # type: ignore[arg-type]
