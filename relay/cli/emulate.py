"""`relay emulate ...`: fake radios for people without hardware, and for the tests.

Each radio family is one subcommand of the ``emulate`` group: decorate a function with
``@emulate_group.command``, or name it in ``SUBCOMMANDS`` (imported only when used), and
nothing else changes. Emulators run until Ctrl-C (or ``--duration``).
"""

from __future__ import annotations

import asyncio
import importlib

import click

from relay.cli.foreground import log_to_stderr, run_until_stopped
from relay.errors import UsageError

# name -> "module:attribute" of a click command living in another file.
SUBCOMMANDS: dict[str, str] = {"at": "relay.cli.emulate_at:at_cmd"}


class _EmulateGroup(click.Group):
    """Commands defined here plus those named in SUBCOMMANDS, loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in SUBCOMMANDS:
            return self.commands.get(name)
        module, attr = SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group("emulate", cls=_EmulateGroup)
def emulate_group() -> None:
    """Fake radios that speak the real device protocols, on TCP ports or pseudo-terminals.

    Point real software (the radio's own library, relay's links) at them to try rooms and
    links without hardware: the emulated radios share one simulated LoRa channel with real
    airtime, loss and collisions.
    """


@emulate_group.command("meshtastic")
@click.option(
    "--tcp",
    "tcp_port",
    type=click.IntRange(0, 65535),
    help="Serve node i on TCP port PORT+i, as a WiFi node does on 4403 (0: free ports). "
    "The default when --pty is not given: 4403.",
)
@click.option("--pty", "use_pty", is_flag=True, help="Serve each node on a pseudo-terminal.")
@click.option(
    "--link",
    "link_prefix",
    metavar="PREFIX",
    help="With --pty: also make symlinks PREFIX0, PREFIX1, ... that survive a restart.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="TCP address to listen on.")
@click.option("--preset", default="LONG_FAST", show_default=True, help="Modem preset of the mesh.")
@click.option("--nodes", type=click.IntRange(1, 64), default=2, show_default=True,
              help="How many fake nodes (TCP ports or ptys) share the mesh.")  # fmt: skip
@click.option("--loss", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of packets the mesh loses between nodes, 0..1.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the loss draws.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--verbose", "-v", is_flag=True, help="Log clients and skipped junk.")
def meshtastic_cmd(
    tcp_port, use_pty, link_prefix, host, preset, nodes, loss, seed, duration, verbose,
):  # fmt: skip
    """Fake Meshtastic nodes on one simulated mesh, for the real meshtastic library.

    Each node speaks the firmware's stream API; packets a client sends go over the
    simulated air to the other nodes' clients. One hop, one channel, no encryption.

    \b
    Examples:
      relay emulate meshtastic                      two nodes on TCP 4403 and 4404
      relay emulate meshtastic --pty --link /tmp/mesh --preset SHORT_FAST
      meshtastic --host 127.0.0.1 --info            the real CLI talks to node 0
    then open links to meshtastic+tcp://127.0.0.1:4403 (or meshtastic:///tmp/mesh0)
    """
    if tcp_port is not None and use_pty:
        raise UsageError("choose --tcp PORT or --pty, not both")
    if link_prefix and not use_pty:
        raise UsageError("--link names pty symlinks: use it with --pty")
    try:
        from relay.emulate.meshtastic import MeshEmulator
    except ImportError as exc:
        raise UsageError(
            f"the Meshtastic emulator needs the meshtastic library ({exc}); "
            "install it with: pip install 'relay[meshtastic]'"
        ) from None
    log_to_stderr("relay.emulate", verbose)
    port = 4403 if tcp_port is None and not use_pty else tcp_port

    async def serve() -> None:
        mesh = MeshEmulator(nodes, preset=preset, loss=loss, seed=seed)
        try:
            for node in mesh.nodes:
                if use_pty:
                    link = f"{link_prefix}{node.index}" if link_prefix else None
                    url = f"meshtastic://{await mesh.serve_pty(node.index, link)}"
                else:
                    want = 0 if port == 0 else port + node.index
                    got = await mesh.serve_tcp(node.index, host, want)
                    url = f"meshtastic+tcp://{host}:{got}"
                click.echo(f"node {node.index} {node.ident.user_id}: {url}")
            click.echo(f"mesh: {nodes} nodes, {mesh.preset}, loss {loss:.0%}; Ctrl-C stops")
            await run_until_stopped(duration)
        finally:
            await mesh.close()
            counts = [f"{k} {v:g}" for k, v in mesh.summary().items() if v and k != "air_busy_s"]
            click.echo(
                f"relay emulate: stopped. {'  '.join(counts) or 'nothing happened'}", err=True
            )

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise UsageError(f"cannot serve the emulated nodes: {exc}") from None
