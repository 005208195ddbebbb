"""Voice messages: goodput per second of airtime beside the ideal, by message length and loss.

One sender and one receiver, members of a room, on a simulated LONG_FAST channel (the
Meshtastic default, where live voice does not fit) in virtual time; the planner picks the
codec mode (700C there). Airtime counts every transmission on the channel for the message:
the sender's introduction, offer, pieces, retransmissions and probes, and the receiver's
introduction and acks. Two references:

* ideal: the same message at 0 % loss (codec bytes / airtime), the issue's yardstick;
* floor: codec bytes / the airtime of just the pieces that carry them, sent once (what no
  protocol with an offer, a signature and acknowledgements can beat).

Prints a Markdown table (the one in the README).
Run: python -m bench.clips [--quick] [--seeds N] [--preset LONG_FAST]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relay.clip.message import PIECE_OVERHEAD, choose_mode, max_piece_size
from relay.core.identity import Identity
from relay.core.room import Room
from relay.links.sim.channel import Ether
from relay.radio.profiles import preset
from relay.runtime.clip import ClipNode
from relay.runtime.clock import run
from relay.runtime.room import RoomNode
from relay.store.clips import ClipStore
from relay.store.counters import CounterStore

LENGTHS = (5.0, 30.0, 120.0)
LOSSES = (0.0, 0.1, 0.3)


@dataclass
class Trial:
    codec_bytes: int
    airtime: float
    elapsed: float
    delivered: bool
    packets: int


async def one(preset_name: str, seconds: float, loss: float, seed: int, state: Path) -> Trial:
    ether = Ether(preset(preset_name), loss=loss, seed=seed)
    mode = choose_mode(ether.profile)
    room_id, key = os.urandom(8), os.urandom(32)
    mod, a, b = (Identity.generate() for _ in range(3))
    loop = asyncio.get_running_loop()

    def clock() -> float:
        return 1.75e9 + loop.time()

    nodes = []
    for name, ident in (("a", a), ("b", b)):
        (state / name).mkdir(parents=True)
        counters = CounterStore(state / name / "counters.db")
        store = ClipStore(state / name / "clips.db")
        link = ether.attach(name)
        room = Room(room_id, key, 0, [mod.public], ident, counters, mtu=link.mtu)
        clips = ClipNode(room, link, store, clock=clock, seed=seed)
        node = RoomNode(room, link, clock, on_event=clips.on_event)
        task = asyncio.create_task(node.run())
        clips.start()
        nodes.append((clips, node, store, counters, task))
    sender, receiver = nodes[0][0], nodes[1][0]
    n = round(seconds / mode.frame_seconds)
    frames = [os.urandom(mode.bytes_per_frame) for _ in range(n)]
    clip, _ = sender.prepare(frames, mode, identity=a)
    result = await sender.deliver(clip, timeout=24 * 3600)
    await asyncio.sleep(receiver.ack_wait)  # the receiver's last ack leaves the air
    airtime = sender.stats.airtime_s + receiver.stats.airtime_s
    packets = sender.stats.packets_sent + receiver.stats.packets_sent
    for clips, node, store, counters, task in nodes:
        await clips.close()
        await node.link.close()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
        counters.close()
    return Trial(clip.offer.total, airtime, result.elapsed_s, result.delivered, packets)


def floor_airtime(preset_name: str, codec_bytes: int) -> float:
    profile = preset(preset_name)
    size = max_piece_size(profile.mtu)
    full, rest = divmod(codec_bytes, size)
    t = full * profile.airtime(PIECE_OVERHEAD + size)
    return t + (profile.airtime(PIECE_OVERHEAD + rest) if rest else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds instead of 5")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--preset", default="LONG_FAST")
    args = ap.parse_args()
    seeds = args.seeds or (2 if args.quick else 5)
    mode = choose_mode(preset(args.preset))
    print(
        f"{args.preset}, Codec2 {mode.name} (the planner's choice), one receiver, "
        f"{seeds} seeds per row (mean); goodput in codec bit/s of airtime\n"
    )
    print(
        "| message | loss | delivered | airtime s | packets | goodput b/s | ideal b/s "
        "| vs ideal | floor b/s | vs floor | delivery time s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        k = 0
        for seconds in LENGTHS:
            ideal = None
            for loss in LOSSES:
                trials = []
                for seed in range(seeds):
                    k += 1
                    trials.append(run(one(args.preset, seconds, loss, seed, base / str(k))))
                codec = trials[0].codec_bytes
                air = statistics.mean(t.airtime for t in trials)
                goodput = codec * 8 / air
                if loss == 0.0:
                    ideal = goodput
                floor = codec * 8 / floor_airtime(args.preset, codec)
                delivered = sum(t.delivered for t in trials)
                print(
                    f"| {seconds:g} s ({codec} B) | {loss:.0%} | {delivered}/{seeds} "
                    f"| {air:.1f} | {statistics.mean(t.packets for t in trials):.1f} "
                    f"| {goodput:.0f} | {ideal:.0f} | {goodput / ideal:.0%} "
                    f"| {floor:.0f} | {goodput / floor:.0%} "
                    f"| {statistics.mean(t.elapsed for t in trials):.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
