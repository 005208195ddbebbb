"""bench/adversary stays runnable and honest: its quick rows run, and no forged frame plays.

(The flood rows take seconds to minutes: their bounds are tested in test_insider_flood.py
and test_mqtt_flood.py; here only the rows that take milliseconds.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed

from bench.adversary import ATTACKS, forged_max_counter, replayed_recording


def test_attacks_are_a_list_of_functions_and_no_forged_frame_plays() -> None:
    assert forged_max_counter in ATTACKS and replayed_recording in ATTACKS
    for attack in (forged_max_counter, replayed_recording):
        row = attack(True)
        assert row.tried > 0 and row.played == 0, row
        assert row.rejected <= row.tried
