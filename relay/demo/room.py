"""The room demo: a moderated room in one process, over one simulated LoRa channel.

A moderator, N speakers and M listeners each run their own node on their own simulated
radio. Every speaker raises a hand and speaks bundled speech when granted the floor. Unless
told otherwise, one speaker also misbehaves the way a member holding the room key could:
it talks without the floor and forges a grant. At the end the moderator removes a listener
(rotating the room key) and one more over is spoken, which the removed listener must not be
able to read.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relay.core import roommsg as msg
from relay.core.identity import Identity
from relay.core.keytree import KeyTree, ratchet_step
from relay.core.room import REKEY_COPIES, REKEY_DELAYS, Room
from relay.core.wire import FEC_PAIRS, ControlKind
from relay.demo.voice import bundled_sample, choose_frames_per_packet
from relay.errors import UsageError
from relay.links.sim.channel import Ether
from relay.plan import Budget
from relay.radio.profiles import RadioProfile
from relay.runtime.clock import run
from relay.runtime.room import RoomNode
from relay.store.counters import CounterStore
from relay.voice.audio import read_audio
from relay.voice.modes import CodecMode
from relay.voice.over import EncodedOver, encode_over

SAMPLES = ("hts1.wav", "hts2.wav", "morig.wav", "forig.wav", "cross.wav")
MAX_SPEAKERS = 16
MAX_LISTENERS = 200


@dataclass(frozen=True)
class RoomDemoSettings:
    profile: RadioProfile
    mode: CodecMode
    speakers: int = 3
    listeners: int = 5
    loss: float = 0.0
    burst: float | None = None
    seed: int = 1
    attacks: bool = True
    realtime: bool = False
    fec: bool = False  # 700C copies of the previous packet's frames (see relay.voice.over)
    dtx: bool = False  # skip silence (the bundled samples have little of it)
    # The room's delay budget: frames per packet follow it.
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        if not 1 <= self.speakers <= MAX_SPEAKERS:
            raise UsageError(f"--speakers must be 1..{MAX_SPEAKERS}, got {self.speakers}")
        if not 1 <= self.listeners <= MAX_LISTENERS:
            raise UsageError(f"--listeners must be 1..{MAX_LISTENERS}, got {self.listeners}")
        if not 0.0 <= self.loss < 1.0:
            raise UsageError(
                f"--loss must be a fraction from 0 up to (not including) 1, got {self.loss}"
            )
        if self.attacks and self.speakers < 2:
            raise UsageError("the attacks need a second speaker: use --speakers 2 or --no-attacks")
        if self.fec and self.mode.name not in FEC_PAIRS:
            raise UsageError(f"--fec: codec {self.mode.name} has no FEC pairing")


def run_room_demo(settings: RoomDemoSettings) -> dict[str, Any]:
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relay-room-") as state:
        result = run(_scenario(settings, Path(state)), virtual=not settings.realtime)
    result["wall_seconds"] = round(time.monotonic() - wall, 3)
    return result


async def _scenario(s: RoomDemoSettings, state: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    epoch0 = time.time() - loop.time()

    def clock() -> float:
        return epoch0 + loop.time()

    fpp, fits_live = choose_frames_per_packet(s.profile, s.mode, budget=s.budget)
    ether = Ether(s.profile, loss=s.loss, burst=s.burst, seed=s.seed, lbt=True)
    counters = CounterStore(state / "counters.db")
    room_id, key = os.urandom(8), os.urandom(32)
    mod_id = Identity.generate()
    speaker_ids = [Identity.generate() for _ in range(s.speakers)]
    listener_ids = [Identity.generate() for _ in range(s.listeners)]

    step = ratchet_step(clock())
    tree = KeyTree(step)

    def member(ident: Identity, roster=(), holder: bool = False) -> RoomNode:
        room = Room(
            room_id,
            key,
            0,
            [mod_id.public],
            ident,
            counters,
            roster=roster,
            mtu=s.profile.mtu,
            step=step,
            tree=tree if holder else None,
            path=None if holder else tree.add(ident.identity),  # as its invite --for carried
        )
        return RoomNode(room, ether.attach(), clock, seed=s.seed)

    # Everyone was invited `--for` them: the moderator knows their keys and each holds its
    # key-tree path (rekeys reach them in about log2(N) wraps).
    moderator = member(mod_id, [i.public for i in (*speaker_ids, *listener_ids)], holder=True)
    speakers = [member(i) for i in speaker_ids]
    listeners = [member(i) for i in listener_ids]
    nodes = [moderator, *speakers, *listeners]
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    stop = asyncio.Event()
    moderating = asyncio.create_task(moderator.moderate(auto_grant=30, stop=stop))

    speech = [
        encode_over(
            read_audio(bundled_sample(SAMPLES[i % len(SAMPLES)])), s.mode, fec=s.fec, dtx=s.dtx
        )
        for i in range(s.speakers)
    ]
    talks: list[tuple[bytes, float, int]] = []  # (speaker, capture start, frames DTX skipped)

    async def one_over(node: RoomNode, over: EncodedOver, start_after: float) -> None:
        await asyncio.sleep(start_after)
        if not await node.wait_for_floor(timeout=600.0):
            return
        result = await node.speak_over(over, fpp)
        talks.append((node.room.me.identity, result.capture_start, over.total - len(over.frames)))
        await node.link.drain()

    # Everybody raises a hand at once-ish; the moderator grants in queue order.
    await asyncio.gather(*(one_over(sp, speech[i], 0.3 * i) for i, sp in enumerate(speakers)))
    if s.attacks:
        await _attack(speakers[-1], speakers[0], mod_id, clock, s.mode)
    await asyncio.sleep(2.0)

    # Remove a listener: the key rotates; one more over follows that it must not read.
    removed = listeners[0]
    before = removed.log.voice_packets
    await moderator.remove(removed.room.me.identity)
    await moderator.link.drain()
    await asyncio.sleep(1.0)
    await one_over(speakers[0], speech[0].head(50), 0.0)
    # Let the later copies of the rekey go out (the moderator's loop sends them when due).
    await asyncio.sleep(max(3.0 + moderator.playout.max_delay, REKEY_DELAYS[REKEY_COPIES - 1]))
    await moderator.link.drain()
    removed_decrypts = removed.log.voice_packets - before

    stop.set()
    await moderating
    for n in nodes:
        await n.link.close()
    await asyncio.gather(*tasks)
    counters.close()
    elapsed = loop.time()
    return _report(
        s, fpp, fits_live, ether, moderator, speakers, listeners, talks, removed_decrypts, elapsed
    )


async def _attack(mallory: RoomNode, victim: RoomNode, mod_id: Identity, clock, mode) -> None:
    """What a member holding the room key might try: it must all be dropped."""
    room = mallory.room
    # 1. Talk without the floor.
    await mallory.send(room.sender.voice(mode, 0, [bytes(mode.bytes_per_frame)] * 4, clock()))
    # 2. Grant herself the floor, signing with her own key.
    fake = msg.ModMessage(msg.ModAction.GRANT, room.me.identity, 60, int(clock()))
    await mallory.send(room.sender.control_signed(ControlKind.MOD, fake.pack(), room.me, clock()))
    await mallory.link.drain()


def _report(
    s, fpp, fits_live, ether, moderator, speakers, listeners, talks, removed_decrypts, elapsed
) -> dict[str, Any]:
    heard = listeners[1:]  # the removed listener is judged separately
    overs = len(talks)
    delivered = [sum(1 for o in li.playout.overs if o.play_times) for li in heard]
    verified = [sum(1 for o in li.log.overs if o.verdict == "verified") for li in heard]
    latencies: list[float] = []
    starts = {}
    for speaker, start, _skipped in talks:
        starts.setdefault(speaker, []).append(start)
    for li in heard:
        seen: dict[bytes, int] = {}
        for over in li.playout.overs:
            k = seen.get(over.sender, 0)
            seen[over.sender] = k + 1
            if k >= len(starts.get(over.sender, [])):
                continue
            start = starts[over.sender][k]
            frame_s = over.mode.frame_seconds
            latencies += [(t - (start + p * frame_s)) * 1000 for p, t in over.play_times.items()]

    def drops(reason: str) -> int:
        return sum(n.log.dropped.get(reason, 0) for n in [moderator, *listeners])

    return {
        "preset": s.profile.name,
        "mode": s.mode.name,
        "frames_per_packet": fpp,
        "speakers": s.speakers,
        "listeners": s.listeners,
        "overs": overs,
        "overs_delivered": min(delivered, default=0),
        "overs_verified": min(verified, default=0),
        "floor_violations_dropped": drops("floor_violation"),
        "forged_moderation_rejected": drops("forged_moderation") + drops("forged_signature"),
        "removed_member_decrypts": removed_decrypts,
        "key_rotations_received": sum(1 for li in heard if li.log.rotations),
        # Each removal's airtime on this radio: the signed removal and every rekey copy.
        "rekey_airtime_seconds": [
            round(t, 3) for _, t in sorted(moderator.log.rekey_airtime.items())
        ],
        "beacons": moderator.log.beacons,
        "beacon_airtime_seconds": round(moderator.log.beacon_airtime, 3),
        "airtime_seconds": round(ether.stats.airtime_s, 3),
        "channel_occupancy": round(ether.occupancy(elapsed), 4),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1) if latencies else 0.0,
            "max": round(max(latencies, default=0.0), 1),
        },
        "collisions": ether.stats.collisions,
        "loss": s.loss,
        "seed": s.seed,
        "attacks": s.attacks,
        "fec": s.fec,
        "dtx": s.dtx,
        "frames_skipped": sum(skipped for _, _, skipped in talks),
        "frames_from_fec": sum(o.frames_redundant for li in heard for o in li.playout.overs),
        "fits_live": fits_live,
        **s.budget.to_dict(),
        "virtual_seconds": round(elapsed, 2),
    }
