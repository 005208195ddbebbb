"""No (key, nonce) pair is ever used twice: restored backups, copies, snapshots, two devices.

Each scenario runs members on real home directories (a real identity file and the real
SQLite counter store), copies or restores them the way people do (``cp -a``, ``rm -rf`` and
copy back, a copy after ``kill -9``, a snapshot taken while the sender runs and rolled back,
one home running twice at once), records EVERY (key, nonce) pair every AEAD used, and checks
that none repeats -- while the counters alone *do* repeat (so without per-start sessions the
same nonce would have been used twice under one key).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nonce_helpers as nh
import pytest

from relay.core.identity import Identity
from relay.core.room import Dropped, OverEnded, Room, Voice
from relay.store.counters import CounterStore, MemoryCounters
from relay.store.home import Home
from relay.store.replay import ReplayStore

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "nonce_helpers.py"
MODE_FRAMES = [bytes([7]) * 8] * 4


class Ledger:
    """Every (key, nonce) pair used, with how often."""

    def __init__(self) -> None:
        self.uses: Counter[tuple[str, str]] = Counter()

    def add(self, key: str, nonce: bytes | str) -> None:
        self.uses[(key, nonce if isinstance(nonce, str) else nonce.hex())] += 1

    @property
    def reused(self) -> int:
        return sum(n - 1 for n in self.uses.values() if n > 1)

    @property
    def counters(self) -> Counter[int]:
        """How often each send counter was handed out (13-byte nonces: the sender keys)."""
        return Counter(int(n[-6:], 16) for _k, n in self.uses if len(n) == 26)


@pytest.fixture
def ledger(monkeypatch):
    import relay.core.crypto as crypto

    book = Ledger()
    monkeypatch.setattr(nh.Recording, "sink", staticmethod(book.add))
    monkeypatch.setattr(crypto, "AESCCM", nh.Recording)
    return book


def _home(tmp_path: Path, name: str = "home") -> Path:
    home = tmp_path / name
    Home(home).init_identity()
    return home


def _run(home: Path, count: int, ledger: Ledger) -> None:
    """One start of the member on ``home`` (in this process), sealing ``count`` packets."""
    room, counters = nh.member(home)
    try:
        nh.emit(room, count)
    finally:
        counters.close()


def _cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def _child(home: Path, count: int, pause: int = -1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(home), str(count), str(pause)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read(proc: subprocess.Popen[str], ledger: Ledger, until: str | int) -> None:
    """Record the child's lines until it prints ``until`` or has used ``until`` nonces."""
    assert proc.stdout is not None
    for used, raw in enumerate(proc.stdout, 1):
        line = raw.strip()
        if line == until or line == "DONE":
            return
        key, nonce = line.split()
        ledger.add(key, nonce)
        if used == until:
            return
    raise AssertionError("the sending child ended early")


def _finish(proc: subprocess.Popen[str], *, kill: bool = False) -> None:
    if kill:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _check(ledger: Ledger) -> None:
    assert ledger.reused == 0, f"{ledger.reused} (key, nonce) pairs used twice"
    repeated = sum(1 for n in ledger.counters.values() if n > 1)
    assert repeated > 0, "the scenario never handed a counter out twice: it proves nothing"


def test_cp_a_backup_over_the_home_reuses_no_nonce(tmp_path, ledger):
    home, backup = _home(tmp_path), tmp_path / "backup"
    _run(home, 100, ledger)
    _cp_a(home, backup)
    _run(home, 300, ledger)  # the device carries on
    subprocess.run(["cp", "-a", f"{backup}/.", f"{home}/"], check=True)  # restored in place
    _run(home, 300, ledger)
    _check(ledger)


def test_rm_rf_and_copy_back_reuses_no_nonce(tmp_path, ledger):
    home, backup = _home(tmp_path), tmp_path / "backup"
    _run(home, 100, ledger)
    _cp_a(home, backup)
    _run(home, 300, ledger)
    shutil.rmtree(home)
    _cp_a(backup, home)  # ext4 may hand the freed inode back: nothing in the file can tell
    _run(home, 300, ledger)
    _run(home, 50, ledger)  # and once more from the same, restored file
    _check(ledger)


def test_a_copy_after_kill_9_and_the_original_both_reuse_no_nonce(tmp_path, ledger):
    home, copy = _home(tmp_path), tmp_path / "copy"
    proc = _child(home, 100_000)
    _read(proc, ledger, 150)
    _finish(proc, kill=True)  # mid-block, nothing closed
    _cp_a(home, copy)  # the state directory, WAL and all, carried to another device
    for where in (home, copy):
        proc = _child(where, 200)
        _read(proc, ledger, "DONE")
        _finish(proc)
    _check(ledger)


def test_a_snapshot_rolled_back_reuses_no_nonce(tmp_path, ledger):
    """A filesystem (or VM disk) snapshot taken while the sender runs, rolled back later."""
    home, snap = _home(tmp_path), tmp_path / "snapshot"
    proc = _child(home, 400, pause=120)
    _read(proc, ledger, "PAUSED")
    _cp_a(home, snap)  # the sender is alive, its database open: crash-consistent copy
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    _read(proc, ledger, 200)
    _finish(proc, kill=True)
    shutil.rmtree(home)
    _cp_a(snap, home)  # rolled back
    proc = _child(home, 300)
    _read(proc, ledger, "DONE")
    _finish(proc)
    _check(ledger)


