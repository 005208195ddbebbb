"""The `relay` command: thin. Parse, call the library, render. User errors exit 2, one line."""

from __future__ import annotations

import importlib
import sys

import click

from relay import __version__
from relay.errors import RelayError, UsageError

# Commands are imported when used, so `relay --help` and quick commands start fast
# (the voice stack pulls in numpy, soundfile and pycodec2).
COMMANDS: dict[str, str] = {
    "bridge": "relay.cli.bridge:bridge_cmd",
    "broker": "relay.cli.broker:broker_cmd",
    "clip": "relay.cli.clip:clip_group",
    "console": "relay.cli.console:console_cmd",
    "contacts": "relay.cli.contacts:contacts_group",
    "demo": "relay.cli.demo:demo",
    "devices": "relay.cli.devices:devices_cmd",
    "emulate": "relay.cli.emulate:emulate_group",
    "ether": "relay.cli.ether:ether_cmd",
    "ham": "relay.cli.ham:ham_group",
    "id": "relay.cli.identity:id_group",
    "link": "relay.cli.link:link_group",
    "listen": "relay.cli.talk:listen_cmd",
    "mod": "relay.cli.mod:mod_cmd",
    "moderate": "relay.cli.talk:moderate_cmd",
    "plan": "relay.cli.plan:plan_cmd",
    "repeat": "relay.cli.bridge:repeat_cmd",
    "room": "relay.cli.room:room_group",
    "talk": "relay.cli.talk:talk_cmd",
    "wipe": "relay.cli.wipe:wipe_cmd",
    "web": "relay.cli.web:web_group",
}


class RelayGroup(click.Group):
    """Turns the project's errors into one clear line instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"relay: error: {exc}", err=True)
            ctx.exit(2)
        except RelayError as exc:
            click.echo(f"relay: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("relay: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=RelayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
def cli() -> None:
    """Encrypted Codec2 voice rooms over LoRa radios, TNCs and MQTT bridges.

    \b
    Start here:
      relay plan --preset SHORT_FAST      will live voice fit this radio setting?
      relay demo                          send bundled speech over a simulated radio
      relay demo --loss 0.1 --json        the same with 10 % packet loss, as JSON
    """


def main() -> None:
    cli(prog_name="relay")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
