"""`relay broker`: an embedded MQTT broker for one machine or a small site.

It runs amqtt (pure Python, MQTT 3.1.1) in-process. relay's mqtt:// links speak MQTT 5 with
*no local* to mosquitto, EMQX, VerneMQ or HiveMQ, and fall back to 3.1.1 by themselves here,
dropping their own messages by the origin id every v2 batch carries; so the same bridges
move from this broker to a real one (or a cluster) by changing a URL, nothing else. The
broker is anonymous: it binds 127.0.0.1 unless told otherwise, and carries only sealed
packets. Beyond a small site, run mosquitto or a cluster (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable

import click

from relay.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883


def _check_bindable(host: str, port: int) -> None:
    """A clear UsageError now for a busy port or an address this machine does not have."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r}: not an address of this machine ({exc})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker will
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is already in use (another broker?); "
                    "pick another with --port"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def broker_config(host: str, port: int) -> dict:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS chatter."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the broker on ``host:port`` until ``stop`` is set."""
    _check_bindable(host, port)
    try:
        from amqtt.broker import Broker
    except ImportError:  # pragma: no cover - amqtt is a dependency
        raise UsageError("relay broker needs amqtt: pip install amqtt") from None
    broker = Broker(broker_config(host, port))
    try:
        await broker.start()
    except Exception as exc:  # amqtt wraps bind errors in its own types
        raise UsageError(f"cannot start the broker on {host}:{port}: {exc}") from None
    try:
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await broker.shutdown()


@click.command("broker")
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface, for bridges on other machines).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="TCP port to listen on.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log client connections and errors.")
def broker_cmd(host: str, port: int, duration: float | None, verbose: bool) -> None:
    """Run an embedded MQTT broker where bridges and internet-only members meet.

    For one machine or a small site (MQTT 3.1.1, anonymous, in-process). The broker only
    ever sees sealed packets. For many streams or several sites use mosquitto, EMQX or a
    cluster: the bridges need no change but the URL.

    \b
    Examples:
      relay broker                                   # mqtt://127.0.0.1:1883
      relay broker --host 0.0.0.0 --port 1884        # reachable from the site's LAN
      relay bridge --link sim://island_a --mqtt mqtt://127.0.0.1:1883
    """
    level = logging.INFO if verbose else logging.CRITICAL  # amqtt is chatty about clients
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(level)
    if verbose:
        logging.basicConfig(stream=sys.stderr, format="relay broker: %(name)s: %(message)s")
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        click.echo(
            f"relay broker: listening on mqtt://{shown}:{port} (MQTT 3.1.1, anonymous); "
            f"bridges: --mqtt mqtt://{shown}:{port}",
        )
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await serve(host, port, stop, ready)

    asyncio.run(main())
    click.echo("relay broker: stopped")
