"""`relay contacts`: local names for members, kept in your home and never sent on air."""

from __future__ import annotations

import json

import click

from relay.cli.options import home_option, resolve_home
from relay.store.contacts import Contacts


@click.group("contacts")
def contacts_group() -> None:
    """Names for the members you know, shown in `relay console` instead of short ids.

    Contacts stay on this device (in your home): nothing of them is ever transmitted.

    \b
    Examples:
      relay contacts add ana relayid1:...        from the public id `relay id show` prints
      relay contacts add ben xwuh-jd3c-4m2a-q7re from a fingerprint read out loud
      relay contacts list
      relay contacts remove ben
    """


@contacts_group.command("add")
@click.argument("name")
@click.argument("member_id", metavar="ID")
@click.option("--replace", is_flag=True, help="Give an existing name to another member.")
@home_option
def add_cmd(name, member_id, replace, home) -> None:
    """Call the member with ID (a public id relayid1:... or a fingerprint) NAME here.

    \b
    Examples:
      relay contacts add ana relayid1:abcd...
      relay contacts add "Ben K" xwuh-jd3c-4m2a-q7re
      relay contacts add ana relayid1:efgh... --replace
    """
    contact = Contacts(resolve_home(home)).add(name, member_id, replace=replace)
    click.echo(f"{contact.name} is {contact.fingerprint}")


@contacts_group.command("list")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def list_cmd(home, as_json) -> None:
    """List your contacts: name and fingerprint.

    \b
    Examples:
      relay contacts list
      relay contacts list --json
    """
    contacts = Contacts(resolve_home(home)).list()
    if as_json:
        click.echo(json.dumps({"contacts": [c.as_dict() for c in contacts]}))
        return
    if not contacts:
        click.echo("no contacts yet: relay contacts add NAME ID")
        return
    width = max(len(c.name) for c in contacts)
    for contact in contacts:
        click.echo(f"{contact.name.ljust(width)}  {contact.fingerprint}")


@contacts_group.command("remove")
@click.argument("name")
@home_option
def remove_cmd(name, home) -> None:
    """Forget the contact NAME (the member is shown by short id again).

    \b
    Examples:
      relay contacts remove ben
    """
    gone = Contacts(resolve_home(home)).remove(name)
    click.echo(f"forgot {gone.name} ({gone.fingerprint})")
