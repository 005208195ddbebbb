"""`relay devices`: which serial ports are here, and which radio each probably is."""

from __future__ import annotations

import json

import click

from relay.links.devices import list_devices


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def devices_cmd(as_json: bool) -> None:
    """List serial ports with their USB ids and the likely radio behind each.

    A USB id names the USB-serial chip (CP2102, CH340...), not the board, so each port gets
    a ranked list of guesses from relay's catalog (hw/devices.toml) with the link URL
    to try. `relay link check URL URL` then tells whether it works.
    """
    ports = list_devices()
    if as_json:
        click.echo(json.dumps({"ports": [p.to_dict() for p in ports]}))
        return
    if not ports:
        click.echo("no serial devices found")
        return
    for port in ports:
        strings = " / ".join(s for s in (port.manufacturer, port.product) if s)
        head = port.usb_id or "no USB id"
        click.echo(f"{port.device}  {head}  {port.chip or ''}  {strings}".rstrip())
        for guess in port.guesses:
            click.echo(f"    maybe {guess.device}" + (f": {guess.url}" if guess.url else ""))
        if not port.guesses:
            click.echo("    not in relay's catalog (hw/devices.toml)")
