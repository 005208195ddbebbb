"""The `relay` command: thin. Parse, call the library, render. User errors exit 2, one line."""

from __future__ import annotations

import sys

import click

from relay import __version__
from relay.errors import RelayError, UsageError


class RelayGroup(click.Group):
    """Turns the project's errors into one clear line instead of a traceback."""

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


def _register() -> None:
    from relay.cli.demo import demo
    from relay.cli.plan import plan_cmd

    cli.add_command(demo)
    cli.add_command(plan_cmd)


_register()


def main() -> None:
    cli(prog_name="relay")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
