"""Durable send counters: the reason a nonce is never used twice.

A sender reserves a block of counters and the new high-water mark is committed with
``synchronous=FULL`` *before* any counter in the block is used. After a crash or ``kill -9``
the next run starts at the mark, skipping the unused rest of the old block: counters only
ever grow.

A copied or restored file is the other way to reuse a nonce: a backup taken at counter C,
restored after the device that went on to C + k was lost, would start again at C. So the
file remembers where it lives (the machine id and its own inode). Opened anywhere else --
another machine, or a restored copy on this one -- it moves every counter, including those
of room keys it has never seen, ahead by RESTORE_JUMP (about 58 hours of continuous talk at
five packets a second per room key) and says so. That covers the common case (a backup
restored after a loss); two devices running one identity at the same time are still not
safe (the README says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sqlite3
from pathlib import Path

from relay.errors import UsageError
from relay.store.db import connect, vacuum

log = logging.getLogger(__name__)

RESTORE_JUMP = 1 << 20
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def _machine_id() -> str:
    for name in _MACHINE_ID_FILES:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return platform.node()


def _placement(path: str) -> str:
    """Where this file lives: the machine and the file itself (a copy is a new inode)."""
    seen = f"{_machine_id()}:{os.stat(path).st_ino}"
    return hashlib.sha256(seen.encode()).hexdigest()[:32]


class CounterStore:
    """A SQLite file of named counters (one per sender per room key)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db = connect(path, durable=True)
        self._db.execute("PRAGMA secure_delete=ON")  # names carry room key ids: zero them
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.moved = self._check_placement()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_placement(self) -> bool:
        """Jump every counter ahead if this file was copied or restored (module docstring)."""
        here = _placement(self.path)
        was = self._meta("placement")
        if was == here:
            return False
        moved = was is not None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if moved:
                floor = int(self._meta("floor") or 0) + RESTORE_JUMP
                self._db.execute("UPDATE counters SET next = next + ?", (RESTORE_JUMP,))
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('floor', ?)", (str(floor),)
                )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('placement', ?)", (here,)
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise UsageError(f"cannot update send counters in {self.path}: {exc}") from None
        if moved:
            log.warning(
                "%s was copied or restored: every send counter jumps ahead so no nonce is "
                "reused; do not run one identity on two devices at once",
                self.path,
            )
        return moved

    def reserve(self, name: str, count: int, limit: int) -> int:
        if count < 1:
            raise UsageError("counter block must be at least 1")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT next FROM counters WHERE name = ?", (name,)).fetchone()
            start = max(row[0] if row else 0, int(self._meta("floor") or 0))
            if start + count > limit:
                self._db.execute("ROLLBACK")
                raise UsageError(
                    "the send counter for this room key is exhausted; rotate the room key"
                )
            self._db.execute(
                "INSERT INTO counters (name, next) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET next = excluded.next",
                (name, start + count),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise UsageError(f"cannot reserve send counters in {self.path}: {exc}") from None
        return start

    def forget(self, prefixes: list[str]) -> int:
        """Erase the counters whose names start with one of ``prefixes`` (a room left)
        without ever letting a nonce come back: the floor every counter starts from is
        raised to the highest erased one first, in the same transaction. The file then
        keeps a number, not which room keys it counted for. How many rows went."""
        gone = 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            floor = int(self._meta("floor") or 0)
            for prefix in prefixes:
                rows = self._db.execute(
                    "SELECT name, next FROM counters WHERE substr(name, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchall()
                for name, nxt in rows:
                    floor = max(floor, nxt)
                    self._db.execute("DELETE FROM counters WHERE name = ?", (name,))
                    gone += 1
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('floor', ?)", (str(floor),)
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise UsageError(f"cannot update send counters in {self.path}: {exc}") from None
        vacuum(self._db)
        return gone

    def peek(self, name: str) -> int:
        """The next counter a reservation would start at (for tests and status)."""
        row = self._db.execute("SELECT next FROM counters WHERE name = ?", (name,)).fetchone()
        return max(row[0] if row else 0, int(self._meta("floor") or 0))

    def close(self) -> None:
        self._db.close()


class MemoryCounters:
    """Counters in memory, per name: for tests and benchmarks only.

    Nothing survives the process, so a real sender using this would reuse nonces after a
    restart; :class:`CounterStore` is the one to send with."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def reserve(self, name: str, count: int, limit: int) -> int:
        start = self._next.get(name, 0)
        if start + count > limit:
            raise UsageError("the send counter for this room key is exhausted")
        self._next[name] = start + count
        return start
