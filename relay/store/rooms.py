"""The rooms this identity moderates or has joined, with their keys, moderators and roster.

One SQLite file (rooms.db, 0600). Every key (room keys, key-tree keys) is stored sealed
under the home's data key (``Keys.seal_room_key``, a :class:`Sealer`: AES-256-GCM, unlocked
with the identity), never in clear; so are the room names, the moderators', members' and
key-tree leaves' public keys and display names (AES-SIV, deterministic, so names stay unique
and keys stay the rows' keys: the file shows only how many rooms and members there are). A
home in the old format keeps them in clear until ``relay id passphrase``. Every change is
one transaction, so a crash leaves the old
state or the new one, never half of each. Deleted keys are overwritten (``secure_delete``) and
the WAL is truncated after a key is erased: a seized device should not give up the keys of a
room its owner left, or of epochs before the last rotation.

Trust on first use: the first invite for a room decides who its moderators are (the member
compares their fingerprints out loud). Later invites for the same room are accepted only when
signed by a moderator already known, so a member holding the room key cannot take the room
over by minting an invite of their own.

Key tree and ratchet (relay.core.keytree): next to the room key, ``key_steps`` says which
hourly ratchet step the stored keys are at, and ``tree_keys`` holds the key-tree keys (the
whole tree in the tree holder's home, a member's leaf-to-root path in a member's). Every key
lives in a ``key`` BLOB column of ``room_keys`` or ``tree_keys``, written only by
:meth:`RoomStore.save_key_state` (and create/join): the one place to wrap keys at rest. Each
save replaces the previous keys in one transaction and overwrites them.
"""

from __future__ import annotations

import difflib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from relay.core.crypto import RoomKeys, random_room_key
from relay.core.identity import Identity, PublicIdentity
from relay.core.invite import MAX_EPOCH, MAX_MODERATORS, ROOM_ID_LEN, Invite, RoomInfo
from relay.core.keytree import (
    TREE_DEPTH,
    KeyTree,
    MemberPath,
    node_id,
    ratchet,
    ratchet_step,
    split_node,
)
from relay.core.room import KeyState
from relay.errors import UsageError
from relay.plan import Budget
from relay.store.db import connect, vacuum
from relay.store.home import Home
from relay.store.keystore import Sealer

ROOMS_LABEL = b"rooms"