def test_one_home_on_two_devices_at_once_reuses_no_nonce(tmp_path, ledger):
    """Two live copies of one home, sending at the same time (two processes)."""
    home, twin = _home(tmp_path), tmp_path / "twin"
    _run(home, 30, ledger)
    _cp_a(home, twin)
    a, b = _child(home, 600), _child(twin, 600)
    _read(a, ledger, "DONE")
    _read(b, ledger, "DONE")
    _finish(a)
    _finish(b)
    _check(ledger)


# --------------------------------------------------------------- the room still works
def _member(home: Path, mod: Identity) -> Room:
    """A start of the member whose home is ``home`` (its identity, its counter file)."""
    counters = CounterStore(Home(home).counters_db)
    return Room(nh.ROOM_ID, nh.ROOM_KEY, 0, [mod.public], Home(home).identity(), counters)


class _Room:
    """A moderator, listeners with persisted replay windows, and members on real homes."""

    def __init__(self, tmp_path: Path, listeners: int = 3) -> None:
        self.tmp = tmp_path
        self.mod_id = Identity.generate()
        self.mod = Room(
            nh.ROOM_ID, nh.ROOM_KEY, 0, [self.mod_id.public], self.mod_id, MemoryCounters()
        )
        self.listener_ids = [Identity.generate() for _ in range(listeners)]
        self.listeners = [self._listener(i) for i in self.listener_ids]
        self.now = nh.NOW

    def _listener(self, ident: Identity) -> Room:
        return Room(nh.ROOM_ID, nh.ROOM_KEY, 0, [self.mod_id.public], ident, MemoryCounters())

    def send(self, packet: bytes, *, to=None) -> list:
        events = []
        for room in to if to is not None else [self.mod, *self.listeners]:
            events += room.receive(packet, self.now)
        return events

    def over(self, speaker: Room, frames: int = 16) -> list:
        """Hand raise, grant, an over and its seal; the listeners' events."""
        self.grant(speaker)
        events = []
        packets = []
        for first in range(0, frames, 4):
            packets.append(speaker.voice(nh_mode(), first, MODE_FRAMES, self.now))
            self.now += 0.16
        packets += speaker.end_over(self.now)
        for p in packets:
            events += self.send(p, to=self.listeners)
        self.now += 1.0
        return events

    def grant(self, speaker: Room) -> None:
        self.send(speaker.raise_hand(self.now), to=[self.mod])
        self.send(self.mod.grant(speaker.me.identity, 60, self.now), to=[*self.listeners, speaker])

    def restart_listeners(self) -> None:
        """Every listener saves its windows to its replay.db, stops, and starts again."""
        fresh = []
        for ident, room in zip(self.listener_ids, self.listeners, strict=True):
            store = ReplayStore(self.tmp / f"replay-{ident.identity[:4].hex()}.db")
            store.save(room.keys.key_id, room.receiver.export())
            again = self._listener(ident)
            again.receiver.restore(store.load(again.keys.key_id))
            store.close()
            fresh.append(again)
        self.listeners = fresh


def nh_mode():
    from relay.voice.modes import mode_by_name

    return mode_by_name("1600")


def _verdicts(events) -> list[str]:
    return [e.verdict for e in events if isinstance(e, OverEnded)]


def test_restored_and_twin_homes_still_speak_verified_overs(tmp_path, ledger):
    """After a restore the counters go back: listeners (restarted, windows restored from
    disk) still hear verified overs from the restored home, still refuse replays of what
    they heard, and two live copies of one home are both heard."""
    net = _Room(tmp_path)
    home, backup = _home(tmp_path), tmp_path / "backup"
    first = _member(home, net.mod_id)
    assert _verdicts(net.over(first)) == ["verified"] * 3
    _cp_a(home, backup)
    recorded = []
    net.grant(first)
    for pos in range(0, 600, 4):  # past the counter block the backup had reserved
        recorded.append(first.voice(nh_mode(), pos, MODE_FRAMES, net.now))
        net.send(recorded[-1], to=net.listeners)
    for p in first.end_over(net.now):
        net.send(p, to=net.listeners)
    first._counters.close()
    net.now += 1
    net.restart_listeners()
    # Restore the backup in place, start again: counters below what the listeners saw.
    subprocess.run(["cp", "-a", f"{backup}/.", f"{home}/"], check=True)
    restored = _member(home, net.mod_id)
    assert restored.sender.next_counter < max(ledger.counters)
    assert _verdicts(net.over(restored)) == ["verified"] * 3
    # What the listeners heard before their restart still does not replay.
    for li in net.listeners:
        for p in recorded[:5]:
            assert all(isinstance(e, Dropped) for e in li.receive(p, net.now))
    # The same home on a second device at the same time: both are heard, verified.
    twin_home = tmp_path / "twin"
    _cp_a(home, twin_home)
    twin = _member(twin_home, net.mod_id)
    assert _verdicts(net.over(twin)) == ["verified"] * 3
    assert _verdicts(net.over(restored)) == ["verified"] * 3
    assert _verdicts(net.over(twin)) == ["verified"] * 3
    played = sum(1 for e in net.over(restored) if isinstance(e, Voice))
    assert played == 3 * 4
    restored._counters.close()
    twin._counters.close()
    _check(ledger)
