"""Durable send counters: the reason a nonce is never used twice.

A sender reserves a block of counters and the new high-water mark is committed with
``synchronous=FULL`` *before* any counter in the block is used. After a crash or ``kill -9``
the next run starts at the mark, skipping the unused rest of the old block: counters only
ever grow.
"""

from __future__ import annotations

import os
import sqlite3

from relay.errors import UsageError
from relay.store.db import connect


class CounterStore:
    """A SQLite file of named counters (one per sender per room key)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db = connect(path, durable=True)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL)"
        )

    def reserve(self, name: str, count: int, limit: int) -> int:
        if count < 1:
            raise UsageError("counter block must be at least 1")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT next FROM counters WHERE name = ?", (name,)).fetchone()
            start = row[0] if row else 0
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

    def peek(self, name: str) -> int:
        """The next counter a reservation would start at (for tests and status)."""
        row = self._db.execute("SELECT next FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self._db.close()
