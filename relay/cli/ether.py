"""`relay ether`: one simulated radio channel that nodes in other processes share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click

from relay.cli.options import radio_options, resolve_radio
from relay.links.sim.channel import DUTY_POLICIES, Ether
from relay.links.sim.server import DEFAULT_HOST, DEFAULT_PORT, EtherServer


@click.command("ether")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="TCP port to listen on (0: any free port; the line printed at start names it).",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Anything but 127.0.0.1 lets other machines join: there is "
    "no authentication (packets stay sealed, but anyone can listen and transmit).",
)
@radio_options
@click.option(
    "--loss",
    type=float,
    default=0.0,
    show_default=True,
    help="Mean packet loss per receiver, 0..1.",
)
@click.option("--burst", type=float, help="Mean length of loss bursts in packets (>= 1).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the channel's loss draws (same seed, same sends: same losses).",
)
@click.option(
    "--duty-policy",
    type=click.Choice(DUTY_POLICIES),
    default="queue",
    show_default=True,
    help="Over the duty cycle: make senders wait (queue) or refuse the datagram (refuse).",
)
@click.option(
    "--lbt",
    is_flag=True,
    help="Listen before talk: senders wait for a clear channel plus a random backoff.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Log nodes joining and leaving, and print channel stats every --stats-every seconds.",
)
@click.option(
    "--stats-every",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between stats lines with --verbose.",
)
def ether_cmd(
    port, host, preset, sf, bw, cr, region, duty_cycle, loss, burst, seed, duty_policy, lbt,
    verbose, stats_every,
):  # fmt: skip
    """Host one simulated LoRa channel for nodes in other processes or terminals.

    Every node that opens the printed URL (sim://127.0.0.1:7300) joins the same channel: the
    simulator's airtime, half duplex, collisions, loss and duty cycle apply between them, so
    a whole room runs on one machine without radios. The channel's settings are given here;
    nodes only add ?node=NAME. Runs until Ctrl-C.

    \b
    Examples:
      relay ether                                   SHORT_FAST on 127.0.0.1:7300
      relay ether --preset SHORT_TURBO --loss 0.05 --burst 3 --seed 7 --verbose
      relay ether --port 7301 --region EU_868       1 % duty cycle, senders wait
    then, in other terminals, open links to sim://127.0.0.1:7300?node=alice
    """
    profile = resolve_radio(preset, sf, bw, cr, region, duty_cycle)
    ether = Ether(
        profile, loss=loss, burst=burst, seed=seed, duty_policy=duty_policy, lbt=lbt, name="ether"
    )
    server = EtherServer(ether, host=host, port=port)
    log = logging.getLogger("relay.ether")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("relay ether: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False
    try:
        asyncio.run(_serve(server, verbose=verbose, every=stats_every))
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _describe(server: EtherServer) -> str:
    ether = server.ether
    parts = [f"{ether.profile.name}, MTU {ether.profile.mtu} B"]
    if ether.loss.mean_loss:
        parts.append(f"loss {ether.loss.mean_loss:.1%}")
    if getattr(ether, "lbt", False):
        parts.append("listen before talk")
    if ether.duty_limited:
        parts.append(f"duty cycle {ether.duty_cycle:.1%} ({ether.duty_policy})")
    return (
        f"relay ether: listening on {server.host}:{server.port} ({', '.join(parts)}); "
        f"nodes join with {server.url}"
    )


def _stats_line(server: EtherServer) -> str:
    s = server.summary()
    return (
        f"relay ether: nodes {s['nodes']:.0f}  sent {s['transmissions']:.0f}  "
        f"delivered {s['delivered']:.0f}  lost {s['lost']:.0f}  "
        f"collisions {s['collisions']:.0f}  half-duplex {s['half_duplex_missed']:.0f}  "
        f"busy {s['occupancy']:.1%}  dropped clients {s['server_garbage']:.0f}"
    )


async def _serve(server: EtherServer, *, verbose: bool, every: float) -> None:
    await server.start()
    click.echo(_describe(server))
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"relay ether: warning: listening on {server.host}: anyone who can reach this "
            f"port can listen to and transmit on the channel",
            err=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every if verbose else None)
            if verbose and not stop.is_set():
                click.echo(_stats_line(server))
    finally:
        await server.close()
        if verbose:
            click.echo(_stats_line(server))
        click.echo("relay ether: stopped", err=True)
