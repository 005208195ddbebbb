"""Who may use a gateway's web page: people, their identities, one-time links and sessions.

Each person the gateway serves has an identity of their own, held by the gateway in a home
below the gateway's (``web/<id>/``), enrolled in the room like any member, so a moderator can
mute or remove them like anyone else. The gateway is trusted with those keys, as a
Meshtastic node is trusted with its channel keys. A person may instead be the gateway's own
identity (``as_me``: the operator's phone, a moderator's controls in a browser).

A person gets in with a one-time link: a random token shown once (as a URL and a QR code),
stored only as its SHA-256, valid for a limited time and exchanged at the first visit for a
session cookie (also stored only as a hash). Nobody on the network without a link gets
anything: every request is checked against this store.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from relay.errors import UsageError
from relay.store.db import connect
from relay.store.home import Home

WEB_DIR = "web"
GUESTS_FILE = "guests.db"
TOKEN_BYTES = 16
SESSION_BYTES = 32
LINK_HOURS = 24
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS guests (
    room_id BLOB NOT NULL,
    name TEXT NOT NULL,
    folded TEXT NOT NULL,
    dir TEXT,
    identity BLOB NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (room_id, folded)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    room_id BLOB NOT NULL,
    folded TEXT NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    hash BLOB PRIMARY KEY,
    room_id BLOB NOT NULL,
    folded TEXT NOT NULL,
    created INTEGER NOT NULL
);
"""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME.match(name):
        raise UsageError(
            "a person's name for the web page: 1-32 letters, digits, spaces, '.', '_' or '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Guest:
    """A person the gateway serves; ``dir`` is None for the gateway's own identity."""

    room_id: bytes
    name: str
    dir: str | None
    identity: bytes

    @property
    def as_me(self) -> bool:
        return self.dir is None

    def home(self, gateway: Home) -> Home:
        """The home holding this person's identity and their membership of the room."""
        # Locked like the gateway's own home, with its passphrase (keys at rest).
        return gateway if self.dir is None else gateway.child(gateway.path / WEB_DIR / self.dir)


class Guests:
    """The gateway's people, links and sessions (SQLite in the gateway's home)."""

    def __init__(self, home: Home, *, create: bool = True) -> None:
        self.home = home
        path = home.path / WEB_DIR / GUESTS_FILE
        if not create and not path.exists():
            self._db: sqlite3.Connection | None = None
            return
        home.ensure()
        self._db = connect(path, durable=True)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> Guests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- people
    def add(self, room_id: bytes, name: str, identity: bytes, dir: str | None) -> Guest:
        name = check_name(name)
        if self._db is None:
            raise UsageError("no web gateway state here")
        try:
            self._db.execute(
                "INSERT INTO guests VALUES (?, ?, ?, ?, ?, ?)",
                (room_id, name, name.casefold(), dir, identity, int(time.time())),
            )
        except sqlite3.IntegrityError:
            raise UsageError(f"{name!r} already has a place on this gateway's page") from None
        return Guest(room_id, name, dir, identity)

    def get(self, room_id: bytes, name: str) -> Guest | None:
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT name, dir, identity FROM guests WHERE room_id = ? AND folded = ?",
            (room_id, name.strip().casefold()),
        ).fetchone()
        return None if row is None else Guest(room_id, row[0], row[1], row[2])

    def list(self, room_id: bytes) -> list[Guest]:
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT name, dir, identity FROM guests WHERE room_id = ? ORDER BY created, name",
            (room_id,),
        ).fetchall()
        return [Guest(room_id, *row) for row in rows]

    def drop(self, room_id: bytes, name: str) -> Guest:
        """Forget a person: their links and sessions stop working at once, and the identity
        the gateway held for them is deleted."""
        guest = self.get(room_id, name)
        if guest is None or self._db is None:
            raise UsageError(f"nobody called {name!r} on this gateway's page")
        folded = guest.name.casefold()
        self._db.execute("BEGIN IMMEDIATE")
        for table in ("tokens", "sessions", "guests"):
            self._db.execute(
                f"DELETE FROM {table} WHERE room_id = ? AND folded = ?", (room_id, folded)
            )
        self._db.execute("COMMIT")
        if guest.dir is not None:
            shutil.rmtree(self.home.path / WEB_DIR / guest.dir, ignore_errors=True)
        return guest

    # -------------------------------------------------------------- links and sessions
    def issue_link(self, guest: Guest, hours: float = LINK_HOURS) -> str:
        """A new one-time token for ``guest`` (shown once; only its hash is kept)."""
        if not 0 < hours <= 24 * 30:
            raise UsageError("a link is valid for more than 0 and at most 720 hours")
        assert self._db is not None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?)",
            (_digest(token), guest.room_id, guest.name.casefold(), int(time.time() + hours * 3600)),
        )
        return token

    def redeem(self, token: str) -> tuple[Guest, str] | None:
        """Exchange a one-time token for a session cookie; None if it is unknown, used or
        expired (all look alike to the caller)."""
        if self._db is None or not token or len(token) > 64:
            return None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT room_id, folded, expires FROM tokens WHERE hash = ?", (_digest(token),)
            ).fetchone()
            if row is None:
                self._db.execute("ROLLBACK")
                return None
            self._db.execute("DELETE FROM tokens WHERE hash = ?", (_digest(token),))
            room_id, folded, expires = row
            guest = self._by_folded(room_id, folded)
            if guest is None or expires < time.time():
                self._db.execute("COMMIT")
                return None
            cookie = secrets.token_urlsafe(SESSION_BYTES)
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)",
                (_digest(cookie), room_id, folded, int(time.time())),
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return guest, cookie

    def session(self, cookie: str | None) -> Guest | None:
        """The person a session cookie belongs to, or None."""
        if self._db is None or not cookie or len(cookie) > 128:
            return None
        row = self._db.execute(
            "SELECT room_id, folded FROM sessions WHERE hash = ?", (_digest(cookie),)
        ).fetchone()
        return None if row is None else self._by_folded(*row)

    def end_sessions(self, guest: Guest) -> None:
        assert self._db is not None
        self._db.execute(
            "DELETE FROM sessions WHERE room_id = ? AND folded = ?",
            (guest.room_id, guest.name.casefold()),
        )

    def _by_folded(self, room_id: bytes, folded: str) -> Guest | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT name, dir, identity FROM guests WHERE room_id = ? AND folded = ?",
            (room_id, folded),
        ).fetchone()
        return None if row is None else Guest(room_id, row[0], row[1], row[2])


def guest_dir(identity: bytes) -> str:
    return identity[:8].hex()


def web_path(home: Home) -> Path:
    return home.path / WEB_DIR
