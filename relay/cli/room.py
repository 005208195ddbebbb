"""`relay room`: create, invite to, join, list and leave rooms. Thin: the store does the work."""

from __future__ import annotations

import json
import sys
import time

import click

from relay.cli.options import budget_options, home_option, resolve_budget, resolve_home
from relay.core.identity import PUBLIC_PREFIX, PublicIdentity
from relay.core.invite import Invite, RoomInfo, decode_invite, encode_invite
from relay.errors import UsageError
from relay.plan import Budget
from relay.store.rooms import MODERATOR, RoomStore, RoomSummary, erase_room


@click.group("room")
def room_group() -> None:
    """Voice rooms: a key, radio settings and moderators that members share.

    \b
    Examples:
      relay room create market --preset SHORT_FAST --mode 1600
      relay room invite market --for relayid1:...    an invite only that member can open
      relay room join relay1:...                     on the member's device
      relay room list
    """


def _info_dict(info: RoomInfo, role: str) -> dict[str, object]:
    return {
        "name": info.name,
        "room_id": info.id_hex,
        "role": role,
        "preset": info.preset,
        "mode": info.mode,
        "epoch": info.epoch,
        "moderators": [m.fingerprint for m in info.moderators],
        **(info.budget or Budget()).to_dict(),
    }


@room_group.command("create")
@click.argument("name")
@click.option(
    "--preset",
    default="SHORT_FAST",
    show_default=True,
    help="Meshtastic modem preset the room uses: SHORT_TURBO, SHORT_FAST, ... LONG_FAST.",
)
@click.option(
    "--mode",
    default="1600",
    show_default=True,
    help="Codec2 mode: 3200 2400 1600 1400 1300 1200 700C.",
)
@budget_options
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def create_cmd(name, preset, mode, max_delay, relay_hops, home, as_json) -> None:
    """Create a room with a fresh random key; you are its moderator.

    Room names are local labels (unique in your home) and travel in invites; the room is
    really identified by its random id. Check first that voice fits the preset with
    `relay plan --preset P` (and `--max-delay MS`: a room that allows about a second of
    delay carries live voice on MEDIUM_FAST). The delay budget travels in the invites.

    \b
    Examples:
      relay room create market
      relay room create "night shift" --preset SHORT_TURBO --mode 3200
      relay room create relay-team --preset MEDIUM_FAST --mode 700C --json
      relay room create far --preset MEDIUM_FAST --mode 1200 --max-delay 1000 --relay-hops 0
    """
    h = resolve_home(home)
    me = h.identity()
    with RoomStore(h) as store:
        budget = None
        if max_delay is not None or relay_hops is not None:
            budget = resolve_budget(max_delay, relay_hops)
        info = store.create(name, preset, mode, me, budget)
    if as_json:
        click.echo(json.dumps(_info_dict(info, MODERATOR)))
        return
    click.echo(f"created room {info.name!r} (id {info.id_hex[:8]}), you moderate it")
    click.echo(f"preset {info.preset}, Codec2 {info.mode}, key epoch {info.epoch}")
    if info.budget is not None:
        b = info.budget
        click.echo(f"delay budget {b.max_delay_ms} ms, {b.relay_hops} relay hop(s)")
    click.echo(f"invite members with: relay room invite {_quote(info.name)} --for PUBLIC_ID")


def _recipient(store: RoomStore, room_id: bytes, value: str) -> PublicIdentity:
    """--for takes a public id, or the fingerprint of a member already on the roster."""
    if value.strip().lower().startswith(PUBLIC_PREFIX):
        return PublicIdentity.decode(value)
    wanted = value.strip().lower()
    for member in store.roster(room_id):
        if member.fingerprint == wanted:
            return member
    raise UsageError(
        f"--for wants the member's public id ({PUBLIC_PREFIX}..., from `relay id show`); "
        "a bare fingerprint only works for members already invited --for their public id"
    )


