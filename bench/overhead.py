"""Overhead per packet and airtime per second of speech, relay beside its peers, every preset.

Every system here carries the same Codec2 1600 frames in packets of the same size on the same
radio framing (Meshtastic presets: 22 B of firmware framing); only the per-packet protocol
overhead differs. Peers' overheads are from ../shared/DESIGN.md; relay's is measured by
sealing a second of real room voice packets with their live checks (the 2-byte MAC on each,
the 8-byte key one packet an interval reveals) and averaging; airtime counts each packet at
its own size. Prints a Markdown table (the one in the README).
Run: python bench/overhead.py [--frames-per-packet 5] [--mode 1600]
"""

from __future__ import annotations

import argparse
import os

from relay.core import RoomKeys, Sender, live
from relay.radio.profiles import presets
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name


def measured_sizes(mode, fpp: int, packets: int = 60) -> list[int]:
    """Sizes of ``packets`` room voice packets of ``fpp`` frames, live checks included."""
    ident = os.urandom(32)
    sender = Sender(RoomKeys(bytes(32)), ident, MemoryCounters())
    per = live.per_interval_for(fpp * mode.frame_seconds)
    chain = live.Chain(ident, sender.session, per)
    base = live.Base(sender.next_counter)
    sizes = []
    for n in range(packets):
        frames = [bytes(mode.bytes_per_frame)] * fpp
        counter = sender.next_counter
        fields = live.voice_fields("00" * 8, ident, counter, mode.wire_index, n * fpp, frames)
        trailer = chain.trailer(base, counter, fields)
        sizes.append(len(sender.voice(mode, n * fpp, frames, 0.0, trailer=trailer)))
    return sizes


PEERS = [  # name, overhead bytes, what it buys
    ("codec2_talkie / esp32_loradv", 28, "ChaCha20-Poly1305, no replay protection"),
    ("Meshtastic", 20, "AES-CTR, no integrity"),
    ("Reticulum / LXST", 67, "token + header, 67 B or more"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="1600")
    ap.add_argument("--frames-per-packet", type=int, default=5)
    args = ap.parse_args()
    mode = mode_by_name(args.mode)
    fpp = args.frames_per_packet
    codec = fpp * mode.bytes_per_frame
    sizes = measured_sizes(mode, fpp)
    ours = round(sum(sizes) / len(sizes) - codec, 1)
    what = "AES-CCM 64-bit tag, replay window, durable nonces, live speaker check"
    systems = [("relay", ours, what), *PEERS]
    pps = 1.0 / (fpp * mode.frame_seconds)
    print(f"Codec2 {mode.name}, {fpp} frames ({codec} B, {fpp * mode.frame_seconds * 1000:.0f} ms)")
    print("per packet; airtime in seconds per second of speech.\n")
    print("| system | overhead B | protection |")
    print("|---|---|---|")
    for name, over, what in systems:
        print(f"| {name} | {over} | {what} |")
    print()
    names = " | ".join(f"{n} ({o} B)" for n, o, _ in systems)
    print(f"| preset | {names} | relay vs codec2_talkie | relay vs LXST |")
    print("|---|" + "---|" * (len(systems) + 2))
    for profile in presets():
        air = []
        for name, over, _ in systems:
            sized = sizes if name == "relay" else [codec + over]
            mean = sum(profile.airtime(n) for n in sized) / len(sized)
            air.append(mean * pps if max(sized) <= profile.mtu else float("nan"))
        cells = " | ".join(f"{a:.3f}" for a in air)
        vs_talkie, vs_lxst = 1 - air[0] / air[1], 1 - air[0] / air[3]
        print(f"| {profile.name} | {cells} | -{vs_talkie:.0%} | -{vs_lxst:.0%} |")


if __name__ == "__main__":
    main()
