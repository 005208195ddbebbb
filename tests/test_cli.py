"""The CLI as a user meets it: real processes, real files, one clear line for every mistake."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from relay import __version__

SAMPLE = Path(__file__).resolve().parent.parent / "relay" / "samples" / "morig.wav"


def relay(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_version_and_help():
    out = relay("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    out = relay("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "plan" in out.stdout
    for cmd in ("demo", "plan"):
        out = relay(cmd, "--help")
        assert out.returncode == 0 and "Examples" in out.stdout


def test_demo_json_is_exactly_one_object_with_the_promised_keys(tmp_path):
    out_wav = tmp_path / "heard.wav"
    out = relay("demo", "--input", str(SAMPLE), "--out", str(out_wav), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # one object and nothing else
    keys = [
        "input",
        "output",
        "preset",
        "mode",
        "frames_per_packet",
        "speech_seconds",
        "packets_sent",
        "packets_received",
        "packets_lost",
        "packets_rejected",
        "codec_bytes",
        "air_bytes",
        "overhead_bytes_per_packet",
        "airtime_seconds",
        "channel_occupancy",
        "latency_ms",
        "fits_live",
    ]
    assert set(keys) <= set(report)
    assert set(report["latency_ms"]) >= {"p50", "max"}
    assert report["overhead_bytes_per_packet"] <= 18
    assert report["packets_received"] == report["packets_sent"]
    assert report["fits_live"] is True
    info = sf.info(out_wav)
    assert info.samplerate == 8000 and info.channels == 1
    assert abs(info.frames / 8000 - report["speech_seconds"]) < 0.05


def test_demo_default_uses_the_bundled_sample_and_renders_a_table(tmp_path):
    out = relay("demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "mouth-to-ear latency" in out.stdout
    assert (tmp_path / "relay-demo.wav").exists()


def test_demo_rate_and_lossy_link(tmp_path):
    out_wav = tmp_path / "heard.wav"
    out = relay(
        "demo",
        "--input",
        str(SAMPLE),
        "--out",
        str(out_wav),
        "--rate",
        "16000",
        "--loss",
        "0.3",
        "--seed",
        "5",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["packets_lost"] > 0
    assert report["frames_concealed"] > 0
    assert sf.info(out_wav).samplerate == 16000


def test_plan_json_and_table():
    out = relay("plan", "--preset", "LONG_FAST", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["fits_live"] is False and "voice messages" in result["advice"]
    out = relay("plan", "--preset", "short_fast", "--mode", "1600")
    assert out.returncode == 0 and "fits" in out.stdout


def _wav(path, samples, rate=8000):
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


BAD = [
    (["demo", "--input", "{tmp}/missing.wav"], "missing"),
    (["demo", "--input", "{tmp}/notaudio.wav"], "not an audio"),
    (["demo", "--input", "{tmp}/empty.wav"], "empty"),
    (["demo", "--preset", "NOPE"], "unknown radio preset"),
    (["demo", "--mode", "450"], "unknown codec mode"),
    (["demo", "--loss", "1.5"], "between 0 and 1"),
    (["demo", "--loss", "-0.1"], "between 0 and 1"),
    (["demo", "--frames-per-packet", "40"], "MTU"),
    (["demo", "--frames-per-packet", "0"], "at least 1"),
    (["demo", "--rate", "5"], "rate"),
    (["demo", "--bw", "125"], "--sf"),
    (["demo", "--sf", "13"], "spreading factor"),
    (["demo", "--region", "MARS"], "unknown region"),
    (["demo", "--duty-cycle", "0"], "duty cycle"),
    (["demo", "--out", "{tmp}/no/such/dir/x.wav"], "directory"),
    (["plan", "--preset", "NOPE"], "unknown radio preset"),
    (["plan", "--mode", "9999"], "unknown codec mode"),
    (["demo", "--loss", "lots"], "lots"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line_exit_2_and_no_output_file(tmp_path, args, needle):
    (tmp_path / "notaudio.wav").write_text("this is not audio\n" * 100)
    _wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16))
    out_wav = tmp_path / "out.wav"
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "demo" and "--out" not in argv:
        argv += ["--out", str(out_wav)]
    out = relay(*argv, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert needle.lower() in out.stderr.lower(), out.stderr
    assert out.stdout == ""
    assert not out_wav.exists()
    assert not any(p.name.startswith(".") or p.suffix == ".tmp" for p in tmp_path.iterdir())


def test_odd_audio_is_accepted(tmp_path):
    # 44.1 kHz stereo float FLAC: mixed to mono and resampled.
    pcm, rate = sf.read(SAMPLE, dtype="float32")
    t = np.arange(int(len(pcm) * 44100 / rate))
    stereo = np.stack([np.interp(t * rate / 44100, np.arange(len(pcm)), pcm)] * 2, axis=1)
    src = tmp_path / "stereo.flac"
    sf.write(src, stereo, 44100)
    out = relay("demo", "--input", str(src), "--out", str(tmp_path / "o.wav"), "--json")
    assert out.returncode == 0, out.stderr
    assert abs(json.loads(out.stdout)["speech_seconds"] - len(pcm) / rate) < 0.01


def test_no_secrets_or_tracebacks_on_interrupt_like_errors(tmp_path):
    os.chmod(tmp_path, 0o500)  # unwritable output directory
    try:
        out = relay("demo", "--input", str(SAMPLE), "--out", str(tmp_path / "o.wav"))
    finally:
        os.chmod(tmp_path, 0o700)
    if os.geteuid() == 0:
        assert out.returncode == 0  # root writes anyway
    else:
        assert out.returncode == 2 and "Traceback" not in out.stderr
