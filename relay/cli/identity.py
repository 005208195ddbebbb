"""`relay id`: create and show this device's identity. Private keys are never printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from relay.cli.options import (
    given_passphrase,
    home_option,
    new_passphrase,
    read_passphrase_file,
    resolve_home,
)

NEW_ENV = "RELAY_NEW_PASSPHRASE"
DURESS_ENV = "RELAY_DURESS_PASSPHRASE"


@click.group("id")
def id_group() -> None:
    """Your identity: the keys that sign what you say and receive room keys.

    \b
    Examples:
      relay id init                     create your identity (once per device)
      relay id show                     the fingerprint and public id to give a moderator
      relay id init --home ./alice      a second identity in its own directory
      relay id passphrase               set or change the passphrase on your keys
      relay id duress                   a second passphrase that wipes instead of unlocking
    """


@id_group.command("init")
@home_option
@click.option("--force", is_flag=True, help="Replace an existing identity (its rooms are lost).")
@click.option(
    "--no-passphrase",
    is_flag=True,
    help="Store the keys unprotected (unattended gateways): whoever copies the disk has them.",
)
def init_cmd(home, force, no_passphrase) -> None:
    """Create your identity in the state directory (files 0600, directory 0700).

    Your private keys and every room key are locked under a passphrase you choose (asked
    twice, hidden; Argon2id, so guessing it is slow): someone who takes the device gets
    nothing without it. Scripts give it with --passphrase-file FILE or RELAY_PASSPHRASE;
    --no-passphrase stores the keys in clear, for gateways that must start unattended.

    Keep it on this one device: a copy elsewhere, or a restored backup, could reuse the
    counters that keep your packets secret. The public id it prints is safe to share; give
    it to a moderator so they can invite you with `relay room invite ROOM --for PUBLIC_ID`.

    \b
    Examples:
      relay id init
      relay id init --home ./alice
      relay id init --force              replace it (you lose the rooms you moderate)
      relay id init --no-passphrase      an unattended gateway (keys in clear on disk)
    """
    h = resolve_home(home)
    if no_passphrase:
        passphrase = None
    else:
        passphrase = new_passphrase(
            given_passphrase(),
            "passphrase",
            "use --passphrase-file FILE or set RELAY_PASSPHRASE, or --no-passphrase to store "
            "the keys in clear",
        )
    identity = h.init_identity(force=force, passphrase=passphrase)
    if no_passphrase:
        click.echo(
            f"relay: warning: --no-passphrase: your private keys and room keys are stored "
            f"UNENCRYPTED in {h.path}; anyone who copies this disk can read your rooms and "
            "speak as you (add one later with `relay id passphrase`)",
            err=True,
        )
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


def _new_from(file: Path | None, env: str) -> str | None:
    if file is not None:
        return read_passphrase_file(file)
    return os.environ.get(env)


@id_group.command("passphrase")
@home_option
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Read the new passphrase from FILE (its first line) instead of asking; or {NEW_ENV}.",
)
@click.option("--remove", is_flag=True, help="Store the keys unprotected from now on.")
def passphrase_cmd(home, new_passphrase_file, remove) -> None:
    """Set, change or remove the passphrase that locks your keys.

    An identity made by an older relay (keys in clear) is moved to the locked format: the
    room keys in rooms.db are sealed too and the clear copies overwritten. Changing the
    passphrase keeps a duress passphrase you set.

    \b
    Examples:
      relay id passphrase                                  asks for the current and the new
      relay id passphrase --new-passphrase-file new.txt    a script
      relay id passphrase --remove                         keys in clear (gateways)
    """
    from relay.store.rooms import set_home_passphrase

    h = resolve_home(home)
    h.unlock()
    if remove:
        set_home_passphrase(h, None)
        click.echo(f"relay: warning: your keys are now stored UNENCRYPTED in {h.path}", err=True)
        return
    new = new_passphrase(
        _new_from(new_passphrase_file, NEW_ENV),
        "passphrase",
        f"use --new-passphrase-file FILE or set {NEW_ENV}",
    )
    set_home_passphrase(h, new)
    click.echo(f"your keys in {h.path} are locked with the new passphrase")


@id_group.command("duress")
@home_option
@click.option(
    "--duress-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Read the duress passphrase from FILE instead of asking; or {DURESS_ENV}.",
)
@click.option("--clear", is_flag=True, help="Remove the duress passphrase.")
def duress_cmd(home, duress_file, clear) -> None:
    """Set a duress passphrase: typed at any passphrase prompt, it wipes this home.

    Whoever forces you to unlock the device sees "wrong passphrase" and then an empty home;
    the keys, rooms, contacts and messages are overwritten and gone. It only helps if the
    passphrase is typed into this device: someone who copied the disk first keeps the copy.
    The file looks the same whether or not one is set.

    \b
    Examples:
      relay id duress                      asks for the passphrase, then the duress one
      relay id duress --duress-file d.txt  a script
      relay id duress --clear
    """
    h = resolve_home(home)
    h.unlock()
    if clear:
        h.set_duress(None)
        click.echo("duress passphrase removed")
        return
    duress = new_passphrase(
        _new_from(duress_file, DURESS_ENV),
        "duress passphrase",
        f"use --duress-file FILE or set {DURESS_ENV}",
    )
    h.set_duress(duress)
    click.echo("duress passphrase set: typed at the passphrase prompt, it wipes this home")
