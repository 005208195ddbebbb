"""Receivers' replay marks, kept across restarts.

Without this, a listener that restarts would accept a recording of yesterday's traffic as new.
Each accepted packet moves its sender's mark; WAL with ``synchronous=NORMAL`` makes that a
cheap write that survives ``kill -9`` (a power cut may lose the last few marks).

Marks name the speakers a member has heard: with a sealer (``REPLAY_LABEL`` of the home's
keys) the speaker's key is stored sealed (AES-SIV, deterministic so it stays the row's key)
and the room key's id as a keyed hash, so a seized, locked device does not say whom its
owner heard in which room. Rows written before that are still read, and erased with them.
"""

from __future__ import annotations

import os

from relay.store.db import connect, vacuum
from relay.store.keystore import Sealer

REPLAY_LABEL = b"replay"


class ReplayStore:
    def __init__(self, path: str | os.PathLike[str], sealer: Sealer | None = None) -> None:
        self._sealer = sealer
        self._db = connect(path, durable=False)
        # Marks name speakers (their public keys): what is replaced or erased is zeroed.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replay (key_id TEXT NOT NULL, sender BLOB NOT NULL, "
            "highest INTEGER NOT NULL, PRIMARY KEY (key_id, sender))"
        )

    def _kid(self, key_id: str) -> str:
        return key_id if self._sealer is None else self._sealer.name(key_id)

    def load(self, key_id: str) -> dict[bytes, int]:
        marks: dict[bytes, int] = {}
        rows = self._db.execute("SELECT sender, highest FROM replay WHERE key_id = ?", (key_id,))
        for sender, highest in rows:  # clear rows: written before marks were sealed
            marks[bytes(sender)] = highest
        if self._sealer is not None:
            kid = self._kid(key_id)
            for blob, highest in self._db.execute(
                "SELECT sender, highest FROM replay WHERE key_id = ?", (kid,)
            ):
                sender = self._sealer.open_fixed(blob, kid.encode())
                marks[sender] = max(highest, marks.get(sender, -1))
        return marks

    def save(self, key_id: str, sender: bytes, highest: int) -> None:
        kid = self._kid(key_id)
        if self._sealer is not None:
            sender = self._sealer.seal_fixed(sender, kid.encode())
        self._db.execute(
            "INSERT INTO replay (key_id, sender, highest) VALUES (?, ?, ?) "
            "ON CONFLICT(key_id, sender) DO UPDATE SET highest = max(highest, excluded.highest)",
            (kid, sender, highest),
        )

    def forget(self, key_ids: list[str]) -> int:
        """Erase the marks (and with them the speakers' public keys) of these room keys:
        overwritten, the WAL truncated. How many rows went."""
        gone = 0
        for key_id in key_ids:
            for kid in {key_id, self._kid(key_id)}:
                gone += self._db.execute("DELETE FROM replay WHERE key_id = ?", (kid,)).rowcount
        vacuum(self._db)
        return gone

    def close(self) -> None:
        self._db.close()
