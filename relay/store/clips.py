"""Voice messages on disk: the outbox and the inbox, in one SQLite file per home.

Every step of a transfer is committed (``synchronous=FULL``) before it is acted on, so a
``kill -9`` of a sender or receiver at any moment loses nothing:

* outbox: the signed offer and the whole codec stream are stored before the first piece is
  sent; each receiver's latest ack replaces the previous one. A restarted sender resumes
  from what its receivers last said they hold (and asks them again).
* inbox: each piece is stored as it arrives; a message that completes and verifies moves
  to ``inbox`` in one transaction, unique by (room, sender, message id), so nothing is ever
  stored or shown twice, and its pieces go away in the same transaction.

The speech itself (outbox streams, received pieces, inbox messages) is sealed under the
home's data key when the store is given a sealer (``clip_store(home)`` does), and so are the
senders', receivers' and fingerprints' keys (AES-SIV where they are part of a row's key): a
seized, locked device holds that messages were exchanged (room id, message id, time, size)
but not with whom nor what was said.

A full disk (``database or disk is full``) becomes one clear :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relay.clip.wire import Ack, Offer, digest
from relay.errors import PacketError, UsageError
from relay.store.db import connect, vacuum
from relay.store.keystore import Sealer

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    room_id BLOB NOT NULL, msg_id BLOB NOT NULL, offer BLOB NOT NULL, data BLOB NOT NULL,
    data_digest BLOB NOT NULL, created REAL NOT NULL, state TEXT NOT NULL DEFAULT 'sending',
    PRIMARY KEY (room_id, msg_id));
CREATE TABLE IF NOT EXISTS outbox_acks (
    room_id BLOB NOT NULL, msg_id BLOB NOT NULL, receiver BLOB NOT NULL, ack BLOB NOT NULL,
    PRIMARY KEY (room_id, msg_id, receiver));
CREATE TABLE IF NOT EXISTS inbox_offers (
    room_id BLOB NOT NULL, sender BLOB NOT NULL, msg_id BLOB NOT NULL, offer BLOB NOT NULL,
    PRIMARY KEY (room_id, sender, msg_id));
CREATE TABLE IF NOT EXISTS inbox_pieces (
    room_id BLOB NOT NULL, sender BLOB NOT NULL, msg_id BLOB NOT NULL, idx INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (room_id, sender, msg_id, idx));
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room_id BLOB NOT NULL, sender BLOB NOT NULL,
    msg_id BLOB NOT NULL, offer BLOB NOT NULL, data BLOB NOT NULL, received REAL NOT NULL,
    sender_name TEXT NOT NULL DEFAULT '', UNIQUE (room_id, sender, msg_id));
"""


@dataclass(frozen=True, slots=True)
class OutgoingClip:
    room_id: bytes
    offer: Offer
    data: bytes
    created: float
    state: str  # sending | done
    acks: dict[bytes, Ack]


@dataclass(frozen=True, slots=True)
class InboxClip:
    id: str  # message id, hex: what `relay clip play` takes
    room_id: bytes
    sender: bytes
    offer: Offer
    data: bytes
    received: float
    sender_name: str = ""  # the sender's fingerprint, as verified on arrival

    @property
    def msg_id(self) -> bytes:
        return self.offer.msg_id


