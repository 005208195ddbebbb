"""`relay wipe`: erase this home (keys, rooms, contacts, messages, counters), overwritten."""

from __future__ import annotations

import time

import click

from relay.cli import options
from relay.cli.options import home_option, resolve_home
from relay.errors import UsageError


@click.command("wipe")
@home_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts, panic buttons).")
def wipe_cmd(home, yes) -> None:
    """Erase everything in your relay home: identity, room keys, rooms, contacts, voice
    messages, send counters and replay marks. Every file is overwritten, then removed.

    No passphrase is needed: a wipe must work when there is no time. Flash storage and
    journaling filesystems may keep old copies of blocks (see THREATS.md); a passphrase on
    the keys is what protects those.

    \b
    Examples:
      relay wipe                      asks first
      relay wipe --yes                no questions (scripts, a panic button)
      relay wipe --home ./alice --yes
    """
    h = resolve_home(home)
    if not h.path.exists():
        raise UsageError(f"there is no relay home at {h.path}")
    if not yes:
        if not options.interactive():
            raise UsageError("relay wipe erases everything in the home: add --yes to confirm")
        click.confirm(f"Erase everything in {h.path}? It cannot be undone", abort=True, err=True)
    start = time.perf_counter()
    done = h.wipe()
    took = time.perf_counter() - start
    click.echo(
        f"wiped {h.path}: {done.files} files ({done.bytes} bytes) overwritten and removed "
        f"in {took:.2f} s"
    )
    if done.skipped:
        click.echo(
            f"relay: warning: {done.skipped} files could not be overwritten (removed only)",
            err=True,
        )
