"""Options several commands share, and turning them into library objects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from relay.errors import UsageError
from relay.plan import (
    DEFAULT_MAX_DELAY_MS,
    MAX_MAX_DELAY_MS,
    MAX_RELAY_HOPS,
    MIN_MAX_DELAY_MS,
    RELAY_HOPS,
    Budget,
)
from relay.radio.profiles import RadioProfile, custom, duty_cycle_for, preset
from relay.store.home import PASSPHRASE_ENV, Home

_PASSPHRASE_FILE = "relay.passphrase_file"

F = Callable[..., Any]


def radio_options(func: F) -> F:
    """--preset / --sf --bw --cr / --region / --duty-cycle."""
    decorators = [
        click.option(
            "--preset",
            default="SHORT_FAST",
            show_default=True,
            help="Meshtastic modem preset: SHORT_TURBO, SHORT_FAST, ... LONG_FAST, VERY_LONG_SLOW.",
        ),
        click.option(
            "--sf", type=int, help="Custom LoRa spreading factor 5-12 (instead of a preset)."
        ),
        click.option(
            "--bw", type=float, help="Custom LoRa bandwidth in kHz, e.g. 125 (with --sf)."
        ),
        click.option("--cr", type=int, help="Custom coding rate 5-8 meaning 4/5..4/8 (with --sf)."),
        click.option("--region", help="Apply a region's duty-cycle rule, e.g. EU_868 (1 %)."),
        click.option(
            "--duty-cycle",
            type=float,
            help="Duty-cycle limit as a fraction, e.g. 0.01 for 1 % (overrides --region).",
        ),
    ]
    return _stack(func, decorators)


def resolve_radio(
    preset_name: str,
    sf: int | None,
    bw: float | None,
    cr: int | None,
    region: str | None,
    duty_cycle: float | None,
) -> RadioProfile:
    if sf is None and (bw is not None or cr is not None):
        raise click.UsageError("--bw and --cr describe a custom setting: give --sf as well")
    profile = (
        preset(preset_name) if sf is None else custom(sf, None if bw is None else bw * 1000, cr)
    )
    limit = duty_cycle if duty_cycle is not None else (duty_cycle_for(region) if region else None)
    return profile if limit is None else profile.with_duty_cycle(limit)


def budget_options(func: F) -> F:
    """--max-delay MS / --relay-hops N: the latency budget live voice is planned for."""
    decorators = [
        click.option(
            "--max-delay",
            "max_delay",
            type=int,
            metavar="MS",
            help=f"Mouth-to-ear delay live voice may take, {MIN_MAX_DELAY_MS}..{MAX_MAX_DELAY_MS} "
            f"ms (default: the room's, else {DEFAULT_MAX_DELAY_MS}). A moderated room can allow "
            "about 1000: larger packets, live voice on slower presets.",
        ),
        click.option(
            "--relay-hops",
            type=int,
            help=f"Repeaters re-sending each packet on the same channel, 0..{MAX_RELAY_HOPS} "
            f"(default: the room's, else {RELAY_HOPS}); 0 when listeners hear the talker directly.",
        ),
    ]
    return _stack(func, decorators)


def resolve_budget(
    max_delay: int | None, relay_hops: int | None, base: Budget | None = None
) -> Budget:
    """The budget from the options, each one given overriding ``base`` (a room's, or the
    planner's default)."""
    base = base if base is not None else Budget()
    if max_delay is not None and not MIN_MAX_DELAY_MS <= max_delay <= MAX_MAX_DELAY_MS:
        raise UsageError(
            f"--max-delay is {MIN_MAX_DELAY_MS}..{MAX_MAX_DELAY_MS} ms, got {max_delay}"
        )
    if relay_hops is not None and not 0 <= relay_hops <= MAX_RELAY_HOPS:
        raise UsageError(f"--relay-hops is 0..{MAX_RELAY_HOPS}, got {relay_hops}")
    return Budget(
        base.max_delay_ms if max_delay is None else max_delay,
        base.relay_hops if relay_hops is None else relay_hops,
    )


def home_option(func: F) -> F:
    """--home DIR (or RELAY_HOME): which state directory, i.e. which identity, to use; and
    --passphrase-file FILE for scripts (the passphrase itself is never an argument: it would
    show in `ps` and shell history)."""
    func = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        is_eager=True,
        envvar="RELAY_PASSPHRASE_FILE",
        callback=_remember_passphrase_file,
        help=f"Read the passphrase of your keys from FILE (its first line) instead of asking; "
        f"or set {PASSPHRASE_ENV}.",
    )(func)
    return click.option(
        "--home",
        "home",
        envvar="RELAY_HOME",
        type=click.Path(file_okay=False, path_type=Path),
        help="State directory holding your identity and rooms (default: the per-user data "
        "directory; env RELAY_HOME). Use one per identity.",
    )(func)


