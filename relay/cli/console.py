"""`relay console`: a room in a terminal UI, for moderators, speakers and listeners."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from relay.cli.options import home_option, resolve_home
from relay.errors import LinkError, UsageError


@click.command("console")
@click.argument("room")
@click.option(
    "--link",
    "url",
    required=True,
    metavar="URL",
    help="The channel: sim://127.0.0.1:7300 joins a `relay ether`; any radio URL works.",
)
@click.option(
    "--listen-only",
    is_flag=True,
    help="Keep the radio silent: hear and watch the room, never transmit (no hand, no "
    "talking, no beacons), so the radio cannot be located by direction finding.",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Talk from this audio file instead of the microphone: each push of push-to-talk "
    "says it from the start (where there is no sound card).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write what was heard to this WAV file when the console quits, instead of "
    "playing it on the speaker.",
)
@click.option(
    "--ptt",
    type=click.Choice(["toggle", "hold"]),
    default="toggle",
    show_default=True,
    help="Push-to-talk: space starts and stops talking (toggle), or talk while space is "
    "held down (hold: the terminal's key repeat keeps it on).",
)
@click.option(
    "--grant-seconds",
    type=click.IntRange(1, 65535),
    default=60,
    show_default=True,
    help="How long a moderator's grant lasts (the g key, `relay mod grant`).",
)
@home_option
def console_cmd(room, url, listen_only, input_path, out_path, ptt, grant_seconds, home) -> None:
    """Join ROOM in a terminal UI: who holds the floor, the hand queue, members, verdicts,
    the link's health; push-to-talk and hands; moderation keys for moderators.

    Keys (shown in the footer): space talk, h hand up/down, q quit; moderators also g grant
    the selected hand, r revoke, m mute/unmute, x remove (asks first: the key rotates), a
    appoint; tab switches between the hand queue and the member list. A moderator's
    console also serves `relay mod` (same user, same --home). Members show by the names
    in `relay contacts`, else by short id.

    \b
    Examples:
      relay console market --link sim://127.0.0.1:7300
      relay console market --link sim://127.0.0.1:7300 --listen-only --out heard.wav
      relay console market --link 'meshtastic+tcp://10.0.0.5' --input speech.wav --ptt hold
    """
    if out_path is not None:
        if not out_path.parent.is_dir():
            raise UsageError(f"cannot write {out_path}: directory {out_path.parent} does not exist")
        if out_path.is_dir():
            raise UsageError(f"cannot write {out_path}: it is a directory")
    if input_path is not None and listen_only:
        raise UsageError("--input says what to talk with; --listen-only never talks")
    pcm = None
    if input_path is not None:
        from relay.voice.audio import read_audio

        pcm = read_audio(input_path)
    h = resolve_home(home)
    report = asyncio.run(_console(h, room, url, listen_only, pcm, out_path, ptt, grant_seconds))
    summary = f"left {report['room']!r}: heard {report['overs']} overs, {report['seconds']:.1f} s"
    if report["out"]:
        summary += f", written to {report['out']}"
    click.echo(f"relay: {summary}", err=True)


def _devices(listen_only: bool, pcm: Any, out_path: Path | None) -> tuple[Any, Any, list[str]]:
    """The voice source and the speaker sink (None where there is none), and warnings."""
    from relay.app.audio import file_source, microphone_source

    warnings: list[str] = []
    source = sink = None
    if pcm is not None:
        source = file_source(pcm)
    need_mic = source is None and not listen_only
    if need_mic or out_path is None:
        try:
            from relay.voice.device import SpeakerSink, require_sounddevice

            sd = require_sounddevice("sound (microphone, speaker)")
        except UsageError as exc:
            warnings.append(f"{exc}; meanwhile talk with --input FILE, hear with --out FILE")
            return source, sink, warnings
        if need_mic:
            source = microphone_source(sd)
        if out_path is None:
            try:
                sink = SpeakerSink(sd)
            except UsageError as exc:
                warnings.append(f"{exc}: hear with --out FILE")
    return source, sink, warnings


async def _console(home, room_ref, url, listen_only, pcm, out_path, ptt, grant_seconds):
    from relay.app.control import serve_moderation
    from relay.app.session import open_session
    from relay.runtime.voice import Playout
    from relay.voice.modes import SAMPLE_RATE

    source, sink, warnings = _devices(listen_only, pcm, out_path)
    playout = Playout()
    if sink is not None:
        from relay.voice.device import SpeakerPlayout

        playout = SpeakerPlayout(sink)
    async with contextlib.AsyncExitStack() as stack:
        if sink is not None:
            stack.callback(sink.close)
        try:
            session = await stack.enter_async_context(
                open_session(
                    home,
                    room_ref,
                    url,
                    listen_only=listen_only,
                    playout=playout,
                    source=source,
                    grant_seconds=grant_seconds,
                )
            )
        except (LinkError, OSError) as exc:
            raise UsageError(f"cannot open the link {url}: {exc}") from None
        if not (sys.stdin.isatty() and sys.__stderr__ is not None and sys.__stderr__.isatty()):
            raise UsageError(
                "relay console draws on a terminal and this is not one (for scripts: "
                "relay listen, relay talk, relay mod)"
            )
        from relay.console.app import ConsoleApp

        for warning in warnings:
            session.note(warning)
        if warning := session.member.radio_mismatch():
            session.note(f"warning: {warning}")
        if session.is_moderator and not listen_only:
            control = await serve_moderation(home, session)
            if control is None:
                session.note("another moderator process serves `relay mod` for this room here")
            else:
                stack.push_async_callback(control.close)
                session.note(f"`relay mod ACTION {session.member.info.name} MEMBER` acts here")
        await ConsoleApp(session, ptt=ptt).run_async()
        heard = session.heard_audio()
        overs = len(session.playout.overs) + len(session.playout.live_overs())
        name = session.member.info.name
    written = None
    if out_path is not None and len(heard):
        from relay.voice.audio import write_audio

        write_audio(out_path, heard)
        written = str(out_path)
    return {"room": name, "overs": overs, "seconds": len(heard) / SAMPLE_RATE, "out": written}
