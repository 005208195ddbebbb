"""`relay mod`: moderate from scripts, through the moderator that is running."""

from __future__ import annotations

import json

import click

from relay.cli.options import home_option, resolve_home
from relay.errors import UsageError

EXIT_NOT_RUNNING = 3
ACTIONS = ("grant", "revoke", "mute", "unmute", "remove", "appoint")


@click.command("mod")
@click.argument("action", type=click.Choice(ACTIONS), metavar="ACTION")
@click.argument("room")
@click.argument("member", required=False)
@click.option(
    "--seconds",
    type=click.IntRange(1, 65535),
    help="With grant: how long the floor is given (default: the moderator's, 60 s).",
)
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def mod_cmd(action, room, member, seconds, home, as_json) -> None:
    """Ask the moderator running ROOM here (`relay console` or `relay moderate`, same home)
    to do ACTION to MEMBER: grant, revoke, mute, unmute, remove or appoint.

    MEMBER is a contact's name, a fingerprint (or its first characters) or an id; grant
    without MEMBER gives the floor to the first raised hand, revoke takes it from whoever
    holds it. The request goes over a local socket only your user can open; nothing is
    sent unless a moderator is running. Exit codes: 0 done, 2 refused (the reason is
    printed), 3 no moderator of ROOM is running here.

    \b
    Examples:
      relay mod grant market ana --seconds 120
      relay mod mute market ana
      relay mod remove market xwuh-jd3c        the key rotates for everyone else
      relay mod revoke market
    """
    from relay.app.control import NotRunning, request
    from relay.store.rooms import RoomStore

    h = resolve_home(home)
    if member is None and action not in ("grant", "revoke"):
        raise UsageError(f"`relay mod {action}` needs a MEMBER (a contact's name or a fingerprint)")
    if member is not None and action == "revoke":
        raise UsageError("`relay mod revoke` takes no MEMBER: it takes the floor from its holder")
    if seconds is not None and action != "grant":
        raise UsageError("--seconds goes with grant")
    if not h.rooms_db.exists():
        raise UsageError(f"no room {room!r} here (there are no rooms yet)")
    with RoomStore(h) as store:
        info = store.get(room)
    try:
        reply = request(h, info.room_id, action, member, seconds)
    except NotRunning:
        message = (
            f"no moderator of {info.name!r} is running in {h.path}: start "
            f"`relay console {info.name} --link URL` or `relay moderate {info.name} --link URL`"
        )
        if as_json:
            click.echo(json.dumps({"ok": False, "error": message, "running": False}))
        else:
            click.echo(f"relay: {message}", err=True)
        raise SystemExit(EXIT_NOT_RUNNING) from None
    if as_json:
        click.echo(json.dumps({**reply, "running": True}))
    elif reply.get("ok"):
        click.echo(reply.get("message", "done"))
    else:
        click.echo(f"relay: error: {reply.get('error', 'refused')}", err=True)
    if not reply.get("ok"):
        raise SystemExit(2)