@room_group.command("invite")
@click.argument("room")
@click.option(
    "--for",
    "for_",
    metavar="PUBLIC_ID",
    help="Seal the room key to this member's public id (relayid1:...), so only they can join.",
)
@click.option("--qr", is_flag=True, help="Also print the invite as a QR code in the terminal.")
@home_option
def invite_cmd(room, for_, qr, home) -> None:
    """Print an invite to ROOM (a name or an id prefix), signed by you as moderator.

    With --for the room key is sealed to that member: the text is useless to anyone else,
    and they are enrolled on the roster so they get new keys when the room is rekeyed.
    Without --for, anyone who sees the text (over a shoulder, in a photo, in a chat log)
    holds the room key: hand it over in person.

    \b
    Examples:
      relay room invite market --for relayid1:abcd...
      relay room invite market --for relayid1:abcd... --qr     scan it from the screen
      relay room invite market > invite.txt                    open invite: keep it private
    """
    h = resolve_home(home)
    me = h.identity()
    with RoomStore(h) as store:
        info = store.get(room)
        if store.role(info.room_id) != MODERATOR:
            raise UsageError(
                f"only a moderator can invite to {info.name!r}; you are a member of it"
            )
        if info.moderator_index(me.public.signing_key) is None:
            raise UsageError(
                f"your identity is not a moderator of {info.name!r} (was it replaced with "
                "`relay id init --force`?)"
            )
        recipient = _recipient(store, info.room_id, for_) if for_ else None
        now = int(time.time())
        # Enrolling gives the member a key-tree leaf (its path keys go into the invite) and
        # ratchets the stored keys to this hour, so the invite carries this hour's keys.
        path = store.enroll(info.room_id, recipient, now=now) if recipient is not None else None
        store.advance(info.room_id, now)
        info = store.get(info.id_hex)
        text = encode_invite(info, me, recipient, now, path)
    if recipient is None:
        click.echo(
            "relay: warning: this invite is not sealed: anyone who sees it can join and "
            "listen; prefer --for PUBLIC_ID",
            err=True,
        )
    else:
        click.echo(f"sealed for {recipient.fingerprint}; only they can open it", err=True)
    if qr:
        import segno

        segno.make(text, error="l").terminal(out=sys.stdout, compact=True)
    click.echo(text)


def _read_invite(value: str) -> str:
    if value == "-":
        text = sys.stdin.read(64 * 1024)
        if not text.strip():
            raise UsageError("no invite on standard input")
        return text
    return value


@room_group.command("join")
@click.argument("invite")
@click.option("--name", help="Keep the room under another name here (names are unique).")
@home_option
def join_cmd(invite, name, home) -> None:
    """Join a room from an INVITE (the relay1:... text, or - to read it from stdin).

    The invite is checked before anything is stored: its signature, its moderator and, if it
    was sealed, that it is yours. Then compare the moderator fingerprints it prints out loud
    with the person who invited you: that is what proves the invite came from them.

    \b
    Examples:
      relay room join relay1:AQG...
      relay room join - < invite.txt
      relay room join relay1:AQG... --name market-2      you already have a "market"
    """
    h = resolve_home(home)
    me = h.identity()
    decoded = decode_invite(_read_invite(invite), me)
    with RoomStore(h) as store:
        info = store.join(decoded, me=me.public, name=name)
        role = store.role(info.room_id)
    _print_joined(info, role, decoded)


def _print_joined(info: RoomInfo, role: str, invite: Invite) -> None:
    issued = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invite.issued_at))
    click.echo(f"joined room {info.name!r} (id {info.id_hex[:8]}) as {role}")
    click.echo(f"preset {info.preset}, Codec2 {info.mode}, key epoch {info.epoch}")
    if info.budget is not None:
        b = info.budget
        click.echo(f"delay budget {b.max_delay_ms} ms, {b.relay_hops} relay hop(s)")
    click.echo(
        f"invite issued {issued}, "
        + ("sealed for you" if invite.recipient else "not sealed (anyone who saw it can listen)")
    )
    click.echo("Compare these moderator fingerprints out loud with whoever invited you:")
    signer = invite.signer.signing_key
    for mod in info.moderators:
        note = "  (signed this invite)" if mod.signing_key == signer else ""
        click.echo(f"  {mod.fingerprint}{note}")