MODERATOR = "moderator"
MEMBER = "member"
MIN_ID_PREFIX = 4
_HEX = re.compile(r"[0-9a-fA-F]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    room_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('moderator', 'member')),
    preset TEXT NOT NULL,
    mode TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    invite_issued_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS room_keys (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (room_id, epoch)
);
CREATE TABLE IF NOT EXISTS moderators (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    signing_key BLOB NOT NULL,
    agreement_key BLOB NOT NULL,
    PRIMARY KEY (room_id, signing_key)
);
CREATE TABLE IF NOT EXISTS room_key_ids (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    PRIMARY KEY (room_id, key_id)
);
CREATE TABLE IF NOT EXISTS key_steps (
    room_id BLOB PRIMARY KEY REFERENCES rooms(room_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    holder INTEGER NOT NULL DEFAULT 0,
    depth INTEGER NOT NULL DEFAULT 0,
    leaf INTEGER
);
CREATE TABLE IF NOT EXISTS tree_keys (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    node INTEGER NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (room_id, node)
);
CREATE TABLE IF NOT EXISTS tree_leaves (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    signing_key BLOB NOT NULL,
    leaf INTEGER NOT NULL,
    PRIMARY KEY (room_id, signing_key)
);
CREATE TABLE IF NOT EXISTS room_budget (
    room_id BLOB PRIMARY KEY REFERENCES rooms(room_id) ON DELETE CASCADE,
    max_delay_ms INTEGER NOT NULL,
    relay_hops INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    signing_key BLOB NOT NULL,
    agreement_key BLOB NOT NULL,
    display_name TEXT,
    enrolled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, signing_key)
);
"""


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """One line of `relay room list`: no key material."""

    room_id: bytes
    name: str
    role: str
    preset: str
    mode: str
    epoch: int
    joined_at: int

    @property
    def id_hex(self) -> str:
        return self.room_id.hex()

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "room_id": self.id_hex,
            "role": self.role,
            "preset": self.preset,
            "mode": self.mode,
            "epoch": self.epoch,
            "joined_at": self.joined_at,
        }


class RoomStore:
    """Rooms of one home. Methods taking ``room_id`` want the 8 raw bytes (see :meth:`get`)."""

    def __init__(self, home: Home) -> None:
        home.ensure()
        self._home = home
        self._names: Sealer | bool | None = None  # the sealer for names and keys, once asked
        self.path = home.rooms_db
        self._db = connect(self.path, durable=True)
        try:
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise UsageError(f"cannot use the rooms database {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RoomStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it commits, or none of it."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise UsageError(f"the rooms database {self.path} is busy or broken: {exc}") from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise UsageError(f"cannot save to the rooms database {self.path}: {exc}") from None

    def _scrub(self) -> None:
        """Push erased pages out of the WAL so old keys do not linger on disk."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- creating and joining -------------------------------------------------------------

    def create(
        self,
        name: str,
        preset: str,
        mode: str,
        me: Identity,
        budget: Budget | None = None,
        now: float | None = None,
    ) -> RoomInfo:
        """A new room with a random key and id, moderated by ``me``, who holds its key tree;
        ``budget`` is the delay live voice may take in it (None: the planner's default),
        carried in its invites."""
        info = RoomInfo(
            room_id=_new_room_id(),
            name=name,
            preset=preset,
            mode=mode,
            epoch=0,
            key=random_room_key(),
            moderators=(me.public,),
            budget=budget,
        )
        step = ratchet_step(time.time() if now is None else now)
        self._home.unlock()  # before the write lock: unlocking may ask for a passphrase
        with self._tx() as db:
            self._check_name_free(info.name, info.room_id)
            self._insert(db, info, MODERATOR, invite_issued_at=0)
            db.execute(
                "INSERT INTO key_steps (room_id, step, holder, depth) VALUES (?, ?, 1, ?)",
                (info.room_id, step, TREE_DEPTH),
            )
        return info

    def join(
        self, invite: Invite, me: PublicIdentity | None = None, name: str | None = None
    ) -> RoomInfo:
        """Store the invite's room; ``name`` renames it locally (names are unique per home).

        A room already known is updated only from an invite signed by one of its known
        moderators: a newer key epoch replaces the key, a newer invite the moderator list.
        Joining a room this home moderates changes nothing.
        """
        self._home.unlock()  # before the write lock: unlocking may ask for a passphrase
        info = invite.room
        if name is not None:
            info = RoomInfo(
                info.room_id,
                name,
                info.preset,
                info.mode,
                info.epoch,
                info.key,
                info.moderators,
                info.budget,
            )
        with self._tx() as db:
            row = db.execute(
                "SELECT role, epoch, invite_issued_at FROM rooms WHERE room_id = ?",
                (info.room_id,),
            ).fetchone()
            step = ratchet_step(invite.issued_at)  # the invite's keys are at its issue hour
            if row is None:
                self._check_name_free(info.name, info.room_id, "join it under another (--name NEW)")
                is_mod = me is not None and info.moderator_index(me.signing_key) is not None
                self._insert(db, info, MODERATOR if is_mod else MEMBER, invite.issued_at)
                self._write_tree(db, info.room_id, step, None, invite.path)
                return info
            role, epoch, issued = row
            if role == MODERATOR:
                return self._info(info.room_id)
            held = self._step(info.room_id)
            known = {m.signing_key for m in self._moderators(info.room_id)}
            if invite.signer.signing_key not in known:
                raise UsageError(
                    "this invite is for a room you already joined, but it is signed by someone "
                    "who is not one of that room's moderators; refusing it"
                )
            if info.epoch > epoch:
                key, path = info.key, invite.path
                if path is None:  # an open invite: keep the leaf we have, in step
                    key, path, step = self._keep_path(info.room_id, key, step, held)
                self._set_key(db, info.room_id, info.epoch, key)
                self._write_tree(db, info.room_id, step, None, path)
            elif info.epoch == epoch and not _same_key(
                self._key(info.room_id, epoch), held, info.key, step
            ):
                raise UsageError(
                    "this invite carries a different key for the epoch you already have; "
                    "refusing it (ask the moderator)"
                )
            elif info.epoch == epoch and invite.path is not None and step >= held:
                self._set_key(db, info.room_id, info.epoch, info.key)
                self._write_tree(db, info.room_id, step, None, invite.path)
            if invite.issued_at > issued:
                self._replace_moderators(db, info.room_id, info.moderators)
                db.execute(
                    "UPDATE rooms SET preset = ?, mode = ?, invite_issued_at = ? WHERE room_id = ?",
                    (info.preset, info.mode, invite.issued_at, info.room_id),
                )
                self._set_budget(db, info.room_id, info.budget)
        self._scrub()  # an older key may just have been erased
        return self._info(info.room_id)

    def set_budget(self, room_id: bytes, budget: Budget | None) -> RoomInfo:
        """Change the delay budget of a room this home moderates (None: the default); invites
        made from now on carry it, and members take it when they join one."""
        if self.role(room_id) != MODERATOR:
            raise UsageError("only a moderator of the room can change its delay budget")
        with self._tx() as db:
            self._set_budget(db, room_id, budget)
        return self._info(room_id)

    def leave(self, ref: str) -> RoomSummary:
        """Forget a room and erase its keys (only rooms.db: :func:`erase_room` erases the
        rest of the home too)."""
        return self._leave(ref)[0]

    def _leave(self, ref: str) -> tuple[RoomSummary, list[str]]:
        summary = self._summary(self._resolve(ref))
        key_ids = self.key_ids(summary.room_id)
        with self._tx() as db:
            db.execute("DELETE FROM rooms WHERE room_id = ?", (summary.room_id,))
        vacuum(self._db)  # the name, ids and keys out of every free page
        return summary, key_ids

    def key_ids(self, room_id: bytes) -> list[str]:
        """The public names (``RoomKeys.key_id``) of every key this room has had here:
        what replay marks and send counters are filed under."""
        rows = self._db.execute(
            "SELECT key_id FROM room_key_ids WHERE room_id = ?", (room_id,)
        ).fetchall()
        ids = {self._open_key_id(room_id, r[0]) for r in rows}
        if not ids:  # a room stored by an older relay: its current key at least
            key = self._key(room_id, self._summary(room_id).epoch)
            if key is not None:
                ids.add(RoomKeys(key).key_id)
        return sorted(ids)

    # -- reading --------------------------------------------------------------------------

    def get(self, ref: str) -> RoomInfo:
        """A room by name or by a hex prefix (at least 4 digits) of its id."""
        return self._info(self._resolve(ref))

    def role(self, room_id: bytes) -> str:
        return self._summary(room_id).role

    def summary(self, room_id: bytes) -> RoomSummary:
        return self._summary(room_id)

    def list(self) -> list[RoomSummary]:
        rows = self._db.execute(
            "SELECT room_id, name, role, preset, mode, epoch, joined_at FROM rooms"
        ).fetchall()
        return sorted((self._summary_of(r) for r in rows), key=lambda r: r.name)

    def keys(self, room_id: bytes) -> dict[int, bytes]:
        """Every key kept for the room by epoch (only the current one: older ones are erased)."""
        self._summary(room_id)
        rows = self._db.execute(
            "SELECT epoch, key FROM room_keys WHERE room_id = ? ORDER BY epoch", (room_id,)
        )
        return {epoch: self._open(room_id, epoch, bytes(key)) for epoch, key in rows}

    def roster(self, room_id: bytes, enrolled_only: bool = False) -> list[PublicIdentity]:
        self._summary(room_id)
        sql = "SELECT signing_key, agreement_key FROM members WHERE room_id = ?"
        if enrolled_only:
            sql += " AND enrolled = 1"
        rows = self._db.execute(sql + " ORDER BY rowid", (room_id,)).fetchall()
        return [self._public(room_id, s, a, b"member") for s, a in rows]

    # -- moderation -----------------------------------------------------------------------

    def enroll(
        self,
        room_id: bytes,
        public: PublicIdentity,
        display_name: str | None = None,
        now: float | None = None,
    ) -> MemberPath | None:
        """Put a member on the roster with their X25519 key (learned from an --for invite).

        If this home holds the room's key tree (it created the room, or it is a moderator
        of a room from before key trees), the member gets a leaf: the returned path goes into
        their invite. Keys are ratcheted to ``now`` first (:meth:`advance`), so the path and
        the room key are those of the invite's issue hour."""
        self.advance(room_id, time.time() if now is None else now)
        path = None
        signing = self._pk(room_id, public.signing_key, b"members")
        agreement = self._pk(room_id, public.agreement_key, b"membera")
        shown: str | bytes | None = display_name
        if display_name is not None and self._sealer is not None:
            shown = self._sealer.seal(display_name.encode("utf-8"), b"display" + room_id)
        with self._tx() as db:
            self._require(room_id)
            state = self._key_state(room_id)
            mine = state.tree is None and state.path is None
            if mine and self._summary(room_id).role == MODERATOR:  # a room from before trees
                state = KeyState(state.epoch, state.step, state.key, KeyTree(state.step))
            if state.tree is not None:
                path = state.tree.add(public.signing_key)
                self._write_tree(db, room_id, state.step, state.tree, None)
            db.execute(
                "INSERT INTO members (room_id, signing_key, agreement_key, display_name, enrolled)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT(room_id, signing_key) DO UPDATE SET "
                "agreement_key = excluded.agreement_key, enrolled = 1, "
                "display_name = coalesce(excluded.display_name, display_name)",
                (room_id, signing, agreement, shown),
            )
        return path

    def remove_member(self, room_id: bytes, signing_key: bytes) -> bool:
        """Take a member off the roster; True if they were on it."""
        with self._tx() as db:
            self._require(room_id)
            gone = 0
            for stored in self._pks(room_id, signing_key, b"members"):
                gone += db.execute(
                    "DELETE FROM members WHERE room_id = ? AND signing_key = ?",
                    (room_id, stored),
                ).rowcount
        return gone > 0

    def add_moderator(self, room_id: bytes, public: PublicIdentity) -> None:
        with self._tx() as db:
            self._require(room_id)
            mods = self._moderators(room_id)
            if any(m.signing_key == public.signing_key for m in mods):
                return
            if len(mods) >= MAX_MODERATORS:
                raise UsageError(f"a room has at most {MAX_MODERATORS} moderators")
            db.execute(
                "INSERT INTO moderators (room_id, position, signing_key, agreement_key) "
                "VALUES (?, ?, ?, ?)",
                (
                    room_id,
                    len(mods),
                    self._pk(room_id, public.signing_key, b"mods"),
                    self._pk(room_id, public.agreement_key, b"moda"),
                ),
            )

    def set_key(self, room_id: bytes, epoch: int, key: bytes) -> None:
        """Rotate to a new key epoch and erase every older key.

        The grace for stragglers still sending under the old key lives in memory only
        (``Room``'s REKEY_GRACE): a device seized after a rotation holds no key that opens
        what was recorded before it.
        """
        if not isinstance(key, bytes) or len(key) != 32:
            raise UsageError("a room key is 32 bytes")
        if not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise UsageError(f"a key epoch is 0..{MAX_EPOCH}")
        self._home.unlock()  # before the write lock: unlocking may ask for a passphrase
        with self._tx() as db:
            current = self._summary(room_id).epoch
            if epoch <= current:
                raise UsageError(f"key epoch {epoch} is not newer than the current {current}")
            self._set_key(db, room_id, epoch, key)
        self._scrub()

    def seal_clear_keys(self) -> int:
        """Seal every room key still stored in clear (a home moved from the old format) and
        scrub the clear copies from the file and its WAL; how many were sealed."""
        keys = self._home.unlock()
        if keys.data_key is None:
            return 0
        rows = self._db.execute(
            "SELECT room_id, epoch, key FROM room_keys WHERE length(key) = 32"
        ).fetchall()
        names = self._db.execute(
            "SELECT room_id, name FROM rooms WHERE typeof(name) = 'text'"
        ).fetchall()
        people = {
            table: self._db.execute(
                f"SELECT room_id, signing_key, agreement_key FROM {table} "
                "WHERE length(signing_key) = 32"
            ).fetchall()
            for table in ("moderators", "members")
        }
        with self._tx() as db:
            for room_id, epoch, key in rows:
                db.execute(
                    "UPDATE room_keys SET key = ? WHERE room_id = ? AND epoch = ?",
                    (keys.seal_room_key(bytes(room_id), epoch, bytes(key)), room_id, epoch),
                )
            for room_id, name in names:
                db.execute("UPDATE rooms SET name = ? WHERE room_id = ?", (self._nm(name), room_id))
            for table, what in (("moderators", b"mod"), ("members", b"member")):
                for room_id, sk, ak in people[table]:
                    rid = bytes(room_id)
                    db.execute(
                        f"UPDATE {table} SET signing_key = ?, agreement_key = ? "
                        "WHERE room_id = ? AND signing_key = ?",
                        (
                            self._pk(rid, bytes(sk), what + b"s"),
                            self._pk(rid, bytes(ak), what + b"a"),
                            room_id,
                            sk,
                        ),
                    )
            shown = db.execute(
                "SELECT rowid, room_id, display_name FROM members "
                "WHERE typeof(display_name) = 'text'"
            ).fetchall()
            ids = db.execute(
                "SELECT rowid, room_id, key_id FROM room_key_ids WHERE typeof(key_id) = 'text'"
            ).fetchall()
            sealer = keys.sealer(ROOMS_LABEL)
            assert sealer is not None
            for rowid, room_id, key_id in ids:
                sealed = sealer.seal_fixed(key_id.encode(), b"keyid" + room_id)
                db.execute("UPDATE room_key_ids SET key_id = ? WHERE rowid = ?", (sealed, rowid))
            nodes = db.execute(
                "SELECT rowid, room_id, node, key FROM tree_keys WHERE length(key) = 32"
            ).fetchall()
            for rowid, room_id, node, key in nodes:
                sealed = self._seal_node(bytes(room_id), node, bytes(key))
                db.execute("UPDATE tree_keys SET key = ? WHERE rowid = ?", (sealed, rowid))
            leaves = db.execute(
                "SELECT rowid, room_id, signing_key FROM tree_leaves WHERE length(signing_key) = 32"
            ).fetchall()
            for rowid, room_id, who in leaves:
                sealed = self._pk(bytes(room_id), bytes(who), b"leaf")
                db.execute(
                    "UPDATE tree_leaves SET signing_key = ? WHERE rowid = ?", (sealed, rowid)
                )
            for rowid, room_id, name in shown:
                sealed = sealer.seal(name.encode(), b"display" + room_id)
                db.execute("UPDATE members SET display_name = ? WHERE rowid = ?", (sealed, rowid))
        vacuum(self._db)  # rewrite every page: no clear key left in free space
        return len(rows)

    # -- keys: ratchet and key tree -----------------------------------------------------------

    def key_state(self, room_id: bytes) -> KeyState:
        """The room key, its epoch and ratchet step, and the key tree or our path."""
        self._require(room_id)
        return self._key_state(room_id)

    def save_key_state(self, room_id: bytes, state: KeyState) -> None:
        """Replace every key of the room with ``state`` (a rotation or a ratchet), erasing
        the old ones from the file and its WAL. A state older than the stored one is
        refused (UsageError): keys only move forward."""
        self._home.unlock()  # before the write lock: unlocking may ask for a passphrase
        with self._tx() as db:
            summary = self._summary(room_id)
            held = self._step(room_id)
            newer_epoch = state.epoch != summary.epoch
            if (not newer_epoch and state.step < held) or (
                newer_epoch and state.epoch < summary.epoch
            ):
                raise UsageError("refusing to store keys older than those held")
            if state.tree is not None:
                self.merge_leaves(room_id, state.tree)
                gone = [
                    (room_id, form)
                    for m in state.tree.known
                    if m not in state.tree.leaves
                    for form in self._pks(room_id, m, b"members")
                ]
                # Removed from the tree: off the roster too, so no key is ever sealed to them.
                db.executemany("DELETE FROM members WHERE room_id = ? AND signing_key = ?", gone)
            self._set_key(db, room_id, state.epoch, state.key)
            self._write_tree(db, room_id, state.step, state.tree, state.path)
        self._scrub()

    def advance(self, room_id: bytes, now: float) -> KeyState:
        """Ratchet the stored keys to the hour of ``now`` (erasing the older ones)."""
        state = self.key_state(room_id)
        step = ratchet_step(now)
        if step <= state.step:
            return state
        tree, path = state.tree, state.path
        if tree is not None:
            tree.ratchet_to(step)
        if path is not None:
            path.ratchet_to(step, keep_previous=False)
        new = KeyState(state.epoch, step, ratchet(state.key, step - state.step), tree, path)
        self.save_key_state(room_id, new)
        return new

    def merge_leaves(self, room_id: bytes, tree: KeyTree) -> None:
        """Take into ``tree`` (loaded by a running moderator) the leaves another process
        enrolled since (`relay room invite --for` meanwhile): the next rekey reaches them,
        and saving the tree does not overwrite them."""
        stored = self._key_state(room_id).tree
        if stored is None:
            return
        stored.ratchet_to(tree.step)
        for member, position in stored.leaves.items():
            if member not in tree.known:
                nodes = {n: stored.keys[n] for n in stored._path(position)}
                tree.adopt(member, position, nodes)

    def _keep_path(
        self, room_id: bytes, key: bytes, step: int, held: int
    ) -> tuple[bytes, MemberPath | None, int]:
        """The new key with the path we already hold, both at the later of their steps."""
        path = self._key_state(room_id).path
        if path is None:
            return key, None, step
        if step >= held:
            path.ratchet_to(step, keep_previous=False)
            return key, path, step
        return ratchet(key, held - step), path, held

    def _step(self, room_id: bytes) -> int:
        row = self._holder_row(room_id)
        return 0 if row is None else row[0]  # rooms from before the ratchet: step 0

    def _holder_row(self, room_id: bytes):
        return self._db.execute(
            "SELECT step, holder, depth, leaf FROM key_steps WHERE room_id = ?", (room_id,)
        ).fetchone()

    def _key_state(self, room_id: bytes) -> KeyState:
        summary = self._summary(room_id)
        key = self._key(room_id, summary.epoch)
        if key is None:
            raise UsageError(f"the key of room {summary.name!r} is missing from {self.path}")
        row = self._holder_row(room_id)
        if row is None:
            return KeyState(summary.epoch, 0, key)
        step, holder, depth, leaf = row
        rows = self._db.execute(
            "SELECT node, key FROM tree_keys WHERE room_id = ? ORDER BY node", (room_id,)
        ).fetchall()
        nodes = [(node, self._open_node(room_id, node, bytes(k))) for node, k in rows]
        tree = path = None
        if holder:
            leaves = {
                self._unpk(room_id, s, b"leaf"): leaf_
                for s, leaf_ in self._db.execute(
                    "SELECT signing_key, leaf FROM tree_leaves WHERE room_id = ?", (room_id,)
                )
            }
            tree = KeyTree.restore(step, depth, nodes, leaves)
        elif leaf is not None:
            path = MemberPath(leaf, depth, step, {split_node(n)[0]: k for n, k in nodes})
        return KeyState(summary.epoch, step, key, tree, path)

    def _write_tree(
        self,
        db: sqlite3.Connection,
        room_id: bytes,
        step: int,
        tree: KeyTree | None,
        path: MemberPath | None,
    ) -> None:
        """Replace the ratchet step and the tree or path keys (the old rows are erased)."""
        holder = tree is not None
        depth = tree.depth if tree is not None else path.depth if path is not None else 0
        leaf = path.position if path is not None else None
        db.execute(
            "INSERT OR REPLACE INTO key_steps (room_id, step, holder, depth, leaf) "
            "VALUES (?, ?, ?, ?, ?)",
            (room_id, step, int(holder), depth, leaf),
        )
        db.execute("DELETE FROM tree_keys WHERE room_id = ?", (room_id,))
        db.execute("DELETE FROM tree_leaves WHERE room_id = ?", (room_id,))
        if tree is not None:
            db.executemany(
                "INSERT INTO tree_keys (room_id, node, key) VALUES (?, ?, ?)",
                [(room_id, n, self._seal_node(room_id, n, k)) for n, k in tree.nodes()],
            )
            db.executemany(
                "INSERT INTO tree_leaves (room_id, signing_key, leaf) VALUES (?, ?, ?)",
                [
                    (room_id, self._pk(room_id, ident, b"leaf"), pos)
                    for ident, pos in tree.leaves.items()
                ],
            )
        elif path is not None:
            db.executemany(
                "INSERT INTO tree_keys (room_id, node, key) VALUES (?, ?, ?)",
                [
                    (
                        room_id,
                        node_id(lvl, path.position >> lvl),
                        self._seal_node(room_id, node_id(lvl, path.position >> lvl), k),
                    )
                    for lvl, k in sorted(path.keys.items())
                ],
            )

    # -- internals ------------------------------------------------------------------------

    @property
    def _sealer(self) -> Sealer | None:
        if self._names is None:
            self._names = self._home.unlock().sealer(ROOMS_LABEL) or False
        return self._names or None

    def _nm(self, name: str) -> str | bytes:
        """A room name as stored (sealed, or as it is in a home of the old format)."""
        sealer = self._sealer
        return name if sealer is None else sealer.seal_fixed(name.encode("utf-8"), b"name")

    def _names_of(self, name: str) -> tuple[str | bytes, ...]:
        """Every stored form a name may have (a clear row of the old format too)."""
        stored = self._nm(name)
        return (name,) if stored == name else (stored, name)

    def _unnm(self, stored: str | bytes) -> str:
        if isinstance(stored, str):
            return stored
        sealer = self._sealer
        if sealer is None:
            raise UsageError(f"{self.path} holds sealed rooms but this identity has no data key")
        return sealer.open_fixed(stored, b"name").decode("utf-8")

    def _pk(self, room_id: bytes, key: bytes, what: bytes) -> bytes:
        sealer = self._sealer
        return key if sealer is None else sealer.seal_fixed(key, what + room_id)

    def _pks(self, room_id: bytes, key: bytes, what: bytes) -> tuple[bytes, ...]:
        stored = self._pk(room_id, key, what)
        return (key,) if stored == key else (stored, key)

    def _unpk(self, room_id: bytes, stored: bytes, what: bytes) -> bytes:
        stored = bytes(stored)
        if len(stored) == 32:
            return stored  # the old format
        sealer = self._sealer
        if sealer is None:
            raise UsageError(f"{self.path} holds sealed rooms but this identity has no data key")
        return sealer.open_fixed(stored, what + room_id)

    def _public(self, room_id: bytes, s: bytes, a: bytes, what: bytes) -> PublicIdentity:
        return PublicIdentity(
            self._unpk(room_id, s, what + b"s"), self._unpk(room_id, a, what + b"a")
        )

    def _summary_of(self, row: tuple) -> RoomSummary:
        return RoomSummary(bytes(row[0]), self._unnm(row[1]), *row[2:])

    def _note_key_id(self, db: sqlite3.Connection, room_id: bytes, key: bytes) -> None:
        """Remember the key's public id (sealed, deterministically so that it is stored
        once: it would link this home to the room for anyone who later holds the key) so
        leaving erases what is filed under it (replay marks, counters)."""
        key_id = RoomKeys(key).key_id
        sealer = self._sealer
        stored = (
            key_id if sealer is None else sealer.seal_fixed(key_id.encode(), b"keyid" + room_id)
        )
        db.execute(
            "INSERT OR IGNORE INTO room_key_ids (room_id, key_id) VALUES (?, ?)", (room_id, stored)
        )

    def _open_key_id(self, room_id: bytes, stored: str | bytes) -> str:
        if isinstance(stored, str):
            return stored
        sealer = self._sealer
        if sealer is None:
            raise UsageError(f"{self.path} holds sealed rooms but this identity has no data key")
        return sealer.open_fixed(stored, b"keyid" + room_id).decode()

    def _seal_node(self, room_id: bytes, node: int, key: bytes) -> bytes:
        """A key-tree key as stored: sealed under the data key, bound to its room and node."""
        sealer = self._sealer
        return key if sealer is None else sealer.seal(key, b"node%d|" % node + room_id)

    def _open_node(self, room_id: bytes, node: int, stored: bytes) -> bytes:
        if len(stored) == 32:
            return stored  # the old format
        sealer = self._sealer
        if sealer is None:
            raise UsageError(f"{self.path} holds sealed keys but this identity has no data key")
        return sealer.open(stored, b"node%d|" % node + room_id)

    def _seal(self, room_id: bytes, epoch: int, key: bytes) -> bytes:
        return self._home.unlock().seal_room_key(room_id, epoch, key)

    def _open(self, room_id: bytes, epoch: int, stored: bytes) -> bytes:
        return self._home.unlock().open_room_key(room_id, epoch, stored)

    def _insert(self, db: sqlite3.Connection, info: RoomInfo, role: str, invite_issued_at: int):
        db.execute(
            "INSERT INTO rooms (room_id, name, role, preset, mode, epoch, joined_at, "
            "invite_issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.room_id,
                self._nm(info.name),
                role,
                info.preset,
                info.mode,
                info.epoch,
                int(time.time()),
                invite_issued_at,
            ),
        )
        db.execute(
            "INSERT INTO room_keys (room_id, epoch, key) VALUES (?, ?, ?)",
            (info.room_id, info.epoch, self._seal(info.room_id, info.epoch, info.key)),
        )
        self._note_key_id(db, info.room_id, info.key)
        self._replace_moderators(db, info.room_id, info.moderators)
        self._set_budget(db, info.room_id, info.budget)

    def _replace_moderators(
        self, db: sqlite3.Connection, room_id: bytes, mods: tuple[PublicIdentity, ...]
    ) -> None:
        db.execute("DELETE FROM moderators WHERE room_id = ?", (room_id,))
        db.executemany(
            "INSERT INTO moderators (room_id, position, signing_key, agreement_key) "
            "VALUES (?, ?, ?, ?)",
            [
                (
                    room_id,
                    i,
                    self._pk(room_id, m.signing_key, b"mods"),
                    self._pk(room_id, m.agreement_key, b"moda"),
                )
                for i, m in enumerate(mods)
            ],
        )

    def _set_key(self, db: sqlite3.Connection, room_id: bytes, epoch: int, key: bytes) -> None:
        db.execute(
            "INSERT OR REPLACE INTO room_keys (room_id, epoch, key) VALUES (?, ?, ?)",
            (room_id, epoch, self._seal(room_id, epoch, key)),
        )
        self._note_key_id(db, room_id, key)
        db.execute(
            "DELETE FROM room_keys WHERE room_id = ? AND epoch != ?",
            (room_id, epoch),
        )
        db.execute("UPDATE rooms SET epoch = ? WHERE room_id = ?", (epoch, room_id))

    def _check_name_free(self, name: str, room_id: bytes, hint: str = "") -> None:
        for stored in self._names_of(name):
            row = self._db.execute("SELECT room_id FROM rooms WHERE name = ?", (stored,)).fetchone()
            if row is not None:
                break
        if row is not None and bytes(row[0]) != room_id:
            raise UsageError(
                f"there is already a room called {name!r} here; {hint or 'choose another name'}"
            )

    def _require(self, room_id: bytes) -> None:
        self._summary(room_id)

    def _summary(self, room_id: bytes) -> RoomSummary:
        row = self._db.execute(
            "SELECT room_id, name, role, preset, mode, epoch, joined_at FROM rooms "
            "WHERE room_id = ?",
            (room_id,),
        ).fetchone()
        if row is None:
            raise UsageError(f"no room with id {bytes(room_id).hex()} here")
        return self._summary_of(row)

    def _key(self, room_id: bytes, epoch: int) -> bytes | None:
        row = self._db.execute(
            "SELECT key FROM room_keys WHERE room_id = ? AND epoch = ?", (room_id, epoch)
        ).fetchone()
        return None if row is None else self._open(room_id, epoch, bytes(row[0]))

    def _moderators(self, room_id: bytes) -> tuple[PublicIdentity, ...]:
        rows = self._db.execute(
            "SELECT signing_key, agreement_key FROM moderators WHERE room_id = ? ORDER BY position",
            (room_id,),
        ).fetchall()
        return tuple(self._public(room_id, s, a, b"mod") for s, a in rows)

    def _info(self, room_id: bytes) -> RoomInfo:
        s = self._summary(room_id)
        key = self._key(room_id, s.epoch)
        if key is None:
            raise UsageError(f"the key of room {s.name!r} is missing from {self.path}")
        row = self._db.execute(
            "SELECT max_delay_ms, relay_hops FROM room_budget WHERE room_id = ?", (room_id,)
        ).fetchone()
        budget = Budget(int(row[0]), int(row[1])) if row is not None else None
        return RoomInfo(
            s.room_id, s.name, s.preset, s.mode, s.epoch, key, self._moderators(room_id), budget
        )

    def _set_budget(self, db: sqlite3.Connection, room_id: bytes, budget: Budget | None) -> None:
        db.execute("DELETE FROM room_budget WHERE room_id = ?", (room_id,))
        if budget is not None:
            db.execute(
                "INSERT INTO room_budget (room_id, max_delay_ms, relay_hops) VALUES (?, ?, ?)",
                (room_id, budget.max_delay_ms, budget.relay_hops),
            )

    def _resolve(self, ref: str) -> bytes:
        ref = ref.strip()
        for stored in self._names_of(ref):
            row = self._db.execute("SELECT room_id FROM rooms WHERE name = ?", (stored,)).fetchone()
            if row is not None:
                return bytes(row[0])
        rows = self._db.execute("SELECT name FROM rooms").fetchall()
        names = [self._unnm(name) for (name,) in rows]
        folded = [n for n in names if n.casefold() == ref.casefold()]
        if len(folded) == 1:
            return self._resolve(folded[0])
        if len(ref) >= MIN_ID_PREFIX and _HEX.fullmatch(ref):
            prefix = ref.lower()
            hits = [
                bytes(rid)
                for (rid,) in self._db.execute("SELECT room_id FROM rooms")
                if bytes(rid).hex().startswith(prefix)
            ]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise UsageError(f"room id prefix {ref!r} is ambiguous; give more digits")
        close = difflib.get_close_matches(ref, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(n) for n in close)}?)" if close else ""
        if not names:
            hint = " (there are no rooms here yet: relay room create or relay room join)"
        raise UsageError(f"no room {ref!r} here{hint}; see `relay room list`")