@contextlib.contextmanager
def _disk(path: Path) -> Iterator[None]:
    """A full disk is the user's problem to fix: say so in one line."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "full" in text:
            raise UsageError(f"disk full: cannot store voice messages in {path} ({text})") from None
        raise UsageError(f"voice-message store {path}: {text}") from None


class ClipStore:
    """The outbox and inbox of one home (``clips.db``, 0600, WAL, fsync on commit)."""

    def __init__(self, path: str | Path, sealer: Sealer | None = None) -> None:
        self.path = Path(path)
        self._sealer = sealer
        self._conn = connect(self.path)
        # What is erased (a delivered message's speech) is overwritten, not just unlinked.
        self._conn.execute("PRAGMA secure_delete=ON")
        with _disk(self.path):
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with _disk(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLITE_FULL has already rolled back
                    self._conn.execute("ROLLBACK")
                raise

    def forget_room(self, room_id: bytes) -> int:
        """Erase every row of a room in every table (a room left): overwritten, and the WAL
        truncated. How many rows went."""
        gone = 0
        with self._tx() as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
                if "room_id" in columns:
                    gone += db.execute(
                        f'DELETE FROM "{table}" WHERE room_id = ?', (room_id,)
                    ).rowcount
        vacuum(self._conn)
        return gone

    def _seal(self, data: bytes, *where: bytes) -> bytes:
        return data if self._sealer is None else self._sealer.seal(data, b"|".join(where))

    def _open(self, blob: bytes, *where: bytes) -> bytes:
        blob = bytes(blob)
        return blob if self._sealer is None else self._sealer.open(blob, b"|".join(where))

    def _who(self, room_id: bytes, member: bytes) -> bytes:
        """A sender's or receiver's key as stored (sealed deterministically: a row key)."""
        if self._sealer is None:
            return member
        return self._sealer.seal_fixed(member, b"member|" + room_id)

    def _whos(self, room_id: bytes, member: bytes) -> tuple[bytes, ...]:
        """Every stored form of a member's key (rows from before sealing too)."""
        stored = self._who(room_id, member)
        return (member,) if stored == member else (stored, member)

    def _whom(self, room_id: bytes, stored: bytes) -> bytes:
        stored = bytes(stored)
        if self._sealer is None:
            return stored
        try:
            return self._sealer.open_fixed(stored, b"member|" + bytes(room_id))
        except UsageError:
            if len(stored) == 32:
                return stored  # a row from before sealing: the key in clear
            raise

    def _name(self, room_id: bytes, member: bytes, name: str) -> str | bytes:
        if self._sealer is None or not name:
            return name
        return self._seal(name.encode("utf-8"), b"name", room_id, member)

    def _unname(self, room_id: bytes, member: bytes, stored: str | bytes) -> str:
        if isinstance(stored, str):
            return stored
        if self._sealer is None:
            raise UsageError(f"{self.path} is sealed: open it with the home's keys (clip_store)")
        return self._open(stored, b"name", room_id, member).decode("utf-8")

    # ------------------------------------------------------------------ outbox
    def add_outgoing(self, room_id: bytes, offer: Offer, data: bytes) -> OutgoingClip:
        """Store a new message before any of it is sent."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO outbox (room_id, msg_id, offer, data, data_digest, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    room_id,
                    offer.msg_id,
                    offer.pack(),
                    self._seal(data, b"out", room_id, offer.msg_id),
                    digest(data),
                    now,
                ),
            )
        return OutgoingClip(room_id, offer, data, now, "sending", {})

    def find_outgoing(self, room_id: bytes, data: bytes) -> OutgoingClip | None:
        """An unfinished message with exactly this speech (re-running `send` resumes it)."""
        with _disk(self.path):
            row = self._conn.execute(
                "SELECT msg_id FROM outbox WHERE room_id = ? AND data_digest = ? "
                "AND state = 'sending' ORDER BY created LIMIT 1",
                (room_id, digest(data)),
            ).fetchone()
        return self.outgoing(room_id, row[0]) if row else None

    def outgoing(self, room_id: bytes, msg_id: bytes) -> OutgoingClip | None:
        with _disk(self.path):
            row = self._conn.execute(
                "SELECT offer, data, created, state FROM outbox WHERE room_id = ? AND msg_id = ?",
                (room_id, msg_id),
            ).fetchone()
            if row is None:
                return None
            acks = {
                self._whom(room_id, r[0]): Ack.parse(r[1])
                for r in self._conn.execute(
                    "SELECT receiver, ack FROM outbox_acks WHERE room_id = ? AND msg_id = ?",
                    (room_id, msg_id),
                )
            }
        data = self._open(row[1], b"out", room_id, msg_id)
        return OutgoingClip(room_id, Offer.parse(row[0]), data, row[2], row[3], acks)

    def pending(self, room_id: bytes) -> list[OutgoingClip]:
        """Messages still being delivered, oldest first."""
        with _disk(self.path):
            ids = [
                r[0]
                for r in self._conn.execute(
                    "SELECT msg_id FROM outbox WHERE room_id = ? AND state = 'sending' "
                    "ORDER BY created",
                    (room_id,),
                )
            ]
        return [c for c in (self.outgoing(room_id, i) for i in ids) if c is not None]

    def save_acks(self, room_id: bytes, msg_id: bytes, acks: dict[bytes, Ack]) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO outbox_acks (room_id, msg_id, receiver, ack) "
                "VALUES (?, ?, ?, ?)",
                [(room_id, msg_id, self._who(room_id, r), a.pack()) for r, a in acks.items()],
            )

    def mark_sent(self, room_id: bytes, msg_id: bytes) -> None:
        """Delivered: keep the record, erase the speech (a seized device should not hold
        what was already sent) and the acks."""
        with self._tx() as c:
            c.execute(
                "UPDATE outbox SET state = 'done', data = x'' WHERE room_id = ? AND msg_id = ?",
                (room_id, msg_id),
            )
            c.execute("DELETE FROM outbox_acks WHERE room_id = ? AND msg_id = ?", (room_id, msg_id))
        with _disk(self.path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old pages out of the WAL

    # ------------------------------------------------------------------ inbox
    def save_offer(self, room_id: bytes, sender: bytes, offer: Offer) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO inbox_offers (room_id, sender, msg_id, offer) "
                "VALUES (?, ?, ?, ?)",
                (room_id, self._who(room_id, sender), offer.msg_id, offer.pack()),
            )

    def save_piece(
        self, room_id: bytes, sender: bytes, msg_id: bytes, index: int, data: bytes
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO inbox_pieces (room_id, sender, msg_id, idx, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    room_id,
                    self._who(room_id, sender),
                    msg_id,
                    index,
                    self._seal(data, b"piece", room_id, sender, msg_id, b"%d" % index),
                ),
            )

    def drop_partial(self, room_id: bytes, sender: bytes, msg_id: bytes) -> None:
        """Forget a partial message that did not verify (it starts over)."""
        with self._tx() as c:
            for table in ("inbox_pieces", "inbox_offers"):
                for who in self._whos(room_id, sender):
                    c.execute(
                        f"DELETE FROM {table} WHERE room_id = ? AND sender = ? AND msg_id = ?",
                        (room_id, who, msg_id),
                    )

    def complete(
        self, room_id: bytes, sender: bytes, offer: Offer, data: bytes, sender_name: str = ""
    ) -> bool:
        """Move a verified message into the inbox; False if it was already there."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO inbox "
                "(room_id, sender, msg_id, offer, data, received, sender_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    room_id,
                    self._who(room_id, sender),
                    offer.msg_id,
                    offer.pack(),
                    self._seal(data, b"in", room_id, sender, offer.msg_id),
                    time.time(),
                    self._name(room_id, sender, sender_name),
                ),
            )
            for table in ("inbox_pieces", "inbox_offers"):
                for who in self._whos(room_id, sender):
                    c.execute(
                        f"DELETE FROM {table} WHERE room_id = ? AND sender = ? AND msg_id = ?",
                        (room_id, who, offer.msg_id),
                    )
        return cur.rowcount == 1

    def partials(self, room_id: bytes) -> list[tuple[bytes, bytes, Offer | None, dict[int, bytes]]]:
        """Partly received messages: (sender, msg id, offer or None, pieces)."""
        out: dict[tuple[bytes, bytes], tuple[Offer | None, dict[int, bytes]]] = {}
        with _disk(self.path):
            for stored, msg_id, raw in self._conn.execute(
                "SELECT sender, msg_id, offer FROM inbox_offers WHERE room_id = ?", (room_id,)
            ).fetchall():
                out[(self._whom(room_id, stored), bytes(msg_id))] = (_offer(raw), {})
            for stored, msg_id, idx, data in self._conn.execute(
                "SELECT sender, msg_id, idx, data FROM inbox_pieces WHERE room_id = ?", (room_id,)
            ).fetchall():
                sender, msg_id = self._whom(room_id, stored), bytes(msg_id)
                piece = self._open(data, b"piece", room_id, sender, msg_id, b"%d" % idx)
                out.setdefault((sender, msg_id), (None, {}))[1][idx] = piece
        return [(s, m, o, p) for (s, m), (o, p) in out.items()]

    def inbox(self, room_id: bytes | None = None) -> list[InboxClip]:
        """Complete, verified messages, oldest first."""
        sql = (
            "SELECT room_id, sender, offer, data, received, sender_name FROM inbox "
            "WHERE length(data) > 0"  # an erased message keeps its row, not its speech
        )
        args: tuple[bytes, ...] = ()
        if room_id is not None:
            sql += " AND room_id = ?"
            args = (room_id,)
        with _disk(self.path):
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for room, stored, raw, blob, received, name in rows:
            room, offer = bytes(room), Offer.parse(raw)
            sender = self._whom(room, stored)
            data = self._open(blob, b"in", room, sender, offer.msg_id)
            shown = self._unname(room, sender, name)
            out.append(InboxClip(offer.msg_id.hex(), room, sender, offer, data, received, shown))
        return out

    def erase(self, clip: InboxClip) -> None:
        """Overwrite a message's speech; its row stays, so a retransmission is not collected
        again as new."""
        with self._tx() as c:
            for who in self._whos(clip.room_id, clip.sender):
                c.execute(
                    "UPDATE inbox SET data = x'' WHERE room_id = ? AND sender = ? AND msg_id = ?",
                    (clip.room_id, who, clip.offer.msg_id),
                )
        with _disk(self.path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def find(self, ref: str) -> InboxClip:
        """The inbox message whose id (hex) starts with ``ref``; UsageError otherwise."""
        key = ref.strip().lower()
        if not key or any(ch not in "0123456789abcdef" for ch in key):
            raise UsageError(f"{ref!r} is not a voice-message id (hex, see `relay clip inbox`)")
        found = [c for c in self.inbox() if c.id.startswith(key)]
        if not found:
            raise UsageError(f"no voice message {ref!r} in the inbox (see `relay clip inbox`)")
        if len(found) > 1:
            raise UsageError(f"{ref!r} names {len(found)} voice messages; give more of the id")
        return found[0]


def _offer(raw: bytes) -> Offer | None:
    try:
        return Offer.parse(raw)
    except PacketError:
        return None