@room_group.command("list")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def list_cmd(home, as_json) -> None:
    """List the rooms you moderate or have joined (never their keys).

    \b
    Examples:
      relay room list
      relay room list --json
      relay room list --home ./alice
    """
    h = resolve_home(home)
    if h.rooms_db.exists():
        with RoomStore(h) as store:
            rooms = store.list()
    else:
        rooms = []
    if as_json:
        click.echo(json.dumps({"rooms": [r.as_dict() for r in rooms]}))
        return
    if not rooms:
        click.echo("no rooms yet: relay room create NAME, or relay room join INVITE")
        return
    _print_table(rooms)


def _print_table(rooms: list[RoomSummary]) -> None:
    header = ("NAME", "ID", "ROLE", "PRESET", "MODE", "EPOCH")
    rows = [(r.name, r.id_hex[:8], r.role, r.preset, r.mode, str(r.epoch)) for r in rooms]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@room_group.command("budget")
@click.argument("room")
@budget_options
@click.option("--default", "use_default", is_flag=True, help="Go back to the default budget.")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def budget_cmd(room, max_delay, relay_hops, use_default, home, as_json) -> None:
    """Show or change ROOM's delay budget (moderators change it; members see it).

    The budget is the mouth-to-ear delay live voice may take in the room and the repeaters
    re-sending on its channel; talkers size their packets by it (see `relay plan --max-delay`).
    A change reaches members with the next invite they join (`relay room invite --for`).

    \b
    Examples:
      relay room budget market
      relay room budget far --max-delay 1000 --relay-hops 0
      relay room budget far --default
    """
    h = resolve_home(home)
    if not h.rooms_db.exists():
        raise UsageError(f"no room {room!r} here (there are no rooms yet)")
    changing = use_default or max_delay is not None or relay_hops is not None
    if use_default and (max_delay is not None or relay_hops is not None):
        raise UsageError("--default cannot go with --max-delay or --relay-hops")
    with RoomStore(h) as store:
        info = store.get(room)
        if changing:
            new = None if use_default else resolve_budget(max_delay, relay_hops, info.budget)
            info = store.set_budget(info.room_id, new)
    budget = info.budget or Budget()
    if as_json:
        click.echo(
            json.dumps({"name": info.name, "default": info.budget is None, **budget.to_dict()})
        )
        return
    click.echo(
        f"room {info.name!r}: delay budget {budget.max_delay_ms} ms, {budget.relay_hops} relay "
        f"hop(s){' (the default)' if info.budget is None else ''}"
    )
    if changing:
        click.echo("members take it with their next invite: relay room invite ROOM --for ...")


@room_group.command("leave")
@click.argument("room")
@home_option
def leave_cmd(room, home) -> None:
    """Forget ROOM (a name or an id prefix) and erase everything of it from this device.

    Its keys, moderators and roster, the replay marks (and with them the speakers' public
    keys), its voice messages and its send counters are deleted and overwritten. Leaving a
    room you moderate leaves it without a moderator here; members keep the room.

    \b
    Examples:
      relay room leave market
      relay room leave 3f9a
    """
    h = resolve_home(home)
    if not h.rooms_db.exists():
        raise UsageError(f"no room {room!r} here (there are no rooms yet)")
    gone = erase_room(h, room)
    click.echo(
        f"left room {gone.name!r} (id {gone.id_hex[:8]}); its keys, members, marks and "
        "messages are erased here"
    )


def _quote(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else repr(name)
