"""How long `relay wipe` takes, against its goal of one second, for homes of growing size.

A home is made the way relay makes it (a locked identity, rooms with members, counters,
replay marks) plus a voice-message store of the given size, in a temporary directory on the
same filesystem as the system's temp dir; the wipe (overwrite in place, fsync, remove) is
timed in this process, so Python's start-up (about 0.7 s for the `relay` command) is apart.
Prints a Markdown table. Run: python -m bench.wipe [--sizes 1,10,50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from relay.core.identity import Identity
from relay.store.counters import CounterStore
from relay.store.home import Home
from relay.store.rooms import RoomStore

GOAL_S = 1.0
PASS = "bench"


def make_home(path: Path, clip_mb: int) -> Home:
    home = Home(path, passphrase=lambda: PASS)
    me = home.init_identity(passphrase=PASS)
    with RoomStore(home) as rooms:
        for i in range(5):
            info = rooms.create(f"room {i}", "SHORT_FAST", "1600", me)
            for _ in range(20):
                rooms.enroll(info.room_id, Identity.generate().public)
    counters = CounterStore(home.counters_db)
    for i in range(5):
        counters.reserve(f"{i:016x}:me", 256, 1 << 24)
    counters.close()
    with open(path / "clips.db", "wb") as f:  # stands for a store of voice messages
        for _ in range(clip_mb):
            f.write(os.urandom(1 << 20))
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,50", help="voice-message store sizes, MB")
    args = ap.parse_args()
    print("| home size | files | wipe s | of the 1 s goal |")
    print("|---|---|---|---|")
    for mb in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            home = make_home(Path(tmp) / "home", mb)
            size = sum(p.stat().st_size for p in home.path.iterdir()) / 1e6
            start = time.perf_counter()
            done = home.wipe()
            took = time.perf_counter() - start
            print(f"| {size:.1f} MB | {done.files} | {took:.3f} | {took / GOAL_S:.0%} |")


if __name__ == "__main__":
    main()
