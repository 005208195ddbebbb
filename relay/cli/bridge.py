"""`relay repeat` and `relay bridge`: forward sealed room packets between links."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence

import click

from relay.bridge.core import DEFAULT_HOP_LIMIT, LinkKind
from relay.cli.options import home_option, resolve_home
from relay.core.crypto import RoomKeys
from relay.core.identity import Identity
from relay.errors import UsageError
from relay.links.base import Link
from relay.links.url import open_link, redact
from relay.runtime.bridge import (
    Bridge,
    BridgeLink,
    RoomFilter,
    follow_rooms,
    link_kind,
    stats_line,
)
from relay.store.home import Home
from relay.store.rooms import find_room

_common = [
    click.option(
        "--duty-cycle",
        type=float,
        default=1.0,
        show_default=True,
        help="Airtime budget of each radio link as a fraction (0.01 = 1 %, EU 868 MHz); "
        "whole overs that do not fit are refused, counted and logged.",
    ),
    click.option(
        "--duration",
        type=click.FloatRange(min=0.0),
        help="Stop after this many seconds (default: run until Ctrl-C).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the final stats as JSON."),
    click.option("--verbose", "-v", is_flag=True, help="Log refused overs and link trouble."),
    click.option(
        "--ham-link",
        "ham_links",
        multiple=True,
        metavar="URL",
        help="A radio link on an amateur band: only signed ham packets (`relay ham`) go on "
        "it, encrypted ones are refused and counted. Give the driver your callsign too "
        "(kiss: ?callsign=N0CALL-1).",
    ),
    home_option,
]


def _ham_warning(ham_links) -> None:
    if ham_links:
        click.echo(
            "relay: warning: --ham-link: only signed, unencrypted ham packets go on "
            f"{', '.join(redact(u) for u in ham_links)}; each carries its operator's "
            "callsign, readable by anyone",
            err=True,
        )


def _common_options(func):
    for decorator in reversed(_common):
        func = decorator(func)
    return func


@click.command("repeat")
@click.option(
    "--link",
    "links",
    multiple=True,
    metavar="URL",
    help="A radio link to repeat between (two or more); one alone: store and forward on it.",
)
@_common_options
def repeat_cmd(links, duty_cycle, duration, as_json, verbose, ham_links, home):
    """Repeat room packets between radio links (cross-band: hear on one, send on another).

    The repeater needs no room key: it forwards sealed packets, each at most once per link,
    never back where it came from, paced to each radio's airtime and duty cycle. An over
    that does not fit a radio's budget is refused whole, and the speaker's side gets a
    notice signed by this relay's identity (the one in --home; a throwaway one if none).

    With a single --link it is a store-and-forward repeater on that channel: everything it
    hears goes out once more, which reaches members out of each other's range but doubles
    the channel's airtime (see the +relay column of `relay plan`).

    \b
    Examples:
      relay repeat --link sim://hilltop --duration 60                 (store and forward)
      relay repeat --link sim://island_a --link sim://island_b --duration 60
      relay repeat --link kiss+tcp://127.0.0.1:8001 --link meshtastic:///dev/ttyUSB0
      relay repeat --link at:///dev/ttyUSB0 --link at:///dev/ttyUSB1 --duty-cycle 0.01
    """
    links = (*links, *ham_links)
    if not links:
        raise UsageError("relay repeat needs a --link URL (two to repeat between radios)")
    _ham_warning(ham_links)
    for url in links:
        if link_kind(url) is LinkKind.MQTT:
            raise UsageError(f"{redact(url)}: MQTT is for `relay bridge --mqtt`, not repeat")
    _run(
        list(links),
        duty_cycle,
        duration,
        as_json,
        verbose,
        "repeat",
        repeat=len(links) == 1,
        home=home,
        ham_links=frozenset(ham_links),
    )


@click.command("bridge")
@click.option("--link", "links", multiple=True, metavar="URL", help="The radio link(s) to bridge.")
@click.option(
    "--mqtt",
    "mqtt_url",
    required=True,
    metavar="URL",
    help="The broker: mqtt://[USER:PASS@]HOST[:PORT] or mqtts://...?ca=FILE (the password is "
    "never shown).",
)
@click.option(
    "--room",
    "rooms",
    multiple=True,
    metavar="ROOM",
    help="Carry only this room: its name in --home (the bridge follows its hint as it "
    "rotates hourly; the key is used for nothing else), or room hints of 2 hex digits "
    "(3f,a0). Repeatable. Default: every room.",
)
@click.option(
    "--gateway-id",
    type=click.IntRange(0, (1 << 32) - 1),
    help="This bridge's id (default: random).",
)
@click.option(
    "--hop-limit",
    type=click.IntRange(1, 255),
    default=DEFAULT_HOP_LIMIT,
    show_default=True,
    help="How many bridges may republish a packet on MQTT (ends loops between brokers).",
)
@_common_options
def bridge_cmd(
    links,
    mqtt_url,
    rooms,
    gateway_id,
    hop_limit,
    duty_cycle,
    duration,
    as_json,
    verbose,
    ham_links,
    home,
):
    """Bridge radio links to an MQTT broker, where other bridges and internet-only members
    (talk/listen --link mqtt://...) meet.

    The broker sees sealed packets only, one topic per room hint (relay/v2/<hint>); any
    MQTT broker works: `relay broker`, mosquitto, EMQX, a cluster.

    \b
    Examples:
      relay bridge --link sim://island_a --mqtt mqtt://127.0.0.1:1883
      relay bridge --link sim://island_a --mqtt 'mqtt://10.0.0.2?qos=0&linger=20'
      relay bridge --link kiss+tcp://127.0.0.1:8001 --mqtt mqtts://user:pw@broker.example
      relay bridge --link at:///dev/ttyUSB0 --mqtt mqtt://10.0.0.2 --room market --duty-cycle 0.01
      relay bridge --link sim://island_a --mqtt mqtt://10.0.0.2 --room 3f,a0     (raw hints)
    """
    links = (*links, *ham_links)
    if not links:
        raise UsageError("relay bridge needs a --link URL (the radio to bridge)")
    _ham_warning(ham_links)
    for url in links:
        if link_kind(url) is LinkKind.MQTT:
            raise UsageError(
                f"--link {redact(url)}: give radio links to --link and the broker to --mqtt"
            )
    if link_kind(mqtt_url) is not LinkKind.MQTT:
        raise UsageError(f"--mqtt {redact(mqtt_url)!r} must be an mqtt:// or mqtts:// URL")
    room_filter = _parse_rooms(rooms, resolve_home(home))
    _run(
        [*links, mqtt_url],
        duty_cycle,
        duration,
        as_json,
        verbose,
        "bridge",
        room_filter,
        gateway_id,
        hop_limit,
        home=home,
        ham_links=frozenset(ham_links),
    )


def _parse_rooms(rooms: Sequence[str], home: Home) -> RoomFilter | None:
    """``--room`` values: hints (``3f,a0``) or names of rooms the home knows."""
    if not rooms:
        return None
    hints: set[int] = set()
    keys: list[RoomKeys] = []
    names: list[str] = []
    for text in rooms:
        parts = [p.strip().lower() for p in text.split(",")]
        if all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
            hints.update(int(p, 16) for p in parts)
            continue
        try:
            info = find_room(home, text)
        except UsageError as exc:
            raise UsageError(
                f"--room {text!r}: not a room hint of 2 hex digits (e.g. 3f), and {exc}"
            ) from None
        keys.append(RoomKeys(info.key))
        names.append(info.name)
    return RoomFilter(hints, keys, names=names)


def _run(
    urls: list[str],
    duty_cycle: float,
    duration: float | None,
    as_json: bool,
    verbose: bool,
    what: str,
    rooms: RoomFilter | None = None,
    gateway_id: int | None = None,
    hop_limit: int = DEFAULT_HOP_LIMIT,
    repeat: bool = False,
    home: object = None,
    ham_links: frozenset[str] = frozenset(),
) -> None:
    if len(set(urls)) != len(urls):
        raise UsageError("the same link URL is given twice")
    if not 0.0 < duty_cycle <= 1.0:
        raise UsageError(f"--duty-cycle must be in (0, 1], got {duty_cycle}")
    state = resolve_home(home)  # type: ignore[arg-type]
    identity = state.identity() if state.has_identity() else Identity.generate()
    logger = logging.getLogger("relay.runtime.bridge")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"relay {what}: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    logger.propagate = False
    try:
        stats = asyncio.run(
            _main(
                urls,
                duty_cycle,
                duration,
                rooms,
                gateway_id,
                hop_limit,
                repeat,
                identity,
                ham_links,
            )
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(f"relay {what}: {stats_line(stats)}")


def _start_line(
    names: list[str], repeat: bool, rooms: RoomFilter | None, duration: float | None
) -> str:
    """What the process does, said once at the start (link URLs are already redacted)."""
    radios = [n for n in names if link_kind(n) is LinkKind.RADIO]
    brokers = [n for n in names if link_kind(n) is LinkKind.MQTT]
    if brokers:
        line = f"relay bridge: bridging {' and '.join(radios)} to the broker {brokers[0]}"
        line += f", {rooms.describe()}" if rooms is not None else ", every room"
    elif repeat:
        line = (
            f"relay repeat: store and forward on {names[0]}: every packet goes out twice "
            "(see `relay plan`, column +relay)"
        )
    else:
        line = f"relay repeat: repeating between {' and '.join(names)}"
    until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
    return f"{line}; running {until}"


async def _main(
    urls: list[str],
    duty_cycle: float,
    duration: float | None,
    rooms: RoomFilter | None,
    gateway_id: int | None,
    hop_limit: int = DEFAULT_HOP_LIMIT,
    repeat: bool = False,
    identity: Identity | None = None,
    ham_links: frozenset[str] = frozenset(),
) -> dict:
    # Links are named by their redacted URLs: names show in stats, JSON keys and logs.
    names = [redact(url) for url in urls]
    opened: list[Link] = []
    try:
        for url in urls:
            opened.append(open_link(url))
        bridge = Bridge(
            [
                BridgeLink(name, link, link_kind(url), repeat, url in ham_links)
                for name, url, link in zip(names, urls, opened, strict=True)
            ],
            duty_cycle=duty_cycle,
            gateway_id=gateway_id,
            hop_limit=hop_limit,
            identity=identity,
        )
    except BaseException:
        for link in opened:
            with contextlib.suppress(Exception):
                await link.close()
        raise
    following = None
    try:
        if rooms is not None:  # the first hints are set before connecting, then they follow
            first = rooms.hints(time.time())
            for link in opened:
                set_rooms = getattr(link, "set_rooms", None)
                if set_rooms is not None:
                    await set_rooms(first)
            following = asyncio.ensure_future(follow_rooms(opened, rooms))
        for url, link in zip(urls, opened, strict=True):
            connect = getattr(link, "connect", None)
            if link_kind(url) is LinkKind.MQTT and connect is not None:
                await connect()  # an unreachable broker is one clear line, not a silent bridge
    except BaseException:
        if following is not None:
            following.cancel()
        for each in opened:
            with contextlib.suppress(Exception):
                await each.close()
        raise
    click.echo(_start_line(names, repeat, rooms, duration), err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.run(stop, duration)
    finally:
        if following is not None:
            following.cancel()
    return bridge.stats()
