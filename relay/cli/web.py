"""`relay web`: serve a room to browsers on the gateway's network, and say who may come in."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import click

from relay.cli.options import home_option, resolve_home
from relay.errors import UsageError

SUBCOMMANDS = ("add", "list", "drop")


class WebGroup(click.Group):
    """`relay web ROOM --link URL` serves; `relay web add|list|drop ...` manage people."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group("web", cls=WebGroup)
def web_group() -> None:
    """Serve a room to phones and laptops in a browser, through this gateway's radio.

    Each person gets an identity of their own, held by this gateway (trust it as you trust
    a Meshtastic node with its channel keys), and a one-time link: nobody on the network
    without one gets anything. Browsers listen, raise a hand, talk from their microphone
    and, with a moderator's identity, moderate.

    \b
    Examples:
      relay web add market ana                  a link (and QR code) for Ana's phone
      relay web add market me --as-me           the operator's own identity (moderator)
      relay web market --link sim://127.0.0.1:7300 --host 0.0.0.0 --port 8080 --tls
      relay web list market
      relay web drop market ana                 her link and identity stop working
    """


@web_group.command("serve")
@click.argument("room")
@click.option("--link", "url", required=True, help="The radio (link URL) the room runs on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on; 0.0.0.0 for every network of this machine (phones on its Wi-Fi).",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port of the page (0: any free port).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="HTTPS with a self-signed certificate made once (phones need a secure "
    "context for the microphone; localhost does not).",
)
@click.option(
    "--listen-only", is_flag=True, help="Nobody on the page may transmit: the radio stays silent."
)
@home_option
def serve_cmd(room, url, host, port, tls, listen_only, home) -> None:
    """Serve ROOM on the radio at --link to browsers until Ctrl-C."""
    from aiohttp import web

    from relay.web.gateway import Gateway, make_app
    from relay.web.tls import certificate, server_context

    h = resolve_home(home)
    gateway = Gateway(h, room, url, listen_only=listen_only)
    context = None
    fingerprint = None
    if tls:
        cert, key, fingerprint = certificate(h, host)
        context = server_context(cert, key)

    async def main() -> None:
        await gateway.start()
        app = make_app(gateway, secure=tls)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await gateway.close()
            raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        scheme = "https" if tls else "http"
        people = len(gateway.guests.list(gateway.info.room_id))
        click.echo(
            f"serving room {gateway.info.name!r} on {scheme}://{host}:{bound}/ to {people} "
            f"people with links (relay web add {gateway.info.name} NAME makes one)",
            err=True,
        )
        if fingerprint:
            click.echo(f"certificate SHA-256 {fingerprint}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await gateway.close()
        click.echo("gateway stopped", err=True)

    asyncio.run(main())


@web_group.command("add")
@click.argument("room")
@click.argument("name")
@click.option(
    "--as-me",
    is_flag=True,
    help="The link acts as this gateway's own identity (e.g. the moderator's phone).",
)
@click.option("--invite", help="Finish adding NAME with the invite a moderator made for them.")
@click.option(
    "--base",
    default=None,
    help="The page's address as phones reach it (default http://127.0.0.1:8080, "
    "https:// when a certificate was made).",
)
@click.option(
    "--hours",
    default=24.0,
    show_default=True,
    type=float,
    help="How long the link stays valid (it works once).",
)
@click.option("--qr/--no-qr", default=True, show_default=True, help="Also print a QR code.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@home_option
def add_cmd(room, name, as_me, invite, base, hours, qr, as_json, home) -> None:
    """Give NAME a place on ROOM's page and print their one-time link.

    If this gateway moderates ROOM, NAME is enrolled at once (an invite sealed to the new
    identity). Otherwise their public id is printed for a moderator to invite; then run this
    again with --invite."""
    from relay.web.people import add_person
    from relay.web.tls import existing_fingerprint

    h = resolve_home(home)
    seat = add_person(h, room, name, as_me=as_me, invite=invite, hours=hours)
    if seat.token is None:
        text = (
            f"{seat.guest.name} needs an invite: ask a moderator to run\n"
            f"  relay room invite {room} --for {seat.public.encode()}\n"
            f"then: relay web add {room} {seat.guest.name} --invite relay1:..."
        )
        if as_json:
            click.echo(
                json.dumps(
                    {"name": seat.guest.name, "public_id": seat.public.encode(), "link": None}
                )
            )
        else:
            click.echo(text)
        return
    fingerprint = existing_fingerprint(h)
    if base is None:
        base = "https://127.0.0.1:8080" if fingerprint else "http://127.0.0.1:8080"
    link = f"{base.rstrip('/')}/join/{seat.token}"
    if fingerprint and base.startswith("https"):
        link += f"#sha256={fingerprint.replace(':', '')}"
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": seat.guest.name,
                    "fingerprint": seat.public.fingerprint,
                    "as_me": seat.guest.as_me,
                    "link": link,
                    "hours": hours,
                }
            )
        )
        return
    who = "this gateway's own identity" if seat.guest.as_me else f"id {seat.public.fingerprint}"
    click.echo(f"{seat.guest.name} ({who}); the link works once, for {hours:g} h:", err=True)
    if fingerprint:
        click.echo(f"the page's certificate: SHA-256 {fingerprint}", err=True)
    if qr:
        import segno

        segno.make(link, error="l").terminal(out=sys.stdout, compact=True)
    click.echo(link)


@web_group.command("list")
@click.argument("room")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@home_option
def list_cmd(room, as_json, home) -> None:
    """The people with a place on ROOM's page."""
    from relay.store.rooms import RoomStore
    from relay.web.guests import Guests

    h = resolve_home(home)
    if not Path(h.rooms_db).exists():
        raise UsageError(f"no rooms here ({h.path}); run `relay room create` or `join`")
    with RoomStore(h) as store:
        info = store.get(room)
    with Guests(h, create=False) as guests:
        people = guests.list(info.room_id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "room": info.name,
                    "people": [
                        {"name": g.name, "as_me": g.as_me, "identity": g.identity.hex()}
                        for g in people
                    ],
                }
            )
        )
        return
    if not people:
        click.echo(f"nobody has a place on {info.name!r}'s page yet (relay web add)")
    for g in people:
        click.echo(f"{g.name}\t{'gateway identity' if g.as_me else g.identity[:8].hex()}")


@web_group.command("drop")
@click.argument("room")
@click.argument("name")
@home_option
def drop_cmd(room, name, home) -> None:
    """Take NAME's place on ROOM's page away: links and sessions stop at once.

    Their identity stays a room member until a moderator removes it (`relay mod remove`,
    or the page's Remove button): do that too if they must not listen by radio keys."""
    from relay.store.rooms import RoomStore
    from relay.web.guests import Guests

    h = resolve_home(home)
    with RoomStore(h) as store:
        info = store.get(room)
    with Guests(h, create=False) as guests:
        guest = guests.drop(info.room_id, name)
    click.echo(f"dropped {guest.name} from {info.name!r}'s page")
