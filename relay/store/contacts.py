"""Contacts: local names for members' identities, kept in the home and never sent on air.

A room on the air knows members only by keys; people know each other by name. A contact
maps a name the user chose to a member's fingerprint (what ``relay id show`` prints and people
read to each other) and, when it was added from the full public id (``relayid1:...``), to the
member's identity key too, so the name applies even before the member introduces itself.

Names are shown in terminals: only printable characters, no escape sequences.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from relay.core.identity import PUBLIC_PREFIX, PublicIdentity
from relay.errors import UsageError
from relay.store.db import connect
from relay.store.home import Home

CONTACTS_FILE = "contacts.db"
MAX_NAME = 32
FINGERPRINT = re.compile(r"^[a-z2-7]{4}(-[a-z2-7]{4}){3}$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    name TEXT NOT NULL,
    folded TEXT NOT NULL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    identity BLOB
)
"""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    fingerprint: str
    identity: bytes | None = None  # the Ed25519 key, when added from a public id

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "identity": self.identity.hex() if self.identity else None,
        }


def check_name(name: str) -> str:
    """A contact name as it will be stored, or UsageError saying what is wrong with it."""
    name = name.strip()
    if not name:
        raise UsageError("a contact name cannot be empty")
    if len(name) > MAX_NAME:
        raise UsageError(f"a contact name has at most {MAX_NAME} characters")
    if not name.isprintable():
        raise UsageError("a contact name may hold only printable characters")
    if name.lower().startswith(PUBLIC_PREFIX):
        raise UsageError("a contact name cannot look like a public id")
    return name


def parse_member_id(text: str) -> tuple[str, bytes | None]:
    """``(fingerprint, identity or None)`` from a public id or a fingerprint."""
    text = text.strip()
    if text.lower().startswith(PUBLIC_PREFIX):
        public = PublicIdentity.decode(text)
        return public.fingerprint, public.identity
    folded = text.lower()
    if FINGERPRINT.match(folded):
        return folded, None
    raise UsageError(
        f"ID is a public id ({PUBLIC_PREFIX}...) or a fingerprint (xxxx-xxxx-xxxx-xxxx), "
        "as `relay id show` prints them"
    )


class Contacts:
    """The home's contacts (``contacts.db``, 0600). Reading never creates the file."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.path = home.path / CONTACTS_FILE

    def _open(self, *, create: bool) -> sqlite3.Connection | None:
        if not create and not self.path.exists():
            return None
        if create:
            self.home.ensure()
        db = connect(self.path, durable=False)
        db.execute(SCHEMA)
        return db

    def list(self) -> list[Contact]:
        db = self._open(create=False)
        if db is None:
            return []
        try:
            rows = db.execute(
                "SELECT name, fingerprint, identity FROM contacts ORDER BY folded"
            ).fetchall()
        finally:
            db.close()
        return [Contact(n, f, bytes(i) if i is not None else None) for n, f, i in rows]

    def add(self, name: str, member_id: str, *, replace: bool = False) -> Contact:
        """Name a member; an existing name is refused unless ``replace``."""
        name = check_name(name)
        fingerprint, identity = parse_member_id(member_id)
        db = self._open(create=True)
        assert db is not None
        try:
            taken = db.execute(
                "SELECT name FROM contacts WHERE folded = ?", (name.casefold(),)
            ).fetchone()
            if taken and not replace:
                raise UsageError(f"there is already a contact {taken[0]!r} (use --replace)")
            same = db.execute(
                "SELECT name FROM contacts WHERE fingerprint = ? AND folded != ?",
                (fingerprint, name.casefold()),
            ).fetchone()
            if same:
                raise UsageError(f"that member is already a contact, as {same[0]!r}")
            db.execute(
                "INSERT OR REPLACE INTO contacts (name, folded, fingerprint, identity) "
                "VALUES (?, ?, ?, ?)",
                (name, name.casefold(), fingerprint, identity),
            )
        finally:
            db.close()
        return Contact(name, fingerprint, identity)

    def remove(self, name: str) -> Contact:
        db = self._open(create=False)
        row = None
        if db is not None:
            try:
                row = db.execute(
                    "SELECT name, fingerprint, identity FROM contacts WHERE folded = ?",
                    (name.strip().casefold(),),
                ).fetchone()
                if row:
                    db.execute("DELETE FROM contacts WHERE folded = ?", (name.strip().casefold(),))
            finally:
                db.close()
        if row is None:
            raise UsageError(f"no contact {name!r} (see `relay contacts list`)")
        return Contact(row[0], row[1], bytes(row[2]) if row[2] is not None else None)


class Names:
    """What a user interface calls each member: a contact's name, else a short id."""

    def __init__(self, contacts: list[Contact] | None = None) -> None:
        contacts = contacts or []
        self.by_identity = {c.identity: c.name for c in contacts if c.identity is not None}
        self.by_fingerprint = {c.fingerprint: c.name for c in contacts}

    def contact(self, identity: bytes, public: PublicIdentity | None) -> str | None:
        """The contact name of a member, if they are one."""
        if identity in self.by_identity:
            return self.by_identity[identity]
        if public is not None:
            return self.by_fingerprint.get(public.fingerprint)
        return None


def short_id(identity: bytes, public: PublicIdentity | None) -> str:
    """A member's short id: the first two groups of the fingerprint, else hex of the key."""
    if public is not None:
        return public.fingerprint[:9]
    return identity[:4].hex()
