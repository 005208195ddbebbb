"""Receivers' replay marks, kept across restarts.

Without this, a listener that restarts would accept a recording of yesterday's traffic as new.
Each accepted packet moves its sender's mark; WAL with ``synchronous=NORMAL`` makes that a
cheap write that survives ``kill -9`` (a power cut may lose the last few marks).
"""

from __future__ import annotations

import os

from relay.store.db import connect, vacuum


class ReplayStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = connect(path, durable=False)
        # Marks name speakers (their public keys): what is replaced or erased is zeroed.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replay (key_id TEXT NOT NULL, sender BLOB NOT NULL, "
            "highest INTEGER NOT NULL, PRIMARY KEY (key_id, sender))"
        )

    def load(self, key_id: str) -> dict[bytes, int]:
        rows = self._db.execute("SELECT sender, highest FROM replay WHERE key_id = ?", (key_id,))
        return {bytes(sender): highest for sender, highest in rows}

    def save(self, key_id: str, sender: bytes, highest: int) -> None:
        self._db.execute(
            "INSERT INTO replay (key_id, sender, highest) VALUES (?, ?, ?) "
            "ON CONFLICT(key_id, sender) DO UPDATE SET highest = max(highest, excluded.highest)",
            (key_id, sender, highest),
        )

    def forget(self, key_ids: list[str]) -> int:
        """Erase the marks (and with them the speakers' public keys) of these room keys:
        overwritten, the WAL truncated. How many rows went."""
        gone = 0
        for key_id in key_ids:
            gone += self._db.execute("DELETE FROM replay WHERE key_id = ?", (key_id,)).rowcount
        vacuum(self._db)
        return gone

    def close(self) -> None:
        self._db.close()
