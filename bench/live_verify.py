"""Live verification of overs: what the live keys cost and what they catch.

For the default configurations (Codec2 1600 at the planner's frames per packet on
SHORT_FAST and SHORT_TURBO), with and without 10 % random loss: a speaker talks 20 s over the
simulated channel (virtual time, relay.demo.live_attack) while a key holder injects a packet
in its name early in four intervals of the speaker's key chain (right after a key reveal).
Reported, means over seeds:

* bytes the live checks add per voice packet: trailers and revealed keys on voice packets,
  the anchor on hand raises, grants and beacons (they add no packets, so no radio framing);
* seconds from an injected frame's speech time to the listener's flag: a listener that also
  hears the speaker's packet (*raced*) and one that never does (*substituted*);
* injected frames played by a listener, and by one with --verified-only playout;
* the share of the speaker's packets each verified, and what --verified-only played;
* mouth-to-ear latency (median) with and without --verified-only.

Run: python -m bench.live_verify [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from relay.demo.live_attack import LiveAttackSettings, run_live_attack
from relay.radio.profiles import preset
from relay.voice.modes import mode_by_name

CONFIGS = [
    ("SHORT_FAST", 0.0, False, False),
    ("SHORT_FAST", 0.1, False, False),
    ("SHORT_FAST", 0.1, True, True),
    ("SHORT_TURBO", 0.0, False, False),
    ("SHORT_TURBO", 0.1, False, False),
    ("SHORT_TURBO", 0.1, True, True),
]


def measure(profile: str, loss: float, fec: bool, dtx: bool, seeds: list[int]) -> dict[str, Any]:
    def attack(seed: int, ahead: int) -> dict[str, Any]:
        return run_live_attack(
            LiveAttackSettings(
                preset(profile),
                mode_by_name("1600"),
                seconds=20.0,
                inject_after=(1, 3, 5, 7),
                ahead=ahead,
                loss=loss,
                seed=seed,
                fec=fec,
                dtx=dtx,
            )
        )

    runs = [attack(seed, 2) for seed in seeds]
    # The key holder takes a counter 30 packets ahead (unchecked until the speaker gets
    # there) for words placed now.
    far = [attack(seed, 30) for seed in seeds]
    far_flags = [t for r in far for li in r["listeners"].values() for t in li["seconds_to_flag"]]

    def mean(values: list[float]) -> float:
        return round(statistics.fmean(values), 3) if values else float("nan")

    def per(name: str, key: str) -> list[Any]:
        return [r["listeners"][name][key] for r in runs]

    raced = [t for ts in per("ben", "seconds_to_flag") for t in ts]
    unflagged_far = sum(1 for t in far_flags if t is None)
    every = [t for r in runs + far for li in r["listeners"].values() for t in li["seconds_to_flag"]]
    substituted = [t for ts in per("dan", "seconds_to_flag") for t in ts]
    received = sum(per("dan", "injections_received")) + sum(per("ben", "injections_received"))
    return {
        "preset": profile,
        "frames_per_packet": runs[0]["frames_per_packet"],
        "loss": loss,
        "fec_dtx": fec and dtx,
        "seeds": len(seeds),
        "added_bytes_per_voice_packet": mean([r["added_bytes_per_voice_packet"] for r in runs]),
        "injections_received": received,
        "unflagged": sum(1 for t in raced + substituted if t is None) + unflagged_far,
        "injections_received_far_ahead": len(far_flags),
        "flagged_within_2s": round(
            sum(1 for t in every if t is not None and t <= 2.0) / len(every), 3
        )
        if every
        else None,
        "flag_s_far_ahead_max": max((t for t in far_flags if t is not None), default=None),
        "flag_s_raced_max": max((t for t in raced if t is not None), default=None),
        "flag_s_substituted_mean": mean([t for t in substituted if t is not None]),
        "flag_s_substituted_max": max((t for t in substituted if t is not None), default=None),
        "injected_frames_played": sum(per("ben", "injected_frames_played")),
        "injected_frames_played_verified_only": sum(per("cat", "injected_frames_played")),
        "verified_share": mean(per("ben", "verified_share") + per("dan", "verified_share")),
        "verified_only_played_share": mean(per("cat", "played_share")),
        "latency_ms_p50": mean(per("ben", "latency_ms_p50")),
        "latency_ms_p50_verified_only": mean(per("cat", "latency_ms_p50")),
        "cpu_us_per_datagram": mean(per("ben", "cpu_us_per_datagram")),
    }


def adversary_row(quick: bool) -> dict[str, Any]:
    """The row bench/adversary.py shows for live injection (SHORT_FAST, 10 % loss)."""
    r = measure("SHORT_FAST", 0.1, False, False, [1] if quick else [1, 2, 3])
    received = r["injections_received"] + r["injections_received_far_ahead"]
    return {
        "attack": "words injected as the floor holder mid-over (SHORT_FAST, 10 % loss)",
        "tried": received,
        "rejected": received - r["unflagged"],
        "played": r["injected_frames_played_verified_only"],
        "memory_bytes": 0,
        "cpu_us_per_packet": r["cpu_us_per_datagram"],
        "notes": (
            f"tried: injected packets received by listeners; rejected: flagged live (max "
            f"{max(r['flag_s_raced_max'], r['flag_s_substituted_max']):.2f} s after their "
            f"speech time, {r['unflagged']} only at the seal: keys lost); played: "
            f"injected frames played with --verified-only ({r['injected_frames_played']} "
            "without); CPU: per datagram a listener took (all of them, decoding included); "
            "memory not measured here (pending checks bounded by MAX_PENDING, tested)"
        ),
        "extra": r,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed instead of three")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    seeds = [1] if args.quick else [1, 2, 3]
    rows = []
    for config in CONFIGS:
        rows.append(measure(*config, seeds))
        if not args.json:
            print(f"  done: {config}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rows": rows}))
        return 0
    print(
        "| preset (fpp) | loss | B/voice packet | flag s: raced max / substituted "
        "mean, max / counter far ahead max | flagged within 2 s | injected frames played: "
        "plain / verified-only | verified | verified-only plays | mouth-to-ear p50 ms: plain / "
        "verified-only |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['loss']:.0%}" + (" FEC+DTX" if r["fec_dtx"] else "")
        print(
            f"| {r['preset']} ({r['frames_per_packet']}) | {loss} | "
            f"{r['added_bytes_per_voice_packet']:.2f}"
            f" | {r['flag_s_raced_max']:.2f} / {r['flag_s_substituted_mean']:.2f}, "
            f"{r['flag_s_substituted_max']:.2f} / {r['flag_s_far_ahead_max']:.2f} | "
            f"{r['flagged_within_2s']:.0%} | "
            f"{r['injected_frames_played']} / "
            f"{r['injected_frames_played_verified_only']} | {r['verified_share']:.0%} | "
            f"{r['verified_only_played_share']:.0%} | {r['latency_ms_p50']:.0f} / "
            f"{r['latency_ms_p50_verified_only']:.0f} |"
        )
    received = sum(r["injections_received"] + r["injections_received_far_ahead"] for r in rows)
    unflagged = sum(r["unflagged"] for r in rows)
    print(f"\ninjected packets received by listeners: {received}, not flagged live: {unflagged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
