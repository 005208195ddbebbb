"""Mouth-to-ear latency in a moderated room on a simulated SHORT_FAST channel.

Runs the room demo (moderator, 3 speakers, 20 listeners, listen-before-talk, the attacks on)
at several loss rates and seeds; latency is per frame, from the moment a sound is spoken to
the moment a listener plays it, jitter buffer included (Codec2's ~18 ms algorithmic delay
excluded). Goal: median under 300 ms. Prints a Markdown table.
Run: python bench/room_latency.py [--preset SHORT_FAST] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics

from relay.demo.room import RoomDemoSettings, run_room_demo
from relay.radio.profiles import preset
from relay.voice.modes import mode_by_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="SHORT_FAST")
    ap.add_argument("--mode", default="1600")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--listeners", type=int, default=20)
    args = ap.parse_args()
    print(f"{args.preset}, Codec2 {args.mode}, 3 speakers, {args.listeners} listeners\n")
    print(
        "| loss | latency p50 ms | latency max ms | overs delivered (min) | "
        "overs fully verified (min) | wall s per run |"
    )
    print("|---|---|---|---|---|---|")
    for loss in (0.0, 0.05, 0.10):
        runs = [
            run_room_demo(
                RoomDemoSettings(
                    preset(args.preset),
                    mode_by_name(args.mode),
                    speakers=3,
                    listeners=args.listeners,
                    loss=loss,
                    seed=seed,
                )
            )
            for seed in range(1, args.seeds + 1)
        ]
        p50 = statistics.median(r["latency_ms"]["p50"] for r in runs)
        worst = max(r["latency_ms"]["max"] for r in runs)
        delivered = min(r["overs_delivered"] for r in runs)
        verified = min(r["overs_verified"] for r in runs)
        overs = runs[0]["overs"]
        wall = statistics.mean(r["wall_seconds"] for r in runs)
        print(
            f"| {loss:.0%} | {p50:.0f} | {worst:.0f} | {delivered}/{overs} | "
            f"{verified}/{overs} | {wall:.1f} |"
        )


if __name__ == "__main__":
    main()
