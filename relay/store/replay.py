"""Receivers' replay windows, kept across restarts.

Without this, a listener that restarts would accept a recording of yesterday's traffic as new.
What is kept, per room key, sender and sender session (see :mod:`relay.core.session`), is the
whole replay window (its highest counter and its bitmap), when the session was introduced,
the highest counter its sender signed, and the time before which no new session of that
sender is accepted. Keeping the bitmap rather than only the highest counter means a packet
forged ahead (within the bound a room allows) silences nobody after a restart either: the
counters below it that were never received are still open.

WAL with ``synchronous=NORMAL`` makes a save a cheap write that survives ``kill -9`` (a power
cut may lose the last few marks).

Marks name the speakers a member has heard: with a sealer (``REPLAY_LABEL`` of the home's
keys) the speaker's key is stored sealed (AES-SIV, deterministic so it stays part of the
row's key) and the room key's id as a keyed hash, so a seized, locked device does not say
whom its owner heard in which room.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from relay.core.session import MAX_SESSIONS, SessionMark
from relay.store.db import connect, vacuum
from relay.store.keystore import Sealer

REPLAY_LABEL = b"replay"


class ReplayStore:
    def __init__(self, path: str | os.PathLike[str], sealer: Sealer | None = None) -> None:
        self._sealer = sealer
        self._db = connect(path, durable=False)
        # Marks name speakers (their public keys): what is replaced or erased is zeroed.
        self._db.execute("PRAGMA secure_delete=ON")
        # (The table "replay" of earlier versions held marks of keys derived without a
        # session; no packet can be opened under those keys any more, so it is ignored.)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (key_id TEXT NOT NULL, sender BLOB NOT NULL, "
            "session BLOB NOT NULL, introduced REAL NOT NULL, highest INTEGER NOT NULL, "
            "bits BLOB NOT NULL, anchor INTEGER NOT NULL, floor REAL NOT NULL, "
            "PRIMARY KEY (key_id, sender, session))"
        )

    def _kid(self, key_id: str) -> str:
        return key_id if self._sealer is None else self._sealer.name(key_id)

    def _who(self, kid: str, sender: bytes) -> bytes:
        return sender if self._sealer is None else self._sealer.seal_fixed(sender, kid.encode())

    def _whom(self, kid: str, stored: bytes) -> bytes:
        stored = bytes(stored)
        return stored if self._sealer is None else self._sealer.open_fixed(stored, kid.encode())

    def load(self, key_id: str) -> list[SessionMark]:
        kid = self._kid(key_id)
        rows = self._db.execute(
            "SELECT sender, session, introduced, highest, bits, anchor, floor FROM sessions "
            "WHERE key_id = ?",
            (kid,),
        ).fetchall()
        return [
            SessionMark(
                self._whom(kid, sender),
                bytes(session),
                introduced,
                highest,
                int.from_bytes(bits, "big"),
                anchor,
                floor,
            )
            for sender, session, introduced, highest, bits, anchor, floor in rows
        ]

    def save(self, key_id: str, marks: Iterable[SessionMark]) -> None:
        """Save ``marks`` (merging: a window only moves forward) and forget sessions of the
        same senders that were dropped for newer ones."""
        marks = list(marks)
        kid = self._kid(key_id)
        with self._db:
            self._db.execute("BEGIN")
            for m in marks:
                bits = m.bits.to_bytes(max(1, (m.bits.bit_length() + 7) // 8), "big")
                self._db.execute(
                    "INSERT INTO sessions (key_id, sender, session, introduced, highest, bits, "
                    "anchor, floor) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key_id, sender, session) DO UPDATE SET "
                    "introduced = max(introduced, excluded.introduced), "
                    "anchor = max(anchor, excluded.anchor), floor = max(floor, excluded.floor), "
                    "bits = CASE WHEN excluded.highest >= highest THEN excluded.bits ELSE bits "
                    "END, highest = max(highest, excluded.highest)",
                    (
                        kid,
                        self._who(kid, m.identity),
                        m.session,
                        m.intro_time,
                        m.highest,
                        bits,
                        m.anchor,
                        m.floor,
                    ),
                )
            for sender in {m.identity for m in marks}:
                floor = max(m.floor for m in marks if m.identity == sender)
                keep = {m.session for m in marks if m.identity == sender}
                who = self._who(kid, sender)
                rows = self._db.execute(
                    "SELECT session, introduced FROM sessions WHERE key_id = ? AND sender = ? "
                    "ORDER BY introduced DESC",
                    (kid, who),
                ).fetchall()
                for rank, (session, introduced) in enumerate(rows):
                    if bytes(session) in keep:
                        continue
                    if introduced <= floor or rank >= MAX_SESSIONS:
                        self._db.execute(
                            "DELETE FROM sessions WHERE key_id = ? AND sender = ? AND session = ?",
                            (kid, who, session),
                        )

    def forget(self, key_ids: list[str]) -> int:
        """Erase the marks (and with them the speakers' public keys) of these room keys,
        and whatever an earlier version kept under them: overwritten, the file vacuumed and
        the WAL emptied. How many rows went."""
        gone = 0
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        for key_id in key_ids:
            for kid in {key_id, self._kid(key_id)}:
                for table in ("sessions", "replay"):  # "replay": marks of earlier versions
                    if table in tables:
                        gone += self._db.execute(
                            f"DELETE FROM {table} WHERE key_id = ?", (kid,)
                        ).rowcount
        vacuum(self._db)
        return gone

    def close(self) -> None:
        self._db.close()