def _same_key(held: bytes | None, held_step: int, key: bytes, step: int) -> bool:
    """One epoch's key at two ratchet steps: the same key if the earlier ratchets to the
    later (an invite issued an hour later carries the key an hour on)."""
    if held is None:
        return False
    if step >= held_step:
        return ratchet(held, step - held_step) == key
    return ratchet(key, held_step - step) == held


def set_home_passphrase(home: Home, passphrase: str | None) -> int:
    """Lock the home's keys under ``passphrase`` (None: unprotected), and seal under the data
    key any room key still in clear (a home from an older relay); how many were sealed."""
    home.set_passphrase(passphrase)
    if not home.rooms_db.exists():
        return 0
    with RoomStore(home) as rooms:
        return rooms.seal_clear_keys()


def erase_room(home: Home, ref: str) -> RoomSummary:
    """Leave a room and erase everything of it from the home: its keys, moderators and
    roster (rooms.db), the replay marks and with them the speakers' public keys
    (replay.db), its voice messages (clips.db), and the send counters of its keys
    (counters.db: the floor rises first, so no nonce can come back if it is joined again).
    """
    from relay.store.clips import ClipStore
    from relay.store.counters import CounterStore
    from relay.store.replay import REPLAY_LABEL, ReplayStore

    with RoomStore(home) as rooms:
        summary, key_ids = rooms._leave(ref)
    if home.replay_db.exists():
        replay = ReplayStore(home.replay_db, home.unlock().sealer(REPLAY_LABEL))
        try:
            replay.forget(key_ids)
        finally:
            replay.close()
    if home.counters_db.exists():
        counters = CounterStore(home.counters_db)
        try:
            counters.forget([f"{k}:" for k in key_ids])
        finally:
            counters.close()
    clips_db = home.path / "clips.db"
    if clips_db.exists():
        with ClipStore(clips_db) as clips:
            clips.forget_room(summary.room_id)
    return summary


def find_room(home: Home, ref: str) -> RoomInfo:
    """A room of ``home`` by name or id prefix, for commands that only read: a home without
    rooms is an error, never created (no directory, no database)."""
    if not home.rooms_db.exists():
        raise UsageError(
            f"no room {ref.strip()!r} here (there are no rooms in {home.path} yet: "
            "relay room create or relay room join); see `relay room list`"
        )
    with RoomStore(home) as rooms:
        return rooms.get(ref)


def _new_room_id() -> bytes:
    return os.urandom(ROOM_ID_LEN)
