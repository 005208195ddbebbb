"""Removal at scale: airtime of one key rotation, CPU and memory per listener, 10 to 1000.

A moderator holding the room's key tree and N silent listeners, each a sans-I/O ``Room``
holding the path keys its invite carried, at one ratchet step. One listener is removed: the
signed removal and REKEY_COPIES copies of the rekey go to everyone (the later copies when
:meth:`Room.due` releases them); then a speaker's over. Airtime is that of every packet of the
removal on the preset (Semtech formula, relay.radio). Every remaining listener must rotate
and verify the over, and the removed one must open nothing (checked, not assumed).

* *before*: the same room with no tree (the key sealed to each member, as before the tree),
  measured in the same run where it fits a rekey's 255 fragments;
* *keyed at 10 % loss*: listeners holding the new key after all copies, when each listener
  loses each packet of the removal independently with probability 0.1 (having heard the
  moderator's beacons before, as in a running room: they know its sender session);
* CPU per listener: process time of handling the removal's packets, divided by N; the
  moderator's time to build the rekey beside it;
* memory per listener: tracemalloc growth per listener ``Room`` (path keys, windows,
  ciphers), and of the moderator's tree.

The beacon's size is shown too: nothing a moderator sends grows with silent listeners.
Run: python -m bench.room_scale [--quick] [--json] [--preset SHORT_FAST]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc

from relay.core import roommsg as msg
from relay.core.crypto import RoomKeys
from relay.core.identity import Identity
from relay.core.keytree import KeyTree, ratchet_step, step_start
from relay.core.room import REKEY_COPIES, REKEY_DELAYS, KeyRotated, OverEnded, Room, Voice
from relay.core.session import Receiver
from relay.core.signing import split_signature
from relay.radio.profiles import preset
from relay.store.counters import MemoryCounters
from relay.voice.modes import mode_by_name

SIZES = (10, 100, 1000)
MODE = mode_by_name("1600")
ROOM_ID = bytes(range(8))
KEY = bytes(range(32))
T0 = step_start(ratchet_step(1.78e9)) + 60.0


def _removal_packets(mod: Room, member: bytes, now: float) -> list[bytes]:
    packets = mod.remove(member, now)
    for delay in REKEY_DELAYS[1:REKEY_COPIES]:
        packets += mod.due(now + delay)
    return packets


def _room(ident, mod_id, step, **kw) -> Room:
    return Room(ROOM_ID, KEY, 0, [mod_id.public], ident, MemoryCounters(), step=step, **kw)


def one(n: int, profile, *, loss: float, seed: int) -> dict:
    step = ratchet_step(T0)
    mod_id = Identity.generate()
    ids = [Identity.generate() for _ in range(n + 1)]  # one speaker + n listeners
    tree = KeyTree(step)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    mod = _room(mod_id, mod_id, step, roster=[i.public for i in ids], tree=tree, mtu=profile.mtu)
    for ident in ids:
        mod.enroll(ident.public)
    tree_bytes = tracemalloc.get_traced_memory()[0] - base
    base = tracemalloc.get_traced_memory()[0]
    rooms = [_room(i, mod_id, step, path=tree.path_of(i.identity), mtu=profile.mtu) for i in ids]
    per_listener = (tracemalloc.get_traced_memory()[0] - base) / len(rooms)
    tracemalloc.stop()
    speaker, listeners = rooms[0], rooms[1:]
    gone = listeners[0]
    beacon = len(mod.beacon(T0))

    cpu = time.process_time()
    packets = _removal_packets(mod, gone.me.identity, T0)
    mod_cpu = time.process_time() - cpu
    airtime = sum(profile.airtime(len(p)) for p in packets)
    wraps = _wraps(packets, mod_id, mod.sender.session)

    cpu = time.process_time()
    rotated = 0
    for room in [speaker, *listeners]:
        got = [e for p in packets for e in room.receive(p, T0 + 1) if isinstance(e, KeyRotated)]
        rotated += bool(got) and room is not gone
    cpu_per = (time.process_time() - cpu) / (n + 1)
    # The next over: every remaining listener verifies it, the removed one opens nothing.
    now = T0 + 60
    hand = speaker.raise_hand(now)
    mod.receive(hand, now)
    grant = mod.grant(speaker.me.identity, 60, now)
    speaker.receive(grant, now)
    over = [speaker.voice(MODE, i * 4, [bytes([i + 1]) * 8] * 4, now) for i in range(3)]
    over += speaker.end_over(now + 1)
    verified = removed_opened = 0
    for room in listeners:
        events = [e for p in (hand, grant, *over) for e in room.receive(p, now + 1)]
        ok = [e for e in events if isinstance(e, OverEnded) and e.verdict == "verified"]
        if room is gone:
            removed_opened = sum(isinstance(e, Voice | OverEnded) for e in events)
        else:
            verified += bool(ok)

    # 10 % independent loss per listener and packet: who holds the key after all copies?
    keyed = _lossy(n, profile, loss, seed)
    before = _before(n, profile)
    return {
        "listeners": n,
        "wraps": wraps,
        "packets": len(packets),
        "airtime_s": round(airtime, 3),
        "before_airtime_s": None if before is None else round(before, 3),
        "keyed_at_loss": keyed,
        "moderator_cpu_ms": round(mod_cpu * 1000, 2),
        "cpu_ms_per_listener": round(cpu_per * 1000, 3),
        "memory_kib_per_listener": round(per_listener / 1024, 1),
        "moderator_kib": round(tree_bytes / 1024, 1),
        "beacon_bytes": beacon,
        "verified": verified,
        "removed_opened": removed_opened,
        "rotated": rotated,
    }


def _wraps(packets: list[bytes], mod_id: Identity, session: bytes) -> int:
    """Key-tree wraps in one copy of the rekey (opened with the old key, as members do)."""
    receiver = Receiver(RoomKeys(KEY), window=4096)
    receiver.add_sender(mod_id.identity, session)
    total = 0
    for packet in packets[1 : 1 + (len(packets) - 1) // REKEY_COPIES]:
        body, _ = split_signature(receiver.receive(packet, T0).payload)
        total += len(msg.RekeyFragment.parse(body).wraps)
    return total


def _lossy(n: int, profile, loss: float, seed: int) -> int:
    rng = random.Random(seed)
    step = ratchet_step(T0)
    mod_id = Identity.generate()
    ids = [Identity.generate() for _ in range(n)]
    tree = KeyTree(step)
    mod = _room(mod_id, mod_id, step, tree=tree, mtu=profile.mtu)
    for ident in ids:
        mod.enroll(ident.public)
    rooms = [_room(i, mod_id, step, path=tree.path_of(i.identity)) for i in ids]
    beacon = mod.beacon(T0 - 5)  # the room has been running: they heard its beacons
    for room in rooms:
        room.receive(beacon, T0 - 5)
    packets = _removal_packets(mod, ids[0].identity, T0)
    for room in rooms[1:]:
        for p in packets:
            if rng.random() >= loss:
                room.receive(p, T0 + 1)
    return sum(r.epoch == 1 for r in rooms[1:])


def _before(n: int, profile) -> float | None:
    """The rotation without a tree: the key sealed to each member (three copies)."""
    mod_id = Identity.generate()
    roster = [Identity.generate().public for _ in range(n + 1)]
    mod = _room(mod_id, mod_id, ratchet_step(T0), roster=roster, mtu=profile.mtu)
    try:
        packets = _removal_packets(mod, roster[0].identity, T0)
    except Exception:  # more fragments than a rekey can number: it cannot be done at all
        return None
    return sum(profile.airtime(len(p)) for p in packets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="SHORT_FAST")
    ap.add_argument("--quick", action="store_true", help="10 and 100 listeners only")
    ap.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ap.add_argument("--loss", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    profile = preset(args.preset)
    sizes = SIZES[:2] if args.quick else SIZES
    rows = [one(n, profile, loss=args.loss, seed=args.seed) for n in sizes]
    if args.json:
        print(json.dumps({"preset": profile.name, "copies": REKEY_COPIES, "rows": rows}))
        return
    print(f"{profile.name}, one removal, {REKEY_COPIES} copies of the rekey\n")
    print(
        "| listeners | wraps | packets | airtime s | before (no tree) s | "
        f"keyed at {args.loss:.0%} loss | moderator CPU ms | CPU ms / listener | "
        "memory KiB / listener | moderator KiB | beacon B | verified | removed opened |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        before = "—" if r["before_airtime_s"] is None else f"{r['before_airtime_s']:.1f}"
        print(
            f"| {r['listeners']} | {r['wraps']} | {r['packets']} | {r['airtime_s']:.2f} | "
            f"{before} | {r['keyed_at_loss']}/{r['listeners'] - 1} | "
            f"{r['moderator_cpu_ms']:.1f} | {r['cpu_ms_per_listener']:.2f} | "
            f"{r['memory_kib_per_listener']:.1f} | {r['moderator_kib']:.0f} | "
            f"{r['beacon_bytes']} | {r['verified']}/{r['listeners'] - 1} | {r['removed_opened']} |"
        )


if __name__ == "__main__":
    main()
