"""Durable send counters: counters never repeat within one sender's key.

A sender reserves a block of counters and the new high-water mark is committed with
``synchronous=FULL`` *before* any counter in the block is used. After a crash or ``kill -9``
the next run starts at the mark, skipping the unused rest of the old block: counters only
ever grow, as long as this file is the only copy.

A copy is the other way to hand a counter out twice: a backup restored after the device went
on, a filesystem or VM snapshot rolled back, one home directory on two devices at once. No
property of the file tells all of those apart (a restore keeps the inode, a snapshot keeps
everything), so this store does not try: every start of a sender draws a random session that
is bound into its key (:mod:`relay.core.crypto`), and a counter handed out twice is used
under two different keys. Files of earlier versions may hold a ``floor`` (from the jump they
made when they noticed a copy); it is still honoured.
"""

from __future__ import annotations

import os
import sqlite3

from relay.errors import UsageError
from relay.store.db import connect, vacuum


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

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

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
