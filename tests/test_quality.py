"""The quality benchmark's own machinery: loss models, delay alignment, a tiny real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench import quality  # noqa: E402
from relay.voice.audio import read_audio  # noqa: E402
from relay.voice.modes import mode_by_name  # noqa: E402

SAMPLE = ROOT / "relay" / "samples" / "hts1.wav"
M1600 = mode_by_name("1600")


def test_loss_models_hit_their_rates_and_are_seeded():
    n = 20000
    assert quality.loss_mask("10", n, 1).mean() == pytest.approx(0.10, abs=0.01)
    assert quality.loss_mask("0", n, 1).sum() == 0
    burst = quality.loss_mask("burst", n, 1)
    assert burst.mean() == pytest.approx(0.10, abs=0.02)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], burst.astype(int), [0]]))))[::2]
    assert runs.mean() == pytest.approx(3.0, abs=0.4)  # bursts of 3 packets on average
    assert np.array_equal(quality.loss_mask("burst", 500, 9), quality.loss_mask("burst", 500, 9))


def test_codec_delay_is_found_like_the_manifest_says():
    ref = read_audio(SAMPLE)
    from relay.voice.codec import Encoder

    sent = quality.send(M1600, Encoder(M1600).encode(ref), 5, None)
    heard = quality.receive(sent, np.zeros(len(sent.packets), bool), "interpolate")
    assert 130 <= quality.codec_delay(ref, heard) <= 160  # MANIFEST: about 140-150 samples
    shifted = np.concatenate([np.zeros(60, np.int16), ref])
    assert quality.codec_delay(ref, shifted) == pytest.approx(60, abs=4)


def test_a_tiny_table_over_the_real_path():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    result = quality.loss_table(M1600, [SAMPLE], seeds=1, losses=("0", "10"))
    table = result["table"]
    assert set(table) == {"silence", "repeat", "interpolate", "interp+fec1200", "interp+fec700C"}
    lossless = table["interpolate"]["0"]["stoi"]
    assert 0.8 < lossless < 0.95
    assert table["silence"]["10"]["stoi"] < lossless
    assert result["bytes_per_second"]["interp+fec700C"] > result["bytes_per_second"]["plain"]


def test_results_are_saved_and_printed_when_matplotlib_is_missing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    assert quality.main(["--tiny", "--out", str(out), "--plot", str(png)]) == 0
    saved = json.loads(out.read_text())
    assert 0.8 < saved["table"]["interpolate"]["0"]["stoi"] < 0.95
    assert saved["plot"] is None and not png.exists()
    printed = capsys.readouterr()
    assert "interpolate" in printed.out and str(out) in printed.out
    note = "no plot: matplotlib is not installed (pip install 'relay[bench]')"
    assert printed.err.strip() == note
