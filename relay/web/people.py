"""Giving a person a place on a gateway's page: an identity, a seat in the room, a link.

When the gateway's own identity moderates the room, a new person is enrolled at once: the
gateway makes an invite sealed to the person's new identity (as ``relay room invite --for``
does) and joins it in the person's home below the gateway's. Otherwise the person's public
id is printed for a moderator to invite, and ``--invite`` joins the invite they made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.core.identity import PublicIdentity
from relay.core.invite import decode_invite, encode_invite
from relay.errors import UsageError
from relay.store.home import Home
from relay.store.rooms import MODERATOR, RoomStore
from relay.web.guests import Guest, Guests, check_name, guest_dir


@dataclass(frozen=True, slots=True)
class Seat:
    """What adding a person did: ``token`` is None while the person still needs an invite."""

    guest: Guest
    public: PublicIdentity
    token: str | None
    enrolled: bool


def _joined(home: Home, room_hex: str) -> bool:
    if not home.rooms_db.exists():
        return False
    with RoomStore(home) as store:
        try:
            store.get(room_hex)
        except UsageError:
            return False
    return True


def add_person(
    gateway: Home,
    room_ref: str,
    name: str,
    *,
    as_me: bool = False,
    invite: str | None = None,
    hours: float = 24.0,
) -> Seat:
    """Add ``name`` to the page of ``room_ref`` (or finish adding them with ``invite``)."""
    name = check_name(name)
    me = gateway.identity()
    with RoomStore(gateway) as store:
        info = store.get(room_ref)
        moderating = (
            store.role(info.room_id) == MODERATOR
            and info.moderator_index(me.public.signing_key) is not None
        )
    with Guests(gateway) as guests:
        guest = guests.get(info.room_id, name)
        if as_me:
            if guest is not None and not guest.as_me:
                raise UsageError(f"{name!r} already has a place of their own on this page")
            if guest is None:
                guest = guests.add(info.room_id, name, me.identity, None)
            return Seat(guest, me.public, guests.issue_link(guest, hours), moderating)
        if guest is None:
            person = Home(gateway.path / "web" / "new")
            # Locked like the gateway's own keys, under the same passphrase (keys at rest).
            identity = person.init_identity(force=True, passphrase=gateway.child_passphrase())
            final = Home(gateway.path / "web" / guest_dir(identity.identity))
            person.path.rename(final.path)
            guest = guests.add(info.room_id, name, identity.identity, final.path.name)
        elif guest.as_me:
            raise UsageError(f"{name!r} is the gateway's own identity on this page")
        home = guest.home(gateway)
        identity = home.identity()
        if not _joined(home, info.id_hex):
            if moderating:
                text = encode_invite(info, me, identity.public, int(time.time()))
                with RoomStore(gateway) as store:
                    store.enroll(info.room_id, identity.public)
            elif invite is not None:
                text = invite.strip()
            else:
                return Seat(guest, identity.public, None, False)
            with RoomStore(home) as theirs:
                theirs.join(decode_invite(text, identity), me=identity.public)
        elif invite is not None:
            raise UsageError(f"{name!r} is already in the room")
        return Seat(guest, identity.public, guests.issue_link(guest, hours), True)