def _remember_passphrase_file(ctx: click.Context, _param: click.Parameter, value: Path | None):
    if value is not None:
        ctx.meta[_PASSPHRASE_FILE] = value


def resolve_home(value: Path | str | None) -> Home:
    """The home, unlocked (when a command needs its keys) with :func:`cli_passphrase`."""
    return Home(value, passphrase=cli_passphrase, notice=note)


def note(message: str) -> None:
    click.echo(f"relay: note: {message}", err=True)


def interactive() -> bool:
    """Whether there is a person at a terminal to ask (tests replace this)."""
    import sys

    return sys.stdin.isatty()


def read_passphrase_file(path: Path) -> str:
    """A passphrase from a file: its first line, without the line break."""
    import os

    try:
        if os.stat(path).st_mode & 0o077:
            note(f"{path} can be read by other users; a passphrase file should be 0600")
        with open(path, encoding="utf-8") as f:
            line = f.readline(4096)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the passphrase file {path}: {exc.strerror or exc}") from None
    return line.rstrip("\r\n")


def given_passphrase() -> str | None:
    """The passphrase a script gave: --passphrase-file, then $RELAY_PASSPHRASE; else None."""
    import os

    ctx = click.get_current_context(silent=True)
    path = ctx.meta.get(_PASSPHRASE_FILE) if ctx is not None else None
    if path is not None:
        return read_passphrase_file(path)
    return os.environ.get(PASSPHRASE_ENV)


def cli_passphrase() -> str:
    """The passphrase of a locked home: from a script, else asked (hidden) at the terminal."""
    given = given_passphrase()
    if given is not None:
        return given
    if not interactive():
        raise UsageError(
            f"your keys are locked with a passphrase and there is no terminal to ask on: "
            f"use --passphrase-file FILE or set {PASSPHRASE_ENV}"
        )
    return click.prompt("Passphrase", hide_input=True, err=True)


def new_passphrase(given: str | None, what: str, how: str) -> str:
    """A new passphrase: ``given`` by a script, else asked twice (hidden) at the terminal;
    ``how`` names the script's ways in the error when there is no terminal."""
    if given is not None:
        return given
    if not interactive():
        raise UsageError(f"no {what} given and no terminal to ask on: {how}")
    first = click.prompt(f"New {what}", hide_input=True, err=True)
    if click.prompt(f"Repeat the {what}", hide_input=True, err=True) != first:
        raise UsageError(f"the two {what}s differ; nothing was changed")
    return first


def channel_options(func: F) -> F:
    """--mode / --loss / --burst / --seed: the codec and the simulated channel's behaviour."""
    decorators = [
        click.option(
            "--mode",
            default="1600",
            show_default=True,
            help="Codec2 mode: 3200 2400 1600 1400 1300 1200 700C.",
        ),
        click.option(
            "--loss",
            type=float,
            default=0.0,
            show_default=True,
            help="Packet loss as a fraction, 0..1.",
        ),
        click.option(
            "--burst",
            type=float,
            help="Mean loss burst length in packets (Gilbert-Elliott); default independent loss.",
        ),
        click.option(
            "--seed",
            type=int,
            default=1,
            show_default=True,
            help="Seed of the channel's randomness.",
        ),
    ]
    return _stack(func, decorators)


def fec_option(func: F) -> F:
    """--fec/--no-fec: send lower-rate copies of each packet's frames in the next packet."""
    return click.option(
        "--fec/--no-fec",
        default=None,
        help="Forward error correction: each packet also carries a 700C copy of the previous "
        "packet's frames (1600 at 5 frames/packet: +34 % bytes, +21 % airtime on SHORT_FAST; "
        "see `relay plan --loss`). Default: off, or the planner's advice for the given loss.",
    )(func)


def dtx_option(func: F) -> F:
    """--dtx/--no-dtx: skip silent frames (voice activity detection)."""
    from relay.voice.vad import DTX_DEFAULT

    return click.option(
        "--dtx/--no-dtx",
        default=None,
        help="Discontinuous transmission: send no packets during pauses (listeners hear "
        f"comfort noise and keep timing). Default: {'on' if DTX_DEFAULT else 'off'} "
        "(from a file or the microphone).",
    )(func)


def conceal_option(func: F) -> F:
    """--conceal: how listeners fill lost frames."""
    return click.option(
        "--conceal",
        type=click.Choice(["interpolate", "repeat", "silence"]),
        default="interpolate",
        show_default=True,
        help="Loss concealment: interpolate codec parameters across a gap, repeat the last "
        "frame with a fade, or play silence.",
    )(func)


def _stack(func: F, decorators: list[Callable[[F], F]]) -> F:
    """Apply option decorators so they appear in ``--help`` in list order."""
    for decorator in reversed(decorators):
        func = decorator(func)
    return func
