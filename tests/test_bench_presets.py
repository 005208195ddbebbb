"""bench/presets.py measures on the product's path: one preset and budget, for real."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench import presets  # noqa: E402
from relay.plan import Budget  # noqa: E402


def test_medium_fast_with_a_one_second_budget_measured() -> None:
    pytest.importorskip("pystoi")
    sample = ROOT / "relay" / "samples" / "hts1.wav"
    row = presets.measure("MEDIUM_FAST", Budget(1000, 0), [sample], seeds=1)
    assert row["fits_live"] and row["mode"] in ("1600", "1400", "1300", "1200", "700C")
    assert row["mouth_to_ear_ms"]["max"] < 1000
    assert 0.8 < row["stoi"]["0%"] < 0.95
    assert row["stoi"]["10%"] < row["stoi"]["0%"]
    assert presets.measure("MEDIUM_FAST", Budget(), [sample], seeds=1) == {
        "preset": "MEDIUM_FAST", "max_delay_ms": 400, "relay_hops": 1, "fits_live": False,
    }  # fmt: skip
    assert "voice messages" in presets.table([{**row, "fits_live": False}])
