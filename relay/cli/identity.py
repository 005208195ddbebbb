"""`relay id`: create and show this device's identity. Private keys are never printed."""

from __future__ import annotations

import json

import click

from relay.cli.options import home_option, resolve_home


@click.group("id")
def id_group() -> None:
    """Your identity: the keys that sign what you say and receive room keys.

    \b
    Examples:
      relay id init                     create your identity (once per device)
      relay id show                     the fingerprint and public id to give a moderator
      relay id init --home ./alice      a second identity in its own directory
    """


@id_group.command("init")
@home_option
@click.option("--force", is_flag=True, help="Replace an existing identity (its rooms are lost).")
def init_cmd(home, force) -> None:
    """Create your identity in the state directory (files 0600, directory 0700).

    Keep it on this one device: a copy elsewhere, or a restored backup, could reuse the
    counters that keep your packets secret. The public id it prints is safe to share; give
    it to a moderator so they can invite you with `relay room invite ROOM --for PUBLIC_ID`.

    \b
    Examples:
      relay id init
      relay id init --home ./alice
      relay id init --force              replace it (you lose the rooms you moderate)
    """
    h = resolve_home(home)
    identity = h.init_identity(force=force)
    click.echo(f"created identity in {h.path}")
    click.echo(f"fingerprint: {identity.public.fingerprint}")
    click.echo(f"public id:   {identity.public.encode()}")


@id_group.command("show")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def show_cmd(home, as_json) -> None:
    """Print your fingerprint and public id (never a private key).

    Read the fingerprint out loud to compare identities; give the public id to a moderator
    who invites you with --for.

    \b
    Examples:
      relay id show
      relay id show --json
      relay id show --home ./alice
    """
    h = resolve_home(home)
    public = h.identity().public
    if as_json:
        doc = {"fingerprint": public.fingerprint, "public_id": public.encode(), "home": str(h.path)}
        click.echo(json.dumps(doc))
        return
    click.echo(f"fingerprint: {public.fingerprint}")
    click.echo(f"public id:   {public.encode()}")
