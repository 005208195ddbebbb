"""Live voice per radio preset and delay budget: what the planner picks, and what it sounds like.

For each Meshtastic preset and each budget (the default 400 ms and 1 s with a repeater on the
channel; a moderated room's 1 s, and 1.2 s, with none), the planner chooses a Codec2 mode
and packet size (``relay.plan``). Where live voice fits, ``relay.demo.voice.run_demo`` sends
real speech over the simulated channel exactly as ``relay demo`` does (Codec2, AES-CCM
packets, airtime, half duplex, the listener's jitter buffer and concealment) without loss
and at 10 % random loss; the report gives the measured mouth-to-ear delay (capture to
playout, Codec2's own ~18-26 ms algorithmic delay excluded) and STOI of what was heard
against the input (pystoi, 8 kHz, after removing the codec delay as bench/quality.py does).

Run: python -m bench.presets [--quick] [--json] [--out bench/presets.json]
Results are printed and saved (JSON) as one run ends; nothing is drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speech import speech_files
from quality import codec_delay, score

from relay.demo.voice import DemoSettings, run_demo
from relay.plan import Budget, plan
from relay.radio.profiles import preset, presets
from relay.voice.audio import read_audio

BUDGETS = (Budget(), Budget(1000), Budget(1000, 0), Budget(1200, 0))
LOSSES = (0.0, 0.1)
SEEDS = 2  # seeds per lossy condition


def measure(profile_name: str, budget: Budget, files: list[Path], seeds: int) -> dict:
    """The planner's choice for ``profile_name`` within ``budget``, and, if live, the demo's
    measured delay and STOI per loss (mean over ``files`` and ``seeds``)."""
    profile = preset(profile_name)
    result = plan(profile, **budget.plan_kwargs())
    row: dict = {"preset": profile_name, **budget.to_dict(), "fits_live": result.fits_live}
    best = result.best
    if best is None:
        return row
    row.update(
        mode=best.mode.name,
        frames_per_packet=best.frames_per_packet,
        planned_latency_ms=round(best.latency * 1000),
        planned_occupancy=round(best.relay_occupancy, 3),
    )
    latencies: list[float] = []
    stoi: dict[str, list[float]] = {}
    airtime = speech = 0.0
    with tempfile.TemporaryDirectory(prefix="relay-presets-") as tmp:
        for path in files:
            ref = read_audio(path)
            delay = None
            for loss in LOSSES:
                for seed in range(1 if loss == 0 else seeds):
                    settings = DemoSettings(
                        profile, best.mode, loss=loss, seed=seed + 1, fec=False, budget=budget
                    )
                    out = Path(tmp) / "heard.wav"
                    report = run_demo(settings, path, out)
                    heard = read_audio(out)
                    if delay is None:  # the lossless run comes first: it finds the codec delay
                        delay = codec_delay(ref, heard)
                    if loss == 0:
                        latencies.append(report["latency_ms"]["max"])
                        airtime += report["airtime_seconds"]
                        speech += report["speech_seconds"]
                    stoi.setdefault(f"{loss:.0%}", []).append(score(ref, heard, delay)[0])
    row["mouth_to_ear_ms"] = {
        "p50": round(float(np.median(latencies))),
        "max": round(float(np.max(latencies))),
    }
    # Airtime per second of speech over all files, end-of-over packets and the last, partly
    # filled packet of each over included (short overs pay more for them than the plan says).
    row["channel_occupancy"] = round(airtime / speech, 3)
    row["stoi"] = {k: round(float(np.mean(v)), 3) for k, v in stoi.items()}
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| preset | budget | live plan | planned ms | measured mouth-to-ear ms (max) "
        "| channel busy | STOI, no loss | STOI, 10 % loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = f"{r['max_delay_ms']} ms, {r['relay_hops']} relay hop(s)"
        if not r["fits_live"]:
            out.append(f"| {r['preset']} | {budget} | voice messages | | | | | |")
            continue
        out.append(
            f"| {r['preset']} | {budget} | {r['mode']} x {r['frames_per_packet']} frames "
            f"| {r['planned_latency_ms']} | {r['mouth_to_ear_ms']['max']} "
            f"| {r['channel_occupancy']:.0%} | {r['stoi']['0%']:.3f} | {r['stoi']['10%']:.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 speech files, 1 seed (about 1 min)")
    here = Path(__file__).resolve().parent
    ap.add_argument("--out", default=str(here / "presets.json"), help="results as JSON")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    files = speech_files()
    if args.quick:
        files = [f for f in files if f.stem in ("hts1", "cross")] or files[:2]
    seeds = 1 if args.quick else SEEDS
    t0 = time.perf_counter()
    rows = [measure(p.name, b, files, seeds) for p in presets() for b in BUDGETS]
    result = {
        "rows": rows,
        "files": [f.name for f in files],
        "seeds": seeds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
    else:
        print(table(rows))
        print(f"\n{len(files)} speech files, {seeds} seed(s); results: {args.out} "
              f"({result['seconds']} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
